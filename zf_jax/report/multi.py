"""One report page for several workdirs: `<out>/report.html` (`python -m experiments.report`).

Each workdir is a training run (config.json) or an experiment folder (the
ablation's or the transfer's: report/sections/, tables/, figures/ and nested
training runs). The page shows, per workdir, its configuration (the options
that differ from the defaults, the whole config behind a <details>), its final
accuracy, then its sections in the paper's order, rendered by
`zf_jax.report.page` as on the workdir's own page, and every table or figure
of the workdir that no section shows. Figures and tables are copied under
`<out>/report_files/<run>/` (one folder per workdir, so that two runs' table2
or training.png never meet) and linked relatively: the folder can be moved or
zipped. The versions of Python, the libraries and zf_jax's git commit close
the page.
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import re
import shutil
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from zf_jax.files import atomic_write
from zf_jax.report import page, tables
from zf_jax.report.provenance import versions
from zf_jax.report.tables import TABLES_DIR

if TYPE_CHECKING:
  from zf_jax.runs.config import RunConfig

FILES_DIR = "report_files"
# zf_jax.runs.workdir.CONFIG_FILE: that module (and the run config's) loads JAX and
# TensorFlow (~10 s), imported only once the request is known to be good (see `_runs`).
CONFIG_FILE = "config.json"
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".svg", ".gif")
# Folders of a workdir that hold no nested training run (skipped when looking for them).
_NOT_RUNS = {"checkpoints", "damaged_checkpoints", "tensorboard", page.FIGURES_DIR, TABLES_DIR,
             "report", FILES_DIR, "features"}
_NESTED_DEPTH = 3
_PAGE_ANCHORS = ("contents", "versions")  # The page's own ids, which no run may take.


def _runs():
  """(zf_jax.runs.config, zf_jax.runs.workdir), imported when first needed (see CONFIG_FILE)."""
  from zf_jax.runs import config, workdir  # pylint: disable=import-outside-toplevel
  return config, workdir


@dataclasses.dataclass
class RunPage:
  """What the page shows of one workdir."""
  path: str  # Absolute.
  name: str  # As given on the command line.
  slug: str  # Its folder under <out>/report_files/ and its anchor.
  config: RunConfig | None
  raw_config: dict[str, Any] | None
  facts: dict[str, Any]
  summary: dict[str, Any] | None
  last_step: int | None
  sections: list[dict[str, Any]]
  missing: list[str]  # Files a section names that the workdir lacks.
  nested: list[dict[str, Any]]


def check_workdirs(workdirs: Sequence[str]) -> list[str]:
  """The absolute paths of `workdirs`; a one-line ValueError for a bad or repeated one."""
  if not workdirs:
    raise ValueError("--workdirs: give at least one workdir (comma-separated)")
  seen: dict[str, str] = {}
  paths = []
  for given in workdirs:
    path = os.path.abspath(os.path.expanduser(given))
    if not os.path.isdir(path):
      what = "is not a folder" if os.path.exists(path) else "does not exist"
      raise ValueError(f"--workdirs: {given} {what}; give zf_jax workdirs (training runs or "
                       "experiment folders)")
    if not any(os.path.exists(os.path.join(path, p)) for p in
               (CONFIG_FILE, page.SECTIONS_DIR, TABLES_DIR)):
      raise ValueError(f"--workdirs: {given} is not a zf_jax workdir (it has no "
                       f"{CONFIG_FILE}, {page.SECTIONS_DIR}/ or {TABLES_DIR}/)")
    real = os.path.realpath(path)
    if real in seen:
      raise ValueError(f"--workdirs: {given} is given twice (also as {seen[real]}); list each "
                       "workdir once")
    seen[real] = given
    paths.append(path)
  return paths


def _slugs(paths: Sequence[str]) -> list[str]:
  """A distinct plain name per path (its folder under report_files/, its anchor): the base
  name, with as many parent folders as it takes to tell it apart from the others'."""
  def clean(path, depth):
    name = re.sub(r"[^\w.-]+", "_", "-".join(path.split(os.sep)[-depth:])).strip("._-")
    return name if name and name not in _PAGE_ANCHORS else f"{name or 'workdir'}-run"
  depth = [1] * len(paths)
  while True:
    names = [clean(p, d) for p, d in zip(paths, depth)]
    longer = [d + 1 if names.count(n) > 1 and d < p.count(os.sep) else d
              for p, d, n in zip(paths, depth, names)]
    if longer == depth:
      break
    depth = longer
  # Names that still collide (e.g. "a b" and "a_b"): numbered in the given order.
  return [f"{n}-{i}" if names.count(n) > 1 else n for i, n in enumerate(names, 1)]


