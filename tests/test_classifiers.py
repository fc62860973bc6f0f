"""Classifiers on fixed features and their metrics (zf_jax.section5.classifiers).

* mean_class_accuracy is the mean of per-class accuracies, not the accuracy;
* voc_average_precision is the VOC devkit's interpolated AP: a hand-computed
  value where precision is not monotone (above scikit-learn's AP there),
  scikit-learn's AP where it is, difficult examples left out, nan without
  positives;
* fit_softmax, 3 folds at once, reaches each fold's optimum of the convex
  objective: scikit-learn's LogisticRegression on the same data and penalty
  finds the same weights and no lower objective, and the gradient computed
  independently in float64 vanishes; one-hot soft targets fit as labels, and
  really soft targets reach their own optimum; standardize=True is the fit on
  standardised features, taking raw features;
* svm_scores classifies a separable set perfectly, is LinearSVC's prediction,
  gives (n, 2) for two classes and -inf for a class without training data;
* bad input ends with one line naming the bad value.

All softmax fits share one shape (3 folds, 60 examples, 8 features, 4 classes)
so jit compiles three times in all (labels, soft targets, standardised).
"""

from __future__ import annotations

import json
import warnings

import jax
import numpy as np
import pytest

from zf_jax.section5.classifiers import (Linear, fit_softmax, mean_class_accuracy, scores,
                                         svm_scores, voc_average_precision)

F, N, D, C = 3, 60, 8, 4
L2 = 0.05
TOL = 1e-5


def _features(seed: int) -> tuple[np.ndarray, np.ndarray]:
  """F folds of overlapping class blobs (not separable), features of uneven scales."""
  r = np.random.default_rng(seed)
  y = np.stack([r.permutation(np.arange(N) % C) for _ in range(F)])
  centres = r.normal(size=(F, C, D))
  x = centres[np.arange(F)[:, None], y] + 1.5 * r.normal(size=(F, N, D))
  x = x * r.uniform(0.2, 5.0, size=(F, 1, D)) + 3.0 * r.normal(size=(F, 1, D))
  return x.astype(np.float32), y


def _softmax(z: np.ndarray) -> np.ndarray:
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def _objective(w, b, x, t, l2=L2) -> float:
  """The objective in float64, written independently: mean CE + l2/2 ||w||^2."""
  z = np.asarray(x, np.float64) @ np.asarray(w, np.float64) + np.asarray(b, np.float64)
  log_p = z - z.max(-1, keepdims=True)
  log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))
  return float(-np.mean(np.sum(t * log_p, -1)) + 0.5 * l2 * np.sum(np.square(w)))


def _gradient_norm(w, b, x, t, l2=L2) -> float:
  x, w, b = (np.asarray(a, np.float64) for a in (x, w, b))
  residual = (_softmax(x @ w + b) - t) / x.shape[0]
  return float(np.sqrt(np.sum(np.square(x.T @ residual + l2 * w))
                       + np.sum(np.square(residual.sum(0)))))


def _fold(model: Linear, f: int) -> Linear:
  return jax.tree.map(lambda a: a[f], model)


def _fit(x, targets, **kwargs) -> tuple:
  """fit_softmax on the test shapes, its results as numpy arrays (cheap to index)."""
  return jax.tree.map(np.asarray, fit_softmax(x, targets, num_classes=C, l2=L2, **kwargs))


@pytest.fixture(scope="module")
def data():
  return _features(0)


@pytest.fixture(scope="module")
def fitted(data):
  x, y = data
  return _fit(x, y, standardize=False, tol=TOL)


# ------------------------------------------------------------------ metrics


def test_mean_class_accuracy():
  r = np.random.default_rng(0)
  labels = r.integers(0, 5, size=300)
  predictions = np.where(r.random(300) < 0.6, labels, r.integers(0, 6, size=300))
  per_class = [np.mean(predictions[labels == c] == c) for c in np.unique(labels)]
  assert mean_class_accuracy(labels, predictions) == pytest.approx(np.mean(per_class))
  # Imbalanced: always predicting the big class is 90% accurate but 50% per class.
  labels = np.array([0] * 90 + [1] * 10)
  assert np.mean(labels == 0) == 0.9
  assert mean_class_accuracy(labels, np.zeros(100, int)) == pytest.approx(0.5)
  # Only classes present in labels count (class 2 is only predicted).
  assert mean_class_accuracy([0, 0, 1, 1], [0, 2, 1, 1], num_classes=3) == pytest.approx(0.75)
  with pytest.raises(ValueError, match="class label 3: must be < num_classes=3"):
    mean_class_accuracy([0, 3], [0, 1], num_classes=3)
  with pytest.raises(ValueError, match=r"predictions of shape \(3,\)"):
    mean_class_accuracy([0, 1], [0, 1, 1])


