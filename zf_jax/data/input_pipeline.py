"""tf.data input pipeline for any tfds image classification dataset (Section 3).

The only module of zf_jax that imports tensorflow / tensorflow_datasets; it
hands the trainer host-local numpy batches. Preprocessing follows Section 3 of
Zeiler & Fergus: resize the smaller side to 256, keep the centre 256x256,
subtract the per-pixel mean image of the training set, then take 224x224
sub-crops (the 4 corners and the centre, with and without a horizontal flip).

Positions make the training stream exact and resumable: record ``j`` of host
batch ``k`` has global position ``k * local_batch + j``; an epoch is one seeded
shuffle of the host's shard cut to ``steps_per_epoch * local_batch`` records,
and every random choice of an example is a stateless function of
``(seed, process, position)``. Starting at step ``k`` skips whole epochs
arithmetically and the rest of the epoch as undecoded records.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import hashlib
import os
import re

from absl import logging
import numpy as np

# Quiet TensorFlow's C++ start-up lines; TF only decodes and resizes images
# here, so its oneDNN kernels (whose notice cannot otherwise be silenced)
# buy nothing.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow_datasets as tfds
from tensorflow.python.util import deprecation  # pylint: disable=g-direct-tensorflow-import

from zf_jax import files
from zf_jax.data import datasets as _datasets  # noqa: F401  registers fashion_mnist_debian


def _hide_gpus_from_tensorflow() -> None:
  """Keeps TF off the accelerators so that all their memory is JAX's."""
  try:
    tf.config.set_visible_devices([], "GPU")
  except (RuntimeError, ValueError):  # TF already initialised its devices.
    pass


_hide_gpus_from_tensorflow()

TRAIN_CROPS = ("ten", "random", "center")
EVAL_CROPS = ("center", "ten")
_MEAN_DIR = "zf_jax_mean"
FOLDER_PREFIX = "folder:"  # --dataset=folder:<root>: <root>/<split>/<class>/<image> (ImageFolder)
_IMAGENET_TARS = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


@dataclasses.dataclass(frozen=True)
class InputConfig:
  """What to read and how to preprocess it; defaults are the paper's ImageNet."""

  dataset: str = "imagenet2012"
  data_dir: str | None = None
  train_split: str = "train"
  eval_split: str | None = None  # None: "validation" if it exists, else "test".
  image_size: int = 224
  resize_size: int = 256
  global_batch_size: int = 128
  train_crops: str = "ten"  # "ten": Section 3's fixed crops; "random"; "center": no augmentation.
  seed: int = 0
  shuffle_buffer: int = 10_000
  mean_max_examples: int | None = None
  # Which records: `classes` keeps these labels only, relabelled 0..k-1 in this order (every
  # split); `include_ids` / `exclude_ids` are files of record ids (`read_ids`) that the
  # training split keeps only / drops (Section 5.2's de-duplicated ImageNet, a fold's images).
  classes: tuple[int, ...] = ()
  include_ids: str | None = None
  exclude_ids: str | None = None

  def __post_init__(self):
    _check_choice("train_crops", self.train_crops, TRAIN_CROPS)
    if len(set(self.classes)) != len(self.classes) or any(c < 0 for c in self.classes):
      raise ValueError(f"classes must be distinct labels >= 0, got {list(self.classes)}")
    if not 0 < self.image_size <= self.resize_size:
      raise ValueError(f"need 0 < image_size <= resize_size, got image_size={self.image_size}, "
                       f"resize_size={self.resize_size}")
    if self.global_batch_size <= 0:
      raise ValueError(f"global_batch_size must be positive, got {self.global_batch_size}")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Sizes the trainer needs; counts are whole splits, over all hosts."""

  num_classes: int
  num_train: int
  num_eval: int
  eval_split: str
  steps_per_epoch: int  # num_train // global_batch_size: the remainder is dropped.
  multi_label: bool = False  # Labels are (C,) vectors of 1 / 0 / -1 (difficult), e.g. voc/2012.


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def _processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top  # only for the defaults
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in [0, process_count={process_count})")
  return process_index, process_count


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} is not divisible by "
                     f"process_count={process_count}; use a multiple of {process_count}")
  return global_batch_size // process_count


def _data_dir_root(cfg: InputConfig) -> str:
  return os.path.expanduser(cfg.data_dir or tfds.core.constants.DATA_DIR)


def _prepare_error(builder, cfg: InputConfig, err: Exception) -> Exception:
  """One line that says what is missing and where to put it."""
  manual = os.path.join(_data_dir_root(cfg), "downloads", "manual")
  cause = (str(err).strip().splitlines() or [type(err).__name__])[0]
  if builder.name == "imagenet2012":
    missing = [t for t in _IMAGENET_TARS if not os.path.exists(os.path.join(manual, t))]
    if missing:
      return FileNotFoundError(
          f"imagenet2012 is not prepared: tfds needs {' and '.join(_IMAGENET_TARS)} (from "
          f"image-net.org) in {manual}/ (missing: {', '.join(missing)}); put them there and rerun")
  if isinstance(err, FileNotFoundError) and str(err):
    return FileNotFoundError(cause)  # The builder already said what is missing.
  if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
    return FileNotFoundError(
        f"{cfg.dataset} needs a manual download into {manual}/ (see https://www.tensorflow.org/"
        f"datasets/catalog/{builder.name}); tfds said: {cause}")
  # OSError: mostly no network; the binaries report it in one line.
  return OSError(f"could not download and prepare {cfg.dataset} in {_data_dir_root(cfg)} "
                 f"({type(err).__name__}: {cause}); prepare it with tfds first")


def _folder_builder(cfg: InputConfig):
  """tfds' ImageFolder over <root>/<split>/<class>/<image> (e.g. Caltech-256)."""
  root = os.path.expanduser(cfg.dataset[len(FOLDER_PREFIX):])
  if not os.path.isdir(root):
    raise FileNotFoundError(f"image folder {root} does not exist (--dataset=folder:<root> reads "
                            "<root>/<split>/<class>/<image files>)")
  builder = tfds.ImageFolder(root)
  if not builder.info.splits:
    raise ValueError(f"image folder {root} has no <split>/<class>/<image> files (e.g. "
                     f"{root}/all/cat/1.jpg); see BUILD.md for Caltech-256")
  return builder


