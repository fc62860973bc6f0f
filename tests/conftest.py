"""Session fixtures shared by the analysis and quickstart tests.

`fashion_data_dir`: a fresh tfds data_dir with Debian's Fashion-MNIST prepared
(skips without the Debian files). `fashion_run`: a workdir holding a
`zfnet_tiny` trained on it for 600 steps (~1 min on 2 CPU cores), good
enough (74% test accuracy) for the Section 4 analyses to show real effects,
trained once per session.
"""

import os

import pytest
import tensorflow_datasets as tfds

from zf_jax.data import datasets
from zf_jax.runs import trainer
from zf_jax.train import TrainConfig

HAVE_DEBIAN_FILES = all(
    os.path.isfile(os.path.join(datasets.DEFAULT_DIR, name))
    for images, labels, _ in datasets.FILES.values() for name in (images, labels))

FASHION_RUN_STEPS = 600


@pytest.fixture(scope="session", name="fashion_data_dir")
def _fashion_data_dir(tmp_path_factory):
  """A fresh tfds data_dir with fashion_mnist_debian prepared from Debian's files."""
  if not HAVE_DEBIAN_FILES:
    pytest.skip(f"no Fashion-MNIST in {datasets.DEFAULT_DIR}: "
                "sudo apt-get install dataset-fashion-mnist")
  data_dir = str(tmp_path_factory.mktemp("tfds_fashion"))
  with pytest.MonkeyPatch.context() as mp:
    mp.delenv(datasets.DIR_ENV, raising=False)  # Read Debian's files, whatever the caller set.
    tfds.builder(datasets.EMBEDDED_DATASET, data_dir=data_dir).download_and_prepare()
  return data_dir


def fashion_run_config(data_dir: str, **overrides) -> trainer.RunConfig:
  """The small recipe of `fashion_run`: zfnet_tiny, He init, random crops and flips."""
  # No dropout: its 32-unit fc layers would halve the accuracy of so short a run.
  train = TrainConfig(batch_size=64, learning_rate=0.05, dropout=0.0, init_scheme="he",
                      lr_schedule="constant", first_layer_lr_scale=1 / 64**2)
  return trainer.RunConfig(**{
      "arch": "zfnet_tiny", "dataset": datasets.EMBEDDED_DATASET, "data_dir": data_dir,
      "train_crops": "random", "num_steps": FASHION_RUN_STEPS, "train": train,
      "eval_every_epochs": 0, "final_eval_crops": ("center",), "log_every": 100,
      "checkpoint_every": 10_000, "mean_max_examples": 10_000, **overrides})


@pytest.fixture(scope="session", name="fashion_run")
def _fashion_run(tmp_path_factory, fashion_data_dir):
  """(workdir, summary) of zfnet_tiny trained on Fashion-MNIST; read-only for tests."""
  workdir = str(tmp_path_factory.mktemp("fashion_run") / "run")
  summary = trainer.train_and_evaluate(fashion_run_config(fashion_data_dir), workdir)
  assert summary["status"] == "complete"
  return workdir, summary
