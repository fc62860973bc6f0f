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
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import struct

from zf_jax import deconv, model
from zf_jax.arch import Arch
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


@functools.partial(jax.jit, static_argnames=("arch", "patch", "stride", "chunk"))
def _occlusion(params, arch, image, label, patch, stride, fill, chunk):
  layer = arch.convs[-1].layer

  def measure(images, feature):
    logits, trace = model.apply(params, images, arch)
    probs = jax.nn.softmax(logits)
    activity = jnp.sum(trace.activations[layer][..., feature], axis=(1, 2))
    return probs[:, label], jnp.argmax(logits, -1).astype(jnp.int32), activity

  _, trace = model.apply(params, image[None], arch)
  top = trace.activations[layer][0]
  feature = (jnp.argmax(top.reshape(-1)) % top.shape[-1]).astype(jnp.int32)
  p0, _, a0 = measure(image[None], feature)

  n = grid_size(arch.image_size, patch, stride)
  ii, jj = jnp.meshgrid(jnp.arange(n), jnp.arange(n), indexing="ij")
  corners = jnp.stack([ii.reshape(-1), jj.reshape(-1)], axis=1) * stride

  def at(corner):
    occluded = occlude(image, corner[0], corner[1], patch, fill)
    p, c, a = measure(occluded[None], feature)
    return p[0], c[0], a[0]

  # lax.map with batch_size vmaps `at` over chunks of positions: one chunk's
  # forward pass in memory at a time, all in one compiled computation.
  prob, top_class, activity = jax.lax.map(at, corners, batch_size=chunk)
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
