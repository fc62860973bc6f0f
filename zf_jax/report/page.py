"""The report page of a run's workdir: `<workdir>/report.html`.

Every figure and table binary records its section (title, text, figures,
tables written with `zf_jax.report.tables`) under `<workdir>/report/sections/`
and re-renders the one page, in the paper's order. `render_section` and
`document` also draw `zf_jax.report.multi`'s one page for several workdirs.
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from zf_jax.files import atomic_write
from zf_jax.report.tables import TABLES_DIR, check_name

FIGURES_DIR = "figures"
SECTIONS_DIR = os.path.join("report", "sections")
REPORT_FILE = "report.html"
# Sections appear in the paper's order; others after them, by key. A key "<known>_<more>"
# (e.g. "fig9_layer1") goes with its known one.
ORDER = ("imported", "training", "fig6", "fig2", "fig7", "fig4", "fig5", "table1", "table2",
         "table3", "table4", "fig9", "table5", "table6", "table7")
# The paper's section behind each known key (cited where a page shows its numbers).
PAPER_SECTIONS = {"training": "3", "fig2": "4", "fig4": "4", "fig5": "4", "fig6": "4.1",
                  "fig7": "4.2", "table1": "4.3", "table2": "5.1", "table3": "5.1",
                  "table4": "5.2", "fig9": "5.2", "table5": "5.2", "table6": "5.2",
                  "table7": "5.3"}


def figure_path(directory: str | os.PathLike, name: str) -> str:
  """`<directory>/figures/<name>` (a PNG file name), its folder created."""
  check_name(name, "figure name must be a plain file name")
  folder = os.path.join(os.path.abspath(os.fspath(directory)), FIGURES_DIR)
  os.makedirs(folder, exist_ok=True)
  return os.path.join(folder, name)


def add_section(directory: str | os.PathLike, key: str, title: str, *, text: str = "",
                figures: Sequence[str] = (), tables: Sequence[str] = (),
                items: Mapping[str, Any] | None = None,
                captions: Sequence[str] | None = None) -> str:
  """Records one section of `<directory>/report.html` and re-renders the page.

  Args:
    directory: a run's workdir.
    key: the section's identity ("fig2", "table1", ...): adding it again replaces it.
    title: heading.
    text: paragraphs (plain text; blank lines separate paragraphs).
    figures: paths of PNG files under `directory` (shown in this order).
    tables: names of tables written with `write_table` (their Markdown is shown).
    items: key -> value pairs shown as a small table (e.g. accuracy, time).
    captions: one per figure (default: the title, numbered when there are several);
      each caption also links to its PNG file.

  Returns:
    The path of report.html.
  """
  check_name(key, "section key must be a plain name")
  root = os.path.abspath(os.fspath(directory))
  rel = []
  for path in figures:
    path = os.path.abspath(path)
    if not path.startswith(root + os.sep) or not os.path.exists(path):
      raise ValueError(f"figure {path} is not a file under {root}")
    rel.append(os.path.relpath(path, root))
  if captions is None:
    captions = [title if len(rel) == 1 else f"{title} ({i} of {len(rel)})"
                for i in range(1, len(rel) + 1)]
  if len(captions) != len(rel):
    raise ValueError(f"{len(captions)} captions for {len(rel)} figures")
  folder = os.path.join(root, SECTIONS_DIR)
  os.makedirs(folder, exist_ok=True)
  section = {"key": key, "title": title, "text": text, "figures": rel, "tables": list(tables),
             "items": dict(items or {}), "captions": list(captions)}
  atomic_write(os.path.join(folder, f"{key}.json"), json.dumps(section, indent=2) + "\n")
  return write_report(root)


def sections(directory: str | os.PathLike) -> list[dict[str, Any]]:
  """The recorded sections of a workdir's report, in page order."""
  folder = os.path.join(os.path.abspath(os.fspath(directory)), SECTIONS_DIR)
  found = []
  for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
    if name.endswith(".json"):
      with open(os.path.join(folder, name), encoding="utf-8") as f:
        found.append(json.load(f))
  return sorted(found, key=page_rank)


def known_key(key: str) -> str | None:
  """The key of `ORDER` a section key belongs to: itself, or its part before the first "_"."""
  for k in (key, key.split("_", 1)[0]):
    if k in ORDER:
      return k
  return None


def page_rank(section: Mapping[str, Any]) -> tuple[int, str]:
  """Sort key of a section on a page: the paper's order (`ORDER`), then by key."""
  known = known_key(section["key"])
  return (ORDER.index(known) if known else len(ORDER), section["key"])