def test_voc_average_precision_by_hand():
  # Column 0, ranked by score: neg, pos, neg, neg, pos, pos (3 positives).
  #   precision at the positives' ranks 2, 5, 6: 1/2, 2/5, 3/6 (not monotone);
  #   envelope (max to the right): 1/2, 1/2, 1/2; recall steps by 1/3 at each:
  #   AP = (1/2 + 1/2 + 1/2) / 3 = 0.5. (Non-interpolated: (1/2 + 2/5 + 1/2) / 3 = 0.4667.)
  # Column 1, ranked: pos, pos, neg, pos, neg, neg: precisions 1, 1, 3/4 already
  #   non-increasing: AP = (1 + 1 + 3/4) / 3 = 0.91667, scikit-learn's too.
  # Column 2 has no positive: nan. Column 3 only difficult and negatives: nan.
  score = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
  targets = np.array([[0, 1, 0, 0],
                      [1, 1, 0, -1],
                      [0, 0, 0, 0],
                      [0, 1, 0, -1],
                      [1, 0, 0, 0],
                      [1, 0, 0, 0]])
  scores_ = np.stack([score] * 4, axis=1)
  ap = voc_average_precision(scores_, targets)
  assert ap.shape == (4,)
  assert ap[0] == pytest.approx(0.5)
  assert ap[1] == pytest.approx(0.75 / 3 + 2 / 3)
  assert np.isnan(ap[2]) and np.isnan(ap[3])

  from sklearn.metrics import average_precision_score
  assert average_precision_score(targets[:, 0], score) == pytest.approx(1.4 / 3)
  assert ap[1] == pytest.approx(average_precision_score(targets[:, 1], score))


def test_voc_average_precision_against_sklearn():
  # Without ties, interpolated AP >= non-interpolated AP, equal iff precision at the
  # positives' ranks never increases down the ranking.
  from sklearn.metrics import average_precision_score
  r = np.random.default_rng(1)
  targets = (r.random((200, 6)) < 0.3).astype(int)
  scores_ = r.normal(size=(200, 6)) + targets
  ap = voc_average_precision(scores_, targets)
  for c in range(6):
    reference = average_precision_score(targets[:, c], scores_[:, c])
    positives = targets[np.argsort(-scores_[:, c]), c] == 1
    precision = (np.cumsum(positives) / np.arange(1, 201))[positives]
    if np.all(np.diff(precision) <= 0):
      assert ap[c] == pytest.approx(reference)
    else:
      assert ap[c] > reference + 1e-9


def test_voc_difficult_examples_are_left_out():
  r = np.random.default_rng(2)
  targets = (r.random((50, 3)) < 0.4).astype(int)
  scores_ = r.normal(size=(50, 3)) + targets
  # Six difficult examples scored above everything: as negatives they would cost AP.
  difficult = np.full((6, 3), -1)
  with_difficult = voc_average_precision(np.concatenate([scores_, np.full((6, 3), 9.0)]),
                                         np.concatenate([targets, difficult]))
  np.testing.assert_allclose(with_difficult, voc_average_precision(scores_, targets))
  as_negatives = voc_average_precision(np.concatenate([scores_, np.full((6, 3), 9.0)]),
                                       np.concatenate([targets, 0 * difficult]))
  assert np.all(as_negatives < with_difficult - 0.05)
  with pytest.raises(ValueError, match="target 2: must be 1"):
    voc_average_precision(scores_, 2 * targets)


# ------------------------------------------------------------------ softmax


def test_softmax_reaches_the_optimum_of_each_fold(data, fitted):
  from sklearn.linear_model import LogisticRegression
  x, y = data
  model, info = fitted
  assert model.w.shape == (F, D, C) and model.b.shape == (F, C)
  np.testing.assert_array_equal(model.mean, 0.0)
  np.testing.assert_array_equal(model.scale, 1.0)
  for f in range(F):
    # scikit-learn minimises C * sum_i CE_i + ||W||^2 / 2: our objective times C * n.
    # In float64 (scikit-learn would fit float32 features in float32).
    reference = LogisticRegression(C=1 / (L2 * N), tol=1e-10, max_iter=10_000)
    reference.fit(x[f].astype(np.float64), y[f])
    w_ref, b_ref = reference.coef_.T, reference.intercept_ - reference.intercept_.mean()
    t = np.eye(C)[y[f]]
    ours = _objective(model.w[f], model.b[f], x[f], t)
    assert ours <= _objective(w_ref, b_ref, x[f], t) + 1e-6
    assert float(info.objective[f]) == pytest.approx(ours, rel=1e-5)
    # Weights of size ~0.5; ours stopped at gradient norm < 1e-5 (float32): within ~3e-4.
    np.testing.assert_allclose(model.w[f], w_ref, atol=1e-3)
    np.testing.assert_allclose(model.b[f], b_ref, atol=1e-3)
  # Each fold fitted its own data (the folds' solutions differ).
  assert np.abs(model.w[0] - model.w[1]).max() > 0.05


