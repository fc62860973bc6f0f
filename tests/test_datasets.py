"""Specifications of zf_jax.data.datasets: Debian's Fashion-MNIST as tfds' `fashion_mnist_debian`.

The data tests read the real files of Debian's `dataset-fashion-mnist` package
(CI installs it) and skip without them; the dataset is prepared once per
session into a temporary data_dir (~15 s). Error tests use small fake files.
"""

import collections
import gzip
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import HAVE_DEBIAN_FILES
from zf_jax.data import datasets
from zf_jax.data import input_pipeline as ip

NAME = "fashion_mnist_debian"
needs_debian_files = pytest.mark.skipif(
    not HAVE_DEBIAN_FILES,
    reason=f"no Fashion-MNIST in {datasets.DEFAULT_DIR}: "
    "sudo apt-get install dataset-fashion-mnist")


def assert_one_line(excinfo):
  message = str(excinfo.value)
  assert message and "\n" not in message, message


def write_idx(path, magic, shape, data=None):
  """A gzipped idx file: big-endian magic and dims, then uint8 data (zeros by default)."""
  header = np.array([magic, *shape], ">u4").tobytes()
  body = np.zeros(shape, np.uint8).tobytes() if data is None else data
  with gzip.open(path, "wb", compresslevel=1) as f:
    f.write(header + body)
  return str(path)


@pytest.fixture(scope="module", name="raw")
def _raw():
  """{split: (images (n, 28, 28), labels (n,))} straight from Debian's idx files."""
  if not HAVE_DEBIAN_FILES:
    pytest.skip(f"no Fashion-MNIST in {datasets.DEFAULT_DIR}")
  folder = datasets.DEFAULT_DIR
  return {split: (datasets.read_idx(os.path.join(folder, images), 2051, n),
                  datasets.read_idx(os.path.join(folder, labels), 2049, n))
          for split, (images, labels, n) in datasets.FILES.items()}


@pytest.fixture(scope="module", name="data_dir")
def _data_dir(fashion_data_dir):
  """The session's fresh tfds data_dir with fashion_mnist_debian prepared (tests/conftest.py)."""
  return fashion_data_dir


@pytest.fixture(name="builder")
def _builder(data_dir):
  return tfds.builder(NAME, data_dir=data_dir)


def test_importing_registers_the_builder_by_name_and_register_is_idempotent():
  assert datasets.EMBEDDED_DATASET == NAME
  assert tfds.builder_cls(NAME) is datasets.FashionMnistDebian
  assert datasets.register() == datasets.register() == NAME
  assert str(datasets.FashionMnistDebian.VERSION) == "1.0.0"


@needs_debian_files
def test_debian_files_hold_upstream_fashion_mnist(raw):
  (train_images, train_labels), (test_images, test_labels) = raw["train"], raw["test"]
  assert train_images.shape == (60_000, 28, 28) and test_images.shape == (10_000, 28, 28)
  # First labels of the upstream files, and their balanced classes.
  assert list(train_labels[:10]) == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
  assert list(test_labels[:10]) == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
  assert list(np.bincount(train_labels)) == [6000] * 10
  assert list(np.bincount(test_labels)) == [1000] * 10


@needs_debian_files
def test_prepared_splits_have_the_paper_sizes_and_class_names(builder):
  info = builder.info
  assert info.splits["train"].num_examples == 60_000
  assert info.splits["test"].num_examples == 10_000
  label = info.features["label"]
  assert label.num_classes == 10
  assert label.names == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot"]
  assert info.features["image"].shape == (28, 28, 1)
  assert str(info.version) == "1.0.0"


@needs_debian_files
@pytest.mark.parametrize("split, spot_keys", [("train", [0, 1, 59_999]), ("test", [0, 9_999])])
def test_prepared_records_are_exactly_the_idx_examples(builder, raw, split, spot_keys):
  ds = builder.as_dataset(split=split, shuffle_files=False, batch_size=-1)
  records = tfds.as_numpy(ds)
  images, labels = records["image"], records["label"]
  raw_images, raw_labels = raw[split]
  assert images.shape == (len(raw_labels), 28, 28, 1) and images.dtype == np.uint8
  # tfds shuffles records by key hash on write: compare by content, not position.
  read = collections.Counter(zip(map(bytes, images.reshape(len(images), -1)), labels.tolist()))
  want = collections.Counter(zip(map(bytes, raw_images.reshape(len(raw_images), -1)),
                                 raw_labels.tolist()))
  assert read == want  # Every idx example exactly once, pixels and label intact.
  position = {image: i for i, image in enumerate(map(bytes, images.reshape(len(images), -1)))}
  for key in spot_keys:
    i = position[bytes(raw_images[key])]
    np.testing.assert_array_equal(images[i, ..., 0], raw_images[key])
    assert labels[i] == raw_labels[key]