def _is_folder(builder) -> bool:
  return isinstance(builder, tfds.ImageFolder)


def _label_feature(builder, dataset: str):
  """("label", ClassLabel) of a classification dataset, or ("labels", ClassLabel) of a
  multi-label one (a Sequence of labels per image, e.g. voc/2012's)."""
  features = builder.info.features
  if "image" in features:
    if "label" in features and isinstance(features["label"], tfds.features.ClassLabel):
      return "label", features["label"]
    labels = features["labels"] if "labels" in features else None
    if isinstance(labels, tfds.features.Sequence) and isinstance(labels.feature,
                                                                 tfds.features.ClassLabel):
      return "labels", labels.feature
  raise ValueError(f"{dataset} is not an image classification dataset: it needs features "
                   f"'image' and 'label' (or a sequence 'labels'), it has {list(features)}")


def _builder(cfg: InputConfig):
  """The tfds builder of `cfg.dataset`, prepared (downloaded) if it is not yet."""
  if cfg.dataset.startswith(FOLDER_PREFIX):
    return _folder_builder(cfg)
  try:
    builder = tfds.builder(cfg.dataset, data_dir=cfg.data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(f"unknown tfds dataset {cfg.dataset!r}: use a name from "
                     "tfds.list_builders(), e.g. imagenet2012, caltech101, fashion_mnist, or "
                     "folder:<root> for a folder of images") from None
  _label_feature(builder, cfg.dataset)
  if not builder.is_prepared():
    try:
      builder.download_and_prepare()
    except Exception as e:  # pylint: disable=broad-except  # tfds raises many kinds.
      raise _prepare_error(builder, cfg, e) from e
  return builder


def _classes(builder, cfg: InputConfig) -> tuple[int, tuple[str, ...] | None]:
  """(number of classes, their names or None) after `cfg.classes`' selection."""
  _, label = _label_feature(builder, cfg.dataset)
  names = tuple(label.names) if getattr(label, "names", None) else None
  if not cfg.classes:
    return label.num_classes, names
  bad = [c for c in cfg.classes if c >= label.num_classes]
  if bad:
    raise ValueError(f"classes: {cfg.dataset} has no class {bad[0]}; its labels are "
                     f"0..{label.num_classes - 1}")
  return len(cfg.classes), tuple(names[c] for c in cfg.classes) if names else None


def read_ids(path: str) -> list[str]:
  """The record ids listed in `path`: one per line; blank lines and `#` comments skipped."""
  try:
    with open(os.path.expanduser(path), encoding="utf-8") as f:
      lines = [line.strip() for line in f]
  except OSError as e:
    raise FileNotFoundError(f"cannot read the id file {path}: {e.strerror or e}") from None
  return [line for line in lines if line and not line.startswith("#")]


def _id_filter_suffix(cfg: InputConfig) -> str:
  """A short tag of the record selection, for file names (the mean image cache)."""
  parts = []
  if cfg.classes:
    parts.append("c" + "_".join(map(str, cfg.classes)))
  for tag, path in (("in", cfg.include_ids), ("ex", cfg.exclude_ids)):
    if path:
      ids = "\n".join(sorted(read_ids(path))).encode()
      parts.append(tag + hashlib.sha1(ids).hexdigest()[:10])
  return "-".join(parts)


def _decoders(builder):
  """Skips tfds' decoding of encoded images so `decode_rgb` can do it (CMYK, gray, ...)."""
  feature = builder.info.features["image"]
  if isinstance(feature, tfds.features.Image) and feature.np_dtype == np.uint8:
    return {"image": tfds.decode.SkipDecoding()}
  return None  # Already a tensor (e.g. a Tensor feature): tfds gives pixels.


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True  # Same seed, same batches (resume relies on it).
  return options


def _read(builder, split, process_index: int = 0, process_count: int = 1,
          cfg: InputConfig | None = None, *, training: bool = False) -> tf.data.Dataset:
  """This host's even share of `split` as {"image", "label", "id"}, in file order.

  "id" is the record's stable name: tfds' `tfds_id`, or for an image folder the
  file's path below the folder. "label" is the class (int64), or for a
  multi-label dataset (voc/2012) a (C,) int32 vector: 1 for a class present,
  -1 for one present only as "difficult" objects (ignored by VOC's scoring),
  0 otherwise. With `cfg`, its record selection applies: `classes` to every
  split, `include_ids` / `exclude_ids` when `training` (the training split).

  No tfds auto-cache: the analyses stop reading early (a few examples of a
  split), which makes a cached dataset print a C++ warning that no log level
  silences; reading small datasets again is cheap next to the model.
  """
  if _is_folder(builder):  # ImageFolder knows no sub-splits: shard the records instead.
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders=_decoders(builder))
    ds = ds.shard(process_count, process_index) if process_count > 1 else ds
    prefix = "^" + re.escape(str(builder.data_dir).rstrip("/") + "/")
    record_id = lambda ex: tf.strings.regex_replace(ex["image/filename"], prefix, "")
  else:
    host_split = tfds.split_for_jax_process(split, process_index=process_index,
                                            process_count=process_count)
    # tfds builds record ids with a deprecated tf.data op, whose warning would be a
    # binary's stderr's first lines (its errors must be one line).
    with deprecation.silence():
      ds = builder.as_dataset(split=host_split, shuffle_files=False,
                              decoders=_decoders(builder),
                              read_config=tfds.ReadConfig(options=_options(), try_autocache=False,
                                                          add_tfds_id=True))
    if "tfds_id" not in ds.element_spec:  # tfds' mock data: name records by position.
      offset = sum(_count(builder.as_dataset(
          split=tfds.split_for_jax_process(split, process_index=p, process_count=process_count),
          shuffle_files=False, decoders=_decoders(builder))) for p in range(process_index))
      ds = ds.enumerate(offset).map(lambda i, ex: {**ex, "tfds_id": tf.strings.join(
          [f"{split}__", tf.strings.as_string(i)])})
    record_id = lambda ex: ex["tfds_id"]
  key, label = _label_feature(builder, builder.name)
  if key == "labels":
    num_classes = label.num_classes

    def targets(ex):
      present = lambda ids: tf.minimum(tf.reduce_sum(tf.one_hot(ids, num_classes, dtype=tf.int32),
                                                     axis=0), 1)
      every = present(ex["labels"])
      easy = present(ex["labels_no_difficult"]) if "labels_no_difficult" in ex else every
      return easy + (easy - 1) * every  # 1: present; -1: only difficult objects; 0: absent.
  else:
    targets = lambda ex: ex["label"]
  ds = ds.map(lambda ex: {"image": ex["image"], "label": targets(ex), "id": record_id(ex)})
  return _select(ds, cfg, training) if cfg is not None else ds


