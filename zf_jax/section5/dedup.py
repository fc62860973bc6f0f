"""Section 5.2: find the images a target set (Caltech) shares with a source set (ImageNet train).

"One complication is that some of the Caltech datasets have some images that
are also in the ImageNet training data. Using normalized correlation, we
identified these few 'overlap' images and removed them from our Imagenet
training set and then retrained our Imagenet models, so avoiding the
possibility of train/test contamination." Footnote: "For Caltech-101, we
found 44 images in common (out of 9,144 total images), with a maximum overlap
of 10 for any given class. For Caltech-256, we found 243 images in common
(out of 30,607 total images), with a maximum overlap of 18 for any given
class."

The paper does not say at what size or threshold it correlated. Here every
image is a small grey thumbnail (the whole image squashed to size x size,
32 by default, grey = mean of RGB), `normalize` makes it zero-mean and unit
norm, so the dot product of two thumbnails is their normalised (Pearson)
correlation, invariant to brightness and contrast (a * x + b, a > 0).

The search (`search`, `find_duplicates`) holds the normalised targets on the
device as one (M, d) matrix and streams the source set past it in fixed
chunks of `chunk_size` thumbnails (the last one padded with masked zero
rows, so the jitted step compiles once). Per chunk, one matrix product
(M, d) x (d, chunk) and `jax.lax.top_k` over the chunk axis give each target
its k best sources in the chunk; these are merged on the device into a
running top-k per target (each target's `k` nearest sources over the whole
source set, reported whatever their correlation, to show how far the
non-duplicates stay below the threshold). Memory: O(chunk x M + M x k) on
the device; 1.28 M x 30 k at d = 1024 is ~8e13 multiply-adds, seconds on
one GPU (decoding 1.28 M JPEGs is the slow part).

Every pair at or above the threshold. A running top-k alone would lose a
target's (k+1)-th copy. Instead each chunk's own top-k comes back to the host
(M x k values, a few hundred KB) and every entry >= threshold is kept. Where
a target's k-th best in a chunk is itself >= threshold (it may have more
copies in that chunk than k), the host recomputes that target's
correlations with the whole chunk exactly (numpy), so the list is complete
whatever k: every (source, target) pair with correlation >= threshold, the
same pairs as `brute_force`.

Threshold (`DEFAULT_THRESHOLD` = 0.95), measured with 32 px thumbnails made
as `input_pipeline.thumbnails` makes them (antialiased bilinear squash of
the whole image, mean of RGB; here with PIL) on two sets: 124 natural
photo tiles (96 and 128 px tiles of the three photos bundled with
matplotlib and scikit-learn) and 2,000 random smooth RGB images of
120-400 px sides (Gaussian fields with the 1/f amplitude spectrum of
natural images, plus a random gradient). A copy is the image resized to
0.5-2x its size and JPEG re-encoded at quality 75 (or as below). Lowest
correlation of a copy with its original, photo tiles / smooth images:

  resize + JPEG 75 ............................. 0.984 / 0.998  (median 0.9996)
  resize + JPEG 50 ............................. 0.966 / 0.995
  resize + JPEG 75, resize 0.7x + JPEG 75 ...... 0.975 / 0.993
  resize to 0.2-0.5x + JPEG 75 ................. 0.906 / 0.966
  1 px border cropped (~1% of a tile) + JPEG 75  0.944 / 0.987
  2% cropped + JPEG 75 ......................... 0.858 / 0.897
  5% cropped + JPEG 75 ......................... 0.505 / 0.596  (median 0.90 / 0.78)

Highest correlation of two distinct images: 0.900 over the 7,462 pairs of
tiles that do not overlap (sky with a dark corner, from two photos; 99.9th
percentile 0.81), 0.846 over the 2 M pairs of smooth images (99.9th: 0.62).
So 0.95 lies between the distinct images (<= 0.90) and the resized,
re-encoded copies (>= 0.966); copies shrunk to near the thumbnail's size or
cropped by more than ~1% fall below it and are not found (the squashed
thumbnail is not crop-invariant). Images with almost no contrast (a
thumbnail std < 3 grey levels: 9 of the 124 tiles, plain sky or wall; they
are left out of the photo numbers above) are unreliable both ways: their
copies went down to 0.67 and two distinct ones reached 0.92. 7 M distinct
pairs are not ImageNet x Caltech's 4e10, so `overlap` also counts the
targets by their nearest source's correlation (`BANDS`): many just below
the threshold say to look closer (duplicates.json lists the nearest
misses).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zf_jax.section5.dedup_state import SearchState

DEFAULT_THRESHOLD = 0.95
DEFAULT_SIZE = 32
DEFAULT_CHUNK = 4096
DEFAULT_K = 4
# More pairs than this above the threshold: a threshold too low to mean "the same image".
MAX_PAIRS = 10_000_000
# A thumbnail whose pixels' standard deviation (0..255 units) is below this is flat: it
# becomes the zero vector (float32 rounding alone leaves ~1e-5 in a constant image).
FLAT_STD = 1e-3
# Each target's best correlation is counted in these bands (for the report).
BANDS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)

# The paper's footnote to Section 5.2.
PAPER = {
    "caltech101": {"dataset": "Caltech-101", "common": 44, "total": 9144, "max_per_class": 10},
    "caltech256": {"dataset": "Caltech-256", "common": 243, "total": 30607,
                   "max_per_class": 18},
}


@dataclasses.dataclass(frozen=True, order=True)
class Match:
  """One source image found again in the target set (correlation >= threshold)."""

  source_id: str
  target_id: str
  correlation: float


@dataclasses.dataclass(frozen=True)
class SearchResult:
  """What `search` found.

  matches: every (source, target) pair with correlation >= threshold, sorted by
    target id, then correlation (highest first), then source id.
  nearest_ids: per target (in the order given), the ids of its `k` best
    sources over the whole source set, best first ("" where fewer than k).
  nearest_corr: (M, k) float32, their correlations (-inf where fewer than k).
  num_source: source thumbnails read.
  threshold: the threshold used.
  state: the search's final state (`save_state` keeps it for a rerun).
  """

  matches: list[Match]
  nearest_ids: list[list[str]]
  nearest_corr: np.ndarray
  num_source: int
  threshold: float
  state: SearchState | None = None


def _normalize(x, xp):
  """`normalize` with numpy (`xp=np`) or jax.numpy (`xp=jnp`, inside jit)."""
  x = x.reshape(x.shape[0], -1).astype(xp.float32)
  x = x - x.mean(axis=1, keepdims=True)
  norm = xp.sqrt((x * x).sum(axis=1, keepdims=True))
  flat = norm <= FLAT_STD * np.sqrt(x.shape[1])
  return xp.where(flat, 0.0, x / xp.where(flat, 1.0, norm)).astype(xp.float32)


def normalize(thumbs) -> np.ndarray:
  """(b, size, size) thumbnails (any shape (b, ...)) -> (b, d) float32 zero-mean unit rows.

  The dot product of two rows is the normalised (Pearson) correlation of the
  two thumbnails: 1 for an image and any a * x + b (a > 0) of it. A flat image
  (pixel std below `FLAT_STD`) becomes the zero vector and so correlates 0
  with everything, never nan.
  """
  thumbs = np.asarray(thumbs)
  if thumbs.ndim < 2 or (len(thumbs) and thumbs[0].size < 2):
    raise ValueError(f"need a batch of images of at least 2 pixels, got shape {thumbs.shape}")
  return _normalize(thumbs, np)


@functools.partial(jax.jit, static_argnames=("k",), donate_argnums=(1, 2))
def _step(targets, best_corr, best_index, chunk, offset, count, *, k: int):
  """One chunk: its top-k per target, and the running top-k merged with it.

  targets (M, d) normalised; best_* (M, k) the running top-k; chunk (b, ...)
  raw thumbnails whose first `count` rows are real; offset: the global index
  of the chunk's first row.
  """
  x = _normalize(chunk, jnp)
  corr = jnp.matmul(targets, x.T, precision=jax.lax.Precision.HIGHEST)  # (M, b)
  corr = jnp.where(jnp.arange(x.shape[0])[None, :] < count, corr, -jnp.inf)
  chunk_corr, chunk_pos = jax.lax.top_k(corr, k)
  chunk_index = chunk_pos.astype(jnp.int32) + offset
  both_corr = jnp.concatenate([best_corr, chunk_corr], axis=1)  # Earlier sources win ties.
  both_index = jnp.concatenate([best_index, chunk_index], axis=1)
  top_corr, pos = jax.lax.top_k(both_corr, k)
  return top_corr, jnp.take_along_axis(both_index, pos, axis=1), chunk_corr, chunk_index


def rechunk(batches: Iterable[tuple], chunk_size: int
            ) -> Iterator[tuple[list[str], np.ndarray, int | None]]:
  """Batches (ids, thumbnails[, positions]) of any sizes -> chunks (ids, thumbnails, the
  position of the chunk's last thumbnail or None) of exactly `chunk_size` (the last one:
  the rest)."""
  ids: list[str] = []
  parts: list[np.ndarray] = []
  positions: list[int] | None = []
  held = 0
  for batch in batches:
    batch_ids, thumbs = batch[0], np.asarray(batch[1], np.float32)
    if len(batch_ids) != len(thumbs):
      raise ValueError(f"a batch has {len(batch_ids)} ids for {len(thumbs)} thumbnails")
    if len(batch) < 3:
      positions = None
    elif positions is not None:
      positions.extend(np.asarray(batch[2]).tolist())
    ids.extend(str(i) for i in batch_ids)
    parts.append(thumbs)
    held += len(thumbs)
    while held >= chunk_size:
      block = np.concatenate(parts) if len(parts) > 1 else parts[0]
      last = None if positions is None else positions[chunk_size - 1]
      yield ids[:chunk_size], block[:chunk_size], last
      ids, parts, held = ids[chunk_size:], [block[chunk_size:]], held - chunk_size
      positions = None if positions is None else positions[chunk_size:]
  if held:
    yield ids, np.concatenate(parts), None if positions is None else positions[-1]


def _check(threshold: float, chunk_size: int, k: int) -> None:
  if not 0 < threshold <= 1:
    raise ValueError(f"threshold must be in (0, 1], got {threshold}")
  if chunk_size < 1 or not 1 <= k <= chunk_size:
    raise ValueError(f"need chunk_size >= 1 and 1 <= k <= chunk_size, got chunk_size="
                     f"{chunk_size}, k={k}")


def search(source_batches: Iterable[tuple], target_thumbs, target_ids: Sequence[str], *,
           threshold: float = DEFAULT_THRESHOLD, chunk_size: int = DEFAULT_CHUNK,
           k: int = DEFAULT_K, progress: Callable[[int], None] | None = None,
           max_pairs: int = MAX_PAIRS, resume: SearchState | None = None,
           save: Callable[[SearchState], None] | None = None,
           save_seconds: float = 60.0) -> SearchResult:
  """Every source thumbnail whose correlation with a target thumbnail is >= `threshold`.

  Args:
    source_batches: (ids, thumbnails (b, size, size)[, positions (b,)]) of any
      sizes, e.g. ImageNet train; read once, in `chunk_size` chunks. The
      optional positions (increasing, e.g. record numbers) say where the
      stream stands, for `SearchState.position`. After `resume`: the rest of
      the stream, from `resume.position` on.
    target_thumbs: (M, size, size), e.g. Caltech-101; held on the device.
    target_ids: their M ids.
    threshold: the least correlation of a duplicate, in (0, 1].
    chunk_size: source thumbnails per matrix product; the product takes
      4 * chunk_size * M bytes of device memory (4096 x 30 k: 0.5 GB).
    k: nearest sources kept per target (and per chunk before the exact check).
    progress: called with the number of source thumbnails done after each chunk.
    max_pairs: a ValueError once more pairs than this reach the threshold.
    resume: a state `save` was given by a search of the same request (the
      same targets, threshold, chunk_size and k; the caller checks): this one
      goes on from it, and returns what one uninterrupted search returns.
    save: called with the state at a chunk boundary, at most every
      `save_seconds` (e.g. `save_state`, so that a killed search resumes).

  Returns:
    A `SearchResult`; its `matches` are the same pairs as `brute_force`.
  """
  _check(threshold, chunk_size, k)
  target_ids = [str(i) for i in target_ids]
  host_targets = normalize(target_thumbs)
  if len(host_targets) != len(target_ids):
    raise ValueError(f"{len(target_ids)} target ids for {len(host_targets)} thumbnails")
  num_targets = len(host_targets)
  targets = jnp.asarray(host_targets)
  if resume is None:
    resume = SearchState(num_source=0, position=0,
                         best_corr=np.full((num_targets, k), -np.inf, np.float32),
                         best_index=np.full((num_targets, k), -1, np.int32),
                         found=np.zeros((0, 3)), ids={})
  if resume.best_corr.shape != (num_targets, k):
    raise ValueError(f"the state to resume holds {resume.best_corr.shape} best sources, not "
                     f"({num_targets}, {k}): it is another search's")
  best_corr, best_index = jnp.asarray(resume.best_corr), jnp.asarray(resume.best_index)
  base, earlier_ids = resume.num_source, resume.ids  # Sources before `base`: only these ids.
  source_ids: list[str] = []  # From `base` on.
  # (source index, target index, correlation)
  found: list[tuple[int, int, float]] = [(int(a), int(b), float(c)) for a, b, c in resume.found]
  position = resume.position
  pending = None  # The previous chunk's results: read while the device does the next.
  last_save = time.monotonic()

  def collect(chunk_corr, chunk_index, chunk, offset):
    chunk_corr, chunk_index = np.asarray(chunk_corr), np.asarray(chunk_index)
    full = chunk_corr[:, -1] >= threshold  # Maybe more than k copies in this chunk.
    rows, cols = np.nonzero((chunk_corr >= threshold) & ~full[:, None])
    found.extend(zip(chunk_index[rows, cols].tolist(), rows.tolist(),
                     np.minimum(chunk_corr[rows, cols], 1.0).tolist()))
    if full.any():
      rows = np.flatnonzero(full)
      exact = host_targets[rows] @ normalize(chunk).T  # (f, count): every source of the chunk.
      r, c = np.nonzero(exact >= threshold)
      found.extend(zip((offset + c).tolist(), rows[r].tolist(),
                       np.minimum(exact[r, c], 1.0).tolist()))
    if len(found) > max_pairs:
      raise ValueError(f"more than {max_pairs:,} (source, target) pairs correlate >= "
                       f"{threshold:g}: a threshold this low does not mean the same image")

  def name(i: int) -> str:
    return source_ids[i - base] if i >= base else earlier_ids[i]

  def state() -> SearchState:
    corr, index = np.asarray(best_corr), np.asarray(best_index)
    used = {int(i) for i in index.ravel() if i >= 0} | {s for s, _, _ in found}
    return SearchState(num_source=base + len(source_ids), position=position, best_corr=corr,
                       best_index=index, found=np.array(found, np.float64).reshape(-1, 3),
                       ids={i: name(i) for i in sorted(used)})

  for ids, chunk, last in rechunk(source_batches, chunk_size):
    count, offset = len(ids), base + len(source_ids)
    if offset + count >= np.iinfo(np.int32).max:
      raise ValueError("more than 2**31 source images")
    padded = chunk
    if count < chunk_size:
      padded = np.zeros((chunk_size,) + chunk.shape[1:], np.float32)
      padded[:count] = chunk
    if num_targets and chunk[0].size != host_targets.shape[1]:
      raise ValueError(f"source thumbnails of {chunk[0].size} pixels, target thumbnails of "
                       f"{host_targets.shape[1]}: use one size")
    source_ids.extend(ids)
    position = offset + count if last is None else last + 1
    if not num_targets:
      continue
    best_corr, best_index, chunk_corr, chunk_index = _step(
        targets, best_corr, best_index, jnp.asarray(padded), np.int32(offset), np.int32(count),
        k=k)
    if pending is not None:
      collect(*pending)
    pending = (chunk_corr, chunk_index, chunk, offset)
    if progress is not None:
      progress(base + len(source_ids))
    if save is not None and time.monotonic() - last_save >= save_seconds:
      collect(*pending)  # Everything up to this chunk, so the state is whole.
      pending = None
      save(state())
      last_save = time.monotonic()
  if pending is not None:
    collect(*pending)

  matches = sorted((Match(name(s), target_ids[t], c) for s, t, c in found),
                   key=lambda m: (m.target_id, -m.correlation, m.source_id))
  final = state()
  nearest_ids = [[name(i) if i >= 0 else "" for i in row] for row in final.best_index.tolist()]
  return SearchResult(matches=matches, nearest_ids=nearest_ids, nearest_corr=final.best_corr,
                      num_source=final.num_source, threshold=float(threshold), state=final)


def find_duplicates(source_batches: Iterable[tuple[Sequence[str], np.ndarray]], target_thumbs,
                    target_ids: Sequence[str], *, threshold: float = DEFAULT_THRESHOLD,
                    chunk_size: int = DEFAULT_CHUNK, k: int = DEFAULT_K) -> list[Match]:
  """`search(...).matches`: every (source, target, correlation) with correlation >= threshold,
  sorted by target id, then correlation (highest first), then source id."""
  return search(source_batches, target_thumbs, target_ids, threshold=threshold,
                chunk_size=chunk_size, k=k).matches


def brute_force(source_thumbs, source_ids: Sequence[str], target_thumbs,
                target_ids: Sequence[str], threshold: float = DEFAULT_THRESHOLD) -> list[Match]:
  """The reference: every correlation computed at once in float64 (small sets only)."""
  s = normalize(source_thumbs).astype(np.float64)
  t = normalize(target_thumbs).astype(np.float64)
  corr = t @ s.T
  rows, cols = np.nonzero(corr >= threshold)
  return sorted((Match(str(source_ids[c]), str(target_ids[r]), min(float(corr[r, c]), 1.0))
                 for r, c in zip(rows, cols)),
                key=lambda m: (m.target_id, -m.correlation, m.source_id))


# --- Counting and tabulating -------------------------------------------------------------------


def paper_key(dataset: str) -> str | None:
  """The key of `PAPER` for a dataset name (tfds name or image folder), or None.

  caltech101 (tfds), and an image folder whose path names Caltech-256
  ("caltech256", "caltech-256", "caltech_256" or its archive's
  "256_ObjectCategories").
  """
  name = dataset.lower()
  if re.split(r"[:/]", name)[0] == "caltech101":
    return "caltech101"
  if re.search(r"caltech[-_ ]?256|256_objectcategories", name):
    return "caltech256"
  return None


def overlap(result: SearchResult, target_ids: Sequence[str],
            target_classes: Sequence[int | Sequence[int]],
            class_names: Sequence[str] | None = None) -> dict[str, Any]:
  """The footnote's counts: target images in common, out of how many, most in one class.

  Args:
    result: `search`'s.
    target_ids: the targets searched for.
    target_classes: per target its label, or its labels (a multi-label image
      counts in each of its classes).
    class_names: label -> name (None: the labels themselves).

  Returns:
    A JSON-ready dict: images_in_common (targets with at least one source
    copy), total_target_images, max_overlap_per_class and
    max_overlap_classes (the classes that reach it), per_class (class name ->
    images in common, classes with any, most first), source_images_removed
    (distinct source ids matched: what training leaves out),
    source_images_searched, pairs (all matches), threshold, and
    nearest_bands (">=0.9": targets whose nearest source correlates >= 0.9).
  """
  def name(label: int) -> str:
    return class_names[label] if class_names and 0 <= label < len(class_names) else str(label)

  classes = {str(t): ((int(c),) if np.ndim(c) == 0 else tuple(int(x) for x in c))
             for t, c in zip(target_ids, target_classes)}
  common = sorted({m.target_id for m in result.matches})
  per_class: dict[str, int] = {}
  for t in common:
    for c in classes[t]:
      per_class[name(c)] = per_class.get(name(c), 0) + 1
  most = max(per_class.values(), default=0)
  best = result.nearest_corr[:, 0] if result.nearest_corr.size else np.zeros(0, np.float32)
  return {
      "images_in_common": len(common),
      "total_target_images": len(target_ids),
      "max_overlap_per_class": most,
      "max_overlap_classes": sorted(c for c, n in per_class.items() if n == most and most),
      "per_class": dict(sorted(per_class.items(), key=lambda kv: (-kv[1], kv[0]))),
      "source_images_removed": len({m.source_id for m in result.matches}),
      "source_images_searched": result.num_source,
      "pairs": len(result.matches),
      "threshold": result.threshold,
      "nearest_bands": {f">={b}": int((best >= b).sum()) for b in BANDS},
  }


# --- The binary's request (experiments/dedup.py), checked before any data is read ----


@dataclasses.dataclass(frozen=True)
class Request:
  """A checked command line."""

  source: tuple[str, str]  # (dataset, split)
  target: tuple[str, str]
  threshold: float
  size: int
  chunk_size: int
  k: int
  batch_size: int


def parse_spec(name: str, spec: str) -> tuple[str, str]:
  """"DATASET:SPLIT" -> (dataset, split), split at the last ':' outside [...] (so
  "folder:/data/c256:all" and "caltech101:train[:50%]" both work)."""
  depth, cut = 0, -1
  for i, ch in enumerate(spec):
    depth += {"[": 1, "]": -1}.get(ch, 0)
    if ch == ":" and depth == 0:
      cut = i
  dataset, split = spec[:cut].strip(), spec[cut + 1:].strip()
  if cut < 0 or not dataset or not split:
    raise ValueError(f"--{name}={spec}: give DATASET:SPLIT, e.g. imagenet2012:train, "
                     "caltech101:train+test or folder:<root>:<split>")
  if dataset == "folder":  # zf_jax.data.input_pipeline.FOLDER_PREFIX without its colon.
    raise ValueError(f"--{name}={spec}: an image folder is folder:<root>:<split>")
  return dataset, split


def request(source: str, target: str, threshold: float, size: int = DEFAULT_SIZE,
            chunk_size: int = DEFAULT_CHUNK, k: int = DEFAULT_K,
            batch_size: int = 512) -> Request:
  """The flags, checked without reading any data; a one-line ValueError for a bad one."""
  src, tgt = parse_spec("source", source), parse_spec("target", target)
  if not 0 < threshold <= 1:
    raise ValueError(f"--threshold={threshold}: a correlation threshold must be in (0, 1]")
  if size < 2:
    raise ValueError(f"--size={size}: thumbnails need at least 2 x 2 pixels")
  if chunk_size < 1:
    raise ValueError(f"--chunk_size={chunk_size}: must be positive")
  if not 1 <= k <= chunk_size:
    raise ValueError(f"--k={k}: must be in 1..--chunk_size ({chunk_size})")
  if batch_size < 1:
    raise ValueError(f"--batch_size={batch_size}: must be positive")
  return Request(src, tgt, float(threshold), size, chunk_size, k, batch_size)

