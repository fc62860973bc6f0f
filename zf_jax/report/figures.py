"""Drawing helpers shared by the figure binaries (matplotlib, no pyplot state).

Figures are `matplotlib.figure.Figure` objects saved straight to PNG, so
nothing here touches the interactive backend of a notebook.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from zf_jax.files import atomic_path


def signed_to_unit(x: np.ndarray, axis=(-3, -2, -1)) -> np.ndarray:
  """Per-image contrast normalisation of a signed map: 0 -> grey 0.5, max |x| -> 0 or 1.

  How the deconvnet projections are shown (Figs. 2, 4, 6, 7): each one is
  scaled on its own, so only its pattern, not its strength, is visible.
  """
  x = np.asarray(x, np.float32)
  scale = np.max(np.abs(x), axis=axis, keepdims=True)
  return 0.5 + 0.5 * x / np.where(scale > 0, scale, 1.0)


def channel_mean(x: np.ndarray) -> np.ndarray:
  """The mean over the last (colour) axis, repeated: what a grey image can see of `x`.

  On a grayscale dataset every input has equal channels, so only the mean of
  a filter's (or a projection's) channels meets the data; the rest is its
  untouched initial noise. The figures show this part for such datasets.
  """
  x = np.asarray(x, np.float32)
  return np.repeat(x.mean(-1, keepdims=True), x.shape[-1], axis=-1)


def minmax_to_unit(x: np.ndarray, axis=(-3, -2, -1)) -> np.ndarray:
  """Per-image stretch of min..max to 0..1 (filters, Fig. 6)."""
  x = np.asarray(x, np.float32)
  lo, hi = np.min(x, axis=axis, keepdims=True), np.max(x, axis=axis, keepdims=True)
  return (x - lo) / np.where(hi > lo, hi - lo, 1.0)


def montage(tiles: np.ndarray, cols: int, pad: int = 1, fill: float = 1.0) -> np.ndarray:
  """(n, h, w, c) tiles in [0, 1] -> one (rows*(h+pad)-pad, cols*(w+pad)-pad, c) image."""
  tiles = np.asarray(tiles, np.float32)
  if tiles.dtype != np.float32 or tiles.ndim != 4:
    raise ValueError(f"montage needs (n, h, w, c) tiles, got shape {tiles.shape}")
  n, h, w, c = tiles.shape
  rows = max(-(-n // cols), 1)
  out = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, c), fill, np.float32)
  for k in range(n):
    r, q = divmod(k, cols)
    out[r * (h + pad):r * (h + pad) + h, q * (w + pad):q * (w + pad) + w] = tiles[k]
  return out


def new_figure(width: float, height: float) -> Figure:
  return Figure(figsize=(width, height), dpi=100, layout="constrained")


def show_image(ax, image: np.ndarray, title: str | None = None, fontsize: float = 8) -> None:
  """An image (h, w, 3) in [0, 1] (or uint8) on `ax`, without ticks."""
  image = np.asarray(image)
  ax.imshow(image if image.shape[-1] == 3 else image[..., 0], cmap=None if image.shape[-1] == 3
            else "gray", interpolation="nearest")
  ax.set_xticks([])
  ax.set_yticks([])
  if title:
    ax.set_title(title, fontsize=fontsize)


def save(fig: Figure, path: str) -> str:
  """Writes `fig` as a PNG at `path` (atomically: readers never see half a file)."""
  with atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=fig.dpi, format="png")
  return path


def image_rows(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[Sequence[str]] | None,
               row_labels: Sequence[str] | None = None, *, cell: float = 1.6,
               fontsize: float = 8) -> Figure:
  """A grid figure: `rows[i][j]` is an image (h, w, 3) in [0, 1] or uint8, or None for blank."""
  n_rows, n_cols = len(rows), max(len(r) for r in rows)
  fig = new_figure(max(cell * n_cols + (1.0 if row_labels else 0.0), 4.0), cell * n_rows + 0.4)
  axes = fig.subplots(n_rows, n_cols, squeeze=False)
  for i, row in enumerate(rows):
    for j in range(n_cols):
      ax = axes[i][j]
      image = row[j] if j < len(row) else None
      if image is None:
        ax.axis("off")
        continue
      show_image(ax, image, titles[i][j] if titles else None, fontsize)
      if j == 0 and row_labels:
        ax.set_ylabel(row_labels[i], fontsize=fontsize)
  return fig