def _lookup(keys, values, default):
  return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, values), default)


def _select(ds: tf.data.Dataset, cfg: InputConfig, training: bool) -> tf.data.Dataset:
  """`cfg`'s record selection (see `_read`)."""
  if cfg.classes:
    relabel = _lookup(tf.constant(cfg.classes, tf.int64),
                      tf.range(len(cfg.classes), dtype=tf.int64), tf.constant(-1, tf.int64))
    ds = ds.map(lambda ex: {**ex, "label": relabel.lookup(tf.cast(ex["label"], tf.int64))})
    ds = ds.filter(lambda ex: ex["label"] >= 0)
  if training:
    for path, keep in ((cfg.include_ids, 1), (cfg.exclude_ids, 0)):
      if path:
        ids = read_ids(path) or ["\0"]  # An empty table cannot be built; no id is "\0".
        table = _lookup(tf.constant(ids), tf.ones([len(ids)], tf.int32), tf.constant(0))
        ds = ds.filter(lambda ex, table=table, keep=keep: table.lookup(ex["id"]) == keep)
  return ds


def _selective(cfg: InputConfig) -> bool:
  """Whether `cfg` selects records, so that counts need a pass over the data."""
  return bool(cfg.classes or cfg.include_ids or cfg.exclude_ids)


