"""Specifications of zf_jax.runs.evaluation, zf_jax.report.tables and experiments/evaluate.py
(Table 2).

Ensembles and tables are checked on hand-made probabilities; the binary is
run end to end on two tiny runs trained on tfds' mock data.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import REPO, child_env
from zf_jax.report import tables
from zf_jax.runs import checkpoint, evaluation, trainer
from zf_jax.train import TrainConfig
from zf_jax.runs.config import RunConfig

_MOCK_EXAMPLES = 12


def _numpy_errors(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """Table 2's error rates computed directly, the reference for the library."""
  top5 = np.argsort(-probs, axis=-1)[:, :5]
  return {"top1_error": float(np.mean(np.argmax(probs, -1) != labels)),
          "top5_error": float(np.mean(~np.any(top5 == labels[:, None], axis=-1))),
          "loss": float(np.mean(-np.log(probs[np.arange(len(labels)), labels])))}


def test_ensemble_errors_are_those_of_the_averaged_probabilities():
  rng = np.random.default_rng(0)
  n, classes = 200, 10
  labels = rng.integers(0, classes, n)
  members = [{"probs": rng.dirichlet(np.ones(classes), n).astype(np.float32),
              "labels": labels} for _ in range(3)]
  got = evaluation.ensemble(iter(members))  # A generator: only a running sum is kept.
  want = _numpy_errors(np.mean([m["probs"] for m in members], axis=0), labels)
  assert got["size"] == 3 and got["count"] == n
  assert got["top1_error"] == pytest.approx(want["top1_error"], abs=1e-12)
  assert got["top5_error"] == pytest.approx(want["top5_error"], abs=1e-12)
  assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
  # Errors this far from 0 and 1 mean the comparison above was not vacuous.
  assert 0.1 < want["top1_error"] < 0.95 and 0.0 < want["top5_error"] < want["top1_error"]


def test_ensemble_averages_probabilities_rather_than_votes():
  # Each member is wrong once and unsure; its partner is confident and right there.
  labels = np.array([1, 0])
  a = np.array([[0.6, 0.4], [0.9, 0.1]], np.float32)
  b = np.array([[0.1, 0.9], [0.4, 0.6]], np.float32)
  assert evaluation.errors_from_probs(a, labels)["top1_error"] == 0.5
  assert evaluation.errors_from_probs(b, labels)["top1_error"] == 0.5
  both = evaluation.ensemble([{"probs": a, "labels": labels}, {"probs": b, "labels": labels}])
  assert both["top1_error"] == 0.0
  assert both["top5_error"] == 0.0  # Fewer than 5 classes: top-5 is top-1.
  one = evaluation.ensemble([{"probs": a, "labels": labels}])
  assert one == {**evaluation.errors_from_probs(a, labels), "size": 1}


def test_ensemble_of_different_examples_is_a_one_line_error():
  p = np.full((4, 3), 1 / 3, np.float32)
  with pytest.raises(ValueError, match="differ") as e:
    evaluation.ensemble([{"probs": p, "labels": np.array([0, 1, 2, 0])},
                         {"probs": p, "labels": np.array([0, 1, 2, 1])}])
  assert "\n" not in str(e.value)
  with pytest.raises(ValueError, match="examples differ"):
    evaluation.ensemble([{"probs": p, "labels": np.zeros(4, int)},
                         {"probs": p[:3], "labels": np.zeros(3, int)}])
  with pytest.raises(ValueError, match="at least one"):
    evaluation.ensemble([])


def _results(dataset: str, runs: int = 2) -> dict:
  """What evaluate_runs returns, with round numbers: run i has 10*(i+1)% top-1 error."""
  def ev(i):
    return {c: {"count": 40, "loss": 1.5 + i, "top1_error": 0.1 * (i + 1) + (0.05 if c == "ten"
                                                                         else 0.0),
                "top5_error": 0.02 * (i + 1)} for c in ("center", "ten")}
  return {"dataset": dataset, "split": "validation", "crops": ["center", "ten"],
          "runs": [{"workdir": f"/runs/zfnet_{i}", "arch": "zfnet", "step": 100 + i,
                    "eval": ev(i)} for i in range(runs)],
          "ensemble": {"size": runs, "eval": ev(7)}}


