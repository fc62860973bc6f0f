"""The session's shared Fashion-MNIST run (the `fashion_run` fixture of conftest.py).

`python -m fashion_run DATA_DIR WORKDIR` (tests/ on the path) trains it and prints its
summary as JSON. It runs in a process of its own because conftest.py compiles at XLA's
backend optimisation level 0 (compiling dominates the other tests): this run's 600 steps
take ~21 ms each at the default level against ~83 ms at level 0 (batch 64, 2 cores), while
compiling its step costs ~2.3 s against ~1.3 s. This module leaves XLA_FLAGS as its caller
set them.
"""

import json
import sys

from zf_jax.data import datasets
from zf_jax.runs import trainer
from zf_jax.runs.config import RunConfig
from zf_jax.train import TrainConfig

STEPS = 600


def config(data_dir: str) -> RunConfig:
  """The small recipe: zfnet_tiny, He init, random crops and flips, SGD for STEPS steps."""
  # No dropout: its 32-unit fc layers would halve the accuracy of so short a run.
  train = TrainConfig(batch_size=64, learning_rate=0.05, dropout=0.0, init_scheme="he",
                      lr_schedule="constant", first_layer_lr_scale=1 / 64**2)
  return RunConfig(**{
      "arch": "zfnet_tiny", "dataset": datasets.EMBEDDED_DATASET, "data_dir": data_dir,
      "train_crops": "random", "num_steps": STEPS, "train": train,
      "eval_every_epochs": 0, "final_eval_crops": ("center",), "log_every": 100,
      "checkpoint_every": 10_000, "mean_max_examples": 10_000})


def main(data_dir: str, workdir: str) -> None:
  summary = trainer.train_and_evaluate(config(data_dir), workdir)
  assert summary["status"] == "complete", summary
  print(json.dumps(summary))


if __name__ == "__main__":
  main(*sys.argv[1:])
