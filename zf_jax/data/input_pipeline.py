"""tf.data input pipeline for any tfds image classification dataset (Section 3).

With `zf_jax.data.sources` (which datasets, records, labels and ids; its
public names are this module's too), the only module of zf_jax that imports
tensorflow; it hands the trainer host-local numpy batches. Preprocessing follows Section 3 of
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
import os
import re

from absl import logging
import numpy as np

from zf_jax import files
from zf_jax.data.sources import (  # noqa: F401  (the public names are this module's too)
    EVAL_CROPS, FOLDER_PREFIX, TRAIN_CROPS, DatasetInfo, InputConfig, SplitInfo, _builder,
    _check_choice, _count, _data_dir_root, _host_counts, _id_filter_suffix, _local_batch_size,
    _options, _processes, _read, _resolve_eval_split, _selective, _steps_per_epoch,
    dataset_info, decode_rgb, ids_digest, read_ids, split_info, tensorflow, tf, write_ids)

_MEAN_DIR = "zf_jax_mean"


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
  """The cached mean image at `mean_image_path`, computed and written if absent.

  With `cfg.mean_rgb`, that constant colour instead (nothing is read or cached).
  """
  shape = (cfg.resize_size, cfg.resize_size, 3)
  if cfg.mean_rgb:
    return np.broadcast_to(np.asarray(cfg.mean_rgb, np.float32), shape).copy()
  path = mean_image_path(cfg, split, max_examples)
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


def thumbnails(cfg: InputConfig, split: str, *, size: int = 32, batch_size: int = 512,
               start: int = 0) -> collections.abc.Iterator[dict]:
  """Small grey copies of every decodable image of `split`, in file order (de-duplication).

  Yields host batches {"id": str (b,), "label": int64 (b,) (multi-label
  datasets: (b, C)), "thumb": float32 (b, size, size), "position": int64 (b,)}:
  the whole image squashed to size x size (bilinear, antialiased), the mean of
  its RGB channels, 0..255 units; its record's number in the split (undecodable
  records are skipped, and counted). `cfg.classes` applies; the training-split
  id lists do not. `start`: begin at that record (a resumed pass), the records
  before it are read but not decoded.
  """
  if size < 2 or batch_size < 1:
    raise ValueError(f"thumbnails need size >= 2 and batch_size >= 1, got {size}, {batch_size}")
  builder = _builder(cfg)

  def thumb(position, ex):
    image = tf.image.resize(tf.cast(decode_rgb(ex["image"]), tf.float32), [size, size],
                            method="bilinear", antialias=True)
    return {"id": ex["id"], "label": ex["label"], "thumb": tf.reduce_mean(image, axis=-1),
            "position": position}

  ds = _read(builder, split, cfg=cfg)
  ds = (ds.skip(start) if start else ds).enumerate(start)
  ds = ds.map(thumb, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.ignore_errors(log_warning=True).batch(batch_size).with_options(_options())
  for batch in ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
    yield {"id": np.array([i.decode() for i in batch["id"]]), "label": batch["label"],
           "thumb": batch["thumb"], "position": batch["position"]}
