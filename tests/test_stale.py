"""Nothing computed with one recipe is reused for another (zf_jax.runs, Section 5's caches).

* `config.differences`: the recipe fields only (not where files go, how often a
  run logs or saves), with the schedule in steps, so 4 epochs equal their steps;
  a longer run of a schedule that does not depend on its length is the same run;
* a training workdir asked for another recipe stops in one line naming the
  fields and leaves the run as it was; `overwrite` trains it from scratch,
  exactly as a fresh workdir would; a run that saved nothing is replaced; a
  longer run goes on, a shorter one is refused; other id files' images count;
* a finished run asked for another crop evaluates only the missing one;
* Table 3 never mixes recipes: a row trained with another one is left out and named;
* `Run.digest` (the features' cache key) changes with the parameters.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import numpy as np
import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
  sys.path.insert(0, TESTS_DIR)

import tiny_dataset  # noqa: E402  (registers zf_tiny_images)
from conftest import finalized_steps  # noqa: E402

from zf_jax.data import input_pipeline  # noqa: E402
from zf_jax.runs import config as config_lib  # noqa: E402
from zf_jax.runs import trainer  # noqa: E402
from zf_jax.runs import workdir as workdir_lib  # noqa: E402
from zf_jax.runs.config import RunConfig  # noqa: E402
from zf_jax.section5 import ablation  # noqa: E402
from zf_jax.train import TrainConfig  # noqa: E402

TINY = dict(arch="zfnet_tiny", dataset=tiny_dataset.NAME, resize_size=36, shuffle_buffer=16,
            mean_max_examples=16, final_eval_crops=("center",), eval_every_epochs=0,
            checkpoint_every=2, num_steps=4)


def tiny(data_dir, **overrides) -> RunConfig:
  train = overrides.pop("train", {})
  return RunConfig(**{**TINY, "data_dir": data_dir, **overrides},
                   train=TrainConfig(**{"batch_size": 8, "init_scheme": "he", **train}))


@pytest.fixture(scope="module", name="data_dir")
def _data_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  tiny_dataset.prepare(data_dir)
  return data_dir


def _files(folder) -> dict[str, bytes]:
  out = {}
  for root, _, names in os.walk(folder):
    for name in names:
      with open(os.path.join(root, name), "rb") as f:
        out[os.path.relpath(os.path.join(root, name), folder)] = f.read()
  return out


def test_differences_are_the_recipe_fields_with_the_schedule_in_steps():
  base = RunConfig(arch="zfnet_tiny", train=TrainConfig(total_steps=100))
  # Where files go, how often it logs or saves, how many devices: the same run.
  same = dataclasses.replace(base, data_dir="/elsewhere", log_every=7, checkpoint_every=9,
                             keep_checkpoints=1, cpu_devices=4, visualize=True,
                             final_eval_crops=("ten",), num_epochs=3.0, eval_batch_size=16)
  assert config_lib.differences(base, same) == []
  other = dataclasses.replace(base, seed=1, train=dataclasses.replace(
      base.train, learning_rate=0.02, total_steps=50))
  assert config_lib.differences(base, other) == [
      "seed 0 -> 1", "learning_rate 0.01 -> 0.02", "total_steps 100 -> 50"]
  assert config_lib.differences(base, other, ignore=("seed", "train.learning_rate")) == [
      "total_steps 100 -> 50"]
  longer = dataclasses.replace(base, train=dataclasses.replace(base.train, total_steps=200))
  assert config_lib.differences(base, longer, longer=True) == []  # Plateau: the same start.
  assert config_lib.differences(longer, base, longer=True) == ["total_steps 200 -> 100"]
  cosine = dataclasses.replace(base, train=dataclasses.replace(base.train, lr_schedule="cosine"))
  cosine_longer = dataclasses.replace(cosine, train=dataclasses.replace(cosine.train,
                                                                        total_steps=200))
  assert config_lib.differences(cosine, cosine_longer, longer=True) == [
      "total_steps 100 -> 200"]  # Its rate at every step depends on the length.
  assert "total_steps" not in config_lib.recipe_fields()  # Facts are not fields.
  assert "train.total_steps" in config_lib.recipe_fields()
  assert "log_every" not in config_lib.recipe_fields()


def test_another_recipe_is_refused_in_one_line_and_overwrite_trains_it_from_scratch(
    tmp_path, data_dir, capsys):
  workdir = str(tmp_path / "run")
  first = tiny(data_dir)
  assert trainer.train_and_evaluate(first, workdir)["status"] == "complete"
  before = _files(workdir)
  other = tiny(data_dir, train={"learning_rate": 0.05}, seed=3)
  with pytest.raises(workdir_lib.OtherRunError) as excinfo:
    trainer.train_and_evaluate(other, workdir)
  message = str(excinfo.value)
  assert "\n" not in message and "--overwrite" in message
  assert "seed 0 -> 3" in message and "learning_rate 0.01 -> 0.05" in message, message
  assert _files(workdir) == before  # Nothing written, the checkpoints and summary intact.

  # The same recipe with other operational fields resumes: it is complete.
  same = dataclasses.replace(first, log_every=3, keep_checkpoints=1)
  assert trainer.train_and_evaluate(same, workdir).get("already_complete")

  capsys.readouterr()
  replaced = trainer.train_and_evaluate(other, workdir, overwrite=True)
  assert "replaced the run in" in capsys.readouterr().out
  fresh = str(tmp_path / "fresh")
  straight = trainer.train_and_evaluate(other, fresh)
  assert replaced["eval"] == straight["eval"]  # From scratch: nothing of the first run kept.
  cfg, _ = workdir_lib.Workdir(workdir).read_config()
  assert cfg.seed == 3 and cfg.train.learning_rate == 0.05
  got, expected = workdir_lib.Workdir(workdir).open(), workdir_lib.Workdir(fresh).open()
  assert got.digest == expected.digest
  metrics = workdir_lib.Workdir(workdir).metrics()
  assert [m["step"] for m in metrics if m["split"] == "train"] == [
      m["step"] for m in workdir_lib.Workdir(fresh).metrics() if m["split"] == "train"]


def test_longer_goes_on_shorter_is_refused_and_a_run_that_saved_nothing_is_replaced(
    tmp_path, data_dir, capsys):
  workdir = str(tmp_path / "run")
  trainer.train_and_evaluate(tiny(data_dir), workdir)
  longer = trainer.train_and_evaluate(tiny(data_dir, num_steps=6), workdir)
  assert longer["status"] == "complete" and longer["step"] == 6
  assert finalized_steps(os.path.join(workdir, "checkpoints"))[-1] == 6
  with pytest.raises(workdir_lib.OtherRunError, match=r"total_steps 6 -> 4"):
    trainer.train_and_evaluate(tiny(data_dir), workdir)

  # A config.json but no checkpoint (killed before the first save): nothing to lose.
  empty = tmp_path / "started"
  workdir_lib.Workdir(str(empty)).write_config(tiny(data_dir, seed=5), num_classes=4)
  capsys.readouterr()
  assert trainer.train_and_evaluate(tiny(data_dir), str(empty))["status"] == "complete"
  assert "seed 5 -> 0" in capsys.readouterr().out


def test_other_images_in_the_same_id_file_are_another_recipe(tmp_path, data_dir):
  icfg = input_pipeline.InputConfig(dataset=tiny_dataset.NAME, data_dir=data_dir)
  ids = [i for b in input_pipeline.thumbnails(icfg, "train", size=2) for i in b["id"].tolist()]
  assert len(ids) == 64
  path = str(tmp_path / "ids.txt")
  input_pipeline.write_ids(path, ids[:32], "first half")
  workdir = str(tmp_path / "run")
  cfg = tiny(data_dir, include_ids=path)
  trainer.train_and_evaluate(cfg, workdir)
  input_pipeline.write_ids(path, ids[:32][::-1], "the same images, another order")
  assert trainer.train_and_evaluate(cfg, workdir).get("already_complete")
  input_pipeline.write_ids(path, ids[32:], "second half")
  with pytest.raises(workdir_lib.OtherRunError, match="the images listed by include_ids"):
    trainer.train_and_evaluate(cfg, workdir)


def test_a_finished_run_asked_for_another_crop_evaluates_only_that_one(tmp_path, data_dir,
                                                                      capsys):
  workdir = str(tmp_path / "run")
  centre = trainer.train_and_evaluate(tiny(data_dir), workdir)["eval"]["center"]
  capsys.readouterr()
  both = trainer.train_and_evaluate(tiny(data_dir, final_eval_crops=("center", "ten")), workdir)
  out = capsys.readouterr().out
  assert "ten-crop evaluation" in out and "center-crop evaluation on" in out
  assert both["eval"]["center"] == centre and both["eval"]["ten"]["count"] == 24
  assert set(workdir_lib.Workdir(workdir).summary()["eval"]) == {"center", "ten"}
  again = trainer.train_and_evaluate(tiny(data_dir, final_eval_crops=("ten",)), workdir)
  assert again.get("already_complete") and list(again["eval"]) == ["ten"]


def _row(root, cfg: RunConfig, val_top1: float) -> str:
  name = ablation.variant(cfg)
  os.makedirs(os.path.join(root, name))
  row = {"variant": name, "arch": cfg.arch, "dataset": cfg.dataset, "params": 1,
         "train_seconds": 1.0, "train_top1": 9.0, "config": config_lib.to_json(cfg),
         "center": {"val_top1": val_top1, "val_top5": 1.0, "count": 10}}
  with open(os.path.join(root, name, ablation.ROW_FILE), "w", encoding="utf-8") as f:
    json.dump(row, f)
  return name


def test_table3_leaves_out_and_names_a_row_of_another_recipe(tmp_path):
  recipe = RunConfig(arch="zfnet_small", dataset="fashion_mnist_debian",
                     train=TrainConfig(total_steps=600))
  root = str(tmp_path)
  rows = ablation.PAPER_TABLE3
  kept = _row(root, ablation.row_config(recipe, rows[0]), 20.0)
  shorter = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, total_steps=300))
  stale = _row(root, ablation.row_config(shorter, rows[1]), 30.0)
  table = ablation.table3(recipe, ablation.read_rows(root))
  ours = {r["variant"]: r["ours"] for r in table["rows"]}
  assert ours[kept]["center"]["val_top1"] == 20.0 and ours[stale] is None
  assert table["other_recipe"] == {stale: ["total_steps 300 -> 600"]}
  assert any(stale in n and "total_steps 300 -> 600" in n and "--overwrite" in n
             for n in table["notes"])
  assert ablation.recipe_differences({"variant": "x"}, recipe) == [
      "its recipe was not recorded"]


def test_the_run_digest_changes_with_the_parameters_and_only_with_them(tmp_path, data_dir):
  workdir = str(tmp_path / "run")
  trainer.train_and_evaluate(tiny(data_dir, keep_epochs=()), workdir)
  wd = workdir_lib.Workdir(workdir)
  latest, earlier = wd.open(), wd.open(step=2)
  assert latest.digest == wd.open().digest
  assert latest.digest != earlier.digest
  moved = dataclasses.replace(latest, params={**latest.params, "fc8": {
      **latest.params["fc8"], "b": latest.params["fc8"]["b"] + np.float32(1e-6)}})
  assert moved.digest != latest.digest
