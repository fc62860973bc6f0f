"""Linear classifiers on fixed convnet features, and the metrics of Section 5.2-5.3.

Section 5.2 keeps the ImageNet-trained layers 1-7 and trains a new softmax on
top: for Caltech-101 / Caltech-256 the paper reports "the average of the
per-class accuracies" (`mean_class_accuracy`) over 5 train/test folds
(`zf_jax.section5.folds`); for PASCAL 2012 it trains "a 20-way softmax on top
of the ImageNet-pretrained convnet" and reports the VOC average precision of
each class (`voc_average_precision`). Section 5.3 (Table 7) compares the
features of each layer by placing "either a linear SVM or softmax classifier
on top".

`fit_softmax` is a multinomial logistic regression with an L2 penalty on the
weights, fitted to convergence by L-BFGS (optax) for all folds at once: one
jitted `lax.while_loop` per fold, vmapped over the fold axis. Targets are
integer labels or soft rows (a PASCAL image with k classes gets 1/k on each).
`svm_scores` is scikit-learn's LinearSVC (liblinear), one fold per call.
Both standardise each feature with the training features' mean and std first,
as usual for linear classifiers on relu features of very different scales.

Everything here is pure numerics on arrays: no dataset or plotting imports.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from optax import tree_utils as otu

from zf_jax.section5.folds import int_labels

# A feature whose training std is below STD_FLOOR * (1 + |mean|) is constant up to
# float32 rounding (e.g. a relu that never fires): it is centred but not scaled.
STD_FLOOR = 1e-6
# Soft target rows must sum to 1 within this (float32 sums of 1/k).
ROW_SUM_ATOL = 1e-4


# ------------------------------------------------------------------ metrics


def mean_class_accuracy(labels, predictions, num_classes: int | None = None) -> float:
  """The paper's "average of the per-class accuracies", in [0, 1].

  The mean, over the classes present in `labels`, of the fraction of that
  class's examples whose prediction is right: every class weighs the same,
  however many test images it has (Caltech's classes have 31 to 800).
  `num_classes`, when given, only checks that labels and predictions are in
  [0, num_classes).
  """
  labels = int_labels(labels, "labels")
  predictions = int_labels(predictions, "predictions")
  if predictions.shape != labels.shape:
    raise ValueError(f"predictions of shape {predictions.shape}: must match labels' "
                     f"{labels.shape}")
  if num_classes is not None:
    top = max(labels.max(), predictions.max())
    if top >= num_classes:
      raise ValueError(f"class label {top}: must be < num_classes={num_classes}")
  classes, inverse = np.unique(labels, return_inverse=True)
  right = np.bincount(inverse, weights=labels == predictions, minlength=classes.size)
  return float(np.mean(right / np.bincount(inverse, minlength=classes.size)))


def voc_average_precision(scores, targets) -> np.ndarray:
  """Per-class average precision, (C,), as the PASCAL VOC 2010-2012 devkit's VOCevalcls.

  scores: (N, C) classifier scores. targets: (N, C) with 1 (positive), 0
  (negative) or -1 (difficult: left out of both, as the devkit does with its
  own encoding 1 / -1 / 0). For each class, over its non-difficult examples:
  rank them by descending score (ties keep data order, as MATLAB's stable
  sort), take recall r_k = TP_k / P and precision p_k = TP_k / k at every rank
  k, pad r with 0 in front and 1 at the end and p with 0 at both ends, replace
  each p_k by max_{j >= k} p_j (the precision envelope, non-increasing), and
  sum (r_i - r_{i-1}) * p_i over the ranks i where the recall changes. That is
  the mean over positives of the envelope's precision at their ranks: it is
  >= scikit-learn's non-interpolated `average_precision_score`, equal to it
  when precision at the positives' ranks already never increases (and no
  score ties). A class without any positive gets nan.
  """
  scores = np.asarray(scores, dtype=np.float64)
  targets = np.asarray(targets)
  if scores.ndim != 2 or scores.shape[0] == 0:
    raise ValueError(f"scores of shape {scores.shape}: must be (N, C) with N >= 1")
  if targets.shape != scores.shape:
    raise ValueError(f"targets of shape {targets.shape}: must match scores' {scores.shape}")
  bad = ~np.isin(targets, (-1, 0, 1))
  if bad.any():
    raise ValueError(f"target {targets[bad][0]}: must be 1 (positive), 0 (negative) or "
                     "-1 (difficult)")
  if not np.all(np.isfinite(scores)):
    raise ValueError("scores hold nan or inf: must all be finite")
  ap = np.full(scores.shape[1], np.nan)
  for c in range(scores.shape[1]):
    keep = targets[:, c] != -1
    positive = targets[keep, c] == 1
    num_positive = np.count_nonzero(positive)
    if num_positive == 0:
      continue
    order = np.argsort(-scores[keep, c], kind="stable")
    tp = np.cumsum(positive[order])
    mrec = np.concatenate([[0.0], tp / num_positive, [1.0]])
    mpre = np.concatenate([[0.0], tp / np.arange(1, tp.size + 1), [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    ap[c] = np.sum((mrec[i] - mrec[i - 1]) * mpre[i])
  return ap


# ------------------------------------------------------------------ softmax


@struct.dataclass
class Linear:
  """A linear classifier on raw features: logits = ((x - mean) / scale) @ w + b.

  Leading axes (e.g. the fold axis of `fit_softmax`) are shared by all fields.
  """
  w: jax.Array  # (..., D, C)
  b: jax.Array  # (..., C), centred (sums to 0: softmax is blind to a common shift).
  mean: jax.Array  # (..., D) training features' mean (zeros without standardisation).
  scale: jax.Array  # (..., D) training features' std (ones without standardisation).


class FitInfo(NamedTuple):
  """How each fold's L-BFGS ended: (F,) arrays."""
  iterations: jax.Array  # L-BFGS iterations used (max_iter when it did not converge).
  grad_norm: jax.Array  # Norm of the objective's gradient in (w, b) at the solution.
  objective: jax.Array  # The objective at the solution.


