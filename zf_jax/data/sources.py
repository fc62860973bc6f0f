"""Reading any tfds image classification dataset: which records, their labels and ids.

The half of the input pipeline that knows datasets (`input_pipeline` is the
other half: Section 3's preprocessing, the mean image and the batches).
A dataset is a tfds name or `folder:<root>` (tfds' ImageFolder); its records
come as {"image" (still encoded), "label", "id"}, this host's share of a
split, optionally narrowed to some classes (`InputConfig.classes`) or, for
training, to listed record ids (`include_ids` / `exclude_ids`: Section 5.2's
folds and de-duplicated ImageNet). With `input_pipeline`, the only module of
zf_jax that imports tensorflow / tensorflow_datasets.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
from collections.abc import Iterable

import numpy as np

# Quiet TensorFlow's C++ start-up lines; TF only decodes and resizes images
# here, so its oneDNN kernels (whose notice cannot otherwise be silenced)
# buy nothing.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,wrong-import-position

from zf_jax import files  # pylint: disable=g-import-not-at-top,wrong-import-position
from zf_jax.data import datasets as _datasets  # noqa: F401  registers fashion_mnist_debian


@functools.cache
def tensorflow():
  """TensorFlow, imported on the first call (~3 s of CPU that a binary stopped by a bad
  flag or `--help` never pays) and kept off the accelerators: their memory is JAX's."""
  import tensorflow as tf_module  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  try:
    tf_module.config.set_visible_devices([], "GPU")
  except (RuntimeError, ValueError):  # TF already initialised its devices.
    pass
  return tf_module


class _TensorFlow:
  """`tf.anything` is `tensorflow().anything`: this module and input_pipeline write `tf.`
  as usual and import TensorFlow on its first use (see `tensorflow`)."""

  def __getattr__(self, name: str):
    return getattr(tensorflow(), name)


tf = _TensorFlow()

TRAIN_CROPS = ("ten", "random", "center")
EVAL_CROPS = ("center", "ten")
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
  # A constant per-channel mean (0..255) subtracted instead of the training split's mean
  # image: the ImageNet mean of weights imported from torchvision or pytorchcv.
  mean_rgb: tuple[float, ...] = ()

  def __post_init__(self):
    _check_choice("train_crops", self.train_crops, TRAIN_CROPS)
    if self.mean_rgb and (len(self.mean_rgb) != 3
                          or not all(0 <= v <= 255 for v in self.mean_rgb)):
      raise ValueError(f"mean_rgb must be 3 values in 0..255 (R, G, B), got {list(self.mean_rgb)}")
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


def write_ids(path: str, ids, comment: str) -> str:
  """Writes the id file `read_ids` reads: a `# comment` line (whitespace folded), then one id
  per line; atomically, its folder created. Returns `path`."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  header = "# " + " ".join(comment.split())
  return files.atomic_write(path, "\n".join([header, *ids]) + "\n")


def ids_digest(ids: Iterable[str]) -> str:
  """sha1 (hex) of a set of record ids, whatever their order (`read_ids(path)` for an id
  file's): which images a run trained on, for comparing two runs or naming a file."""
  return hashlib.sha1("\n".join(sorted(ids)).encode()).hexdigest()


def _id_filter_suffix(cfg: InputConfig) -> str:
  """A short tag of the record selection, for file names (the mean image cache)."""
  parts = []
  if cfg.classes:
    parts.append("c" + "_".join(map(str, cfg.classes)))
  for tag, path in (("in", cfg.include_ids), ("ex", cfg.exclude_ids)):
    if path:
      parts.append(tag + ids_digest(read_ids(path))[:10])
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
    from tensorflow.python.util import deprecation  # pylint: disable=g-import-not-at-top,g-direct-tensorflow-import,import-outside-toplevel
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
