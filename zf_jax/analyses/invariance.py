"""Feature invariance to vertical translation, scale and rotation (Section 4, Fig. 5).

"Fig. 5 shows 5 sample images being translated, rotated and scaled by
varying degrees while looking at the changes in the feature vectors from the
top and bottom layers of the model, relative to the untransformed feature."
For each image and amount, `invariance_curves` measures the Euclidean
distance between the feature vectors (`zf_jax.model.features`) of the
transformed and untransformed image at layers 1 and 7 (Fig. 5, cols 2 and 3)
and the probability of the true label (col 4).

The transformations act on the whole resized image (resize_size^2, minus the
mean, as `zf_jax.analyses.source.load_examples(..., resize=True)` gives it) and the
model then sees the centre crop of the result, as in evaluation (Section 3):
a translation or a zoom-out brings real image content into the crop from the
margin where the resized image has it, and the mean colour (0) only beyond
its border. The identity (translation 0, scale 1, rotation 0) gives exactly
the evaluation's centre crop. Every transformation is one affine resampling
with bilinear interpolation (`jax.scipy.ndimage.map_coordinates`, order 1),
about the centre of the crop.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from zf_jax import chunks, model
from zf_jax.arch import Arch

KINDS = ("translate", "scale", "rotate")
IDENTITY = {"translate": 0.0, "scale": 1.0, "rotate": 0.0}
# The paper's Fig. 5 axes: vertical translation -60..60 pixels of a 224 px
# input, scale ratio 1..1.8, rotation through a full turn (degrees).
PAPER_MAX_SHIFT = 60.0
PAPER_IMAGE_SIZE = 224
PAPER_MAX_SCALE = 1.8
AXIS_LABELS = {"translate": "vertical translation (pixels)", "scale": "scale (ratio)",
               "rotate": "rotation (degrees)"}

# Sampling positions this close to a pixel centre are taken as on it, so that
# whole-pixel shifts and quarter turns are exact permutations of pixels rather
# than off by float32 rounding of cos/sin (the value moves by < 1e-4 of the
# step between neighbouring pixels).
_SNAP = 1e-4


def check_kind(kind: str) -> str:
  """`kind` if it is one of `KINDS`; else a one-line ValueError."""
  if kind not in KINDS:
    raise ValueError(f"unknown transformation {kind!r}; choose one of {', '.join(KINDS)}")
  return kind


def inverse_map(kind: str, amount: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The affine map from output pixels back to input pixels, about the crop's centre.

  Output pixel p (relative to the centre) samples the input at `a @ (p - t)`:
  "translate" moves the content down by `amount` pixels (negative: up);
  "scale" enlarges it by the factor `amount` (> 1 zooms in); "rotate" turns
  it counter-clockwise as displayed by `amount` degrees (90 is `np.rot90`).

  Returns:
    (a (2, 2), t (2,)) float32, in (row, column) coordinates. Jittable; `kind`
    is static.
  """
  check_kind(kind)
  amount = jnp.asarray(amount, jnp.float32)
  eye, zero = jnp.eye(2, dtype=jnp.float32), jnp.zeros(2, jnp.float32)
  if kind == "translate":
    return eye, jnp.stack([amount, jnp.zeros_like(amount)])
  if kind == "scale":
    return eye / amount, zero
  theta = jnp.deg2rad(jnp.mod(amount, 360.0))  # A whole turn is exactly the identity.
  c, s = jnp.cos(theta), jnp.sin(theta)
  return jnp.stack([jnp.stack([c, s]), jnp.stack([-s, c])]), zero


