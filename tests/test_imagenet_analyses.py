"""The Section 4 analyses on `imagenet2012` (tfds mock data): names, splits, 1000 classes.

The real dataset cannot be had in CI; tfds' mock data serves random images
under imagenet2012's own builder, features and split names ("validation"),
which is what the analyses depend on.
"""

import functools
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from zf_jax.analyses import invariance, source
from zf_jax.report import page, run_report
from zf_jax.runs import checkpoint, trainer
from zf_jax.train import TrainConfig
from zf_jax.runs.config import RunConfig


@pytest.fixture(name="mock_imagenet_run")
def _mock_imagenet_run(tmp_path, monkeypatch):
  """A zfnet_tiny run on mock imagenet2012 (16 images per split); the mock stays on."""
  # mock_data patches the file system orbax's background saver uses: save synchronously.
  monkeypatch.setattr(checkpoint, "Checkpointer",
                      functools.partial(checkpoint.Checkpointer, async_save=False))
  workdir = str(tmp_path / "run")
  cfg = RunConfig(
      arch="zfnet_tiny", dataset="imagenet2012", data_dir=str(tmp_path / "tfds"),
      resize_size=36, num_steps=2, train=TrainConfig(batch_size=8, init_scheme="he"),
      final_eval_crops=("center",), eval_every_epochs=0, shuffle_buffer=16,
      mean_max_examples=8)
  with tfds.testing.mock_data(num_examples=16):
    assert trainer.train_and_evaluate(cfg, workdir)["status"] == "complete"
    yield workdir


def test_report_figures_and_invariance_run_on_imagenet2012(mock_imagenet_run):
  workdir = mock_imagenet_run
  path = run_report.quick_report(workdir, maps_per_layer=2, occlusion_images=2, batch_size=8)
  src = source.open_source(workdir, batch_size=8)
  assert (src.icfg.dataset, src.split, src.arch.num_classes) == ("imagenet2012", "validation",
                                                                 1000)
  assert not src.grayscale and src.class_name(0) == src.class_names[0] != "0"
  with open(path, encoding="utf-8") as f:
    html = f.read()
  for name in ["training.png", "fig6_filters.png", "fig7_occlusion.png", "fig4_evolution.png"] + [
      f"fig2_layer{l}.png" for l in range(1, 6)]:
    assert os.path.exists(page.figure_path(workdir, name)) and f"figures/{name}" in html
  data = source.load_examples(src, [3, 1], resize=True)
  assert data["image"].shape == (2, 36, 36, 3) and list(data["index"]) == [3, 1]
  curves = invariance.invariance_curves(src.params, src.arch, data["image"], data["label"],
                                        kind="rotate", amounts=np.array([0.0, 90.0]))
  assert curves["prob"].shape == (2, 2) and np.all(curves["distance"][1][:, 0] == 0)