def _markdown_table_html(markdown: str, skip_heading: str | None = None) -> str:
  """Our own Markdown (pipe tables, headings, paragraphs) as HTML.

  A heading equal to `skip_heading` (the section's title, already shown) is left out.
  """
  out, rows = [], []

  def flush():
    if rows:
      head, body = rows[0], [r for r in rows[1:] if not set("".join(r)) <= set("-: ")]
      marks = next((r for r in rows[1:] if set("".join(r)) <= set("-: ")), [])
      # Markdown's alignment row: "---" left (names), "---:" right (numbers, the default).
      left = [m.startswith("-") and not m.endswith(":") for m in marks]
      cell = lambda i, c: (f"<td class='l'>{c}</td>" if i < len(left) and left[i]  # noqa: E731
                           else f"<td>{c}</td>")
      head_cell = lambda i, c: (f"<th class='l'>{c}</th>" if i < len(left) and left[i]  # noqa: E731
                                else f"<th>{c}</th>")
      out.append("<div class='wide'><table><tr>" + "".join(
          head_cell(i, c) for i, c in enumerate(head)) + "</tr>" + "".join(
              "<tr>" + "".join(cell(i, c) for i, c in enumerate(r)) + "</tr>" for r in body)
          + "</table></div>")
      rows.clear()

  for line in markdown.splitlines():
    line = line.strip()
    if line.startswith("|"):
      cells = re.split(r"(?<!\\)\|", line[1:-1] if line.endswith("|") else line[1:])
      rows.append([html.escape(c.strip().replace("\\|", "|")) for c in cells])
      continue
    flush()
    if line.startswith("#"):
      if line.lstrip("#").strip() == skip_heading:
        continue
      out.append(f"<h4>{html.escape(line.lstrip('#').strip())}</h4>")
    elif line:
      out.append(f"<p>{html.escape(line)}</p>")
  flush()
  return "\n".join(out)


_STYLE = """
body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
img{max-width:100%;border:1px solid #ddd;margin:.5em 0}
table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:.2em .5em;text-align:right;white-space:nowrap}
td.l,th.l,table.left th{text-align:left;white-space:normal}
th{background:#f3f3f3;white-space:normal;vertical-align:bottom}div.wide table{font-size:92%}
table.items td{text-align:left;border:none;padding:.1em 1em .1em 0}
table.items td:first-child{font-weight:bold}
figcaption{font-size:90%;color:#444}figcaption a{color:#888;margin-left:.5em}
.wide{overflow-x:auto;max-width:100%}p.cite{font-size:90%;color:#555;font-style:italic}
p.files{font-size:90%}p.files a{color:#666}pre{background:#f7f7f7;padding:.5em;overflow-x:auto}
h2{border-bottom:2px solid #444;padding-bottom:.2em;margin-top:1.6em}
h3{border-top:1px solid #ddd;padding-top:.6em}h4{font-size:95%;color:#444}
"""
INTRO = ("<p>Zeiler &amp; Fergus, <i>Visualizing and Understanding Convolutional Networks</i> "
         "(ECCV 2014), reproduced with zf_jax.</p>")


def items_table(items: Mapping[str, Any]) -> str:
  """`{name: value}` as a borderless two-column table, names in bold."""
  return "<table class='items'>" + "".join(
      f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
      for k, v in items.items()) + "</table>"


def document(title: str, body: Sequence[str]) -> str:
  """A whole HTML page: `title` as its title and first heading, then `body` (HTML parts)."""
  return "\n".join(
      [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
       f"</title><style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>", *body,
       "</body></html>\n"])


def render_section(root: str | os.PathLike, section: Mapping[str, Any], *,
                   href: Callable[[str], str] = lambda rel: rel, anchor: str | None = None,
                   level: int = 2) -> list[str]:
  """One recorded section as HTML parts: heading, items, text, figures, tables.

  Args:
    root: the workdir the section belongs to (its tables are read from there).
    section: a record of `sections`.
    href: maps a path relative to `root` (figures/x.png, tables/x.md) to the link
      the page uses (default: the same relative path, for `<root>/report.html`).
    anchor: the heading's id (default: the section's key).
    level: the heading's level (2: h2).

  Returns:
    The HTML parts, in page order.
  """
  root = os.path.abspath(os.fspath(root))
  title, link = section["title"], lambda rel: html.escape(href(rel), quote=True)
  parts = [f"<h{level} id='{html.escape(anchor or section['key'])}'>{html.escape(title)}"
           f"</h{level}>"]
  if section["items"]:
    parts.append(items_table(section["items"]))
  for para in filter(None, (p.strip() for p in section["text"].split("\n\n"))):
    parts.append(f"<p>{html.escape(para)}</p>")
  known = known_key(section["key"])
  if known in PAPER_SECTIONS and "Section " not in section["text"]:
    parts.append(f"<p class='cite'>The paper: Section {PAPER_SECTIONS[known]}.</p>")
  for fig, caption in zip(section["figures"], section.get("captions") or section["figures"]):
    # A caption that repeats the heading just above it is not shown twice.
    shown = "" if caption == title else html.escape(caption)
    parts.append(f"<figure><img src='{link(fig)}' alt='{html.escape(caption)}'>"
                 f"<figcaption>{shown}<a href='{link(fig)}'>"
                 f"{html.escape(os.path.basename(fig))}</a></figcaption></figure>")
  for name in section["tables"]:
    path = os.path.join(root, TABLES_DIR, f"{name}.md")
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        parts.append(_markdown_table_html(f.read(), skip_heading=title))
      files = [f"<a href='{link(f'{TABLES_DIR}/{name}{ext}')}'>{name}{ext}</a>"
               for ext in (".md", ".json") if os.path.exists(os.path.join(root, TABLES_DIR,
                                                                         name + ext))]
      parts.append("<p class='files'>" + " · ".join(files) + "</p>")
  return parts


def write_report(directory: str | os.PathLike) -> str:
  """Renders `<directory>/report.html` from the recorded sections; returns its path.

  The page references figures by relative path, so the workdir can be moved or
  served as it is.
  """
  root = os.path.abspath(os.fspath(directory))
  body = [INTRO]
  for s in sections(root):
    body += render_section(root, s)
  path = os.path.join(root, REPORT_FILE)
  atomic_write(path, document(f"zf_jax report: {os.path.basename(root)}", body))
  return path