def scores(model: Linear, x) -> jax.Array:
  """The logits (..., n, C) of raw features x (..., n, D); a fold axis broadcasts."""
  x = jnp.asarray(x, dtype=model.w.dtype)
  if x.ndim < 2 or x.shape[-1] != model.w.shape[-2]:
    raise ValueError(f"x of shape {x.shape}: must be (..., n, {model.w.shape[-2]})")
  x = (x - model.mean[..., None, :]) / model.scale[..., None, :]
  return x @ model.w + model.b[..., None, :]


def _scale(xp, mean, std):
  """std, or 1 for a feature that is constant up to rounding (see STD_FLOOR)."""
  return xp.where(std > STD_FLOOR * (1 + xp.abs(mean)), std, 1.0)


def _objective(params, x, targets, l2):
  """Mean softmax cross-entropy over the examples + (l2 / 2) ||w||^2 (bias not penalised)."""
  w, b = params
  log_p = jax.nn.log_softmax(x @ w + b, axis=-1)
  return -jnp.mean(jnp.sum(targets * log_p, axis=-1)) + 0.5 * l2 * jnp.sum(w * w)


def _solve(x, targets, l2, tol, max_iter):
  """One fold: L-BFGS from zero until ||grad|| < tol or max_iter iterations."""
  objective = functools.partial(_objective, x=x, targets=targets, l2=l2)
  solver = optax.lbfgs()  # Its default zoom line search.
  value_and_grad = optax.value_and_grad_from_state(objective)

  def step(carry):
    params, state, k, _ = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = solver.update(grad, state, params, value=value, grad=grad,
                                   value_fn=objective)
    params = optax.apply_updates(params, updates)
    # The line search leaves the gradient at the new params in its state.
    return params, state, k + 1, otu.tree_norm(otu.tree_get(state, "grad"))

  def running(carry):
    _, _, k, grad_norm = carry
    return (k < max_iter) & (grad_norm >= tol)

  params = (jnp.zeros((x.shape[-1], targets.shape[-1]), x.dtype),
            jnp.zeros(targets.shape[-1], x.dtype))
  # The loop always takes a first step (its norm then comes from the line search). Not the
  # norm of the gradient at zero: under jit(vmap) with 4+ folds XLA:CPU (jax 0.10.2) computed
  # that as nan for every fold, and a nan norm ends the loop before it starts.
  start = (params, solver.init(params), jnp.int32(0), jnp.array(jnp.inf, x.dtype))
  params, _, iterations, _ = jax.lax.while_loop(running, step, start)
  value, grad = jax.value_and_grad(objective)(params)
  return params, FitInfo(iterations, otu.tree_norm(grad), value)


