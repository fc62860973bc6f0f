"""Fig. 7: occlusion sensitivity (Section 4.2, "Occlusion Sensitivity").

"we systematically occlud[e] different portions of the input image with a
grey square, and monitor the output of the classifier ... (b): for each
position of the gray scale, we record the total activation in one layer 5
feature map (the one with the strongest response in the unoccluded image).
(c): a visualization of this feature map projected down into the input image
... (d): a map of correct class probability, as a function of the position
of the gray square ... (e): the most probable label as a function of
occluder position."

Every occluder position is evaluated in one jit-compiled computation: the
positions are split into chunks of `chunk` images (`jax.lax.map` with
`batch_size`), so memory is bounded by one chunk's forward pass.

The forward pass of an occluded image only recomputes what the square
changed: in the first layers that is a window around it (a 50-px square on
ZFNet's 224-px input touches 28 of conv1's 110 rows, 10 of conv2's 26), pasted
into the unoccluded image's maps; layers where the change has spread over
most of the map are computed whole. The results equal a plain forward pass of
each occluded image (up to float rounding).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import struct

import numpy as np
from jax import lax

from zf_jax import deconv, layers, model
from zf_jax.arch import Arch, feature_shapes
from zf_jax.model import Params


@struct.dataclass
class OcclusionMaps:
  """Fig. 7's maps, indexed by occluder position (i, j): top-left corner (i*stride, j*stride).

  prob: (rows, cols) softmax probability of the given label.
  top_class: (rows, cols) int32, the most probable class.
  activity: (rows, cols) total activation (sum over space) of map `feature`
    of `layer` (the top conv layer).
  feature: () int32, the map of `layer` that holds the largest single
    activation on the unoccluded image.
  unoccluded_prob, unoccluded_activity: () the same quantities without an occluder.
  patch, stride, layer: the geometry (static).
  """
  prob: jax.Array
  top_class: jax.Array
  activity: jax.Array
  feature: jax.Array
  unoccluded_prob: jax.Array
  unoccluded_activity: jax.Array
  patch: int = struct.field(pytree_node=False)
  stride: int = struct.field(pytree_node=False)
  layer: int = struct.field(pytree_node=False)

  def box(self, i: int, j: int) -> tuple[int, int, int, int]:
    """The occluder's pixels (y0, x0, y1, x1) at position (i, j)."""
    y, x = i * self.stride, j * self.stride
    return y, x, y + self.patch, x + self.patch


def grid_size(image_size: int, patch: int, stride: int) -> int:
  """Positions per axis: every i with the square inside the image, i * stride + patch <= size."""
  return (image_size - patch) // stride + 1


def _check(arch: Arch, image, label, patch: int, stride: int) -> None:
  size = arch.image_size
  if tuple(image.shape) != (size, size, 3):
    raise ValueError(f"image of shape {tuple(image.shape)} does not fit arch {arch.name!r}: "
                     f"expected ({size}, {size}, 3), one preprocessed image")
  if not 1 <= patch <= size:
    raise ValueError(f"patch must be in [1, {size}] (the image size), got {patch}")
  if stride < 1:
    raise ValueError(f"stride must be >= 1, got {stride}")
  if isinstance(label, int) and not 0 <= label < arch.num_classes:
    raise ValueError(f"label {label} is not a class of arch {arch.name!r} "
                     f"(0..{arch.num_classes - 1})")


def occlude(image: jax.Array, y: jax.Array, x: jax.Array, patch: int,
            fill: float | jax.Array = 0.0) -> jax.Array:
  """`image` (H, W, C) with the `patch` x `patch` square at top-left (y, x) set to `fill`.

  `fill` is a scalar or an array broadcastable to `image` (per-pixel values).
  """
  rows = jnp.arange(image.shape[0])[:, None, None]
  cols = jnp.arange(image.shape[1])[None, :, None]
  inside = (rows >= y) & (rows < y + patch) & (cols >= x) & (cols < x + patch)
  return jnp.where(inside, jnp.asarray(fill, image.dtype), image)


# A layer is recomputed on a window while the window covers at most this
# share of its conv output; from the first layer beyond it, layers run whole.
_WINDOW_SHARE = 0.5


