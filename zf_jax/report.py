"""Writes the paper's tables (Markdown + JSON) under a run's workdir.

Every table binary (Tables 1-5) ends the same way: a Markdown table for
people and a JSON twin for programs, side by side in `<workdir>/tables/`,
with the paper's numbers beside ours (see `zf_jax.evaluation.table2`).
"""

from __future__ import annotations

import json
import os
import re
import threading
from typing import Any

TABLES_DIR = "tables"
_NAME = re.compile(r"^[\w.-]+$")


def _atomic_write(path: str, text: str) -> None:
  """Writes `text` to `path` so that readers see the old file or the new one, never half."""
  # Same folder (os.replace is atomic only within a file system); open() rather
  # than mkstemp so the table gets the usual umask permissions, not 0600.
  tmp = os.path.join(os.path.dirname(path),
                     f".{os.path.basename(path)}.{os.getpid()}.{threading.get_ident()}.tmp")
  try:
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_table(directory: str | os.PathLike, name: str, markdown: str,
                json_obj: Any) -> tuple[str, str]:
  """Writes `<directory>/tables/<name>.md` and `<name>.json`, creating folders as needed.

  Args:
    directory: usually a run's workdir.
    name: file stem, e.g. "table2"; letters, digits, "_", "-" and "." only.
    markdown: the table for people.
    json_obj: its JSON-serialisable twin for programs.

  Returns:
    (markdown path, JSON path), absolute.

  Raises:
    ValueError: a name that is not a plain file stem, or an object JSON cannot hold.
  """
  if not _NAME.match(name) or name in (".", ".."):
    raise ValueError(f"table name must be a plain file stem (letters, digits, _ - .), got {name!r}")
  try:
    # Serialise before touching the disk: a bad object leaves no half-written pair.
    text = json.dumps(json_obj, indent=2, allow_nan=False) + "\n"
  except (TypeError, ValueError) as e:
    raise ValueError(f"table {name!r} is not JSON-serialisable: {e}") from None
  folder = os.path.join(os.path.abspath(os.fspath(directory)), TABLES_DIR)
  os.makedirs(folder, exist_ok=True)
  md_path = os.path.join(folder, f"{name}.md")
  json_path = os.path.join(folder, f"{name}.json")
  _atomic_write(md_path, markdown if markdown.endswith("\n") else markdown + "\n")
  _atomic_write(json_path, text)
  return md_path, json_path
