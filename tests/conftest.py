"""What the tests share: the repository, running a binary as a user does, session fixtures.

`run_module("experiments.fig2_top9", "--workdir=...")` runs a binary in a
fresh process from the repository root, as README's commands do.

`fashion_data_dir`: a fresh tfds data_dir with Debian's Fashion-MNIST prepared
(skips without the Debian files). `fashion_run`: a workdir holding a
`zfnet_tiny` trained on it for 600 steps (tests/fashion_run.py; ~40 s on 2 CPU
cores), good enough (~73% test accuracy) for the Section 4 analyses to show
real effects, trained once per session: under pytest-xdist the controller
starts building these two at once, and workers that ask wait for it.

`Child` / the `spawn` fixture: a binary in a subprocess whose output is
readable while it runs (to interrupt it at a checkpoint: `wait_for_checkpoint`).
"""

import fcntl
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

# The tests' time goes mostly to compiling (tiny models, few steps): XLA's
# backend optimisation level 0 compiles zfnet_tiny's train step in ~1.3 s instead
# of ~2.3 s, and runs it in 83 ms instead of 21 ms (batch 64). Whole files cost
# less CPU at level 0 (2026-12-07, before layers.py's few-channel change:
# test_trainer.py 202 s against 240 s, test_deconv.py 77 s against 153 s). Set
# before JAX starts its backend, for this process and children (the shared run's
# long training is the exception: fashion_run.py).
FAST_COMPILE = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), FAST_COMPILE]))

# Many tests run the same binary on the same tiny model several times (uninterrupted, killed,
# rerun), each in a fresh process that would compile the same steps again: JAX's persistent
# compilation cache, one folder per pytest session (made by the first process, inherited by
# the xdist workers and every child), lets the later ones load them instead.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="zf_jax_test_xla_cache_")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

try:  # The compare extra's torchvision crashes (segfault) when imported after TensorFlow.
  import torchvision  # noqa: F401  pylint: disable=unused-import
except ImportError:
  pass

import pytest
import tensorflow_datasets as tfds

from zf_jax.data import datasets

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS_DIR)


def child_env(**extra: str) -> dict[str, str]:
  """The environment of a test's child process: JAX on the CPU (one device unless `extra`
  sets XLA_FLAGS), unbuffered, the repository and tests/ (tiny_dataset) importable first."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = FAST_COMPILE
  env["PYTHONPATH"] = os.pathsep.join(
      [REPO, TESTS_DIR] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
  env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
  env.update(extra)
  return env


def run_python(*args: str, cwd: str = REPO, env: dict | None = None,
               timeout: float = 600) -> subprocess.CompletedProcess:
  """`python *args` in a fresh process (`child_env` plus `env`); output as text, never raises."""
  return subprocess.run([sys.executable, *args], cwd=cwd, env=child_env(**(env or {})),
                        capture_output=True, text=True, timeout=timeout, check=False)


def run_module(module: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
  """`python -m module *args`, as README's commands run a binary (see `run_python`)."""
  return run_python("-m", module, *args, **kwargs)


# --- Children: binaries run as a user runs them, interrupted as a user (or a machine) would.


def _tail(text: str, n: int = 8000) -> str:
  return text if len(text) <= n else "...\n" + text[-n:]


class Child:
  """A subprocess whose stdout and stderr go to files, readable while it runs."""

  def __init__(self, name: str, args: list[str], logdir, env=None, cwd=None):
    self.name = name
    os.makedirs(logdir, exist_ok=True)
    self._out = os.path.join(logdir, f"{name}.stdout")
    self._err = os.path.join(logdir, f"{name}.stderr")
    with open(self._out, "wb") as out, open(self._err, "wb") as err:
      self.proc = subprocess.Popen(args, stdout=out, stderr=err, env=env or child_env(),
                                   cwd=cwd or logdir)
    self.started = time.monotonic()

  @property
  def pid(self) -> int:
    return self.proc.pid

  def stdout(self) -> str:
    with open(self._out, encoding="utf-8", errors="replace") as f:
      return f.read()

  def stderr(self) -> str:
    with open(self._err, encoding="utf-8", errors="replace") as f:
      return f.read()

  def report(self) -> str:
    return (f"\n----- {self.name} (pid {self.pid}, exit {self.proc.returncode}) stdout -----\n"
            f"{_tail(self.stdout())}\n----- {self.name} stderr -----\n{_tail(self.stderr())}")

  def alive(self) -> bool:
    return self.proc.poll() is None

  def kill(self) -> None:
    if self.alive():
      self.proc.kill()
      self.proc.wait()

  def wait(self, timeout: float) -> int:
    """The exit status; kills the child and fails (showing its output) after `timeout` s."""
    try:
      return self.proc.wait(timeout=max(timeout - (time.monotonic() - self.started), 1))
    except subprocess.TimeoutExpired:
      self.kill()
      pytest.fail(f"{self.name} did not finish within {timeout:.0f} s" + self.report())

  def check(self, timeout: float) -> str:
    """Waits for a zero exit; returns stdout."""
    rc = self.wait(timeout)
    assert rc == 0, f"{self.name} exited with {rc}" + self.report()
    return self.stdout()


@pytest.fixture(name="spawn")
def _spawn(tmp_path):
  """`spawn(name, args, **kw) -> Child`; children still running at teardown are killed."""
  children = []

  def spawn(name, args, **kwargs):
    kwargs.setdefault("logdir", str(tmp_path / "logs"))
    child = Child(name, args, **kwargs)
    children.append(child)
    return child

  yield spawn
  for child in children:
    child.kill()


