"""How much structure the layer-1 filters learned (Section 4.1, Fig. 6).

Fig. 6 (b)-(c) show layer-1 filters as smooth oriented edges and blobs;
random filters are noise. A smooth filter's neighbouring taps are alike, so
the correlation between each tap and its right and lower neighbours
separates the two: about 0 (slightly below, a small-sample bias) for
independent random taps, towards 1 for smooth filters.
"""

from __future__ import annotations

import numpy as np


def neighbour_correlation(w) -> np.ndarray:
  """Per filter, the correlation between horizontally and vertically adjacent taps.

  Args:
    w: conv weights (kh, kw, cin, cout) (HWIO); each filter is averaged over
      its input channels first (what Fig. 6 shows for a grey dataset).

  Returns:
    (cout,) Pearson correlations of the pairs (tap, right neighbour) and
    (tap, lower neighbour) of each filter, pooled; 0 for a constant filter.
  """
  w = np.asarray(w, np.float64)
  if w.ndim != 4 or min(w.shape[:2]) < 2:
    raise ValueError(f"need HWIO conv weights with kernels of at least 2x2, got shape {w.shape}")
  m = w.mean(axis=2)  # (kh, kw, cout)
  cout = m.shape[-1]
  a = np.concatenate([m[:, :-1].reshape(-1, cout), m[:-1, :].reshape(-1, cout)])
  b = np.concatenate([m[:, 1:].reshape(-1, cout), m[1:, :].reshape(-1, cout)])
  a, b = a - a.mean(0), b - b.mean(0)
  den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
  return np.where(den > 0, (a * b).sum(0) / np.where(den > 0, den, 1.0), 0.0)


def median_neighbour_correlation(w) -> float:
  """The median over filters of `neighbour_correlation(w)`: Fig. 6's one-number summary."""
  return float(np.median(neighbour_correlation(w)))


# Median correlation above which layer-1 filters count as learned: random
# filters sit near 0 (about -0.05 for 5x5); Fig. 6 (c)'s smooth edges and
# blobs are far above.
LEARNED = 0.3


def verdict(median: float) -> str:
  """Words for `median_neighbour_correlation`'s value, for Fig. 6's table and the log."""
  if median >= LEARNED:
    return f"structured (>= {LEARNED})"
  return f"noise (< {LEARNED}): layer 1 has not learned yet"