def warp(image: jax.Array, a: jax.Array, t: jax.Array, size: int) -> jax.Array:
  """The centre `size`^2 crop of `image` resampled through the inverse affine map (a, t).

  Args:
    image: (R, R, C) float32, R >= size, preprocessed (0 is the mean colour).
    a, t: from `inverse_map`: output pixel p, relative to the crop's centre,
      samples the input at the crop's centre + a @ (p - t).
    size: side of the crop (static).

  Returns:
    (size, size, C): bilinear interpolation, 0 where the sample falls outside
    the image (fading to 0 over the last pixel).
  """
  r = image.shape[0]
  offset = (r - size) // 2  # The evaluation's centre crop (zf_jax.data.input_pipeline).
  centre = offset + (size - 1) / 2.0
  grid = jnp.arange(size, dtype=jnp.float32) + offset - centre
  p = jnp.stack(jnp.meshgrid(grid, grid, indexing="ij"))  # (2, size, size): (row, col).
  q = jnp.einsum("ij,jhw->ihw", a, p - t[:, None, None]) + centre
  q = jnp.where(jnp.abs(q - jnp.round(q)) < _SNAP, jnp.round(q), q)
  sample = lambda channel: jax.scipy.ndimage.map_coordinates(
      channel, [q[0], q[1]], order=1, mode="constant", cval=0.0)
  return jax.vmap(sample, in_axes=-1, out_axes=-1)(image)


def transform(image: jax.Array, kind: str, amount, size: int) -> jax.Array:
  """`image` (R, R, C) transformed by `amount` of `kind`, centre `size` crop (see `warp`)."""
  return warp(image, *inverse_map(kind, amount), size)


def translate(image: jax.Array, pixels, size: int) -> jax.Array:
  """Vertical translation by `pixels` (positive: content moves down), centre crop (Fig. 5a)."""
  return transform(image, "translate", pixels, size)


def scale(image: jax.Array, factor, size: int) -> jax.Array:
  """Zoom by `factor` about the centre (> 1 enlarges), centre crop (Fig. 5b)."""
  return transform(image, "scale", factor, size)


def rotate(image: jax.Array, degrees, size: int) -> jax.Array:
  """Rotation by `degrees` counter-clockwise about the centre, centre crop (Fig. 5c)."""
  return transform(image, "rotate", degrees, size)


@functools.partial(jax.jit, static_argnames=("kind", "size"))
def transform_amounts(image: jax.Array, kind: str, amounts: jax.Array, size: int) -> jax.Array:
  """`transform` for every amount at once: (A,) amounts -> (A, size, size, C)."""
  return jax.vmap(lambda amount: transform(image, kind, amount, size))(amounts)


def default_amounts(kind: str, image_size: int, num: int = 25, *, max_shift: float | None = None,
                    max_scale: float = PAPER_MAX_SCALE) -> np.ndarray:
  """Evenly spaced amounts over the ranges of Fig. 5's axes, scaled to `image_size`.

  translate: -m..m pixels, m = `max_shift` or 60 px per 224 px of input
  (rounded to whole pixels: 60 at 224, 9 at 32); scale: 1..`max_scale` (1.8);
  rotate: 0..360 degrees. `num` odd puts the identity in the middle of the
  translations; the scales and rotations start from it.
  """
  check_kind(kind)
  if num < 2:
    raise ValueError(f"need at least 2 amounts per transformation, got {num}")
  if kind == "translate":
    m = round(PAPER_MAX_SHIFT * image_size / PAPER_IMAGE_SIZE) if max_shift is None else max_shift
    if not m > 0:
      raise ValueError(f"max_shift must be a positive number of pixels, got {m}")
    return np.linspace(-m, m, num, dtype=np.float32)
  if kind == "scale":
    if not max_scale > 0 or max_scale == 1:
      raise ValueError(f"max_scale must be a positive ratio other than 1, got {max_scale}")
    return np.linspace(1.0, max_scale, num, dtype=np.float32)
  return np.linspace(0.0, 360.0, num, dtype=np.float32)


@functools.partial(jax.jit, static_argnames=("arch", "layers"))
def _chunk_curves(params, image, label, a, t, arch: Arch, layers: tuple[int, ...]):
  """Curves of one image over a chunk of amounts; (a, t)[0] is the identity (the reference)."""
  crops = jax.vmap(lambda ai, ti: warp(image, ai, ti, arch.image_size))(a, t)
  feats = model.features(params, crops, arch, tuple(sorted(set(layers) | {8})))
  distance = {l: jnp.linalg.norm(feats[l][1:] - feats[l][:1], axis=-1) for l in layers}
  norm = {l: jnp.linalg.norm(feats[l][0]) for l in layers}
  prob = jax.nn.softmax(feats[8], axis=-1)[:, label]
  return distance, norm, prob