def test_table2_shows_every_paper_row_verbatim_beside_ours_in_percent(tmp_path):
  markdown, obj = evaluation.table2(_results("imagenet2012"), labels=["(a) 1", "(a) 2"])
  for model, top1, top5, test in evaluation.PAPER_TABLE2:
    assert f"| {model} | {top1} | {top5} | {test} |" in markdown
  for number in ("26.2", "40.7", "18.2", "38.1", "16.4", "39.0", "16.6", "36.7", "15.4", "15.3",
                 "40.5", "18.1", "38.4", "16.5", "37.5", "16.0", "16.1", "36.0", "14.7", "14.8"):
    assert number in markdown
  # Ours in %: run 0 is 10.0 / 2.0 (centre) and 15.0 / 2.0 (10 crops); the ensemble 80.0 / 16.0.
  assert "| (a) 1 | 100 | 10.0 | 2.0 | 15.0 | 2.0 |" in markdown
  assert "| (a) 2 | 101 | 20.0 | 4.0 | 25.0 | 4.0 |" in markdown
  assert "| 2 convnets ensemble | – | 80.0 | 16.0 | 85.0 | 16.0 |" in markdown
  assert "centre crop" in markdown and "10 crops" in markdown
  assert "does not say which test-time crops" in markdown
  assert "NOT ImageNet" not in markdown

  md_path, json_path = tables.write_table(tmp_path / "run", "table2", markdown, obj)
  assert pathlib.Path(md_path).read_text(encoding="utf-8") == markdown
  back = json.loads(pathlib.Path(json_path).read_text(encoding="utf-8"))
  assert back == json.loads(json.dumps(obj))
  assert (back["dataset"], back["split"], back["crops"]) == ("imagenet2012", "validation",
                                                             ["center", "ten"])
  assert [r["model"] for r in back["paper"]] == [r[0] for r in evaluation.PAPER_TABLE2]
  gunji, alex = back["paper"][0], back["paper"][1]
  assert (gunji["val_top1"], gunji["test_top5"], alex["val_top1"], alex["test_top5"]) == (
      None, 26.2, 40.7, None)
  assert [r["trained_on_imagenet_2011_and_2012"] for r in back["paper"]].count(True) == 2
  assert [r["model"] for r in back["ours"]] == ["(a) 1", "(a) 2", "2 convnets ensemble"]
  assert back["ours"][1]["errors"]["ten"]["top1"] == pytest.approx(25.0)
  assert back["ours"][2]["members"] == ["(a) 1", "(a) 2"]


def test_table2_labels_other_datasets_as_not_imagenet_and_names_runs_by_arch():
  markdown, obj = evaluation.table2(_results("fashion_mnist_debian", runs=1))
  assert "NOT ImageNet" in markdown and "fashion_mnist_debian" in markdown
  assert obj["imagenet"] is False and "NOT ImageNet" in obj["notes"][0]
  assert [r["model"] for r in obj["ours"]] == ["zfnet"]  # One run: no ensemble row.
  _, obj = evaluation.table2(_results("imagenet2012", runs=2))
  assert [r["model"] for r in obj["ours"]][:2] == ["zfnet (zfnet_0)", "zfnet (zfnet_1)"]
  with pytest.raises(ValueError, match="3 labels for 2 runs"):
    evaluation.table2(_results("imagenet2012"), labels=["a", "b", "c"])


def test_write_table_replaces_atomically_and_rejects_paths(tmp_path):
  tables.write_table(tmp_path, "t", "old", {"v": 1})
  md_path, json_path = tables.write_table(tmp_path, "t", "| new |", {"v": [2, None]})
  assert sorted(os.listdir(tmp_path / "tables")) == ["t.json", "t.md"]  # No temp file left.
  assert pathlib.Path(md_path).read_text() == "| new |\n"
  assert json.loads(pathlib.Path(json_path).read_text()) == {"v": [2, None]}
  with pytest.raises(ValueError, match="plain file stem"):
    tables.write_table(tmp_path, "../escape", "x", {})
  with pytest.raises(ValueError, match="not JSON-serialisable"):
    tables.write_table(tmp_path, "bad", "x", {"v": object()})
  assert not (tmp_path / "tables" / "bad.md").exists()


# End to end: two tiny runs of 2 steps on mock data, then the binary.

