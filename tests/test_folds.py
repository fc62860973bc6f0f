"""The Section 5.2 fold sampler (zf_jax.section5.folds).

* every fold has exactly n_train training and min(n_test, rest) test images
  of every class, on uneven class sizes, and nothing of an absent class;
* train and test are disjoint; folds differ; the same seed gives the same
  folds, another seed others; fold k does not depend on num_folds; over many
  folds every image is drawn as often as a uniform draw would;
* bad requests end with one line naming the bad value;
* mean_std is the mean and the sample std.
"""

from __future__ import annotations

import numpy as np
import pytest

from zf_jax.section5.folds import Fold, mean_std, sample_folds

# Class sizes: 31 (1 left to test with n_train=30), 200 (50 tested), 45 (15 tested),
# 80 (50 tested); class 4 has no image, class 5 has 60.
SIZES = {0: 31, 1: 200, 2: 45, 3: 80, 5: 60}


def _labels(seed: int = 0) -> np.ndarray:
  labels = np.concatenate([np.full(size, c) for c, size in SIZES.items()])
  return np.random.default_rng(seed).permutation(labels)


def _same(a: Fold, b: Fold) -> bool:
  return np.array_equal(a.train, b.train) and np.array_equal(a.test, b.test)


@pytest.mark.parametrize("n_train", [15, 30])
def test_counts_per_class(n_train):
  labels = _labels()
  folds = sample_folds(labels, n_train)
  assert len(folds) == 5
  for fold in folds:
    for part in (fold.train, fold.test):
      assert part.dtype == np.int64 and np.all(np.diff(part) > 0)  # Sorted, no repeats.
      assert not part.flags.writeable
    assert set(np.unique(labels[fold.train])) == set(SIZES)
    for c, size in SIZES.items():
      assert np.count_nonzero(labels[fold.train] == c) == n_train
      assert np.count_nonzero(labels[fold.test] == c) == min(50, size - n_train)
    # The counts depend only on the class sizes: every fold has the same.
    assert fold.train.size == n_train * len(SIZES)
    assert fold.test.size == folds[0].test.size
  if n_train == 30:
    assert folds[0].test.size == 1 + 50 + 15 + 50 + 30


def test_n_test_caps_the_test_images():
  labels = _labels()
  fold = sample_folds(labels, 15, n_test=10, num_folds=1)[0]
  for c in SIZES:
    assert np.count_nonzero(labels[fold.test] == c) == 10


def test_disjoint_different_and_reproducible():
  labels = _labels()
  folds = sample_folds(labels, 30, seed=3)
  for fold in folds:
    assert np.intersect1d(fold.train, fold.test).size == 0
  for i in range(len(folds)):
    for j in range(i + 1, len(folds)):
      assert not np.array_equal(folds[i].train, folds[j].train)
      assert not np.array_equal(folds[i].test, folds[j].test)
  again = sample_folds(labels, 30, seed=3)
  assert all(_same(a, b) for a, b in zip(folds, again))
  other = sample_folds(labels, 30, seed=4)
  assert not any(_same(a, b) for a, b in zip(folds, other))
  # Fold k is drawn from (seed, k) alone.
  two = sample_folds(labels, 30, num_folds=2, seed=3)
  assert _same(two[0], folds[0]) and _same(two[1], folds[1])


def test_draws_are_uniform():
  # Over 400 folds, each of class 1's 200 images is trained on ~Binomial(400, 30/200)
  # (mean 60, sd 7.1) and tested ~Binomial(400, 50/200) (mean 100, sd 8.7) times.
  # A sampler favouring some images (e.g. the first ones) fails by far.
  labels = _labels()
  folds = sample_folds(labels, 30, num_folds=400)
  members = np.flatnonzero(labels == 1)
  trained = sum(np.isin(members, f.train) for f in folds)
  tested = sum(np.isin(members, f.test) for f in folds)
  assert np.all(np.abs(trained - 60) < 5 * 7.1), (trained.min(), trained.max())
  assert np.all(np.abs(tested - 100) < 5 * 8.7), (tested.min(), tested.max())


def _one_line_error(match: str, *args, **kwargs) -> str:
  with pytest.raises(ValueError, match=match) as error:
    sample_folds(*args, **kwargs)
  message = str(error.value)
  assert "\n" not in message
  return message


def test_bad_requests():
  labels = np.concatenate([np.zeros(40, int), np.full(12, 7), np.full(20, 3)])
  message = _one_line_error("class 7 has 12 images", labels, 15)
  assert message == "class 7 has 12 images: n_train=15 needs at least 16 (15 to train, 1 to test)"
  _one_line_error("class 3 has 20 images", labels, 20)  # Exactly n_train is too few.
  _one_line_error("n_train=0", labels, 0)
  _one_line_error("n_test=0", labels, 5, n_test=0)
  _one_line_error("num_folds=0", labels, 5, num_folds=0)
  _one_line_error("seed=-1", labels, 5, seed=-1)
  _one_line_error("dtype float64", labels.astype(float), 5)
  _one_line_error("labels holds -1", np.append(labels, -1), 5)
  _one_line_error(r"shape \(2, 36\)", labels.reshape(2, -1), 5)


def test_mean_std():
  mean, std = mean_std([1.0, 2.0, 3.0, 4.0])
  assert mean == pytest.approx(2.5)
  # Sample std: sqrt(((1.5^2 + 0.5^2) * 2) / 3) = sqrt(5 / 3).
  assert std == pytest.approx(np.sqrt(5 / 3))
  assert mean_std(np.array([0.7])) == (pytest.approx(0.7), 0.0)
  with pytest.raises(ValueError, match="non-empty"):
    mean_std([])
