"""The Section 4 figure binaries end to end on a model trained on Fashion-MNIST.

Each runs as its users run it (`python -m experiments.<name>`) on a copy of
the session's trained run, and must write its PNGs, tables and report
section; bad requests end with one stderr line and status 2.
"""

import json
import os
import re
import shutil

import pytest

from conftest import run_module

from zf_jax.analyses import filters
from zf_jax.runs import workdir as workdir_lib


def run_binary(name, *args, timeout=600):
  return run_module(f"experiments.{name}", *args, timeout=timeout)


def one_line_error(proc, pattern):
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr[-2000:]
  assert re.search(pattern, lines[0]), lines[0]


@pytest.fixture(scope="module", name="workdir")
def _workdir(fashion_run, tmp_path_factory):
  """A copy of the trained run that these binaries may write into."""
  copy = str(tmp_path_factory.mktemp("figures") / "run")
  shutil.copytree(fashion_run[0], copy)
  return copy


def report_links(workdir):
  with open(os.path.join(workdir, "report.html"), encoding="utf-8") as f:
    return f.read()


def test_fig2_writes_one_figure_per_layer_and_the_top9_table(workdir):
  proc = run_binary("fig2_top9", f"--workdir={workdir}", "--layers=1,5", "--maps_per_layer=3",
                    "--max_examples=500")
  assert proc.returncode == 0, proc.stderr[-3000:]
  for layer in (1, 5):
    assert os.path.getsize(os.path.join(workdir, "figures", f"fig2_layer{layer}.png")) > 1000
  with open(os.path.join(workdir, "tables", "fig2_top9.json"), encoding="utf-8") as f:
    table = json.load(f)
  assert sorted(table["layers"]) == ["1", "5"]
  entry = table["layers"]["5"]
  assert len(entry["maps"]) == 3 and all(len(v) == 9 for v in entry["value"])
  assert all(0 <= i < 500 for row in entry["index"] for i in row)
  assert all(v == sorted(v, reverse=True) for v in entry["value"])
  html = report_links(workdir)
  assert "figures/fig2_layer1.png" in html and "figures/fig2_layer5.png" in html


def test_fig7_writes_occlusion_rows_for_chosen_images(workdir):
  proc = run_binary("fig7_occlusion", f"--workdir={workdir}", "--indices=3,8", "--patch=12",
                    "--stride=4", "--fill=black")
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, "tables", "fig7_occlusion.json"), encoding="utf-8") as f:
    table = json.load(f)
  assert [r["index"] for r in table["images"]] == [3, 8] and table["fill"] == "black"
  n = (32 - 12) // 4 + 1
  for r in table["images"]:
    assert len(r["prob"]) == n and all(len(row) == n for row in r["prob"])
  assert "figures/fig7_occlusion.png" in report_links(workdir)


def test_fig6_and_fig4_write_filters_layer2_and_evolution(workdir):
  proc = run_binary("fig6_filters", f"--workdir={workdir}", f"--compare={workdir}",
                    "--layer2_maps=2", "--max_examples=300")
  assert proc.returncode == 0, proc.stderr[-3000:]
  proc = run_binary("fig4_evolution", f"--workdir={workdir}", "--maps_per_layer=1",
                    "--max_examples=300", "--layers=1,3")
  assert proc.returncode == 0, proc.stderr[-3000:]
  html = report_links(workdir)
  for name in ("fig6_filters.png", "fig6_layer2.png", "fig4_evolution.png"):
    assert os.path.exists(os.path.join(workdir, "figures", name))
    assert f"figures/{name}" in html
  # The table's structure measure is that of the run's conv1 filters, for both panels.
  with open(os.path.join(workdir, "tables", "fig6_filter_rms.json"), encoding="utf-8") as f:
    table = json.load(f)
  run = workdir_lib.Workdir(workdir).open()
  expected = filters.median_neighbour_correlation(run.params["conv1"]["w"])
  assert len(table["runs"]) == 2
  for row in table["runs"]:
    assert row["median_neighbour_correlation"] == pytest.approx(expected, abs=1e-6)
  with open(os.path.join(workdir, "tables", "fig6_filter_rms.md"), encoding="utf-8") as f:
    assert f"| {expected:.2f} | {filters.verdict(expected)} |" in f.read()


@pytest.mark.parametrize("name,args,pattern", [
    ("fig2_top9", ["--layers=9"], r"layers must be conv layers of 'zfnet_tiny'.*got \[9\]"),
    ("fig2_top9", ["--split=nope"], r"fashion_mnist_debian has no split 'nope'; it has"),
    ("fig7_occlusion", ["--patch=40"], r"--patch=40 is larger than the model's 32 px input"),
    ("fig7_occlusion", ["--indices=99999"], r"example index 99999 is not in"),
    ("fig4_evolution", ["--steps=7"], r"no checkpoint for step\(s\) \[7\].*available: 600"),
    ("fig2_top9", ["--maps_per_layer=-1"], r"maps_per_layer"),
])
def test_bad_requests_are_one_stderr_line(workdir, name, args, pattern):
  one_line_error(run_binary(name, f"--workdir={workdir}", *args), pattern)


def test_a_missing_run_is_one_stderr_line(tmp_path):
  one_line_error(run_binary("fig2_top9", f"--workdir={tmp_path}/none"),
                 r"run workdir .*/none does not exist")