@pytest.fixture(name="runs", scope="module")
def _runs(tmp_path_factory):
  """Two zfnet_tiny runs (seeds 0 and 1) on mock Fashion-MNIST: {"a", "b", "data"} dirs."""
  root = tmp_path_factory.mktemp("table2")
  with pytest.MonkeyPatch.context() as mp, tfds.testing.mock_data(num_examples=_MOCK_EXAMPLES):
    # mock_data swaps tfds' file system for a temporary one while a dataset
    # is opened; orbax's background commit thread would then write there.
    mp.setattr(checkpoint, "Checkpointer",
               functools.partial(checkpoint.Checkpointer, async_save=False))
    for name, seed in (("a", 0), ("b", 1)):
      cfg = RunConfig(
          arch="zfnet_tiny", dataset="fashion_mnist", data_dir=str(root / "data"), num_steps=2,
          seed=seed, train=TrainConfig(batch_size=4, init_scheme="he"), mean_max_examples=8,
          shuffle_buffer=16, final_eval_crops=("center",), eval_every_epochs=0)
      assert trainer.train_and_evaluate(cfg, str(root / name))["status"] == "complete"
  return {"a": root / "a", "b": root / "b", "root": root}


def _evaluate_binary(*args: str, mock: bool = False, wait: bool = True):
  """Runs experiments/evaluate.py in a fresh process (under mock data if `mock`)."""
  if mock:  # mock_data only patches the process it runs in: enter it there.
    code = textwrap.dedent(f"""
        import sys
        import tensorflow_datasets as tfds
        from experiments import cli, evaluate
        sys.argv = ["evaluate", *{list(args)!r}]
        with tfds.testing.mock_data(num_examples={_MOCK_EXAMPLES}):
          cli.run(evaluate.main)
        """)
    cmd = [sys.executable, "-c", code]
  else:
    cmd = [sys.executable, "-m", "experiments.evaluate", *args]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=child_env())
  return proc.communicate(timeout=300) + (proc.returncode,) if wait else proc


def test_binary_writes_table2_whose_single_runs_match_their_training_summaries(runs):
  out = runs["root"] / "table2_out"
  stdout, stderr, rc = _evaluate_binary(
      f"--workdirs={runs['a']},{runs['b']}", "--crops=center,ten", "--labels=seed0,seed1",
      f"--out={out}", mock=True)
  assert rc == 0, stderr
  md_path, json_path = out / "tables" / "table2.md", out / "tables" / "table2.json"
  assert f"Table 2 written to {md_path} and {json_path}" in stdout
  table = json.loads(json_path.read_text(encoding="utf-8"))
  markdown = md_path.read_text(encoding="utf-8")
  assert table["dataset"] == "fashion_mnist" and "NOT ImageNet" in markdown
  assert table["crops"] == ["center", "ten"] and table["split"] in ("validation", "test")
  rows = {r["model"]: r for r in table["ours"]}
  assert list(rows) == ["seed0", "seed1", "2 convnets ensemble"]
  for label, name in (("seed0", "a"), ("seed1", "b")):
    with open(runs[name] / "summary.json", encoding="utf-8") as f:
      own = json.load(f)["eval"]["center"]
    got = rows[label]["errors"]["center"]
    assert got["count"] == own["count"] == _MOCK_EXAMPLES
    assert got["top1"] == pytest.approx(100 * own["top1_error"], abs=1e-9)
    assert got["top5"] == pytest.approx(100 * own["top5_error"], abs=1e-9)
    assert got["loss"] == pytest.approx(own["loss"], rel=1e-6)
    assert rows[label]["step"] == 2 and rows[label]["workdir"] == str(runs[name])
    assert f"| {label} | 2 | {100 * own['top1_error']:.1f} | {100 * own['top5_error']:.1f} |" \
        in markdown
  assert rows["2 convnets ensemble"]["errors"]["ten"]["count"] == _MOCK_EXAMPLES
  # The two runs differ (seeds), so the ensemble's loss is not one of theirs.
  losses = [rows[k]["errors"]["center"]["loss"] for k in rows]
  assert len(set(losses)) == 3


def test_binary_errors_are_one_line(runs, tmp_path):
  other = tmp_path / "other_dataset"
  shutil.copytree(runs["b"], other)
  config = json.loads((other / "config.json").read_text())
  (other / "config.json").write_text(json.dumps({**config, "dataset": "imagenet2012"}))
  cases = {  # args: what the one line must say
      (f"--workdirs={tmp_path}",): "has no config.json",
      (f"--workdirs={runs['a']}", "--step=7"): "no checkpoint for step 7; available steps: 2",
      (f"--workdirs={runs['a']},{other}",): "different datasets",
  }
  # Each case fails before reading any data, so no mock is needed; run them side by side.
  procs = {args: _evaluate_binary(*args, wait=False) for args in cases}
  for args, proc in procs.items():
    _, stderr = proc.communicate(timeout=300)
    lines = stderr.strip().splitlines()
    assert proc.returncode == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert cases[args] in lines[0]