def _count(ds: tf.data.Dataset) -> int:
  n = int(ds.cardinality())  # Known for tfds splits; counting is the slow fallback.
  return n if n >= 0 else int(ds.reduce(np.int64(0), lambda c, _: c + 1))


def _resolve_eval_split(builder, cfg: InputConfig, split: str | None) -> str:
  if split or cfg.eval_split:
    return split or cfg.eval_split
  splits = builder.info.splits
  if not splits or "validation" in splits:  # No split metadata (mock data): the usual name.
    return "validation"
  if "test" in splits:
    return "test"
  raise ValueError(f"{cfg.dataset} has neither a 'validation' nor a 'test' split "
                   f"(it has {list(splits)}); set InputConfig.eval_split")


def _host_counts(builder, cfg: InputConfig, split: str, process_count: int,
                 training: bool) -> list[int]:
  """Records of `split` each host reads (tfds' even split, or uneven after a selection)."""
  if not _selective(cfg) or process_count == 1:
    n = _count(_read(builder, split, cfg=cfg, training=training))
    return [n // process_count + (p < n % process_count) for p in range(process_count)]
  return [_count(_read(builder, split, p, process_count, cfg, training=training))
          for p in range(process_count)]


def _steps_per_epoch(builder, cfg: InputConfig, process_count: int) -> tuple[int, int]:
  """(training records in all, steps per epoch): every host has a full share of each step."""
  counts = _host_counts(builder, cfg, cfg.train_split, process_count, training=True)
  local = cfg.global_batch_size // process_count
  return sum(counts), min(sum(counts) // cfg.global_batch_size, min(counts) // local)


def dataset_info(cfg: InputConfig, process_count: int | None = None) -> DatasetInfo:
  """Class count, split sizes and steps per epoch of `cfg.dataset` (after `cfg`'s selection)."""
  _, process_count = _processes(0, process_count)
  _local_batch_size(cfg.global_batch_size, process_count)
  builder = _builder(cfg)
  eval_split = _resolve_eval_split(builder, cfg, None)
  num_train, steps = _steps_per_epoch(builder, cfg, process_count)
  num_eval = _count(_read(builder, eval_split, cfg=cfg))
  key, _ = _label_feature(builder, cfg.dataset)
  return DatasetInfo(num_classes=_classes(builder, cfg)[0], num_train=num_train,
                     num_eval=num_eval, eval_split=eval_split, steps_per_epoch=steps,
                     multi_label=key == "labels")


@dataclasses.dataclass(frozen=True)
class SplitInfo:
  """One split of a dataset, for the analyses: its resolved name, size and label names.

  grayscale: the images have one channel (tiled to RGB by `decode_rgb`).
  """

  split: str
  num_examples: int
  class_names: tuple[str, ...] | None
  grayscale: bool = False


def split_info(cfg: InputConfig, split: str | None = None) -> SplitInfo:
  """Resolves `split` (None: the evaluation split) of `cfg.dataset` and describes it.

  Raises:
    ValueError: the dataset has no such split (the message lists the splits it has).
  """
  builder = _builder(cfg)
  split = _resolve_eval_split(builder, cfg, split)
  known = list(builder.info.splits)
  base = re.split(r"[\[+]", split)[0]
  if known and base not in known:
    raise ValueError(f"{cfg.dataset} has no split {split!r}; it has {', '.join(known)}")
  _, names = _classes(builder, cfg)
  shape = getattr(builder.info.features["image"], "shape", None)
  return SplitInfo(split=split, num_examples=_count(_read(builder, split, cfg=cfg)),
                   class_names=names, grayscale=bool(shape) and shape[-1] == 1)


def decode_rgb(image: tf.Tensor) -> tf.Tensor:
  """An encoded image (JPEG, CMYK JPEG, PNG, GIF, BMP) or a pixel array -> uint8 (H, W, 3).

  Gray images are tiled to three channels and alpha is dropped. Integer pixel
  arrays are taken as 0..255, float ones as 0..1. Undecodable bytes raise at
  run time; the pipelines drop such records and count them.
  """
  if image.dtype == tf.string:
    image = tf.io.decode_image(image, channels=3, expand_animations=False)
  else:
    if image.shape.rank == 2:
      image = image[..., None]
    if image.dtype.is_floating:
      image = tf.image.convert_image_dtype(image, tf.uint8, saturate=True)
    elif image.dtype != tf.uint8:
      image = tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8)
    channels = image.shape[-1]
    if channels == 1:
      image = tf.tile(image, [1, 1, 3])
    elif channels == 4:
      image = image[..., :3]
    elif channels != 3:
      raise ValueError(f"cannot make RGB from an image with {channels} channels")
  image.set_shape([None, None, 3])
  return image


def resize_center(image: tf.Tensor, size: int) -> tf.Tensor:
  """Section 3: resize the smaller side to `size` and keep the centre size x size.

  Cutting the central square first and resizing it is the same crop (up to
  sub-pixel rounding) and resizes fewer pixels. Small images are resized up.
  Returns float32 in 0..255 units.
  """
  shape = tf.shape(image)
  h, w = shape[0], shape[1]
  side = tf.minimum(h, w)
  square = tf.image.crop_to_bounding_box(image, (h - side) // 2, (w - side) // 2, side, side)
  # A square already `size` wide (Fashion-MNIST at 28) is its own resize: skip the work.
  out = tf.cond(side == size, lambda: tf.cast(square, tf.float32),
                lambda: tf.image.resize(square, [size, size], method="bilinear", antialias=True))
  return tf.reshape(out, [size, size, 3])


def _crop_offsets(height, width, size):
  """Section 3's five crop corners: top-left, top-right, bottom-left, bottom-right, centre."""
  dy, dx = height - size, width - size
  return [(0, 0), (0, dx), (dy, 0), (dy, dx), (dy // 2, dx // 2)]


CENTRE_OF_TEN = 4  # `ten_crops`' order: the 4 corners, the centre, then the same 5 mirrored.


def ten_crops(image: np.ndarray | tf.Tensor, size: int):
  """Section 3's 10 sub-crops: 4 corners + centre, then the same 5 flipped left-right.

  Args:
    image: (..., H, W, C) numpy array or tf.Tensor with H, W >= size.
    size: side of the square crops.

  Returns:
    (..., 10, size, size, C), of the same kind as `image`.
  """
  height, width = image.shape[-3], image.shape[-2]
  if height is None or width is None:
    height, width = tf.shape(image)[-3], tf.shape(image)[-2]
  crops = [image[..., y:y + size, x:x + size, :] for y, x in _crop_offsets(height, width, size)]
  crops += [crop[..., :, ::-1, :] for crop in crops]
  return (tf.stack if isinstance(image, tf.Tensor) else np.stack)(crops, axis=-4)


def _fixed_crop(image: tf.Tensor, index: tf.Tensor, size: int) -> tf.Tensor:
  """The `index`-th (0..9) of `ten_crops(image, size)`, without building the other nine."""
  offsets = tf.constant(_crop_offsets(image.shape[0], image.shape[1], size), tf.int32)
  y, x = offsets[index % 5][0], offsets[index % 5][1]
  crop = tf.slice(image, tf.stack([y, x, 0]), [size, size, image.shape[-1]])
  return tf.where(index >= 5, tf.reverse(crop, axis=[1]), crop)


def _train_preprocess(cfg: InputConfig, mean: np.ndarray, key: int):
  """Section 3 for training: resize, centre crop, minus the mean, one random crop (or the
  centre crop, unaugmented, for `train_crops="center"`)."""
  mean = tf.constant(mean, tf.float32)
  margin = cfg.resize_size - cfg.image_size

  def fn(ex):
    image = resize_center(decode_rgb(ex["image"]), cfg.resize_size) - mean
    # A stateless draw per (seed, process, position): reproducible however the
    # parallel map interleaves, and identical after a resume.
    u = tf.random.stateless_uniform([3], seed=tf.stack([tf.constant(key, tf.int64), ex["_pos"]]))
    if cfg.train_crops == "ten":
      image = _fixed_crop(image, tf.minimum(tf.cast(u[0] * 10, tf.int32), 9), cfg.image_size)
    elif cfg.train_crops == "center":
      image = _fixed_crop(image, tf.constant(CENTRE_OF_TEN), cfg.image_size)
    else:
      y, x = (tf.minimum(tf.cast(v * (margin + 1), tf.int32), margin) for v in (u[0], u[1]))
      image = tf.slice(image, tf.stack([y, x, 0]), [cfg.image_size, cfg.image_size, 3])
      image = tf.where(u[2] < 0.5, tf.reverse(image, axis=[1]), image)
    return {"image": image, "label": tf.cast(ex["label"], tf.int32), "_pos": ex["_pos"]}

  return fn


def _eval_preprocess(cfg: InputConfig, mean: np.ndarray, crops: str):
  """Section 3 for evaluation: the centre crop, or all 10 crops stacked."""
  mean = tf.constant(mean, tf.float32)
  offset = (cfg.resize_size - cfg.image_size) // 2

  def fn(ex):
    image = resize_center(decode_rgb(ex["image"]), cfg.resize_size) - mean
    if crops == "ten":
      image = ten_crops(image, cfg.image_size)
    else:
      image = image[offset:offset + cfg.image_size, offset:offset + cfg.image_size]
    return {"image": image, "label": tf.cast(ex["label"], tf.int32), "_pos": ex["_pos"]}

  return fn


def mean_image_path(cfg: InputConfig, split: str | None = None,
                    max_examples: int | None = None) -> str:
  """Where the mean image of `split` is cached: <data_dir>/zf_jax_mean/<name>.npy."""
  split = split or cfg.train_split
  max_examples = cfg.mean_max_examples if max_examples is None else max_examples
  name = f"{cfg.dataset}-{split}-{cfg.resize_size}" + (f"-n{max_examples}" if max_examples else "")
  if _selective(cfg):  # Another selection of records has another mean.
    name += "-" + _id_filter_suffix(cfg)
  return os.path.join(_data_dir_root(cfg), _MEAN_DIR, re.sub(r"[^\w.-]+", "_", name) + ".npy")


def compute_mean_image(cfg: InputConfig, *, split: str | None = None,
                       max_examples: int | None = None) -> np.ndarray:
  """Section 3's per-pixel mean of the training images after resize + centre crop.

  Streams `split` (default: the train split) once, over all of it or its first
  `max_examples` records. Returns float32 (resize_size, resize_size, 3) in 0..255.
  """
  split = split or cfg.train_split
  max_examples = cfg.mean_max_examples if max_examples is None else max_examples
  builder = _builder(cfg)
  ds = _read(builder, split, cfg=cfg, training=split == cfg.train_split)
  if max_examples:
    ds = ds.take(max_examples)
  expected = _count(ds)
  ds = ds.map(lambda ex: resize_center(decode_rgb(ex["image"]), cfg.resize_size),
              num_parallel_calls=tf.data.AUTOTUNE).ignore_errors(log_warning=True)
  ds = ds.batch(256).map(lambda b: (tf.reduce_sum(b, axis=0), tf.shape(b)[0]))
  total = np.zeros((cfg.resize_size, cfg.resize_size, 3), np.float64)  # float32 would drift.
  count = 0
  for partial_sum, n in ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
    total += partial_sum
    count += int(n)
  if not count:
    raise ValueError(f"no decodable image in {cfg.dataset}:{split}; cannot compute a mean image")
  if count < expected:
    logging.warning("mean image: skipped %d undecodable image(s) of %d", expected - count, expected)
  return (total / count).astype(np.float32)


def load_or_compute_mean_image(cfg: InputConfig, *, split: str | None = None,
                               max_examples: int | None = None) -> np.ndarray:
  """The cached mean image at `mean_image_path`, computed and written if absent."""
  path = mean_image_path(cfg, split, max_examples)
  shape = (cfg.resize_size, cfg.resize_size, 3)
  if os.path.exists(path):
    mean = np.load(path)
    if mean.shape != shape:
      raise ValueError(f"cached mean image {path} has shape {mean.shape}, expected {shape}; "
                       "delete it to recompute")
    return mean.astype(np.float32)
  mean = compute_mean_image(cfg, split=split, max_examples=max_examples)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with files.atomic_path(path) as tmp:  # Several hosts may write the same file.
    np.save(tmp, mean)
  logging.info("wrote mean image to %s", path)
  return mean


def _mean_or_default(cfg: InputConfig, mean) -> np.ndarray:
  mean = load_or_compute_mean_image(cfg) if mean is None else np.asarray(mean, np.float32)
  shape = (cfg.resize_size, cfg.resize_size, 3)
  if mean.shape != shape:
    raise ValueError(f"mean image has shape {mean.shape}, expected {shape}")
  return mean


class Batches(collections.abc.Iterator):
  """Host batches re-aligned to positions; counts the images it had to skip.

  Batch ``k`` holds positions ``first + k * batch_size + [0, batch_size)``.
  A record whose image could not be decoded leaves a hole: in training it is
  filled with a copy of another example of the same batch (so shapes and the
  step -> data mapping stay fixed); in evaluation it gets mask 0. Eval batches
  past the data are all-masked, up to `num_batches`.
  """

  def __init__(self, ds: tf.data.Dataset, batch_size: int, *, first: int = 0,
               num_batches: int | None = None, num_real: int | None = None):
    ds = ds.batch(batch_size).with_options(_options())
    self._empty = {k: np.zeros((0,) + tuple(s.shape[1:]), s.dtype.as_numpy_dtype)
                   for k, s in ds.element_spec.items()}
    self._source = ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()
    self._batch_size, self._first = batch_size, first
    self._num_batches, self._num_real = num_batches, num_real
    self._eval = num_real is not None
    self._buf, self._step = self._empty, 0
    self.num_skipped = 0  # Undecodable images met so far.

  def __next__(self) -> dict:
    if self._num_batches is not None and self._step >= self._num_batches:
      raise StopIteration
    lo = self._first + self._step * self._batch_size
    hi = lo + self._batch_size
    while not len(self._buf["_pos"]) or self._buf["_pos"][-1] < hi - 1:
      more = next(self._source, None)
      if more is None:
        break
      self._buf = more if not len(self._buf["_pos"]) else {
          k: np.concatenate([v, more[k]]) for k, v in self._buf.items()}
    n = int(np.searchsorted(self._buf["_pos"], hi))
    if not n and not self._eval:
      raise StopIteration  # Only if the training stream ended, which it does not.
    rows = {k: v[:n] for k, v in self._buf.items()}
    self._buf = {k: v[n:] for k, v in self._buf.items()}
    self._step += 1
    slots = rows.pop("_pos") - lo
    if n == self._batch_size:  # Positions are increasing and unique: none is missing.
      return {**rows, "mask": np.ones([n], np.float32)} if self._eval else rows
    return self._fill(rows, slots, lo)

  def _fill(self, rows: dict, slots: np.ndarray, lo: int) -> dict:
    present = np.zeros([self._batch_size], bool)
    present[slots] = True
    if self._eval:
      out = {k: np.zeros((self._batch_size,) + v.shape[1:], v.dtype) for k, v in rows.items()}
      for k, v in rows.items():
        out[k][slots] = v
      out["mask"] = present.astype(np.float32)
      skipped = int(np.sum(~present & (lo + np.arange(self._batch_size) < self._num_real)))
    else:
      if not len(slots):
        raise RuntimeError(f"no decodable image in a whole batch (positions {lo}.."
                           f"{lo + self._batch_size - 1}): check the dataset")
      order = np.where(present, np.cumsum(present) - 1, np.arange(self._batch_size) % len(slots))
      out = {k: v[order] for k, v in rows.items()}
      skipped = self._batch_size - len(slots)
    if skipped:
      self.num_skipped += skipped
      logging.warning("skipped %d undecodable image(s) so far", self.num_skipped)
    return out


def make_train_iterator(cfg: InputConfig, *, start_step: int = 0,
                        process_index: int | None = None, process_count: int | None = None,
                        mean: np.ndarray | None = None) -> Batches:
  """Endless host-local training batches {"image": f32 (b, H, W, 3), "label": i32 (b,)}.

  Section 3 preprocessing with `cfg.train_crops` crops; b = global batch //
  process_count. Batch `k` of `make_train_iterator(cfg, start_step=s)` is batch
  `s + k` of `make_train_iterator(cfg)`; each epoch is `steps_per_epoch` batches.
  """
  process_index, process_count = _processes(process_index, process_count)
  batch_size = _local_batch_size(cfg.global_batch_size, process_count)
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}")
  builder = _builder(cfg)
  records = _read(builder, cfg.train_split, process_index, process_count, cfg, training=True)
  records = records.map(lambda ex: {"image": ex["image"], "label": ex["label"]})
  if cfg.include_ids:  # A few listed images (a fold's): keep their encoded bytes, not a
    records = records.cache()  # pass over the whole split, for every epoch.
  _, steps_per_epoch = _steps_per_epoch(builder, cfg, process_count)
  if not steps_per_epoch:
    raise ValueError(f"{cfg.dataset}:{cfg.train_split} has fewer examples than "
                     f"global_batch_size={cfg.global_batch_size}")
  mean = _mean_or_default(cfg, mean)
  per_epoch = steps_per_epoch * batch_size  # Every host has at least this many.
  start_epoch, step_in_epoch = divmod(start_step, steps_per_epoch)
  key = (cfg.seed * 1_000_003 + process_index) % (2**31)

  def epoch_records(epoch):
    ds = records.shuffle(cfg.shuffle_buffer, seed=key * 1_000_033 + epoch,
                         reshuffle_each_iteration=False)
    ds = ds.take(per_epoch).enumerate()
    # Resume: drop this epoch's consumed records before any decoding.
    ds = ds.skip(tf.where(epoch == start_epoch, tf.constant(step_in_epoch * batch_size, tf.int64),
                          tf.constant(0, tf.int64)))
    return ds.map(lambda i, ex: {**ex, "_pos": epoch * per_epoch + i})

  ds = tf.data.Dataset.range(start_epoch, 2**62).flat_map(epoch_records)
  ds = ds.map(_train_preprocess(cfg, mean, key), num_parallel_calls=tf.data.AUTOTUNE)
  return Batches(ds.ignore_errors(log_warning=True), batch_size, first=start_step * batch_size)


def _eval_batch_count(builder, cfg: InputConfig, split: str, process_count: int) -> int:
  # The largest host share decides (tfds.even_splits gives the first hosts one more example).
  batch_size = _local_batch_size(cfg.global_batch_size, process_count)
  return -(-max(_host_counts(builder, cfg, split, process_count, training=False)) // batch_size)


def num_eval_batches(cfg: InputConfig, split: str | None = None, *,
                     process_count: int | None = None) -> int:
  """Batches that every host's eval iterator yields for `split`."""
  _, process_count = _processes(0, process_count)
  builder = _builder(cfg)
  split = _resolve_eval_split(builder, cfg, split)
  return _eval_batch_count(builder, cfg, split, process_count)


def make_eval_iterator(cfg: InputConfig, *, crops: str = "center", split: str | None = None,
                       process_index: int | None = None, process_count: int | None = None,
                       mean: np.ndarray | None = None, with_ids: bool = False) -> Batches:
  """One pass of padded host batches {"image", "label", "mask": f32 (b,)} over `split`.

  "image" is (b, H, W, 3) for crops="center" and (b, 10, H, W, 3) for crops="ten"
  (order of `ten_crops`). Every host yields `num_eval_batches` batches; mask is
  1 exactly once for each decodable example of the split, 0 for padding.
  `with_ids`: also "id", the records' ids as bytes (an object array; padding rows are masked).
  """
  _check_choice("crops", crops, EVAL_CROPS)
  process_index, process_count = _processes(process_index, process_count)
  batch_size = _local_batch_size(cfg.global_batch_size, process_count)
  builder = _builder(cfg)
  split = _resolve_eval_split(builder, cfg, split)
  num_batches = _eval_batch_count(builder, cfg, split, process_count)
  records = _read(builder, split, process_index, process_count, cfg)
  num_real = _count(records)
  if num_real > num_batches * batch_size:
    raise RuntimeError(f"host {process_index} got {num_real} examples of {split}, more than "
                       f"{num_batches} x {batch_size}: the split was not divided evenly")
  mean = _mean_or_default(cfg, mean)
  ds = records.enumerate().map(lambda i, ex: {**ex, "_pos": i})
  preprocess = _eval_preprocess(cfg, mean, crops)
  ds = ds.map(lambda ex: {**preprocess(ex), **({"id": ex["id"]} if with_ids else {})},
              num_parallel_calls=tf.data.AUTOTUNE)
  return Batches(ds.ignore_errors(log_warning=True), batch_size, num_batches=num_batches,
                 num_real=num_real)


def thumbnails(cfg: InputConfig, split: str, *, size: int = 32,
               batch_size: int = 512) -> collections.abc.Iterator[dict]:
  """Small grey copies of every decodable image of `split`, in file order (de-duplication).

  Yields host batches {"id": str (b,), "label": int64 (b,) (multi-label
  datasets: (b, C)), "thumb": float32 (b, size, size)}: the whole image
  squashed to size x size (bilinear, antialiased), the mean of its RGB
  channels, 0..255 units. `cfg.classes` applies; the training-split id lists do not.
  """
  if size < 2 or batch_size < 1:
    raise ValueError(f"thumbnails need size >= 2 and batch_size >= 1, got {size}, {batch_size}")
  builder = _builder(cfg)

  def thumb(ex):
    image = tf.image.resize(tf.cast(decode_rgb(ex["image"]), tf.float32), [size, size],
                            method="bilinear", antialias=True)
    return {"id": ex["id"], "label": ex["label"], "thumb": tf.reduce_mean(image, axis=-1)}

  ds = _read(builder, split, cfg=cfg).map(thumb, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.ignore_errors(log_warning=True).batch(batch_size).with_options(_options())
  for batch in ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
    yield {"id": np.array([i.decode() for i in batch["id"]]), "label": batch["label"],
           "thumb": batch["thumb"]}
