"""The paper's tables as Markdown for people and JSON for programs, under a run's workdir.

Every table binary (Tables 1-7, and the numbers behind each figure) ends the
same way: `markdown_table` lays out rows, `write_table` puts
`<workdir>/tables/<name>.md` beside its JSON twin, with the paper's numbers
beside ours where the paper has them (see `zf_jax.runs.evaluation.table2`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

from zf_jax.files import atomic_write

TABLES_DIR = "tables"
# How tables name the evaluation crop schemes (Section 3: the centre crop, or 10 crops).
CROP_NAMES = {"center": "centre crop", "ten": "10 crops"}
_NAME = re.compile(r"^[\w.-]+$")


def check_name(name: str, what: str) -> None:
  """Raises a one-line ValueError unless `name` is a plain file name (no folders).

  `what` says what it names, e.g. "table name must be a plain file stem".
  """
  if not _NAME.match(name) or name in (".", ".."):
    raise ValueError(f"{what} (letters, digits, _ - .), got {name!r}")


def cell(value: Any) -> str:
  """A value as the text of one Markdown table cell ('|' escaped)."""
  return str(value).replace("|", "\\|")


def markdown_table(header: Sequence[Any], rows: Iterable[Sequence[Any]],
                   align: str | None = None) -> list[str]:
  """The lines of a Markdown pipe table.

  Args:
    header: column titles.
    rows: one sequence of cells per row (any values; shown with `str`).
    align: one letter per column, "l" or "r"; None: the first column left,
      the others right (names, then numbers).

  Returns:
    The header line, the alignment line and one line per row.
  """
  align = align or "l" + "r" * (len(header) - 1)
  if len(align) != len(header):
    raise ValueError(f"align {align!r} has {len(align)} letters for {len(header)} columns")
  marks = {"l": "---", "r": "---:"}
  lines = ["| " + " | ".join(cell(h) for h in header) + " |",
           "|" + "|".join(marks[a] for a in align) + "|"]
  lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
  return lines


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
  check_name(name, "table name must be a plain file stem")
  try:
    # Serialise before touching the disk: a bad object leaves no half-written pair.
    text = json.dumps(json_obj, indent=2, allow_nan=False) + "\n"
  except (TypeError, ValueError) as e:
    raise ValueError(f"table {name!r} is not JSON-serialisable: {e}") from None
  folder = os.path.join(os.path.abspath(os.fspath(directory)), TABLES_DIR)
  os.makedirs(folder, exist_ok=True)
  md_path = os.path.join(folder, f"{name}.md")
  json_path = os.path.join(folder, f"{name}.json")
  atomic_write(md_path, markdown if markdown.endswith("\n") else markdown + "\n")
  atomic_write(json_path, text)
  return md_path, json_path
