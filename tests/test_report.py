"""One report for many workdirs (zf_jax.report.multi, python -m experiments.report).

The workdirs are built with the real writers (Workdir.write_config and
write_summary, tables.write_table, page.add_section with small matplotlib
PNGs), no training: two of them share the folder name "run", a table name
(table2) and a figure name (training.png), one is an experiment folder with
a table and a figure no section shows and a nested run, one has no report.
"""

from __future__ import annotations

import html.parser
import importlib.metadata
import os
import platform
import re
import shutil

import pytest
from conftest import run_module

from zf_jax.report import figures, multi, page, provenance, tables
from zf_jax.runs.config import RunConfig
from zf_jax.runs.workdir import Workdir
from zf_jax.train import TrainConfig


def _png(workdir, name: str, color: str) -> str:
  """A small PNG under `<workdir>/figures/`, its bytes set by `color`."""
  fig = figures.new_figure(1.5, 1)
  fig.add_subplot().bar([0, 1], [1, 2], color=color)
  return figures.save(fig, page.figure_path(workdir, name))


def _table(workdir, name: str, title: str, marker: str) -> None:
  lines = tables.markdown_table(["row", "ours", "paper"], [[marker, "12.5", "38.4"]])
  tables.write_table(workdir, name, "\n".join([f"# {title}", "", *lines]), {"row": marker})


def _run(workdir, lr: float, steps: int) -> None:
  cfg = RunConfig(arch="zfnet_tiny", dataset="fashion_mnist_debian", num_steps=steps,
                  train=TrainConfig(learning_rate=lr))
  Workdir(workdir).write_config(cfg, num_classes=10, steps_per_epoch=100, total_steps=steps)


@pytest.fixture(name="workdirs", scope="module")
def _workdirs(tmp_path_factory):
  """[training run with a report, experiment folder, training run without a report]."""
  root = tmp_path_factory.mktemp("workdirs")
  one, two, three = str(root / "one" / "run"), str(root / "two" / "run"), str(root / "three")
  _run(one, lr=0.05, steps=600)
  Workdir(one).write_summary({"step": 600, "arch": "zfnet_tiny", "eval": {
      "center": {"count": 1000, "top1_error": 0.1234, "top5_error": 0.01}}})
  _table(one, "table2", "Table 2: ImageNet 2012 classification error rates", "ONE-T2")
  page.add_section(one, "training", "Training", figures=[_png(one, "training.png", "red")],
                   captions=["Loss against step"])
  page.add_section(one, "table2", "Table 2", tables=["table2"],
                   text="Section 5.1: ours beside the paper's.")
  # An experiment folder: sections and tables, no config.json, a nested training run.
  _table(two, "table2", "Table 2: another run's", "TWO-T2")
  _table(two, "table7", "Table 7: layers", "TWO-T7")
  _table(two, "dedup", "Duplicates found", "TWO-DEDUP")  # A table no section shows.
  page.add_section(two, "fig9_layer1", "Fig. 9 (layer 1)",
                   figures=[_png(two, "training.png", "blue")], captions=["Accuracy"])
  page.add_section(two, "table2", "Table 2 again", tables=["table2"])
  page.add_section(two, "table7", "Table 7", tables=["table7"], text="Classifiers per layer.")
  _png(two, "extra.png", "green")  # A figure no section shows.
  _run(os.path.join(two, "sub", "n1"), lr=0.02, steps=50)
  _run(three, lr=0.01, steps=70)  # Trained, never reported.
  return [one, two, three]


class _Links(html.parser.HTMLParser):
  """The img src and a href of a page."""

  def __init__(self):
    super().__init__()
    self.srcs, self.hrefs = [], []

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if tag == "img":
      self.srcs.append(attrs["src"])
    if tag == "a" and "href" in attrs:
      self.hrefs.append(attrs["href"])


def _links(path):
  parser = _Links()
  with open(path, encoding="utf-8") as f:
    parser.feed(f.read())
  return parser


