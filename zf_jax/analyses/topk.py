"""Fig. 2: the strongest activations of every feature map over a dataset, and their projections.

Section 4: "for a given feature map, we show the top 9 activations, each
projected separately down to pixel space, revealing the different structures
that excite that map ... Alongside these visualizations we show the
corresponding image patches."

`update` keeps, for every feature map of every chosen conv layer, the `k`
strongest activations seen so far, as (value, example index, row, column),
merged on the device batch by batch: memory is constant in the size of the
split. Each image counts once per map, at its strongest location (so a map's
top 9 are 9 different images, as in the paper's figures). Ties go to the
example seen first, then to the first location in row-major order.

`project_top` then projects each kept activation with the deconvnet, using
the switches of its own image (Section 2.1), and `patches` cuts the matching
receptive fields out of images and projections (`arch.receptive_field`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from zf_jax import chunks, deconv, model
from zf_jax.arch import Arch, receptive_field
from zf_jax.model import Params


@struct.dataclass
class TopK:
  """Per conv layer l, arrays of shape (maps, k), best first.

  value: the activation (after relu and pool, before LRN); -inf where empty.
  index: example index in the stream; -1 where empty.
  row, col: the activation's location in layer l's output maps.
  """
  value: dict[int, jax.Array]
  index: dict[int, jax.Array]
  row: dict[int, jax.Array]
  col: dict[int, jax.Array]

  @property
  def layers(self) -> tuple[int, ...]:
    return tuple(sorted(self.value))

  @property
  def k(self) -> int:
    return int(next(iter(self.value.values())).shape[1])


def _check_layers(arch: Arch, layers: Sequence[int]) -> tuple[int, ...]:
  layers = tuple(sorted(set(int(l) for l in layers)))
  bad = [l for l in layers if l not in arch.conv_layers]
  if not layers or bad:
    raise ValueError(f"layers must be conv layers of {arch.name!r} ({list(arch.conv_layers)}), "
                     f"got {list(layers)}")
  return layers


def init(arch: Arch, layers: Sequence[int], k: int = 9) -> TopK:
  """An empty TopK for `layers` (paper numbers) of `arch`, `k` per map."""
  layers = _check_layers(arch, layers)
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  maps = {l: arch.conv(l).features for l in layers}
  full = lambda v, dtype: {l: jnp.full((c, k), v, dtype) for l, c in maps.items()}
  return TopK(value=full(-jnp.inf, jnp.float32), index=full(-1, jnp.int32),
              row=full(0, jnp.int32), col=full(0, jnp.int32))


@functools.partial(jax.jit, static_argnames=("arch",), donate_argnums=0)
def update(state: TopK, params: Params, arch: Arch, images: jax.Array, index: jax.Array,
           valid: jax.Array | None = None) -> TopK:
  """Merges one batch into `state` (Fig. 2's top activations, Section 4).

  Args:
    state: from `init` or a previous `update` (donated).
    params: the model's parameters.
    arch: the architecture (static).
    images: (B, H, W, 3) preprocessed images.
    index: (B,) int example indices (their position in the stream).
    valid: (B,) bool; False rows (padding) are ignored. None: all valid.

  Returns:
    The merged TopK: per map, the k largest of the old entries and this
    batch's per-image maxima (old entries first on ties).
  """
  layers = state.layers
  acts = model.conv_stack(params, images, arch, top=max(layers)).activations
  valid = jnp.ones(images.shape[:1], bool) if valid is None else valid.astype(bool)
  out = {f: {} for f in ("value", "index", "row", "col")}
  for l in layers:
    a = acts[l]
    b, h, w, c = a.shape
    flat = a.reshape(b, h * w, c)
    where = jnp.argmax(flat, axis=1)  # (B, C): first maximum in row-major order.
    best = jnp.max(flat, axis=1)
    best = jnp.where(valid[:, None], best, -jnp.inf)
    k = state.value[l].shape[1]
    values = jnp.concatenate([state.value[l], best.T], axis=1)  # (C, k + B)
    top, pos = jax.lax.top_k(values, k)  # Stable: earlier columns first on ties.
    take = lambda old, new: jnp.take_along_axis(jnp.concatenate([old, new], axis=1), pos, 1)
    idx = jnp.broadcast_to(index.astype(jnp.int32)[None, :], (c, b))
    out["value"][l] = top
    out["index"][l] = take(state.index[l], jnp.where(valid[None, :], idx, -1))
    out["row"][l] = take(state.row[l], (where // w).T.astype(jnp.int32))
    out["col"][l] = take(state.col[l], (where % w).T.astype(jnp.int32))
  return TopK(**out)


def over_batches(params: Params, arch: Arch, batches: Iterable[dict], layers: Sequence[int],
                 k: int = 9) -> TopK:
  """`update` over every batch {"image", "index"[, "valid"]} of a stream; one pass."""
  state = init(arch, layers, k)
  sharding = getattr(jax.tree.leaves(params)[0], "sharding", None)
  if sharding is not None:  # On the parameters' devices, as `update` returns it: one compile.
    state = jax.device_put(state, sharding)
  for batch in batches:
    valid = batch.get("valid")
    state = update(state, params, arch, jnp.asarray(batch["image"]),
                   jnp.asarray(batch["index"]), None if valid is None else jnp.asarray(valid))
  return jax.tree.map(np.asarray, state)


@functools.partial(jax.jit, static_argnames=("arch", "layer", "mode"))
def _project_maps(params, arch, layer, images, rows, cols, maps, mode):
  """images (M, k, H, W, 3); rows, cols (M, k); maps (M,) -> projections (M, k, H, W, 3)."""
  m, k = rows.shape
  _, trace = model.apply(params, images.reshape((m * k,) + images.shape[2:]), arch)
  units = (jnp.arange(m * k), rows.reshape(-1), cols.reshape(-1), jnp.repeat(maps, k))
  return deconv.project_units(params, arch, trace, layer, units, mode=mode).reshape(images.shape)


def project_top(params: Params, arch: Arch, state: TopK, layer: int, maps: Sequence[int],
                images: np.ndarray, *, mode: str = "deconvnet", chunk: int = 8) -> np.ndarray:
  """Deconvnet projections (Section 2.1) of the kept activations of `maps` of `layer` (Fig. 2).

  Args:
    params, arch: the model.
    state: a filled TopK.
    layer: a layer of `state`.
    maps: feature map indices.
    images: (len(maps), k, H, W, 3): the preprocessed image of every kept
      entry (`state.index[layer][maps]`; anything, e.g. zeros, for empty ones).
    mode: `deconv.project`'s mode.
    chunk: maps per compiled call (bounds memory).

  Returns:
    (len(maps), k, H, W, 3) projections; zeros for empty entries. Each one
    unpools with the switches of its own image and starts from that image's
    activation at the kept location (the same value `state` holds).
  """
  if layer not in state.value:
    raise ValueError(f"layer {layer} was not tracked; the TopK holds layers {list(state.layers)}")
  if chunk < 1:
    raise ValueError(f"chunk must be >= 1, got {chunk}")
  maps = np.asarray(maps, np.int32)
  rows, cols = np.asarray(state.row[layer])[maps], np.asarray(state.col[layer])[maps]
  empty = np.asarray(state.index[layer])[maps] < 0
  size = chunk  # Every call has this many maps: one compile per layer, whatever len(maps).
  out = []
  # The last chunk repeats its last map up to `size`.
  for part, n in chunks.padded_chunks((images, rows, cols, maps), size, fill=chunks.EDGE):
    part = [jnp.asarray(x) for x in part]
    out.append(np.asarray(_project_maps(params, arch, layer, *part, mode))[:n])
  proj = np.concatenate(out) if out else np.zeros((0,) + images.shape[1:], np.float32)
  proj[empty] = 0.0
  return proj


def patch_boxes(arch: Arch, layer: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
  """Input-pixel boxes (y0, x0, y1, x1) seen by units (rows, cols) of `layer`, unclipped."""
  size, stride, offset = receptive_field(arch, layer)
  y0 = np.asarray(rows) * stride - offset
  x0 = np.asarray(cols) * stride - offset
  return np.stack([y0, x0, y0 + size, x0 + size], axis=-1)


def patches(arch: Arch, layer: int, images: np.ndarray, rows: np.ndarray, cols: np.ndarray,
            fill: float = 0.0) -> np.ndarray:
  """Cuts each unit's receptive field out of its image or projection (Fig. 2's patches, Section 4).

  Args:
    images: (..., H, W, C) one image per unit.
    rows, cols: (...) unit locations in layer `layer`'s output.
    fill: value where the receptive field leaves the image (it overhangs at
      the borders because of padding).

  Returns:
    (..., size, size, C) with size the layer's receptive field.
  """
  images = np.asarray(images)
  size = receptive_field(arch, layer)[0]
  boxes = patch_boxes(arch, layer, rows, cols).reshape(-1, 4)
  flat = images.reshape((-1,) + images.shape[-3:])
  padded = np.pad(flat, ((0, 0), (size, size), (size, size), (0, 0)), constant_values=fill)
  out = np.stack([padded[i, y0 + size:y0 + 2 * size, x0 + size:x0 + 2 * size]
                  for i, (y0, x0, _, _) in enumerate(boxes)]) if len(boxes) else np.zeros(
                      (0, size, size, images.shape[-1]), images.dtype)
  return out.reshape(images.shape[:-3] + (size, size, images.shape[-1]))