def _changed(lo, hi, kernel: int, stride: int, pad_lo: int, size: int):
  """Outputs [a, b) of a window op (`kernel`, `stride`, `pad_lo`) whose inputs [lo, hi) changed."""
  a = np.maximum(0, -((pad_lo - kernel + 1 + lo) // -stride))  # ceil
  b = np.minimum(size, (hi - 1 + pad_lo) // stride + 1)
  return a, b


def _windows(arch: Arch, starts: np.ndarray, patch: int):
  """Static plan of the incremental forward pass for squares at rows `starts` (also columns).

  Returns a list, per conv layer recomputed on a window, of (conv window,
  pool window): each (size, starts of every position) with the window inside
  the map and holding every output the square changed (pool window None
  without a pool).
  """
  shapes = feature_shapes(arch)
  lo, hi, plan = starts, starts + patch, []
  for c in arch.convs:
    h = shapes[c.layer]["conv"][0]
    lo, hi = _changed(lo, hi, c.kernel, c.stride, c.padding[0][0], h)
    n = int(np.max(hi - lo))
    if n * n > _WINDOW_SHARE * h * h:
      break
    conv = (n, np.clip(lo, 0, h - n))
    pool = None
    if c.pool is not None:
      hp = shapes[c.layer]["out"][0]
      lo, hi = _changed(lo, hi, c.pool.window, c.pool.stride, c.pool.padding[0][0], hp)
      m = int(np.max(hi - lo))
      pool = (m, np.clip(lo, 0, hp - m))
    plan.append((conv, pool))
  return plan


def _clean_maps(params, arch: Arch, image, upto: int):
  """An image's maps of conv layers 1..`upto`: a `model.ConvLayerOut` per layer."""
  x, maps = image, []
  for c in arch.convs[:upto]:
    maps.append(model.conv_layer(params, x, c))
    x = maps[-1].output
  return maps


def _pad(x, padding, value=0.0):
  return jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)),
                 constant_values=value)


def _cut(x, row, col, size):
  """x[:, row:row + size[0], col:col + size[1]] for traced row, col."""
  return lax.dynamic_slice(x, (0, row, col, 0), (x.shape[0],) + size + (x.shape[-1],))


def _paste(x, window, row, col):
  return lax.dynamic_update_slice(x, window, (0, row, col, 0))


def _forward_from_window(params, arch: Arch, occluded, clean, plan, rows, cols):
  """Logits and top-layer activations of one occluded image (1, H, W, 3), recomputing
  layer l of `plan` only on its window (position's starts `rows[l]`, `cols[l]`)."""
  x = occluded
  for l, ((n, _), pool) in enumerate(plan):
    c = arch.convs[l]
    p = params[f"conv{c.layer}"]
    r0, c0 = rows[l][0], cols[l][0]
    span = (n - 1) * c.stride + c.kernel
    window = _cut(_pad(x, c.padding), r0 * c.stride, c0 * c.stride, (span, span))
    r = layers.relu(layers.conv2d(window, p["w"], p["b"], c.stride, ((0, 0), (0, 0))))
    if c.norm is not None and c.norm_before_pool:  # Across channels only: exact on a window.
      r = layers.lrn(r, c.norm.size, c.norm.alpha, c.norm.beta, c.norm.k)
    r = _paste(clean[l].pool_input, r, r0, c0)
    if pool is None:
      m, pooled = n, r
    else:
      m = pool[0]
      r0, c0 = rows[l][1], cols[l][1]
      span = (m - 1) * c.pool.stride + c.pool.window
      window = _cut(_pad(r, c.pool.padding, -jnp.inf), r0 * c.pool.stride, c0 * c.pool.stride,
                    (span, span))
      pooled = _paste(clean[l].pooled, layers.max_pool(window, c.pool.window, c.pool.stride,
                                                   ((0, 0), (0, 0)))[0], r0, c0)
    x = pooled
    if c.norm is not None and not c.norm_before_pool:
      x = _paste(clean[l].output, layers.lrn(_cut(pooled, r0, c0, (m, m)), c.norm.size,
                                         c.norm.alpha, c.norm.beta, c.norm.k), r0, c0)
  top = pooled if plan else None
  for c in arch.convs[len(plan):]:
    out = model.conv_layer(params, x, c)
    top, x = out.pooled, out.output
  return model.fully_connected(params, x, arch).logits, top