def _read(path) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def _snapshot(folder) -> dict[str, bytes]:
  return {os.path.relpath(os.path.join(d, f), folder): _read(os.path.join(d, f))
          for d, _, files in os.walk(folder) for f in files}


@pytest.fixture(name="report", scope="module")
def _report(workdirs, tmp_path_factory):
  out = tmp_path_factory.mktemp("out")
  path = multi.write(workdirs, out)
  with open(path, encoding="utf-8") as f:
    return str(out), path, f.read()


def test_every_table_and_figure_of_every_workdir_is_on_the_page(workdirs, report):
  out, path, text = report
  links = _links(path)
  shown = [_read(os.path.join(out, s)) for s in links.srcs]
  linked = [_read(os.path.join(out, h)) for h in links.hrefs if not h.startswith("#")]
  count = 0
  for wd in workdirs:
    for name in os.listdir(os.path.join(wd, "figures")) if wd != workdirs[2] else []:
      assert _read(os.path.join(wd, "figures", name)) in shown, (wd, name)
      count += 1
    for name in os.listdir(os.path.join(wd, "tables")) if wd != workdirs[2] else []:
      assert _read(os.path.join(wd, "tables", name)) in linked, (wd, name)
  assert count == 3
  for marker in ("ONE-T2", "TWO-T2", "TWO-T7", "TWO-DEDUP"):  # The tables themselves, as HTML.
    assert re.search(rf"<td class='l'>{marker}</td><td>12.5</td><td>38.4</td>", text), marker
  # The unlisted ones get a title, not a file name: the table's own, a note for the figure.
  assert "<h3 id='two-run-dedup'>Duplicates found</h3>" in text
  assert "extra (no caption)" in text


def test_every_link_resolves_to_a_file_under_out_also_after_moving_it(report, tmp_path):
  out, path, _ = report
  moved = str(tmp_path / "elsewhere")
  shutil.copytree(out, moved)
  for folder in (out, moved):
    links = _links(os.path.join(folder, "report.html"))
    local = links.srcs + [h for h in links.hrefs if not h.startswith("#")]
    assert len(local) >= 10
    for link in local:
      assert not re.match(r"^[a-z]+:|^/", link), link  # Relative, no file:// or absolute path.
      target = os.path.realpath(os.path.join(folder, link))
      assert target.startswith(os.path.realpath(folder) + os.sep), link
      assert os.path.isfile(target), link
  anchors = set(re.findall(r" id='([^']+)'", _read(path).decode()))
  for link in _links(path).hrefs:
    if link.startswith("#"):
      assert link[1:] in anchors, link


def test_same_table_and_figure_names_in_two_runs_stay_apart(workdirs, report):
  out, path, text = report
  links = _links(path)
  table2 = [h for h in links.hrefs if h.endswith("/table2.md")]
  training = [s for s in links.srcs if s.endswith("/training.png")]
  assert len(set(table2)) == 2 and len(set(training)) == 2, (table2, training)
  assert ({_read(os.path.join(out, h)) for h in table2}
          == {_read(os.path.join(wd, "tables", "table2.md")) for wd in workdirs[:2]})
  assert ({_read(os.path.join(out, s)) for s in training}
          == {_read(os.path.join(wd, "figures", "training.png")) for wd in workdirs[:2]})
  # Both runs are called "run": their headings and anchors still differ.
  ids = re.findall(r"<h2 id='([^']+)'>", text)
  assert len(ids) == len(set(ids)) and {"one-run", "two-run", "three"} <= set(ids), ids