def invariance_curves(params: model.Params, arch: Arch, images, labels, *, kind: str,
                      amounts: Sequence[float] | np.ndarray | None = None,
                      layers: Sequence[int] = (1, 7), batch_size: int = 64) -> dict:
  """Fig. 5 (Section 4): feature distances and true-class probability as images are transformed.

  Args:
    params, arch: the model.
    images: (N, R, R, 3) whole resized images minus the mean (R >= arch.image_size;
      `zf_jax.analyses.source.load_examples(src, indices, resize=True)["image"]`).
    labels: (N,) true classes.
    kind: "translate" (vertical, pixels), "scale" (ratio) or "rotate" (degrees).
    amounts: (A,) amounts of `kind`; None: `default_amounts(kind, arch.image_size)`.
    layers: feature layers compared (the paper: 1 and 7; 8 = logits).
    batch_size: crops per forward pass (one of them the untransformed one).

  Returns:
    {"kind", "amounts": (A,), "distance": {layer: (N, A)} Euclidean distances
    between the feature vectors of the transformed and the untransformed
    centre crop; "norm": {layer: (N,)} lengths of the untransformed feature
    vectors (to compare layers in relative terms); "prob": (N, A) softmax
    probability of the true label; "prob_original": (N,) the same for the
    untransformed crop}, numpy arrays.

  Raises:
    ValueError: unknown kind or layer, a non-positive scale, images of the wrong shape.
  """
  check_kind(kind)
  size = arch.image_size
  images = np.asarray(images, np.float32)
  labels = np.asarray(labels, np.int32).reshape(-1)
  if (images.ndim != 4 or images.shape[1] != images.shape[2] or images.shape[1] < size
      or images.shape[3] != 3):
    raise ValueError(f"images of shape {images.shape} do not fit arch {arch.name!r}: expected "
                     f"(N, R, R, 3) whole resized images with R >= {size}")
  if len(labels) != len(images):
    raise ValueError(f"{len(labels)} labels for {len(images)} images")
  if labels.size and not (0 <= labels.min() and labels.max() < arch.num_classes):
    raise ValueError(f"labels must be in 0..{arch.num_classes - 1}, got {labels.tolist()}")
  amounts = np.asarray(default_amounts(kind, size) if amounts is None else amounts, np.float32)
  amounts = amounts.reshape(-1)
  if not np.all(np.isfinite(amounts)):
    raise ValueError(f"{kind} amounts must be finite, got {amounts.tolist()}")
  if kind == "scale" and np.any(amounts <= 0):
    raise ValueError(f"scale factors must be positive, got {amounts.tolist()}")
  if batch_size < 2:
    raise ValueError(f"batch_size must be at least 2 (the original and one transform), "
                     f"got {batch_size}")
  layers = tuple(int(l) for l in layers)
  n, num = len(images), len(amounts)

  # Fixed-size chunks (identity first, padded with identities): one compilation for all.
  chunk = max(min(batch_size - 1, num), 1)
  padded = chunks.pad_to(amounts, -(-num // chunk) * chunk, fill=IDENTITY[kind])
  a, t = jax.vmap(functools.partial(inverse_map, kind))(jnp.asarray(padded))
  a0, t0 = inverse_map(kind, IDENTITY[kind])
  distance = {l: np.zeros((n, num), np.float32) for l in layers}
  norm = {l: np.zeros((n,), np.float32) for l in layers}
  prob = np.zeros((n, num), np.float32)
  prob_original = np.zeros((n,), np.float32)
  for i in range(n):
    image = jnp.asarray(images[i])
    for start in range(0, len(padded), chunk):
      stop = min(start + chunk, num)
      ai = jnp.concatenate([a0[None], a[start:start + chunk]])
      ti = jnp.concatenate([t0[None], t[start:start + chunk]])
      d, nm, p = jax.device_get(_chunk_curves(params, image, labels[i], ai, ti, arch, layers))
      for l in layers:
        distance[l][i, start:stop] = d[l][:stop - start]
        norm[l][i] = nm[l]
      prob[i, start:stop] = p[1:1 + stop - start]
      prob_original[i] = p[0]
  return {"kind": kind, "amounts": amounts, "distance": distance, "norm": norm, "prob": prob,
          "prob_original": prob_original}