def finalized_steps(ckpt_dir) -> list[int]:
  """Checkpoint steps orbax has finished (renamed from their tmp dirs)."""
  if not os.path.isdir(ckpt_dir):
    return []
  return sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit())


def wait_for_checkpoint(child: Child, ckpt_dir, min_step: int, timeout: float = 180) -> int:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    steps = finalized_steps(ckpt_dir)
    if steps and steps[-1] >= min_step:
      assert child.alive(), f"{child.name} ended before it could be interrupted" + child.report()
      return steps[-1]
    if not child.alive():
      pytest.fail(f"{child.name} exited before checkpoint {min_step}" + child.report())
    time.sleep(0.01)
  child.kill()
  pytest.fail(f"no checkpoint >= {min_step} after {timeout} s" + child.report())


HAVE_DEBIAN_FILES = all(
    os.path.isfile(os.path.join(datasets.DEFAULT_DIR, name))
    for images, labels, _ in datasets.FILES.values() for name in (images, labels))

def _once(root, name: str, build):
  """`build(folder)`'s JSON result, built once per pytest session under `root`.

  Under xdist the workers' temporary folders share a parent, one per session:
  the first process to ask builds into it under a lock, the others wait and
  read the result. A failed build leaves nothing behind: the next one retries.
  """
  root = pathlib.Path(root)
  folder, done = root / name, root / f"{name}.json"
  with open(root / f"{name}.lock", "w", encoding="utf-8") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not done.exists():
      shutil.rmtree(folder, ignore_errors=True)
      done.write_text(json.dumps(build(str(folder))), encoding="utf-8")
    return json.loads(done.read_text(encoding="utf-8"))


def _session_root(tmp_path_factory) -> pathlib.Path:
  base = tmp_path_factory.getbasetemp()
  return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _prepare_fashion(data_dir: str) -> str:
  with pytest.MonkeyPatch.context() as mp:
    mp.delenv(datasets.DIR_ENV, raising=False)  # Read Debian's files, whatever the caller set.
    tfds.builder(datasets.EMBEDDED_DATASET, data_dir=data_dir).download_and_prepare()
  return data_dir


def build_shared(root) -> tuple[str, list]:
  """The session's Fashion-MNIST data_dir and trained run (see the fixtures below)."""
  data_dir = _once(root, "tfds_fashion", _prepare_fashion)

  def train(folder):  # In a child at XLA's default optimisation level: see fashion_run.py.
    workdir = os.path.join(folder, "run")
    done = run_module("fashion_run", data_dir, workdir, env={"XLA_FLAGS": ""})
    assert done.returncode == 0, f"the shared run failed:\n{_tail(done.stderr)}"
    return [workdir, json.loads(done.stdout.strip().splitlines()[-1])]

  return data_dir, _once(root, "fashion_run", train)


_BACKGROUND = []
_USE_FASHION_RUN = ("test_command_lines.py", "test_correspondence.py", "test_figure_binaries.py",
                    "test_invariance.py",
                    "test_notebook.py", "test_occlusion.py")


def pytest_sessionstart(session):
  """Under xdist, the controller starts building the shared Fashion-MNIST run at once, in
  a process of its own: the workers run other files meanwhile instead of one of them
  building it when its first file asks (and the others waiting for it)."""
  if (os.environ.get("PYTEST_XDIST_WORKER") or not session.config.getoption("numprocesses", None)
      or not HAVE_DEBIAN_FILES):
    return
  asked = [os.path.basename(a.split("::")[0]) for a in session.config.args]
  if not any(a in _USE_FASHION_RUN or not a.startswith("test_") for a in asked):
    return  # Only files that do not need it (a file not listed here builds it itself).
  root = session.config._tmp_path_factory.getbasetemp()  # pylint: disable=protected-access
  log = open(root / "build_shared.log", "w", encoding="utf-8")  # pylint: disable=consider-using-with
  _BACKGROUND.append(subprocess.Popen(
      [sys.executable, "-c", f"import conftest; conftest.build_shared({str(root)!r})"],
      cwd=REPO, env=child_env(), stdout=log, stderr=subprocess.STDOUT))


def pytest_collection_modifyitems(session, config, items):
  """The files that need the shared Fashion-MNIST run go last (a stable sort): under xdist,
  which hands out whole files in this order, the workers run every other file while the
  run trains in the background, instead of one of them idling in a fixture waiting for it."""
  del session, config
  items.sort(key=lambda item: os.path.basename(str(item.path)) in _USE_FASHION_RUN)


def pytest_sessionfinish(session):
  del session
  for proc in _BACKGROUND:
    if proc.poll() is None:
      proc.kill()
    proc.wait()
  if _OWN_CACHE:  # Only the process that made the folder (xdist workers inherit it).
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(scope="session", name="fashion_data_dir")
def _fashion_data_dir(tmp_path_factory):
  """A fresh tfds data_dir with fashion_mnist_debian prepared from Debian's files."""
  if not HAVE_DEBIAN_FILES:
    pytest.skip(f"no Fashion-MNIST in {datasets.DEFAULT_DIR}: "
                "sudo apt-get install dataset-fashion-mnist")
  return _once(_session_root(tmp_path_factory), "tfds_fashion", _prepare_fashion)


@pytest.fixture(scope="session", name="fashion_run")
def _fashion_run(tmp_path_factory, fashion_data_dir):
  """(workdir, summary) of zfnet_tiny trained on Fashion-MNIST; read-only for tests."""
  del fashion_data_dir  # Skips without the Debian files.
  return tuple(build_shared(_session_root(tmp_path_factory))[1])
