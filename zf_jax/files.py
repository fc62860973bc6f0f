"""Writes files atomically: a reader sees the old file or the new one, never half of one.

Tables, figures, the report page, the mean image and benchmark results all
go through here, so that an interrupted program or several hosts writing the
same file never leave a truncated result behind.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
  """Yields a temporary path beside `path`; renames it to `path` if the block succeeds.

  The temporary file keeps `path`'s extension (numpy and matplotlib choose
  their format by it) and sits in the same folder (`os.replace` is atomic
  only within one file system). On an exception it is removed and `path` is
  left as it was.
  """
  path = os.fspath(path)
  folder, name = os.path.split(path)
  stem, ext = os.path.splitext(name)
  tmp = os.path.join(folder, f".{stem}.{os.getpid()}.{threading.get_ident()}.tmp{ext}")
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def atomic_write(path: str | os.PathLike, text: str) -> str:
  """Writes `text` (UTF-8) to `path` atomically; returns `path`."""
  # open() rather than mkstemp, so the file gets the usual umask permissions, not 0600.
  with atomic_path(path) as tmp:
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
  return os.fspath(path)


def check_folder(path: str | os.PathLike, flag: str) -> None:
  """Raises a one-line NotADirectoryError when the output folder `path` is a file, or lies
  under one: for a program to say so before its long part rather than when it writes."""
  p = os.path.abspath(os.path.expanduser(os.fspath(path)))
  while True:
    if os.path.exists(p):
      if not os.path.isdir(p):
        raise NotADirectoryError(f"--{flag}={path}: {p} is a file, not a folder")
      return
    parent = os.path.dirname(p)
    if parent == p:
      return
    p = parent