@functools.partial(jax.jit, static_argnames=("num_classes", "standardize", "max_iter"))
def _fit(x, targets, l2, tol, *, num_classes, standardize, max_iter):
  if targets.ndim == 2:
    targets = jax.nn.one_hot(targets, num_classes, dtype=x.dtype)
  if standardize:
    mean = jnp.mean(x, axis=1)
    scale = _scale(jnp, mean, jnp.std(x, axis=1))
  else:
    mean = jnp.zeros((x.shape[0], x.shape[2]), x.dtype)
    scale = jnp.ones_like(mean)
  x = (x - mean[:, None, :]) / scale[:, None, :]
  solve = functools.partial(_solve, l2=l2, tol=tol, max_iter=max_iter)
  (w, b), info = jax.vmap(solve)(x, targets)
  return Linear(w=w, b=b - jnp.mean(b, axis=-1, keepdims=True), mean=mean, scale=scale), info


def _check_number(name: str, value, *, minimum: float, strict: bool = False) -> float:
  ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
  ok = ok and np.isfinite(value) and (value > minimum if strict else value >= minimum)
  if not ok:
    op = ">" if strict else ">="
    raise ValueError(f"{name}={value!r}: must be a finite number {op} {minimum:g}")
  return float(value)


def _check_targets(targets, folds: int, n: int, num_classes: int) -> np.ndarray:
  """Integer (F, n) labels in [0, C), or soft (F, n, C) rows >= 0 summing to 1; every
  class in every fold (else its unpenalised bias would run to -inf)."""
  targets = np.asarray(targets)
  if np.issubdtype(targets.dtype, np.integer) and targets.shape == (folds, n):
    if targets.min() < 0 or targets.max() >= num_classes:
      bad = targets.min() if targets.min() < 0 else targets.max()
      raise ValueError(f"target label {bad}: must be in [0, {num_classes}) "
                       f"(num_classes={num_classes})")
    mass = np.stack([np.bincount(t, minlength=num_classes) for t in targets])
    targets = targets.astype(np.int32)
  elif (np.issubdtype(targets.dtype, np.floating)
        and targets.shape == (folds, n, num_classes)):
    if not np.all(np.isfinite(targets)) or targets.min() < 0:
      raise ValueError(f"soft targets hold {np.nanmin(targets):g} (or nan/inf): must all "
                       "be finite and >= 0")
    sums = targets.sum(axis=-1)
    worst = np.unravel_index(np.argmax(np.abs(sums - 1)), sums.shape)
    if abs(sums[worst] - 1) > ROW_SUM_ATOL:
      raise ValueError(f"soft target row {tuple(map(int, worst))} sums to "
                       f"{sums[worst]:.6g}: every row must sum to 1")
    mass = targets.sum(axis=1)
    targets = targets.astype(np.float32)
  else:
    raise ValueError(f"targets of shape {targets.shape} and dtype {targets.dtype}: must be "
                     f"integer ({folds}, {n}) labels or float ({folds}, {n}, {num_classes}) "
                     "soft targets, to match x")
  empty = np.argwhere(mass <= 0)
  if empty.size:
    fold, c = empty[0]
    raise ValueError(f"fold {fold} has no training example of class {c}: every class "
                     f"in [0, {num_classes}) needs one")
  return targets


