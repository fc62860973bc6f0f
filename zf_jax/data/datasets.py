"""Fashion-MNIST from Debian's `dataset-fashion-mnist` package as a tfds dataset.

The embedded default dataset (no internet needed): the package installs the
upstream idx files under /usr/share/datasets/fashion-mnist/, re-compressed, so
tfds' own `fashion_mnist` rejects their checksums. This builder reads them
with numpy instead and registers as `fashion_mnist_debian`, so
`tfds.builder(EMBEDDED_DATASET)` and the input pipeline find it by name.
Set ZF_JAX_FASHION_MNIST_DIR to read the four .gz files from another folder.
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

EMBEDDED_DATASET = "fashion_mnist_debian"
DIR_ENV = "ZF_JAX_FASHION_MNIST_DIR"
DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")
FILES = {  # split: (images, labels, examples)
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60_000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10_000),
}
_IMAGE_MAGIC, _LABEL_MAGIC = 2051, 2049  # idx: 0x08 (uint8) then the number of dimensions.
_SIDE = 28


def source_dir() -> str:
  """The folder holding the idx .gz files: $ZF_JAX_FASHION_MNIST_DIR or Debian's."""
  return os.environ.get(DIR_ENV) or DEFAULT_DIR


def _check_files_exist(folder: str) -> None:
  names = [name for images, labels, _ in FILES.values() for name in (images, labels)]
  missing = [name for name in names if not os.path.isfile(os.path.join(folder, name))]
  if missing:
    raise FileNotFoundError(
        f"Fashion-MNIST file {os.path.join(folder, missing[0])} is missing"
        f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}: install it with "
        f"`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), set {DIR_ENV} to a folder "
        "holding the four idx .gz files, or use tfds' own online --dataset=fashion_mnist")


def read_idx(path: str, magic: int, count: int) -> np.ndarray:
  """The uint8 array of a gzipped idx file, checked against `magic` and `count` items.

  Returns (count, 28, 28) for images (magic 2051), (count,) for labels (2049).
  Raises ValueError (one line) on a corrupt or unexpected file.
  """
  try:
    with gzip.open(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError.
    raise ValueError(f"corrupt Fashion-MNIST file {path}: cannot gunzip it ({e}); "
                     "reinstall dataset-fashion-mnist") from None
  dims = magic - 0x800  # 2051 -> 3 dimensions (n, rows, cols); 2049 -> 1 (n,).
  header = 4 * (1 + dims)
  want = (count,) + (_SIDE, _SIDE)[:dims - 1]
  got_magic = int.from_bytes(data[:4], "big")
  shape = tuple(int(d) for d in np.frombuffer(data[4:header], ">u4")) if len(data) >= header else ()
  if got_magic != magic:
    problem = f"magic number {got_magic}, expected {magic}"
  elif shape != want:
    problem = f"header says shape {shape}, expected {want}"
  elif len(data) - header != np.prod(want):
    problem = f"{len(data) - header} data bytes, expected {np.prod(want)}"
  else:
    return np.frombuffer(data, np.uint8, offset=header).reshape(want)
  raise ValueError(f"corrupt Fashion-MNIST file {path}: {problem}; reinstall dataset-fashion-mnist")


class FashionMnistDebian(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST (60,000 train, 10,000 test 28x28 gray images) from local idx files."""

  name = EMBEDDED_DATASET
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Debian's dataset-fashion-mnist idx files; key = index in file."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="Fashion-MNIST (Zalando article images, 10 classes), read from the idx "
                    f"files of Debian's dataset-fashion-mnist package ({DEFAULT_DIR}).",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(_SIDE, _SIDE, 1)),
            "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
        }),
        supervised_keys=("image", "label"),
        homepage="https://github.com/zalandoresearch/fashion-mnist",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Offline by design: the files are already on disk.
    folder = source_dir()
    _check_files_exist(folder)  # All four up front: fail before writing any split.
    return {split: self._generate_examples(os.path.join(folder, images),
                                           os.path.join(folder, labels), count)
            for split, (images, labels, count) in FILES.items()}

  def _generate_examples(self, images_path: str, labels_path: str, count: int):
    images = read_idx(images_path, _IMAGE_MAGIC, count)
    labels = read_idx(labels_path, _LABEL_MAGIC, count)
    if labels.max() >= len(CLASS_NAMES):
      raise ValueError(f"corrupt Fashion-MNIST file {labels_path}: label {labels.max()} is not "
                       f"in 0..{len(CLASS_NAMES) - 1}; reinstall dataset-fashion-mnist")
    # Key = index in the idx file, so a record can be traced back (tfds shuffles by
    # key hash). PIL images: tfds PNG-encodes them ~25% faster than numpy arrays.
    for index in range(count):
      yield index, {"image": PIL.Image.fromarray(images[index]), "label": int(labels[index])}


def register() -> str:
  """Makes `EMBEDDED_DATASET` known to `tfds.builder`; idempotent. Returns the name.

  Defining the class above already registered it (tfds registers every
  builder subclass when it is created); this only checks that nothing else
  took the name, for callers that want the registration explicit.
  """
  if tfds.builder_cls(EMBEDDED_DATASET) is not FashionMnistDebian:
    raise RuntimeError(f"tfds dataset name {EMBEDDED_DATASET!r} belongs to another builder")
  return EMBEDDED_DATASET


register()