def test_softmax_converged(data, fitted):
  x, y = data
  model, info = fitted
  assert info.iterations.shape == (F,)
  assert np.all(info.iterations < 1000)  # Stopped by tol, not max_iter.
  assert np.all(info.grad_norm < TOL)
  for f in range(F):
    assert _gradient_norm(model.w[f], model.b[f], x[f], np.eye(C)[y[f]]) < 2 * TOL
  # max_iter does stop it (same shapes and statics but max_iter: one more compile).
  _, short = _fit(x, y, standardize=False, max_iter=2)
  assert np.all(short.iterations == 2)
  assert np.all(short.grad_norm > TOL)


def test_soft_targets(data, fitted):
  x, y = data
  model, _ = fitted
  one_hot = np.eye(C, dtype=np.float32)[y]
  soft_model, _ = _fit(x, one_hot, standardize=False)
  np.testing.assert_allclose(soft_model.w, model.w, atol=1e-5)
  np.testing.assert_allclose(soft_model.b, model.b, atol=1e-5)
  # Half the examples also belong to the next class: 1/2 on each (PASCAL's 1/k).
  soft = one_hot.copy()
  soft[:, ::2] = 0.5 * (one_hot[:, ::2] + np.roll(one_hot[:, ::2], 1, axis=-1))
  soft_model, info = _fit(x, soft, standardize=False)
  assert np.all(info.grad_norm < TOL)
  for f in range(F):
    assert _gradient_norm(soft_model.w[f], soft_model.b[f], x[f], soft[f]) < 2 * TOL
  assert np.abs(soft_model.w - model.w).max() > 0.01


