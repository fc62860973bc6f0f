"""Where a report's numbers come from: the versions of Python, the libraries and zf_jax.

Runs do not record the software that made them; a report records the
software that wrote it (`versions`), zf_jax's git commit included.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow-datasets",
            "numpy")


def versions(repo: str | None = None) -> dict[str, str]:
  """Python's, the libraries' (`PACKAGES`) and zf_jax's versions; what is missing is skipped.

  Args:
    repo: where to ask git for zf_jax's commit (default: the folder of the package).
  """
  out = {"python": platform.python_version()}
  for name in PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      continue
  try:
    out["zf_jax"] = importlib.metadata.version("zf_jax")
  except importlib.metadata.PackageNotFoundError:
    pass
  commit = git_commit(repo or os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if commit:
    out["zf_jax git commit"] = commit
  return out


def git_commit(folder: str) -> str | None:
  """The git commit of the repository holding `folder` ("+ local changes" when its tracked
  files differ from it), or None without git or a repository."""
  def git(*args):
    return subprocess.run(["git", "-C", folder, *args], capture_output=True, text=True,
                          timeout=20, check=True).stdout.strip()
  try:
    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
  except (OSError, subprocess.SubprocessError):
    return None
  return f"{commit} (+ local changes)" if dirty else commit
