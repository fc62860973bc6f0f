"""The train/test folds of Section 5.2, drawn per class as the paper does.

Caltech-101: "We follow the procedure of (Fei-fei et al., 2006) and
randomly select 15 or 30 images per class for training and test on up to 50
images per class reporting the average of the per-class accuracies [...]
using 5 train/test folds". Caltech-256: the same, "selecting 15, 30, 45, or
60 training images per class". The tables report the mean "± std" over the
folds: `mean_std`.

`sample_folds` draws, in every fold and for every class, exactly `n_train`
training images and up to `n_test` test images from that class's rest. The
counts depend only on the class sizes, so every fold has the same number of
training and of test images and their features stack into (folds, n, D)
arrays (`zf_jax.section5.classifiers.fit_softmax` fits all folds at once).
Fold k is drawn with `np.random.default_rng([seed, k])`: the same seed gives
the same folds, and fold k does not depend on how many folds are drawn.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Fold:
  """One train/test split: indices into the labels array, sorted, read-only, disjoint."""
  train: np.ndarray  # (n_train * classes,) int64.
  test: np.ndarray  # (sum over classes of min(n_test, size - n_train),) int64.


def _check_positive(name: str, value: int) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name}={value!r}: must be an integer >= 1")


def int_labels(labels, name: str = "labels") -> np.ndarray:
  """`labels` as a non-empty 1-D int64 array of class labels >= 0 (else a one-line ValueError
  naming `name`)."""
  labels = np.asarray(labels)
  if labels.ndim != 1 or labels.size == 0:
    raise ValueError(f"{name} of shape {labels.shape}: must be a non-empty 1-D array")
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{name} of dtype {labels.dtype}: must be integer class labels")
  if labels.min() < 0:
    raise ValueError(f"{name} holds {labels.min()}: class labels must be >= 0")
  return labels.astype(np.int64)


def sample_folds(labels, n_train: int, *, n_test: int = 50, num_folds: int = 5,
                 seed: int = 0) -> list[Fold]:
  """`num_folds` random per-class splits of `labels` ((N,) int class labels).

  In each fold, every class present in `labels` gives exactly `n_train` random
  training images and min(n_test, its size - n_train) random test images among
  the others (drawn without replacement). Each class needs more than `n_train`
  images (at least one to test); classes without any image simply do not appear.
  """
  labels = int_labels(labels)
  _check_positive("n_train", n_train)
  _check_positive("n_test", n_test)
  _check_positive("num_folds", num_folds)
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed={seed!r}: must be an integer >= 0")
  classes, counts = np.unique(labels, return_counts=True)
  small = np.flatnonzero(counts <= n_train)
  if small.size:
    c, count = classes[small[0]], counts[small[0]]
    raise ValueError(f"class {c} has {count} images: n_train={n_train} needs at least "
                     f"{n_train + 1} ({n_train} to train, 1 to test)")
  # Each class's indices, in data order, so a fold depends only on (labels, seed, k).
  members = np.split(np.argsort(labels, kind="stable"), np.cumsum(counts)[:-1])
  folds = []
  for k in range(num_folds):
    rng = np.random.default_rng([seed, k])
    train, test = [], []
    for idx in members:
      perm = rng.permutation(idx)
      train.append(perm[:n_train])
      test.append(perm[n_train:n_train + n_test])
    folds.append(Fold(train=_frozen(np.sort(np.concatenate(train))),
                      test=_frozen(np.sort(np.concatenate(test)))))
  return folds


def _frozen(a: np.ndarray) -> np.ndarray:
  a = a.astype(np.int64)
  a.setflags(write=False)
  return a


def mean_std(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
  """The mean of per-fold results and their sample standard deviation (ddof=1).

  The paper's "± std over folds" does not say which std; the sample std is the
  usual one for 5 folds (the population std would be sqrt(4/5) ~ 0.89 of it).
  One value has std 0.0.
  """
  values = np.asarray(values, dtype=np.float64)
  if values.ndim != 1 or values.size == 0:
    raise ValueError(f"values of shape {values.shape}: must be a non-empty 1-D sequence")
  if not np.all(np.isfinite(values)):
    raise ValueError(f"values {values.tolist()}: must all be finite")
  std = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
  return float(np.mean(values)), std