def test_missing_files_raise_one_line_error_naming_the_debian_package(tmp_path, monkeypatch):
  monkeypatch.setenv(datasets.DIR_ENV, str(tmp_path / "empty"))
  builder = tfds.builder(NAME, data_dir=str(tmp_path / "tfds"))
  with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as excinfo:
    builder.download_and_prepare()
  assert_one_line(excinfo)
  message = str(excinfo.value)
  assert "train-images-idx3-ubyte.gz" in message and "--dataset=fashion_mnist" in message
  # What a user of the input pipeline sees: the same line, still one line.
  with pytest.raises(Exception, match="apt-get install dataset-fashion-mnist") as excinfo:
    ip.dataset_info(ip.InputConfig(dataset=NAME, data_dir=str(tmp_path / "tfds")))
  assert_one_line(excinfo)


@pytest.mark.parametrize("case, match", [
    ("not_gzip", "cannot gunzip"),
    ("bad_magic", "magic number 2049, expected 2051"),
    ("bad_count", r"shape \(59999, 28, 28\), expected \(60000, 28, 28\)"),
    ("truncated", "data bytes, expected 47040000"),
])
def test_corrupt_idx_files_raise_one_line_errors(tmp_path, case, match):
  path = tmp_path / "train-images-idx3-ubyte.gz"
  if case == "not_gzip":
    path.write_bytes(b"not a gzip file")
  elif case == "bad_magic":
    write_idx(path, 2049, (60_000, 28, 28))
  elif case == "bad_count":
    write_idx(path, 2051, (59_999, 28, 28))
  else:
    write_idx(path, 2051, (60_000, 28, 28), data=bytes(1000))
  with pytest.raises(ValueError, match=match) as excinfo:
    datasets.read_idx(str(path), 2051, 60_000)
  assert_one_line(excinfo)
  assert "reinstall dataset-fashion-mnist" in str(excinfo.value)


def test_a_corrupt_label_file_stops_preparation_with_one_line(tmp_path, monkeypatch):
  for images, labels, n in datasets.FILES.values():
    write_idx(tmp_path / images, 2051, (n, 28, 28))
    write_idx(tmp_path / labels, 2051, (n,))  # Labels with the images' magic number.
  monkeypatch.setenv(datasets.DIR_ENV, str(tmp_path))
  builder = tfds.builder(NAME, data_dir=str(tmp_path / "tfds"))
  with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz: magic number") as excinfo:
    builder.download_and_prepare()
  assert_one_line(excinfo)


@needs_debian_files
def test_input_pipeline_trains_on_it_by_name(data_dir):
  cfg = ip.InputConfig(dataset=NAME, data_dir=data_dir, image_size=32, resize_size=36,
                       global_batch_size=8, mean_max_examples=64)
  info = ip.dataset_info(cfg)
  assert (info.num_classes, info.num_train, info.num_eval, info.eval_split) == (
      10, 60_000, 10_000, "test")
  iterator = ip.make_train_iterator(cfg, process_index=0, process_count=1)
  for batch in (next(iterator), next(iterator)):
    image = batch["image"]
    assert image.shape == (8, 32, 32, 3) and image.dtype == np.float32
    assert batch["label"].dtype == np.int32 and set(batch["label"]) <= set(range(10))
    np.testing.assert_array_equal(image[..., 0], image[..., 1])  # Gray tiled to RGB.
    assert np.abs(image).max() <= 255.0 and image.std() > 1.0  # Real pixels, mean removed.
  assert os.path.exists(ip.mean_image_path(cfg))
  info = ip.split_info(cfg)
  assert (info.split, info.num_examples, info.grayscale) == ("test", 10_000, True)
  assert info.class_names == datasets.CLASS_NAMES
  with pytest.raises(ValueError, match=r"fashion_mnist_debian has no split 'val'; it has "
                                       r"(train, test|test, train)"):
    ip.split_info(cfg, "val")
