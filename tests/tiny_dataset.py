"""`zf_tiny_images`: a tiny, real, deterministic tfds image classification dataset for tests.

A registered `GeneratorBasedBuilder` whose files are written by tfds itself,
so everything downstream is the real thing: `builder.as_dataset`, split
metadata, and split slicing (`tfds.split_for_jax_process`, "train[:50%]"),
which `tfds.testing.mock_data` ignores. No download: the examples are drawn
from a fixed numpy seed (random RGB noise of 20..48 px sides, tinted by
class so that there is something to learn) and JPEG-encoded by tfds.

Usage (also from subprocess scripts; put tests/ on sys.path / PYTHONPATH)::

  import tiny_dataset
  tiny_dataset.prepare(data_dir)    # once; later imports only register the name
  tfds.builder(tiny_dataset.NAME, data_dir=data_dir)
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

NAME = "zf_tiny_images"
NUM_CLASSES = 4
SPLITS = {"train": 64, "validation": 24}  # split: examples
MIN_SIDE, MAX_SIDE = 20, 48
_SEEDS = {"train": 1234, "validation": 5678}
_TINTS = np.array([[60, 0, 0], [0, 60, 0], [0, 0, 60], [-60, -60, -60]], np.int16)


def _registered() -> bool:
  try:
    tfds.builder_cls(NAME)
  except tfds.core.registered.DatasetNotFoundError:
    return False
  return True


def examples(split: str) -> list[tuple[np.ndarray, int]]:
  """The (uint8 (H, W, 3) image, label) pairs of `split`, before JPEG encoding."""
  rng = np.random.default_rng(_SEEDS[split])
  out = []
  for index in range(SPLITS[split]):
    label = index % NUM_CLASSES
    height, width = rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2)
    noise = rng.integers(40, 216, (height, width, 3), dtype=np.int16)
    out.append((np.clip(noise + _TINTS[label], 0, 255).astype(np.uint8), int(label)))
  return out


# Importing this module twice (as `tiny_dataset` and `tests.tiny_dataset`) must
# not register the name twice: tfds raises on a duplicate.
class ZfTinyImages(tfds.core.GeneratorBasedBuilder, skip_registration=_registered()):
  """64 train / 24 validation random RGB JPEGs of 20..48 px sides, 4 classes."""

  name = NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First version."}

  def _info(self) -> tfds.core.DatasetInfo:
    # Not dataset_info_from_configs: it reads metadata files from the builder's
    # package, and a test module is not a package.
    return tfds.core.DatasetInfo(
        builder=self,
        description="Tiny deterministic random-image dataset for zf_jax's tests.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split):
    for index, (image, label) in enumerate(examples(split)):
      yield index, {"image": image, "label": label}


def prepare(data_dir: str) -> tfds.core.DatasetBuilder:
  """Writes `zf_tiny_images` into `data_dir` (if not there yet) and returns its builder."""
  builder = tfds.builder(NAME, data_dir=str(data_dir))
  builder.download_and_prepare()
  return builder
