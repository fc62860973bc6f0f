"""The embedded default end to end: README's first command, with few steps.

Runs `experiments.train_imagenet --flagfile=quickstart.flags`
exactly as the README does, overriding only the length of training and of
the final evaluation (centre crop only) and the data_dir (a fresh one), then
checks every promised output exists and the report references it; a second
run on the same workdir must not train again.
"""

import json
import os
import re

import pytest

from conftest import REPO, run_module

STEPS = 12


def readme_commands():
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    text = f.read()
  block = re.match(r"```bash\n(.*?)\n```", text, re.S)
  assert block, "README.md must begin with a bash block of the two commands"
  return block.group(1).splitlines()


def test_readme_begins_with_the_two_commands_and_ci_runs_the_second():
  commands = readme_commands()
  assert len(commands) == 2
  train, tests = commands
  assert "experiments.train_imagenet --flagfile=quickstart.flags" in train
  assert tests.endswith("-m pytest -q")
  with open(os.path.join(REPO, ".ci", "run"), encoding="utf-8") as f:
    ci = f.read()
  runner = tests.split("&&")[-1].strip()
  assert runner in ci and "./scripts/setup.sh" in ci


@pytest.fixture(scope="module", name="quickstart")
def _quickstart(fashion_data_dir, tmp_path_factory):
  """(workdir, first run, second run) of the quickstart binary with STEPS steps."""
  workdir = str(tmp_path_factory.mktemp("quickstart") / "run")
  train = readme_commands()[0].split("&&")[-1].split()
  assert train[:3] == [".venv/bin/python", "-m", "experiments.train_imagenet"]
  args = [a for a in train[3:] if not a.startswith("--workdir=")] + [
      f"--workdir={workdir}", f"--data_dir={fashion_data_dir}", f"--num_steps={STEPS}",
      "--mean_max_examples=10000", "--final_eval_crops=center",
      "--warmup_epochs=0.01"]  # The recipe's 0.2 epochs of warm-up would outlast STEPS.
  runs = [run_module("experiments.train_imagenet", *args, timeout=900) for _ in range(2)]
  return workdir, runs[0], runs[1]


PROMISED = ["report.html", "summary.json", "metrics.jsonl", "config.json",
            "figures/training.png", "figures/fig6_filters.png", "figures/fig7_occlusion.png",
            "figures/fig4_evolution.png", "tables/fig2_top9.md", "tables/fig2_top9.json",
            "tables/fig7_occlusion.md", "tables/fig6_filter_rms.md"] + [
                f"figures/fig2_layer{l}.png" for l in range(1, 6)]


def test_quickstart_trains_evaluates_and_writes_the_report(quickstart):
  workdir, first, _ = quickstart
  assert first.returncode == 0, first.stderr[-3000:]
  for name in PROMISED:
    path = os.path.join(workdir, name)
    assert os.path.isfile(path) and os.path.getsize(path) > 0, name
  with open(os.path.join(workdir, "report.html"), encoding="utf-8") as f:
    html = f.read()
  for name in PROMISED:
    if name.startswith("figures/"):
      assert f"src='{name}'" in html, name
  for table in ("fig2_top9", "fig7_occlusion", "fig6_filter_rms"):
    assert f"href='tables/{table}.md'" in html, table
  with open(os.path.join(workdir, "summary.json"), encoding="utf-8") as f:
    summary = json.load(f)
  assert summary["step"] == STEPS and set(summary["eval"]) == {"center"}
  assert summary["eval"]["center"]["count"] == 10_000
  # The accuracy is in the report and in the final line, with the report's path.
  accuracy = f"{100 * (1 - summary['eval']['center']['top1_error']):.2f}%"
  assert accuracy in html
  out = first.stdout.strip().splitlines()
  assert out[-1] == f"report: {workdir}/report.html"
  assert f"accuracy {accuracy} (centre crop)" in out[-2] and f"{STEPS}/{STEPS} steps" in out[-2]
  assert re.search(r"\| \d+ img/s \| ETA", first.stdout), "progress lines with img/s and ETA"
  # Evaluation and report show progress too.
  assert re.search(r"final evaluation, centre crop: 10000 images in \dm\d\ds \| \d+ img/s",
                   first.stdout), first.stdout[-3000:]
  for line in ("report 1/5: training curves", "report 3/5: Fig. 2", "report 5/5: Fig. 4",
               "report written in"):
    assert line in first.stdout, line


def test_a_second_run_reports_completion_instead_of_training_again(quickstart):
  workdir, first, second = quickstart
  assert second.returncode == 0, second.stderr[-3000:]
  assert "training is already complete" in second.stdout
  assert "img/s" not in second.stdout and "writing the visualisations" not in second.stdout
  assert second.stdout.strip().splitlines()[-1] == f"report: {workdir}/report.html"
  assert first.stdout.strip().splitlines()[-2].split(";")[:2] == \
      second.stdout.strip().splitlines()[-2].split(";")[:2]