def test_standardize(data, fitted):
  x, y = data
  x = x.copy()
  x[:, :, 3] = 2.5  # A constant feature: centred, not scaled (no division by 0).
  model, info = _fit(x, y, standardize=True)
  mean, std = x.mean(axis=1), x.std(axis=1)
  std[:, 3] = 1.0
  np.testing.assert_allclose(model.mean, mean, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(model.scale, std, rtol=1e-5)
  manual, _ = _fit((x - mean[:, None]) / std[:, None], y, standardize=False)
  np.testing.assert_allclose(model.w, manual.w, atol=1e-4)
  x_test, _ = _features(1)
  logits = scores(model, x_test)
  assert logits.shape == (F, N, C)
  np.testing.assert_allclose(logits, scores(manual, (x_test - mean[:, None]) / std[:, None]),
                             atol=1e-3)
  # Standardising changes the solution on these unevenly scaled features.
  raw, _ = fitted
  assert np.abs(np.asarray(logits) - np.asarray(scores(raw, x_test))).max() > 0.1
  # One fold's model on its own features, and one fold's features under every fold.
  np.testing.assert_allclose(scores(_fold(model, 1), x_test[1]), logits[1], atol=1e-5)
  assert scores(model, x_test[0]).shape == (F, N, C)


def _one_line(match: str, fn, *args, **kwargs) -> None:
  with pytest.raises(ValueError, match=match) as error:
    fn(*args, **kwargs)
  assert "\n" not in str(error.value)


def test_softmax_bad_input(data, fitted):
  x, y = data
  fit = fit_softmax
  _one_line(r"targets of shape \(3, 59\).*\(3, 60\)", fit, x, y[:, :-1], num_classes=C, l2=L2)
  _one_line(r"x of shape \(60, 8\)", fit, x[0], y[0], num_classes=C, l2=L2)
  _one_line(r"l2=-0.1: must be a finite number >= 0", fit, x, y, num_classes=C, l2=-0.1)
  _one_line(r"target label 4: must be in \[0, 4\)", fit, x, y + 1, num_classes=C, l2=L2)
  _one_line(r"target label -1", fit, x, y - 1, num_classes=C, l2=L2)
  _one_line(r"num_classes=1", fit, x, 0 * y, num_classes=1, l2=L2)
  _one_line(r"max_iter=0", fit, x, y, num_classes=C, l2=L2, max_iter=0)
  _one_line(r"fold 2 has no training example of class 3", fit, x,
            np.where((np.arange(F) == 2)[:, None] & (y == 3), 0, y), num_classes=C, l2=L2)
  soft = np.eye(C, dtype=np.float32)[y]
  soft[1, 7] *= 0.5
  _one_line(r"soft target row \(1, 7\) sums to 0.5", fit, x, soft, num_classes=C, l2=L2)
  _one_line(r"x of shape \(3, 60, 7\): must be \(\.\.\., n, 8\)", scores, fitted[0],
            x[..., :7])


# ------------------------------------------------------------------ linear SVM


def _blobs(seed: int, classes: int, per_class: int, spread: float) -> tuple:
  r = np.random.default_rng(seed)
  centres = 6.0 * r.normal(size=(classes, 5))
  y = np.repeat(np.arange(classes), per_class)
  x = centres[y] + spread * r.normal(size=(y.size, 5))
  return x * np.array([1.0, 100.0, 0.01, 5.0, 1.0]) + 40.0, y


def _reference_predictions(x_train, y_train, x_test):
  from sklearn.svm import LinearSVC
  mean, std = x_train.mean(0), x_train.std(0)
  svm = LinearSVC(C=1.0, dual="auto", max_iter=10_000, random_state=0)
  return svm.fit((x_train - mean) / std, y_train).predict((x_test - mean) / std)


def test_svm_scores():
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # No ConvergenceWarning, FutureWarning, ...
    x, y = _blobs(0, 3, 60, 0.3)
    train, test = np.arange(y.size) % 2 == 0, np.arange(y.size) % 2 == 1
    s = svm_scores(x[train], y[train], x[test])
    assert s.shape == (test.sum(), 3)
    np.testing.assert_array_equal(s.argmax(1), y[test])  # Separable: all right.
    # Standardised, it ignores each feature's scale and offset.
    np.testing.assert_allclose(svm_scores(x[train] * 3 - 7, y[train], x[test] * 3 - 7), s,
                               rtol=1e-6, atol=1e-6)

    # Two classes, overlapping: (n, 2) scores, -s and s, argmax is LinearSVC's prediction.
    x, y = _blobs(1, 2, 60, 6.0)
    train, test = np.arange(y.size) % 2 == 0, np.arange(y.size) % 2 == 1
    s = svm_scores(x[train], y[train], x[test])
    assert s.shape == (test.sum(), 2)
    np.testing.assert_allclose(s[:, 0], -s[:, 1])
    predicted = _reference_predictions(x[train], y[train], x[test])
    np.testing.assert_array_equal(s.argmax(1), predicted)
    assert 0 < np.mean(predicted == y[test]) < 1  # Not a trivial case.

    # Labels 0 and 2: column 1 (no training example) is -inf.
    s = svm_scores(x[train], 2 * y[train], x[test])
    assert s.shape == (test.sum(), 3) and np.all(s[:, 1] == -np.inf)
    np.testing.assert_array_equal(s.argmax(1), 2 * predicted)


def test_svm_bad_input():
  x, y = _blobs(0, 3, 10, 0.3)
  _one_line(r"x_test of shape \(30, 4\)", svm_scores, x, y, x[:, :4])
  _one_line(r"x_train of shape \(29, 5\)", svm_scores, x[1:], y, x)
  _one_line(r"c=0: must be a finite number > 0", svm_scores, x, y, x, c=0)
  _one_line(r"y_train has only class \[0\]", svm_scores, x, 0 * y, x)
  _one_line(r"y_train of dtype float64", svm_scores, x, y.astype(float), x)


DEAD_UNITS = """
import json, numpy as np
from zf_jax.section5.classifiers import fit_softmax
rng = np.random.default_rng(0)
x = (3 * np.maximum(rng.normal(size=(5, 300, 256)), 0)).astype(np.float32)
x[:, :, :40] = 0  # Dead units.
_, info = fit_softmax(x, np.tile(np.arange(5), (5, 60)), num_classes=5, l2=1e-3, tol=1e-5)
print(json.dumps({"iterations": info.iterations.tolist(), "grad": info.grad_norm.tolist()}))
"""


def test_softmax_fits_every_fold_when_features_have_dead_units():
  """ReLU features often hold units that are 0 for every image (layer 7 of a small net has
  dozens). With 5 folds of such features, jit(vmap) once computed the starting gradient
  norm as nan (XLA:CPU at its default optimisation level, not at the level 0 the tests
  compile at: hence a process of its own), which ended L-BFGS before its first step."""
  from conftest import run_python  # pylint: disable=import-outside-toplevel
  result = run_python("-c", DEAD_UNITS, env={"XLA_FLAGS": ""})
  assert result.returncode == 0, result.stderr[-3000:]
  info = json.loads(result.stdout.strip().splitlines()[-1])
  assert min(info["iterations"]) > 0 and max(info["grad"]) < 1e-5, info