def test_configuration_accuracy_and_versions_are_shown(workdirs, report):
  _, _, text = report
  one, three = (re.search(rf"<h2 id='{i}'>.*?(?=<h2 |$)", text, re.S).group(0)
                for i in ("one-run", "three"))
  # The options that differ from the defaults (the paper's), the defaults beside them.
  assert ("<tr><td class='l'>--learning_rate</td><td class='l'>0.05</td>"
          "<td class='l'>0.01</td></tr>") in one
  assert "<td class='l'>--arch</td><td class='l'>zfnet_tiny</td>" in one
  assert "--momentum<" not in one  # Same as the default: only in the full config.
  assert "<details><summary>Full config.json</summary>" in one
  assert html.escape('"momentum": 0.9') in one
  assert "final accuracy (centre crop, 1000 images)</td><td>top-1 87.66%, top-5 99.00%" in one
  # A run with no report is listed with its configuration (its learning rate is the default).
  assert "--num_steps</td><td class='l'>70<" in three and "no summary.json yet" in three
  assert "No report yet" in three and "--learning_rate" not in three
  assert "sub/n1" in text  # The experiment folder's nested run.
  versions = text[text.index("<h2 id='versions'>"):]
  for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow-datasets",
               "numpy"):
    assert f"<td>{name}</td><td>{importlib.metadata.version(name)}</td>" in versions, name
  assert f"<td>python</td><td>{platform.python_version()}</td>" in versions
  if provenance.git_commit(os.path.dirname(multi.__file__)):
    assert re.search(r"<td>zf_jax git commit</td><td>[0-9a-f]{40}", versions)
  assert provenance.git_commit(str(workdirs[2])) is None  # Not a repository: skipped.


def test_sections_follow_the_paper_and_runs_the_command_line(report):
  _, _, text = report
  ids = re.findall(r"<h[23] id='([^']+)'>", text)
  assert [i for i in ids if not i.startswith(("contents", "versions"))] == [
      "one-run", "one-run-training", "one-run-table2",
      "two-run", "two-run-table2", "two-run-fig9_layer1", "two-run-table7", "two-run-dedup",
      "two-run-zz_other_figures", "three"]
  # A section whose text cites no section of the paper gets the citation.
  table7 = text[text.index("<h3 id='two-run-table7'>"):text.index("<h3 id='two-run-dedup'>")]
  assert "The paper: Section 5.3." in table7


def test_rerun_is_idempotent_and_replaces_what_it_wrote(workdirs, tmp_path):
  out = tmp_path / "out"
  multi.write(workdirs, out)
  first = _snapshot(out)
  multi.write(workdirs, out)
  assert _snapshot(out) == first
  multi.write(workdirs[:1], out)  # Fewer runs: the others' copies go.
  again = _snapshot(out)
  assert sorted(again) == ["report.html", "report_files/run/figures/training.png",
                           "report_files/run/tables/table2.json",
                           "report_files/run/tables/table2.md"]
  assert "TWO-T2" not in again["report.html"].decode()


def _fails_in_one_line(*args, expect: str):
  proc = run_module("experiments.report", *args, timeout=120)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode != 0 and len(lines) == 1, proc.stderr
  assert lines[0].startswith("error: ") and expect in lines[0], lines[0]
  assert "Traceback" not in proc.stdout + proc.stderr
  return lines[0]


def test_bad_requests_fail_in_one_line(workdirs, tmp_path):
  one, two, _ = workdirs
  empty = tmp_path / "empty"
  empty.mkdir()
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  out = f"--out={tmp_path / 'out'}"
  _fails_in_one_line(out, expect="--workdirs")
  _fails_in_one_line(f"--workdirs={one}", "--colour=red", out, expect="colour")
  missing = _fails_in_one_line(f"--workdirs={tmp_path / 'nope'}", out, expect="does not exist")
  assert str(tmp_path / "nope") in missing
  assert "config.json" in _fails_in_one_line(f"--workdirs={one},{empty}", out,
                                             expect=f"{empty} is not a zf_jax workdir")
  twice = _fails_in_one_line(f"--workdirs={one},{two},{one}/", out, expect="given twice")
  assert one in twice
  _fails_in_one_line(f"--workdirs={one},{two}", f"--out={two}", expect=f"--out={two} is the "
                     "workdir")
  _fails_in_one_line(f"--workdirs={one}", f"--out={a_file}", expect="is a file")
  assert not os.path.exists(tmp_path / "out")  # Nothing written for a bad request.
