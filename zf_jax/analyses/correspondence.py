"""Section 4.3's correspondence analysis: Table 1 and the masks of Fig. 8.

The paper masks "the same part of the face" (right eye, left eye, nose) in 5
frontal dog images, and compares with masking random parts of the object. For
image i and layer l, eps_i^l = x_i^l - x~_i^l is the change of the layer's
feature vector caused by the mask, and

  Delta_l = sum_{i, j = 1, i != j}^N H(sign(eps_i^l), sign(eps_j^l)),

H the Hamming distance: low Delta means masking the part changes the
representation the same way in every image, i.e. the model implicitly puts the
parts of different images in correspondence.

Choices the paper leaves open (and what Table 1's column title, "Mean Feature
Sign Change", suggests):

* Normalisation. Table 1's values are below 1, so they are not the raw sum
  (which for 9216-d layer-5 vectors would be in the thousands). We report
  `normalised` = Delta / (N (N - 1) D): the Hamming distance as a fraction of
  the vector length D, averaged over the ordered pairs i != j (equal to the
  average over unordered pairs, H being symmetric). The raw sum is kept as
  `delta`.
* "mean +- std". For a named part the std is over the N (N - 1) / 2 image
  pairs' fractions H / D (one masking per image, so pairs are the only thing to
  vary over). For random parts the mean is over R draws and the std over all
  R N (N - 1) / 2 pair fractions pooled, so both rows carry the same statistic;
  the std of the R per-draw means is reported too (`std_over_draws`).
* Random parts. In each draw every image gets its own, independently placed
  box ("random parts of the object": locations need not correspond, which is
  the point of the control), of the same size as one named part's box in that
  image (draw r uses part r mod P, so every part size is used equally), placed
  uniformly inside the image's object box (default: the whole image).
* The mask fills with 0, i.e. the mean pixel (grey) after mean subtraction,
  as Fig. 7's grey occluder. sign(0) = 0, as `np.sign`: a feature the mask
  leaves unchanged in both images agrees.

Part boxes come from a JSON "parts file" (`zf_jax.analyses.part_boxes`); a
built-in one covers the embedded Fashion-MNIST: 5 frontal T-shirts, with
the two sleeves and the neck in the role of the eyes and the nose.

Numbers only: `zf_jax.report.table1` lays them out as Table 1 (Markdown and
JSON, beside `PAPER_TABLE1`) and draws Fig. 8.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from zf_jax import chunks, model
from zf_jax.analyses.part_boxes import PartBoxes
from zf_jax.arch import Arch

IMAGENET = "imagenet2012"
DEFAULT_LAYERS = (5, 7)

# Table 1 verbatim: occlusion location -> {layer: (mean, std)}.
PAPER_TABLE1 = (
    ("Right Eye", {5: (0.067, 0.007), 7: (0.069, 0.015)}),
    ("Left Eye", {5: (0.069, 0.007), 7: (0.068, 0.013)}),
    ("Nose", {5: (0.079, 0.017), 7: (0.069, 0.011)}),
    ("Random", {5: (0.107, 0.017), 7: (0.073, 0.014)}),
)
PAPER_TITLE = "Measure of correspondence for different object parts in 5 different dog images"


# --- Delta: the consistency of sign changes (pure JAX) ---

@struct.dataclass
class Consistency:
  """Delta_l of Section 4.3 for one set of difference vectors (see the module docstring).

  delta: the paper's sum over ordered pairs i != j of H(sign(eps_i), sign(eps_j)).
  normalised: delta / (N (N - 1) D), the mean fraction of sign changes that differ.
  std: std of the per-pair fractions H / D over the N (N - 1) / 2 unordered pairs.
  pair_fractions: those fractions, pairs (i < j) in row-major order.
  """
  delta: jax.Array
  normalised: jax.Array
  std: jax.Array
  pair_fractions: jax.Array


@jax.jit
def sign_hamming(eps: jax.Array) -> jax.Array:
  """(N, N) Hamming distances between the sign vectors of the rows of `eps` (N, D)."""
  s = jnp.sign(eps)
  return jnp.sum(s[:, None, :] != s[None, :, :], axis=-1, dtype=jnp.int32)


@jax.jit
def hamming_consistency(eps: jax.Array) -> Consistency:
  """Delta_l = sum_{i != j} H(sign(eps_i), sign(eps_j)) (Section 4.3, Table 1), raw and normalised.

  Args:
    eps: (N, D) feature differences x_i - x~_i of N >= 2 images at one layer.

  Returns:
    A `Consistency`; `vmap` it over leading axes (e.g. random draws).
  """
  n, d = eps.shape
  if n < 2:
    raise ValueError(f"Delta compares pairs of images: need N >= 2 rows of eps, got {n}")
  h = sign_hamming(eps)
  iu, ju = np.triu_indices(n, 1)
  fractions = h[iu, ju].astype(jnp.float32) / d
  delta = jnp.sum(h)  # The diagonal is 0, so this is the sum over i != j.
  return Consistency(delta=delta, normalised=delta.astype(jnp.float32) / (n * (n - 1) * d),
                     std=jnp.std(fractions), pair_fractions=fractions)


# --- Masks and feature differences ---

def box_masks(boxes: np.ndarray, size: int) -> np.ndarray:
  """Boolean masks (..., size, size) that are True inside boxes (..., 4) = [y0, x0, y1, x1)."""
  boxes = np.asarray(boxes, np.int64)
  r = np.arange(size)
  b = boxes[..., None]
  rows = (r >= b[..., 0, :]) & (r < b[..., 2, :])
  cols = (r >= b[..., 1, :]) & (r < b[..., 3, :])
  return rows[..., :, None] & cols[..., None, :]


def occlude(images: jax.Array, masks: jax.Array, fill: float = 0.0) -> jax.Array:
  """`images` (..., H, W, C) with the pixels where `masks` (..., H, W) is True set to `fill`.

  fill=0 is the mean pixel, i.e. grey, for preprocessed (mean-subtracted) images.
  """
  return jnp.where(jnp.asarray(masks)[..., None], jnp.asarray(fill, images.dtype), images)


@functools.partial(jax.jit, static_argnames=("arch", "layers"))
def _differences(params, images, masks, fill, arch: Arch, layers: tuple[int, ...]):
  # The originals share the batch with their occluded copies, so that both go
  # through the same compiled computation: a feature the mask cannot reach
  # gives eps exactly 0, not a rounding difference.
  k, n = masks.shape[:2]
  occluded = occlude(images[None], masks, fill).reshape((k * n,) + images.shape[1:])
  feats = model.features(params, jnp.concatenate([images, occluded]), arch, layers)
  return {l: f[None, :n] - f[n:].reshape(k, n, -1) for l, f in feats.items()}


def feature_differences(params, arch: Arch, images: np.ndarray, masks: np.ndarray, *,
                        layers: Sequence[int] = DEFAULT_LAYERS, fill: float = 0.0,
                        batch_size: int = 64) -> dict[int, np.ndarray]:
  """eps_i^l = x_i^l - x~_i^l (Section 4.3) for one or many maskings of N images.

  Args:
    params, arch: the model.
    images: (N, H, W, 3) preprocessed images.
    masks: (N, H, W) booleans (one masking per image), or (K, N, H, W) for K
      maskings (e.g. random draws); True = occluded.
    layers: the paper's layer numbers (conv after relu + pool, fc after relu).
    fill: occluder value (0: grey, the mean pixel).
    batch_size: images per forward pass (about; at least one masking's 2N).

  Returns:
    {layer: (N, D) or (K, N, D) float32 differences}, numpy.
  """
  images = np.asarray(images, np.float32)
  masks = np.asarray(masks, bool)
  single = masks.ndim == 3
  masks = masks[None] if single else masks
  if masks.ndim != 4 or masks.shape[1:] != images.shape[:3]:
    raise ValueError(f"masks must be (N, H, W) or (K, N, H, W) for images {images.shape}, "
                     f"got {masks.shape}")
  layers = tuple(int(l) for l in layers)
  k, n = masks.shape[:2]
  chunk = max(1, min(k, batch_size // n - 1))  # (chunk + 1) n images per pass.
  out: dict[int, list[np.ndarray]] = {l: [] for l in layers}
  # The last chunk is padded with no-op maskings (all False): one shape, one compilation.
  for part, got in chunks.padded_chunks(masks, chunk, fill=False):
    eps = _differences(params, images, part, np.float32(fill), arch, layers)
    for l in layers:
      out[l].append(np.asarray(eps[l])[:got])
  result = {l: np.concatenate(v) for l, v in out.items()}
  return {l: v[0] for l, v in result.items()} if single else result


def random_boxes(rng: np.random.Generator, sizes: np.ndarray, regions: np.ndarray) -> np.ndarray:
  """Boxes (..., N, 4) of the given sizes (..., N, 2) = (h, w), placed uniformly in `regions`.

  regions: (N, 4) [y0, x0, y1, x1] per image (the object), each box lying
  wholly inside its image's region; independent locations for every entry.

  Raises:
    ValueError: a size that does not fit its region.
  """
  sizes = np.asarray(sizes, np.int64)
  regions = np.broadcast_to(np.asarray(regions, np.int64), sizes.shape[:-1] + (4,))
  room_y = regions[..., 2] - regions[..., 0] - sizes[..., 0]
  room_x = regions[..., 3] - regions[..., 1] - sizes[..., 1]
  if (room_y < 0).any() or (room_x < 0).any():
    at = np.argwhere((room_y < 0) | (room_x < 0))[0]
    h, w = sizes[tuple(at)].tolist()
    raise ValueError(f"a {h} x {w} box does not fit in region {regions[tuple(at)].tolist()} "
                     f"[y0, x0, y1, x1] of image {at[-1]}")
  y0 = regions[..., 0] + rng.integers(0, room_y + 1)
  x0 = regions[..., 1] + rng.integers(0, room_x + 1)
  return np.stack([y0, x0, y0 + sizes[..., 0], x0 + sizes[..., 1]], axis=-1)


# --- Part boxes: the parts file ---

# --- Table 1 ---

def _summary(c: Consistency) -> dict[str, Any]:
  return {"mean": float(c.normalised), "std": float(c.std), "delta": int(c.delta),
          "pair_fractions": np.asarray(c.pair_fractions).round(6).tolist()}


def analyse(params, arch: Arch, images: np.ndarray, parts: PartBoxes, *, num_random: int = 50,
            seed: int = 0, layers: Sequence[int] = DEFAULT_LAYERS, fill: float = 0.0,
            batch_size: int = 64) -> dict[str, Any]:
  """Table 1's measurements (Section 4.3): Delta at `layers` for named and random parts.

  Args:
    params, arch: the model.
    images: (N, S, S, 3) preprocessed crops, in the order of `parts.indices`.
    parts: their part boxes.
    num_random: R random draws (one box per image per draw).
    seed: numpy seed of the random boxes.
    layers, fill, batch_size: as `feature_differences`.

  Returns:
    {"layers": [...], "dims": {l: D}, "num_images": N, "parts": {name: {l:
    stats}}, "random": {l: stats}, "random_boxes": (R, N, 4) array}, where
    stats = {"mean", "std", "delta", "pair_fractions"} (random: "delta" and
    "mean" averaged over draws, "std" over the pooled pairs, plus
    "std_over_draws").
  """
  images = np.asarray(images, np.float32)
  n, size = images.shape[0], images.shape[1]
  if n != len(parts.indices) or size != parts.image_size:
    raise ValueError(f"images {images.shape} do not match the parts file's {len(parts.indices)} "
                     f"images of {parts.image_size} px")
  if num_random < 1:
    raise ValueError(f"num_random must be >= 1, got {num_random}")
  layers = tuple(int(l) for l in layers)
  names = parts.names
  named_masks = box_masks(np.stack([parts.boxes[p] for p in names]), size)  # (P, N, S, S)
  part_sizes = np.stack([parts.boxes[p][:, 2:] - parts.boxes[p][:, :2] for p in names])
  sizes = part_sizes[np.arange(num_random) % len(names)]  # (R, N, 2): draw r, part r mod P.
  rboxes = random_boxes(np.random.default_rng(seed), sizes, parts.objects)
  masks = np.concatenate([named_masks, box_masks(rboxes, size)])
  eps = feature_differences(params, arch, images, masks, layers=layers, fill=fill,
                            batch_size=batch_size)
  consistency = jax.vmap(hamming_consistency)
  result: dict[str, Any] = {"layers": list(layers), "num_images": n, "num_random": num_random,
                            "dims": {l: int(eps[l].shape[-1]) for l in layers},
                            "parts": {p: {} for p in names}, "random": {},
                            "random_boxes": rboxes}
  for l in layers:
    c = jax.device_get(consistency(jnp.asarray(eps[l])))
    for k, p in enumerate(names):
      result["parts"][p][l] = _summary(jax.tree.map(lambda a, k=k: a[k], c))
    rand = jax.tree.map(lambda a: a[len(names):], c)
    result["random"][l] = {"mean": float(np.mean(rand.normalised)),
                           "std": float(np.std(rand.pair_fractions)),
                           "delta": float(np.mean(rand.delta)),
                           "std_over_draws": float(np.std(rand.normalised))}
  return result
