"""Features of a trained run's layers for a whole dataset, computed once and cached (Section 5).

"We keep layers 1-7 of our ImageNet-trained model fixed and train a new
softmax classifier on top [...] using the training images of the new
dataset" (Section 5.2); Section 5.3 places "either a linear SVM or softmax
classifier on top" of the features of layers 1, 2, 3, 4, 5 or 7. Since
layers 1-7 never change, their outputs are computed once per image: one
jitted forward pass per batch, sharded over all local devices, with the
trained run's own preprocessing (its resize, its centre crop and the mean
image of the data it was trained on). Every fold and every classifier then
reads the same cached arrays.

A layer's feature vector: conv layers 1-5, the maps after relu and max pool
(the deconvnet's starting point); the fully connected layers 6 and 7, their
outputs after relu (no dropout); 8, the logits (a model's own predictions,
used for the from-scratch baselines). The paper does not say how it fed the
large low layers to a classifier (ZFNet's layer 1 alone has 55x55x96 =
290,400 values per image); ours max-pools every conv map larger than
`grid` x `grid` down to that grid (default 6, layer 5's own size at 224 px),
so that layer 1's vector has 6x6x96 = 3,456 values. `grid=0` keeps whole maps.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from zf_jax import model
from zf_jax.arch import Arch
from zf_jax.data import input_pipeline
from zf_jax.files import atomic_path
from zf_jax.runs.workdir import Run

LOGITS = 8  # The layer "number" of the logits (the C-way softmax layer's input).


@dataclasses.dataclass(frozen=True)
class Target:
  """The images features are computed for: a split of a tfds dataset (or `folder:<root>`),
  optionally restricted to some classes (relabelled 0..k-1 in that order)."""
  dataset: str
  split: str
  data_dir: str | None = None
  classes: tuple[int, ...] = ()

  def describe(self) -> str:
    classes = f", classes {','.join(map(str, self.classes))}" if self.classes else ""
    return f"{self.dataset}:{self.split}{classes}"


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureSet:
  """Every decodable image of a `Target`, in file order.

  features: {layer: (N, D_l) float32}. labels: (N,) int class labels, or for
  a multi-label dataset (voc/2012) (N, C) targets of 1 / 0 / -1 (difficult).
  ids: (N,) the records' ids (str). class_names: label names, when known.
  """
  features: dict[int, np.ndarray]
  labels: np.ndarray
  ids: np.ndarray
  class_names: tuple[str, ...] | None

  @property
  def num_classes(self) -> int:
    if self.labels.ndim == 2:
      return self.labels.shape[1]
    return len(self.class_names) if self.class_names else int(self.labels.max()) + 1


def valid_layers(arch: Arch) -> tuple[int, ...]:
  """The layers of `arch` that have features: its conv layers, fc 6 / 7 present, and 8."""
  return tuple(arch.conv_layers) + tuple(f.layer for f in arch.fcs) + (LOGITS,)


def check_layers(arch: Arch, layers: Sequence[int]) -> tuple[int, ...]:
  valid = valid_layers(arch)
  bad = [l for l in layers if l not in valid]
  if bad or not layers:
    raise ValueError(f"layers {','.join(map(str, layers)) or '(none)'}: {arch.name} has "
                     f"layers {','.join(map(str, valid))} (8: the logits)")
  return tuple(sorted(set(layers)))


def grid_max_pool(x: jax.Array, grid: int) -> jax.Array:
  """Max over `grid` x `grid` near-equal bins of (N, H, W, C) maps (adaptive max pooling).

  Bin i of an axis of size S spans [floor(i S / g), ceil((i + 1) S / g)): every
  position falls in a bin, and bins overlap by at most one position. Maps no
  larger than the grid (and grid=0) are returned as they are.
  """
  n, h, w, c = x.shape
  if grid <= 0 or (h <= grid and w <= grid):
    return x

  def bins(size):
    g = min(grid, size)
    return [(i * size // g, -(-(i + 1) * size // g)) for i in range(g)]

  rows = [jnp.max(x[:, a:b], axis=1) for a, b in bins(h)]  # each (N, W, C)
  return jnp.stack([jnp.stack([jnp.max(r[:, a:b], axis=1) for a, b in bins(w)], axis=1)
                    for r in rows], axis=1)


@functools.partial(jax.jit, static_argnames=("arch", "layers", "grid"))
def layer_features(params, images: jax.Array, arch: Arch, layers: tuple[int, ...],
                   grid: int) -> dict[int, jax.Array]:
  """{layer: (N, D_l)} of `images` (see the module docstring); conv maps grid-pooled."""
  convs = model.conv_stack(params, images, arch)
  head = model.fully_connected(params, convs.output, arch)
  out = {}
  for l in layers:
    if l in convs.activations:
      out[l] = grid_max_pool(convs.activations[l], grid).reshape(images.shape[0], -1)
    else:
      out[l] = head.logits if l == LOGITS else head.hidden[l]
  return out


def target_input(run: Run, target: Target, batch_size: int | None = None
                 ) -> input_pipeline.InputConfig:
  """The run's own preprocessing (image and resize size), reading `target`'s images."""
  icfg = run.input_config(batch_size=batch_size)
  return dataclasses.replace(icfg, dataset=target.dataset, data_dir=target.data_dir,
                             train_split=target.split, eval_split=target.split,
                             classes=target.classes, include_ids=None, exclude_ids=None,
                             mean_max_examples=None)


def _cache_path(cache_dir: str, run: Run, target: Target, layers, grid: int) -> str:
  key = json.dumps({"run": run.digest, "target": dataclasses.asdict(target),
                    "layers": list(layers), "grid": grid}, sort_keys=True)
  stem = re.sub(r"[^\w.-]+", "_", f"{target.dataset}-{target.split}")
  return os.path.join(cache_dir, f"{stem}-{hashlib.sha1(key.encode()).hexdigest()[:12]}.npz")


def _load(path: str, class_names) -> FeatureSet:
  with np.load(path, allow_pickle=False) as z:
    feats = {int(k[len("layer"):]): z[k] for k in z.files if k.startswith("layer")}
    return FeatureSet(features=feats, labels=z["labels"], ids=z["ids"], class_names=class_names)


def extract(run: Run, target: Target, layers: Sequence[int], *, grid: int = 6,
            batch_size: int | None = None, cache_dir: str | None = None,
            say: Callable[[str], None] | None = print) -> FeatureSet:
  """The features of `layers` of `run` for every image of `target` (see the module docstring).

  Args:
    run: a trained run (`Workdir.open(mesh=workdir.make_mesh())` to use every
      local device; its parameters must be replicated on the mesh it uses).
    target: the images.
    layers: any of the run's conv layers, 6 and 7 where present, 8 (logits).
    grid: conv maps are max-pooled to at most grid x grid (0: whole maps).
    batch_size: images per forward pass (default: the run's evaluation batch).
    cache_dir: where the arrays are kept (<cache_dir>/<dataset>-<split>-<key>.npz,
      keyed by the run's recipe and parameters (`Run.digest`), target, layers and
      grid: a run trained again never reads its predecessor's); None: not cached.
    say: progress lines (None: silent).

  Returns:
    A `FeatureSet`.
  """
  layers = check_layers(run.arch, layers)
  if grid < 0:
    raise ValueError(f"grid must be >= 0 (0: whole maps), got {grid}")
  icfg = target_input(run, target, batch_size)
  info = input_pipeline.split_info(icfg, target.split)
  path = _cache_path(cache_dir, run, target, layers, grid) if cache_dir else None
  if path and os.path.exists(path):
    return _load(path, info.class_names)
  mean = input_pipeline.load_or_compute_mean_image(run.input_config())
  leaves = jax.tree.leaves(run.params)
  mesh = getattr(leaves[0].sharding, "mesh", None)
  devices = jax.local_device_count() if mesh is None else mesh.devices.size
  if icfg.global_batch_size % devices:
    raise ValueError(f"batch size {icfg.global_batch_size} is not divisible by the {devices} "
                     f"devices; use a multiple of {devices}")
  place = (lambda x: x) if mesh is None else functools.partial(
      jax.device_put, device=jax.NamedSharding(mesh, jax.P(mesh.axis_names[0])))
  parts: dict[int, list[np.ndarray]] = {l: [] for l in layers}
  labels, ids = [], []
  batches = input_pipeline.make_eval_iterator(icfg, split=target.split, mean=mean,
                                              process_count=1, process_index=0, with_ids=True)
  total = info.num_examples
  start = last = time.time()
  done = 0
  for batch in batches:
    keep = batch["mask"] > 0
    out = layer_features(run.params, place(jnp.asarray(batch["image"])), run.arch, layers, grid)
    for l in layers:
      parts[l].append(np.asarray(out[l])[keep])
    labels.append(batch["label"][keep])
    ids += [i.decode() for i in batch["id"][keep]]
    done += int(keep.sum())
    if say and (time.time() - last > 10 or done >= total):
      last = time.time()
      say(f"features of {target.describe()}: {done}/{total} images "
          f"({done / max(last - start, 1e-9):.0f} img/s)")
  if not ids:
    raise ValueError(f"{target.describe()} has no decodable image")
  fs = FeatureSet(features={l: np.concatenate(parts[l]) for l in layers},
                  labels=np.concatenate(labels), ids=np.array(ids), class_names=info.class_names)
  if path:
    os.makedirs(cache_dir, exist_ok=True)
    with atomic_path(path) as tmp:
      with open(tmp, "wb") as f:
        np.savez(f, labels=fs.labels, ids=fs.ids, **{f"layer{l}": v for l, v in fs.features.items()})
  return fs
