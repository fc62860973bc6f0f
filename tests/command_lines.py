"""Runs command lines of the experiment binaries in this one process, as a user's shell would.

  python tests/command_lines.py CASES.json RESULTS.json

CASES.json: [{"binary": "fig2_top9", "args": ["--workdir=...", ...]}, ...].
RESULTS.json gets, per case, {"status": exit status, "stdout", "stderr", "seconds"}: what
the process's file descriptors 1 and 2 received (C++ logs included), as
`python -m experiments.<binary> ARGS` would have printed them.

Each binary is imported once and its command lines run through its own
`cli.run(main)`, the flags reset before each. Between binaries the flags the
previous one defined are removed and its module (and the shared
experiments.common) imported again, so that each defines its flags as it does
in a fresh process: one process for every binary instead of a start-up of
~3 s each (tests/test_command_lines.py).
"""

import importlib
import json
import os
import sys
import tempfile
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Captured:
  """Points fds 1 and 2 (and sys.stdout / sys.stderr) at files for a `with` block."""

  def __enter__(self):
    self.files = [tempfile.TemporaryFile() for _ in range(2)]
    sys.stdout.flush()
    sys.stderr.flush()
    self.saved = [os.dup(1), os.dup(2)]
    for fd, f in zip((1, 2), self.files):
      os.dup2(f.fileno(), fd)
    return self

  def __exit__(self, *exc):
    sys.stdout.flush()
    sys.stderr.flush()
    for fd, saved in zip((1, 2), self.saved):
      os.dup2(saved, fd)
      os.close(saved)
    self.out, self.err = [], []
    for f, text in zip(self.files, (self.out, self.err)):
      f.seek(0)
      text.append(f.read().decode("utf-8", errors="replace"))
      f.close()
    return False


def _forget(module_names, flag_names) -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  for name in flag_names:
    if name in flags.FLAGS:
      delattr(flags.FLAGS, name)
  for name in module_names:
    sys.modules.pop(name, None)


def run_all(cases):
  from absl import flags  # pylint: disable=import-outside-toplevel
  from experiments import cli  # pylint: disable=import-outside-toplevel
  results = []
  current, module, defined = None, None, []
  for case in cases:
    if case["binary"] != current:
      if module is not None:
        _forget([module.__name__, "experiments.common"], defined)
      before = set(flags.FLAGS)
      module = importlib.import_module(f"experiments.{case['binary']}")
      defined = sorted(set(flags.FLAGS) - before)
      current = case["binary"]
    flags.FLAGS.unparse_flags()
    sys.argv = [f"experiments/{current}.py", *case["args"]]
    status, start = 0, time.monotonic()
    with _Captured() as cap:
      try:
        cli.run(module.main)
      except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
      except BaseException:  # pylint: disable=broad-except  # What a process would die of.
        traceback.print_exc()
        status = 1
    results.append({"status": status, "stdout": cap.out[0], "stderr": cap.err[0],
                    "seconds": round(time.monotonic() - start, 2)})
  return results


def main():
  cases_path, results_path = sys.argv[1:3]
  with open(cases_path, encoding="utf-8") as f:
    cases = json.load(f)
  os.chdir(REPO)
  results = run_all(cases)
  with open(results_path, "w", encoding="utf-8") as f:
    json.dump(results, f)


if __name__ == "__main__":
  main()
