"""The datasets of the input rows of `python -m benchmarks`, prepared with tfds.

`ZfBenchJpeg` (zf_bench_jpeg): 512 random-content ~500x375 JPEGs of ~100 kB like
ImageNet's, 1000 classes, written into whatever tfds data_dir `prepare` is given
(the worker uses a temporary one). Imported by `benchmarks._worker` only for the
input workload: it imports tensorflow.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

JPEG_DATASET, JPEG_COUNT, JPEG_CLASSES = "zf_bench_jpeg", 512, 1000
_KNOWN = JPEG_DATASET in tfds.list_builders(with_community_datasets=False)  # Imported twice?


class ZfBenchJpeg(tfds.core.GeneratorBasedBuilder, skip_registration=_KNOWN):
  """ImageNet-like JPEGs: smooth random colour fields plus noise, 500x375 or 375x500."""

  name = JPEG_DATASET
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, description="zf_jax benchmark JPEGs",
                                 features=tfds.features.FeaturesDict({
                                     "image": tfds.features.Image(shape=(None, None, 3)),
                                     "label": tfds.features.ClassLabel(num_classes=JPEG_CLASSES)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    rng = np.random.default_rng(0)
    for i in range(JPEG_COUNT):
      w, h = (500, 375) if i % 5 else (375, 500)
      field = PIL.Image.fromarray(rng.integers(0, 256, (12, 12, 3), np.uint8)).resize(
          (w, h), PIL.Image.BICUBIC)
      pixels = np.asarray(field, np.float32) + rng.normal(0, 20, (h, w, 3))
      buf = io.BytesIO()
      PIL.Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
      buf.seek(0)  # Already-encoded bytes: tfds stores them as they are.
      yield i, {"image": buf, "label": int(rng.integers(JPEG_CLASSES))}


def prepare(name: str, data_dir: str | None) -> None:
  """Prepares tfds dataset `name` in `data_dir` (tfds' progress lines hidden)."""
  with contextlib.redirect_stdout(io.StringIO()):  # tfds' "Downloading and preparing" lines.
    tfds.builder(name, data_dir=data_dir).download_and_prepare()