@functools.partial(jax.jit, static_argnames=("arch", "patch", "stride", "chunk"))
def _occlusion(params, arch, image, label, patch, stride, fill, chunk):
  layer = arch.convs[-1].layer

  def measure(logits, top, feature):
    probs = jax.nn.softmax(logits)
    activity = jnp.sum(top[..., feature], axis=(1, 2))
    return probs[:, label], jnp.argmax(logits, -1).astype(jnp.int32), activity

  # The unoccluded image: every layer's maps (the occluded passes paste into
  # them), its top-layer activations and logits.
  clean = _clean_maps(params, arch, image[None], len(arch.convs))
  top0 = clean[-1].pooled
  logits0 = model.fully_connected(params, clean[-1].output, arch).logits
  feature = (jnp.argmax(top0[0].reshape(-1)) % top0.shape[-1]).astype(jnp.int32)
  p0, _, a0 = measure(logits0, top0, feature)

  n = grid_size(arch.image_size, patch, stride)
  plan = _windows(arch, np.arange(n) * stride, patch)
  # Per position (row-major over the grid): its corner and its windows' starts.
  ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
  ii, jj = ii.reshape(-1), jj.reshape(-1)
  starts = lambda idx: [[w[1][idx] if w is not None else idx * 0 for w in step] for step in plan]
  xs = (jnp.asarray(np.stack([ii, jj], axis=1) * stride), starts(ii), starts(jj))

  def at(x):
    corner, rows, cols = x
    occluded = occlude(image, corner[0], corner[1], patch, fill)
    logits, top = _forward_from_window(params, arch, occluded[None], clean, plan, rows, cols)
    p, c, a = measure(logits, top, feature)
    return p[0], c[0], a[0]

  # lax.map with batch_size vmaps `at` over chunks of positions: one chunk's
  # forward pass in memory at a time, all in one compiled computation.
  prob, top_class, activity = jax.lax.map(at, xs, batch_size=chunk)
  return OcclusionMaps(prob=prob.reshape(n, n), top_class=top_class.reshape(n, n),
                       activity=activity.reshape(n, n), feature=feature,
                       unoccluded_prob=p0[0], unoccluded_activity=a0[0], patch=patch,
                       stride=stride, layer=layer)


def occlusion(params: Params, arch: Arch, image: jax.Array, label: int | jax.Array, *,
              patch: int, stride: int, fill: float | jax.Array = 0.0, chunk: int = 64
              ) -> OcclusionMaps:
  """Fig. 7's occlusion maps of one image (Section 4.2).

  Args:
    params, arch: the model.
    image: one preprocessed image (H, W, 3) (mean-subtracted, as in training).
    label: the class whose probability is mapped (the correct one).
    patch: side of the grey square, pixels.
    stride: step between positions, pixels. The square's top-left corner
      visits (i * stride, j * stride) for every i, j with the square inside
      the image.
    fill: the value of every occluded pixel and channel; 0 is the mean image,
      i.e. grey. An array broadcastable to (H, W, 3) gives each pixel its own
      value, e.g. `-mean` for black on datasets whose background is black.
    chunk: positions evaluated together (bounds memory; does not change results).

  Returns:
    OcclusionMaps with (rows, cols) = (grid_size, grid_size) arrays.

  Raises:
    ValueError: an image that does not fit `arch`, or a patch / stride /
      label out of range (one line).
  """
  _check(arch, image, label, patch, stride)
  if chunk < 1:
    raise ValueError(f"chunk must be >= 1, got {chunk}")
  fill = jnp.asarray(fill, jnp.float32)
  try:
    jnp.broadcast_shapes(fill.shape, tuple(image.shape))
  except ValueError:
    raise ValueError(f"fill of shape {fill.shape} does not broadcast to the image's "
                     f"{tuple(image.shape)}") from None
  return _occlusion(params, arch, jnp.asarray(image, jnp.float32), jnp.asarray(label, jnp.int32),
                    patch, stride, fill, chunk)


@functools.partial(jax.jit, static_argnames=("arch", "mode"))
def feature_projection(params: Params, arch: Arch, image: jax.Array, feature: jax.Array, *,
                       mode: str = "deconvnet") -> jax.Array:
  """Fig. 7 (c), Section 4.2: the projection of map `feature`'s strongest activation in `image`.

  The map lives in the top conv layer (the one `occlusion` monitors).
  Returns (H, W, 3).
  """
  layer = arch.convs[-1].layer
  _, trace = model.apply(params, image[None], arch)
  selection = deconv.strongest(trace, layer, feature)
  return deconv.project(params, arch, trace, layer, selection, mode=mode)[0]
