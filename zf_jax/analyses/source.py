"""A trained run and the images it is examined on: what every Section 4 analysis starts from.

`open_source(workdir)` restores a run (latest or chosen checkpoint) and pairs
it with a split of a tfds dataset preprocessed exactly as the run was trained
(Section 3: resize, centre crop, minus the run's own mean image). The
analyses (`zf_jax.analyses.topk`, `zf_jax.occlusion`, `zf_jax.analyses.invariance`,
`zf_jax.analyses.correspondence`) take numpy/JAX arrays; this module feeds them.

Analyses run in one process (all local devices visible); example indices
are positions in the split's file order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from zf_jax.data import input_pipeline
from zf_jax.runs.workdir import Run, Workdir


@dataclasses.dataclass(frozen=True)
class Source:
  """A restored run and the split it is examined on.

  run: the restored run (config, arch, params, step, workdir).
  icfg: the run's preprocessing, pointed at `dataset` / `split`.
  mean: the run's mean image (resize_size, resize_size, 3): the model expects
    images minus this, whatever dataset they come from.
  split: the split examined.
  class_names: label names, when the dataset has them.
  grayscale: the dataset's images are grey (one channel tiled to RGB).
  """
  run: Run
  icfg: input_pipeline.InputConfig
  mean: np.ndarray
  split: str
  class_names: tuple[str, ...] | None
  grayscale: bool = False

  @property
  def arch(self):
    return self.run.arch

  @property
  def params(self):
    return self.run.params

  def mean_crop(self, size: int | None = None) -> np.ndarray:
    """The centre size x size of the mean image (default: the model's input size).

    What preprocessing subtracted from a centre crop: `-mean_crop()` is black.
    """
    size = size or self.arch.image_size
    off = (self.mean.shape[0] - size) // 2
    return self.mean[off:off + size, off:off + size]

  def class_name(self, label: int) -> str:
    label = int(label)
    if self.class_names and 0 <= label < len(self.class_names):
      return self.class_names[label]
    return str(label)


def open_source(workdir: str, *, step: int | None = None, dataset: str | None = None,
                split: str | None = None, data_dir: str | None = None,
                batch_size: int = 64) -> Source:
  """Restores the run in `workdir` and points its preprocessing at `dataset:split`.

  Args:
    workdir: a training workdir (config.json, checkpoints/).
    step: checkpoint step; None: the latest.
    dataset: tfds name; None: the run's training dataset.
    split: None: the dataset's validation split (test if it has none).
    data_dir: tfds data_dir; None: the run's.
    batch_size: images per batch when streaming the split.

  Raises:
    FileNotFoundError / ValueError: no such run, checkpoint, dataset or split (one line).
  """
  run = Workdir(workdir).open(step)
  train_icfg = run.input_config(batch_size=batch_size)
  mean = input_pipeline.load_or_compute_mean_image(train_icfg)
  icfg = dataclasses.replace(train_icfg, dataset=dataset or train_icfg.dataset,
                             data_dir=data_dir or train_icfg.data_dir, eval_split=split)
  info = input_pipeline.split_info(icfg, split)
  return Source(run=run, icfg=icfg, mean=mean, split=info.split, class_names=info.class_names,
                grayscale=info.grayscale)


def batches(src: Source, *, max_examples: int | None = None, resize: bool = False
            ) -> Iterator[dict[str, np.ndarray]]:
  """The split in file order: {"image", "label", "index"} per batch, padding removed.

  "image" is (b, H, W, 3), preprocessed as in training (centre crop); with
  `resize`, the whole (resize_size)^2 image before cropping (still minus the
  mean). "index" is each example's position in the split.
  """
  icfg = dataclasses.replace(src.icfg, image_size=src.icfg.resize_size) if resize else src.icfg
  it = input_pipeline.make_eval_iterator(icfg, crops="center", split=src.split, process_index=0,
                                         process_count=1, mean=src.mean)
  size = src.icfg.global_batch_size
  seen = 0
  for k, batch in enumerate(it):
    keep = batch.pop("mask") > 0
    batch["index"] = (k * size + np.arange(size))[keep]
    batch = {key: (v[keep] if key != "index" else v) for key, v in batch.items()}
    if max_examples is not None:
      batch = {key: v[:max(max_examples - seen, 0)] for key, v in batch.items()}
    seen += len(batch["index"])
    if len(batch["index"]):
      yield batch
    if max_examples is not None and seen >= max_examples:
      return


def load_examples(src: Source, indices: Sequence[int], *, resize: bool = False
                  ) -> dict[str, np.ndarray]:
  """The examples at `indices` of the split (any order, repeats allowed), in that order.

  Returns {"image": (n, H, W, 3) preprocessed centre crops, "label": (n,),
  "index": (n,)}; with `resize`, "image" is the whole (resize_size)^2 image
  before cropping (still minus the mean), for transformations that need the
  margin (Fig. 5). Streams the split up to the last index asked for.

  Raises:
    ValueError: an index outside the split.
  """
  indices = np.asarray(indices, np.int64).reshape(-1)
  wanted = set(indices.tolist())
  found: dict[int, tuple[np.ndarray, int]] = {}
  for batch in batches(src, resize=resize) if wanted else ():
    for image, label, index in zip(batch["image"], batch["label"], batch["index"]):
      if int(index) in wanted:
        found[int(index)] = (image, int(label))
    if len(found) == len(wanted):
      break
  missing = sorted(wanted - set(found))
  if missing:
    raise ValueError(f"example index {missing[0]} is not in {src.icfg.dataset}:{src.split}")
  size = src.icfg.resize_size if resize else src.icfg.image_size
  images = np.stack([found[i][0] for i in indices]) if len(indices) else np.zeros(
      (0, size, size, 3), np.float32)
  return {"image": images, "label": np.array([found[i][1] for i in indices], np.int32),
          "index": indices}


def first_of_classes(src: Source, count: int, *, skip: int = 0) -> list[int]:
  """Indices of `count` examples in file order, one per class while classes last.

  A varied, reproducible pick of test images for the figures (Figs. 5, 7).
  """
  picked: list[int] = []
  classes: set[int] = set()
  rest: list[int] = []
  for batch in batches(src):
    for index, label in zip(batch["index"], batch["label"]):
      if index < skip:
        continue
      if int(label) not in classes:
        classes.add(int(label))
        picked.append(int(index))
      elif len(rest) < count:
        rest.append(int(index))
      if len(picked) >= count:
        return picked
  return (picked + rest)[:count]


def display(src: Source, images: np.ndarray) -> np.ndarray:
  """Preprocessed images back to viewable uint8 pixels: add the mean's centre crop back.

  Works for any square size up to resize_size (centre crops of the resized image).
  """
  images = np.asarray(images, np.float32)
  size = images.shape[-2]
  return np.clip(images + src.mean_crop(size), 0, 255).astype(np.uint8)
