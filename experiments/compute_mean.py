r"""Computes and caches the training-set mean image that Section 3 subtracts.

Streams the train split once (smaller side resized to --resize_size, centre
crop) and writes the per-pixel mean as a float32 (S, S, 3) .npy under
<data_dir>/zf_jax_mean/, where the input pipeline finds and reuses it. Run it
once before multi-host training so the hosts do not each compute it:

  python -m experiments.compute_mean --dataset=imagenet2012 \
      --data_dir=~/tensorflow_datasets --resize_size=256
"""

import os

from absl import app
from absl import flags

from zf_jax.data import input_pipeline

_DATASET = flags.DEFINE_string("dataset", "imagenet2012", "tfds dataset name.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data_dir (default: tfds' own).")
_SPLIT = flags.DEFINE_string("split", "train", "Split to average.")
_RESIZE_SIZE = flags.DEFINE_integer("resize_size", 256, "Side of the centre crop (Section 3).")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", None,
                                     "Average only the first N images (quick checks).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cfg = input_pipeline.InputConfig(
      dataset=_DATASET.value, data_dir=_DATA_DIR.value, train_split=_SPLIT.value,
      resize_size=_RESIZE_SIZE.value, image_size=min(224, _RESIZE_SIZE.value),
      mean_max_examples=_MAX_EXAMPLES.value)
  path = input_pipeline.mean_image_path(cfg)
  reused = os.path.exists(path)
  mean = input_pipeline.load_or_compute_mean_image(cfg)
  print(f"{'reused' if reused else 'wrote'} mean image {mean.shape}, average {mean.mean():.2f} "
        f"per pixel: {path}")


if __name__ == "__main__":
  app.run(main)