def _files_under(root: str, folder: str, exts: Sequence[str]) -> list[str]:
  """Paths relative to `root` of the files under `<root>/<folder>` ending in `exts`, sorted."""
  found = []
  for here, dirs, files in os.walk(os.path.join(root, folder)):
    dirs.sort()
    found += [os.path.relpath(os.path.join(here, f), root) for f in sorted(files)
              if f.lower().endswith(tuple(exts)) and not f.startswith(".")]
  return found


def _table_title(root: str, name: str) -> str:
  """The first Markdown heading of `tables/<name>.md`, or a title made of its name."""
  with open(os.path.join(root, TABLES_DIR, f"{name}.md"), encoding="utf-8") as f:
    for line in f:
      if line.startswith("#"):
        return line.lstrip("#").strip()
  return f"Table {name}"


def _unshown(root: str, sections: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Sections for the tables and figures of `root` that no recorded section shows.

  Binaries that write a table without a section (evaluation's table2, dedup) or
  figures whose section was replaced still belong on the page.
  """
  shown_tables = {t for s in sections for t in s["tables"]}
  shown_figs = {os.path.normpath(f) for s in sections for f in s["figures"]}
  keys = {s["key"] for s in sections}
  figs = [f for f in _files_under(root, page.FIGURES_DIR, IMAGE_EXTS)
          if os.path.normpath(f) not in shown_figs]
  extra = []
  for md in _files_under(root, TABLES_DIR, (".md",)):
    name = os.path.splitext(os.path.relpath(md, TABLES_DIR))[0]
    if name in shown_tables or os.sep in name:
      continue
    mine = [f for f in figs if os.path.splitext(os.path.basename(f))[0] == name]
    figs = [f for f in figs if f not in mine]
    title = _table_title(root, name)
    extra.append({"key": name if name not in keys else f"{name}_table", "title": title,
                  "text": f"From {TABLES_DIR}/{name}.md (no section of the workdir's own page "
                          "shows it).",
                  "figures": mine, "tables": [name], "items": {},
                  "captions": [title] * len(mine)})
  if figs:
    extra.append({"key": "zz_other_figures", "title": "Figures no section shows",
                  "text": f"Files under {page.FIGURES_DIR}/ of this workdir that no section of "
                          "its page records (no caption was recorded for them).",
                  "figures": figs, "tables": [], "items": {},
                  "captions": [f"{os.path.splitext(os.path.basename(f))[0]} (no caption)"
                               for f in figs]})
  return extra


def _nested_runs(root: str) -> list[dict[str, Any]]:
  """The training runs in sub-folders of an experiment workdir (not inside each other)."""
  _, workdir_lib = _runs()
  found = []
  for here, dirs, files in os.walk(root):
    depth = os.path.relpath(here, root).count(os.sep) + 1
    dirs[:] = sorted(d for d in dirs if d not in _NOT_RUNS and not d.startswith("."))
    if here != root and workdir_lib.CONFIG_FILE in files:
      dirs[:] = []
      wd = workdir_lib.Workdir(here)
      try:
        with open(wd.file(workdir_lib.CONFIG_FILE), encoding="utf-8") as f:
          raw = json.load(f)
      except (OSError, json.JSONDecodeError):
        raw = {}
      summary = _read_json(wd.file(workdir_lib.SUMMARY_FILE))
      found.append({"name": os.path.relpath(here, root), "config": raw, "summary": summary})
    elif depth >= _NESTED_DEPTH:
      dirs[:] = []
  return found


def _read_json(path: str) -> Any:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return None


def _last_step(wd) -> int | None:
  try:
    steps = [row["step"] for row in wd.metrics() if "step" in row]
  except (OSError, ValueError):
    return None
  return max(steps) if steps else None


def collect(workdirs: Sequence[str]) -> list[RunPage]:
  """What the page shows of each workdir, in the order given.

  Raises:
    ValueError: a folder that is not a zf_jax workdir, one given twice, or a
      config.json that is not a run configuration (one line each).
  """
  paths = check_workdirs(workdirs)
  _, workdir_lib = _runs()
  runs = []
  for given, path, slug in zip(workdirs, paths, _slugs(paths)):
    wd = workdir_lib.Workdir(path)
    cfg, facts, raw = None, {}, None
    if os.path.exists(wd.file(workdir_lib.CONFIG_FILE)):
      cfg, facts = wd.read_config()
      raw = _read_json(wd.file(workdir_lib.CONFIG_FILE))
    recorded = page.sections(path)
    missing = []
    for s in recorded:  # Figures named by a section but gone from the disk are not linked.
      keep = [(f, c) for f, c in zip(s["figures"], s.get("captions") or s["figures"])
              if os.path.isfile(os.path.join(path, f))]
      missing += [f for f in s["figures"] if not os.path.isfile(os.path.join(path, f))]
      s["figures"], s["captions"] = [f for f, _ in keep], [c for _, c in keep]
    shown = sorted(recorded + _unshown(path, recorded), key=page.page_rank)
    runs.append(RunPage(
        path=path, name=given, slug=slug, config=cfg, raw_config=raw, facts=facts,
        summary=wd.summary() if cfg is not None else None,
        last_step=_last_step(wd) if cfg is not None else None, sections=shown,
        missing=missing, nested=_nested_runs(path) if cfg is None else []))
  return runs


# --- What the page says about a run -------------------------------------------------------


def _flat(obj: dict[str, Any]) -> dict[str, Any]:
  """A config dict with nested configs flattened to their flag names (train.x -> x)."""
  out = {}
  for k, v in obj.items():
    out.update(_flat(v) if isinstance(v, dict) else {k: v})
  return out


def _show(value: Any) -> str:
  """A config value as its flag would spell it (lists comma-separated)."""
  if isinstance(value, (list, tuple)):
    return ",".join(map(str, value)) or "(empty)"
  return "unset" if value is None else str(value)


def config_changes(cfg: RunConfig) -> list[tuple[str, str, str]]:
  """(option, this run's value, default) for every field of `cfg` that differs from the
  defaults (the paper's values), in field order.

  An option is spelled as its flag (`--learning_rate`); a field the trainer derives
  (e.g. `total_steps` from the epochs) by its name, with "(derived)".
  """
  config_lib, _ = _runs()
  ours = _flat(config_lib.to_json(cfg))
  defaults = _flat(config_lib.to_json(config_lib.RunConfig()))
  flag_names = set(config_lib.flag_names())
  return [(f"--{k}" if k in flag_names else f"{k} (derived)", _show(v),
           _show(defaults.get(k))) for k, v in ours.items()
          if json.dumps(v) != json.dumps(defaults.get(k))]


def accuracy_items(summary: dict[str, Any] | None) -> dict[str, str]:
  """The final accuracy of each evaluated crop scheme of summary.json ({} if none)."""
  items = {}
  for crops, r in ((summary or {}).get("eval") or {}).items():
    if "top1_error" not in r:
      continue
    top5 = f", top-5 {100 * (1 - r['top5_error']):.2f}%" if "top5_error" in r else ""
    count = f", {r['count']} images" if "count" in r else ""
    items[f"final accuracy ({tables.CROP_NAMES.get(crops, crops)}{count})"] = (
        f"top-1 {100 * (1 - r['top1_error']):.2f}%{top5}")
  return items


def _left_table(header: Sequence[str], rows: Sequence[Sequence[Any]],
                raw: bool = False) -> str:
  """A table of text, every column left-aligned (cells escaped unless `raw`: HTML already)."""
  cell = (lambda c: str(c)) if raw else (lambda c: html.escape(str(c)))  # noqa: E731
  return ("<div class='wide'><table class='left'><tr>"
          + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
          + "".join("<tr>" + "".join(f"<td class='l'>{cell(c)}</td>" for c in r) + "</tr>"
                    for r in rows) + "</table></div>")


def _short(title: str, limit: int = 100) -> str:
  """A title for the contents: its part before ": " and its closing "(...)", if any."""
  head = re.split(r": ", title, maxsplit=1)[0]
  tail = re.search(r" \([^()]*\)$", title)
  if head != title and tail and not head.endswith(tail.group(0)):
    head += tail.group(0)
  return head if len(head) <= limit else head[:limit - 1].rstrip() + "…"


def _imported(run: RunPage) -> str | None:
  """The source of an imported run's weights (experiments.import_weights), else None."""
  return ((run.raw_config or {}).get("imported") or {}).get("source")


def _kind(run: RunPage) -> str:
  if _imported(run):
    return f"imported weights ({_imported(run)})"
  if run.config is not None:
    return "training run"
  return f"experiment folder, {len(run.nested)} training runs inside" if run.nested else (
      "experiment folder")


def _status(run: RunPage) -> str:
  """Finished (its accuracy), or how far it got."""
  if run.config is None:
    return "–"
  acc = accuracy_items(run.summary)
  if acc:
    return next(iter(acc.values()))
  if run.summary is not None:
    return f"finished at step {run.summary.get('step')}, no final evaluation"
  if _imported(run):
    return "not evaluated here (python -m experiments.evaluate)"
  return (f"no summary.json yet (last logged step {run.last_step})" if run.last_step is not None
          else "no summary.json yet")


def _run_html(run: RunPage) -> list[str]:
  """The run's heading, configuration, accuracy and sections."""
  link = lambda rel: f"{FILES_DIR}/{run.slug}/{rel.replace(os.sep, '/')}"  # noqa: E731
  parts = [f"<h2 id='{run.slug}'>{html.escape(run.name)}</h2>",
           f"<p class='files'>{html.escape(run.path)} ({html.escape(_kind(run))})</p>"]
  items: dict[str, Any] = {}
  if run.config is not None:
    cfg = run.config
    items["arch / dataset"] = f"{cfg.arch} / {cfg.dataset}"
    items.update({k.replace("_", " "): v for k, v in run.facts.items()})
    items.update(accuracy_items(run.summary))
    if run.summary is not None and "train_seconds" in run.summary:
      items["training time"] = f"{run.summary['train_seconds'] / 60:.1f} min"
    if not accuracy_items(run.summary):
      items["status"] = _status(run)
  parts.append(page.items_table(items) if items else "")
  if run.config is not None:
    changes = config_changes(run.config)
    parts.append("<h4>Configuration: options that differ from the defaults (Section 3's "
                 "recipe)</h4>")
    parts.append(_left_table(["option", "this run", "default"], changes) if changes
                 else "<p>Every option has its default.</p>")
    parts.append("<details><summary>Full config.json</summary><pre>"
                 + html.escape(json.dumps(run.raw_config, indent=2)) + "</pre></details>")
  if run.nested:
    rows = []
    for n in run.nested:
      c, acc = n["config"], accuracy_items(n["summary"])
      rows.append([n["name"], c.get("arch", "?"), c.get("dataset", "?"),
                   (n["summary"] or {}).get("step", "–"),
                   next(iter(acc.values())) if acc else ("finished" if n["summary"]
                                                         else "not finished")])
    parts.append(f"<details><summary>{len(rows)} training runs inside this folder (each a "
                 "workdir of its own)</summary>" + _left_table(
                     ["run", "arch", "dataset", "steps", "final accuracy"], rows)
                 + "</details>")
  if run.missing:
    parts.append("<p>Figures its sections name but the workdir lacks: "
                 + html.escape(", ".join(run.missing)) + "</p>")
  if not run.sections:
    parts.append("<p>No report yet: the figure and table binaries (e.g. python -m "
                 f"experiments.fig2_top9 --workdir={html.escape(run.path)}) or training with "
                 "--visualize write its sections.</p>")
  for s in run.sections:
    parts += page.render_section(run.path, s, href=link, anchor=f"{run.slug}-{s['key']}",
                                 level=3)
  return parts


def render(runs: Sequence[RunPage], title: str = "zf_jax report") -> str:
  """The whole page for `runs`."""
  body = [page.INTRO, "<h2 id='contents'>Contents</h2><ul>"]
  for run in runs:
    body.append(f"<li><a href='#{run.slug}'>{html.escape(run.name)}</a><ul>" + "".join(
        f"<li><a href='#{run.slug}-{html.escape(s['key'])}'>{html.escape(_short(s['title']))}"
        "</a></li>" for s in run.sections) + "</ul></li>")
  body.append("<li><a href='#versions'>Library versions</a></li></ul>")
  body.append(_left_table(
      ["workdir", "kind", "arch / dataset", "final accuracy", "sections"],
      [[f"<a href='#{r.slug}'>{html.escape(r.name)}</a>", html.escape(_kind(r)),
        html.escape(f"{r.config.arch} / {r.config.dataset}") if r.config else "–",
        html.escape(_status(r)), len(r.sections)] for r in runs], raw=True))
  for run in runs:
    body += _run_html(run)
  body.append("<h2 id='versions'>Library versions</h2><p>Of the environment that wrote this "
              "page (the runs do not record theirs).</p>" + page.items_table(versions()))
  return page.document(title, body)


def _copy_files(runs: Sequence[RunPage], out: str) -> str:
  """Copies every figure and table the page links into a fresh `<out>/.report_files.tmp`."""
  tmp = os.path.join(out, f".{FILES_DIR}.tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  for run in runs:
    rels = [f for s in run.sections for f in s["figures"]]
    rels += [os.path.join(TABLES_DIR, t + ext) for s in run.sections for t in s["tables"]
             for ext in (".md", ".json")]
    for rel in rels:
      src = os.path.join(run.path, rel)
      if os.path.isfile(src):
        dst = os.path.join(tmp, run.slug, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(src, dst)
  os.makedirs(tmp, exist_ok=True)
  return tmp


def write(workdirs: Sequence[str], out: str | os.PathLike) -> str:
  """Writes `<out>/report.html` and `<out>/report_files/` for `workdirs`; returns the page.

  Rerunning replaces both (nothing else under `out` is touched).

  Raises:
    ValueError: a bad workdir (see `collect`), or `out` that is one of them or a file.
  """
  out = os.path.abspath(os.path.expanduser(os.fspath(out)))
  if os.path.exists(out) and not os.path.isdir(out):
    raise ValueError(f"--out={out} is a file; give a folder for report.html")
  for given, path in zip(workdirs, check_workdirs(workdirs)):
    if os.path.realpath(path) == os.path.realpath(out):
      raise ValueError(f"--out={out} is the workdir {given} itself (its own report.html "
                       "would be replaced); give another folder")
  runs = collect(workdirs)
  os.makedirs(out, exist_ok=True)
  text = render(runs)
  tmp = _copy_files(runs, out)
  final = os.path.join(out, FILES_DIR)
  shutil.rmtree(final, ignore_errors=True)
  os.replace(tmp, final)
  return atomic_write(os.path.join(out, page.REPORT_FILE), text)
