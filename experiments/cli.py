"""What every experiment binary shares: quiet TensorFlow, one-line errors, shipped flagfiles.

`run(main)` is `absl.app.run(main)` where a bad flag, a missing flagfile or
a configuration error (ValueError, FileNotFoundError, ...) ends the program
with one line on stderr saying what is wrong and exit status 2 (1 for a run
that failed), never a traceback.

`--flagfile=zfnet.flags` finds the flagfiles shipped in experiments/flagfiles/
by bare name, from any folder; a path to any other flagfile works as usual.
"""

import os
import sys

FLAGFILES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "flagfiles")

# TensorFlow (tf.data only) prints its C++ start-up chatter unless told not to
# (zf_jax.data.input_pipeline says why oneDNN is off too).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# TensorFlow's start-up imports Keras' optimizers eagerly (to register them for SavedModel),
# which pulls in Keras and scikit-learn: ~1.6 s of CPU in every binary, none of which uses
# Keras. A None in sys.modules makes that one import fail at once, which TensorFlow's
# __init__ expects (it passes over an ImportError); nothing else of Keras is touched.
if "tensorflow" not in sys.modules:
  sys.modules.setdefault("keras.src.optimizers", None)

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import logging  # pylint: disable=g-import-not-at-top,wrong-import-position

# Errors that mean "the request is wrong", reported in one line.
# (OSError covers missing files and datasets that cannot be downloaded.)
USER_ERRORS = (ValueError, OSError)


def fail(message: str, status: int = 2):
  """Ends the program with `message` as its only line on stderr."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(status)


def define_overwrite(what: str) -> None:
  """Defines --overwrite, for a binary whose outputs from an earlier command it may find."""
  flags.DEFINE_bool(
      "overwrite", False, f"Delete and redo {what}, instead of stopping with one line naming "
      "what differs from this command (results of the same request are always reused or "
      "resumed, with or without this flag).")


def shipped_flagfiles() -> list[str]:
  """Names of the flagfiles shipped with the project (experiments/flagfiles/)."""
  return sorted(f for f in os.listdir(FLAGFILES_DIR) if f.endswith(".flags"))


def _flagfile(name: str) -> str:
  """`name` if it is a file, else the shipped flagfile of that name (".flags" optional)."""
  if os.path.isfile(name):
    return name
  base = os.path.basename(name)
  for candidate in (base, base + ".flags"):
    if os.path.isfile(os.path.join(FLAGFILES_DIR, candidate)):
      return os.path.join(FLAGFILES_DIR, candidate)
  fail(f"no flagfile {name}: give a path to one, or one of the shipped flagfiles: "
       f"{', '.join(shipped_flagfiles())}")


def resolve_flagfiles(argv: list[str]) -> list[str]:
  """argv with every --flagfile=NAME pointing at a file (see `_flagfile`)."""
  out, it = [], iter(argv)
  for arg in it:
    if arg.startswith(("--flagfile=", "-flagfile=")):
      key, _, value = arg.partition("=")
      arg = f"{key}={_flagfile(value)}"
    elif arg in ("--flagfile", "-flagfile"):
      arg = f"--flagfile={_flagfile(next(it, ''))}"
    out.append(arg)
  return out


def _parse(argv):
  try:
    return flags.FLAGS(resolve_flagfiles(argv))
  except flags.Error as e:  # Several missing required flags come one per line: one line.
    lines = [l.strip() for l in str(e).removeprefix("ERROR:: ").splitlines() if l.strip()]
    fail(f"{'; '.join(lines).removesuffix(' (see --helpshort)')} (see --helpshort)")


def run(main) -> None:
  """absl.app.run(main) with one-line errors for bad flags and bad requests."""
  def wrapped(argv):
    if len(argv) > 1:
      fail(f"unexpected arguments {argv[1:]}: every option is a --flag")
    if not flags.FLAGS["verbosity"].present:
      # orbax and tfds log every file they touch at INFO; progress is ours to print.
      logging.set_verbosity(logging.WARNING)
    try:
      return main(argv)
    except USER_ERRORS as e:
      fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
  app.run(wrapped, flags_parser=_parse)
