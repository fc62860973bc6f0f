r"""Computes and caches the training-set mean image that Section 3 subtracts.

Streams the run's train split once (smaller side resized to --resize_size,
default 256/224 of the arch's input; centre crop) and writes the per-pixel
mean as a float32 (S, S, 3) .npy under <data_dir>/zf_jax_mean/, where the
training run finds and reuses it. It takes the training flags, so the mean
is the one the same training command will use. Run it once before
multi-host training, so the hosts do not each compute it:

  python -m experiments.compute_mean --flagfile=zfnet.flags --data_dir=~/tensorflow_datasets
"""

import os

from experiments import cli
from zf_jax.data import input_pipeline
from zf_jax.runs import config
from zf_jax.runs.workdir import input_config

config.define_flags()


def main(_):
  cfg = config.from_flags()
  icfg = input_config(cfg, cfg.network().image_size, cfg.train.batch_size)
  path = input_pipeline.mean_image_path(icfg)
  reused = os.path.exists(path)
  mean = input_pipeline.load_or_compute_mean_image(icfg)
  print(f"{'reused' if reused else 'wrote'} mean image {mean.shape}, average {mean.mean():.2f} "
        f"per pixel: {path}")


if __name__ == "__main__":
  cli.run(main)