def fit_softmax(x, targets, *, num_classes: int, l2: float, standardize: bool = True,
                max_iter: int = 1000, tol: float = 1e-5) -> tuple[Linear, FitInfo]:
  """Fits one L2-regularised softmax per fold, all F folds at once, to convergence.

  x: (F, n, D) training features of F folds (float32). targets: (F, n) integer
  labels in [0, num_classes), or (F, n, num_classes) float rows >= 0 that sum
  to 1. Per fold it minimises, over w (D, C) and b (C,),
    mean_i cross_entropy(softmax(x_i @ w + b), targets_i) + (l2 / 2) ||w||^2
  (the bias is not penalised), with x first standardised by that fold's own
  feature mean and std when `standardize` (the model keeps them, so `scores`
  takes raw features; l2 then applies to weights on standardised features).
  L-BFGS stops when the gradient's norm is < tol, or after max_iter iterations:
  `FitInfo` says which. Every class needs a training example in every fold.
  """
  x = jnp.asarray(x, dtype=jnp.float32)
  if x.ndim != 3 or 0 in x.shape:
    raise ValueError(f"x of shape {x.shape}: must be (folds, n, D), all non-zero")
  if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
      or num_classes < 2:
    raise ValueError(f"num_classes={num_classes!r}: must be an integer >= 2")
  if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) \
      or max_iter < 1:
    raise ValueError(f"max_iter={max_iter!r}: must be an integer >= 1")
  l2 = _check_number("l2", l2, minimum=0.0)
  tol = _check_number("tol", tol, minimum=0.0)
  targets = _check_targets(targets, x.shape[0], x.shape[1], int(num_classes))
  return _fit(x, jnp.asarray(targets), jnp.float32(l2), jnp.float32(tol),
              num_classes=int(num_classes), standardize=bool(standardize),
              max_iter=int(max_iter))


# ------------------------------------------------------------------ linear SVM


def svm_scores(x_train, y_train, x_test, *, c: float = 1.0, standardize: bool = True,
               seed: int = 0) -> np.ndarray:
  """One fold of Table 7's linear SVM: LinearSVC decision values (n_test, C).

  scikit-learn's LinearSVC (liblinear: squared hinge, L2, one-vs-rest, its
  intercept penalised as liblinear does) with C=c, on features standardised
  with the training features' mean and std when `standardize`. Column k is
  class k for k in [0, max(y_train)]; a class absent from y_train gets -inf.
  With two classes, liblinear's single decision value s becomes columns
  (-s, s), so argmax is still its prediction.
  """
  from sklearn.svm import LinearSVC  # Only this function needs scikit-learn.

  x_train = np.asarray(x_train, dtype=np.float64)
  x_test = np.asarray(x_test, dtype=np.float64)
  y_train = int_labels(y_train, "y_train")
  if x_train.ndim != 2 or x_train.shape[0] != y_train.shape[0]:
    raise ValueError(f"x_train of shape {x_train.shape}: must be ({y_train.shape[0]}, D) "
                     "to match y_train")
  if x_test.ndim != 2 or x_test.shape[1] != x_train.shape[1]:
    raise ValueError(f"x_test of shape {x_test.shape}: must be (n_test, "
                     f"{x_train.shape[1]}) to match x_train")
  c = _check_number("c", c, minimum=0.0, strict=True)
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed={seed!r}: must be an integer >= 0")
  classes = np.unique(y_train)
  if classes.size < 2:
    raise ValueError(f"y_train has only class {classes.tolist()}: needs at least 2 classes")
  if standardize:
    mean = x_train.mean(axis=0)
    scale = _scale(np, mean, x_train.std(axis=0))
    x_train, x_test = (x_train - mean) / scale, (x_test - mean) / scale
  # dual="auto": liblinear's dual solver when D > n, the primal one otherwise.
  svm = LinearSVC(C=c, dual="auto", max_iter=10_000, random_state=seed)
  decision = svm.fit(x_train, y_train).decision_function(x_test)
  if classes.size == 2:
    decision = np.stack([-decision, decision], axis=1)
  out = np.full((x_test.shape[0], classes.max() + 1), -np.inf)
  out[:, svm.classes_] = decision
  return out
