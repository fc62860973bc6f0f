"""Section 3's training recipe as pure, jit-compiled steps.

"Stochastic gradient descent with a mini-batch size of 128 was used to
update the parameters, starting with a learning rate of 10^-2, in conjunction
with a momentum term of 0.9. We anneal the learning rate throughout training
manually when the validation error plateaus. Dropout ... with a rate of 0.5.
... we renormalize each filter in the convolutional layers whose RMS value
exceeds a fixed radius of 10^-1 to this fixed radius."

The train state is a plain pytree; with a mesh, parameters are replicated
and batches split over the mesh's "data" axis by `jax.jit` shardings (what
`pjit` became). The run loop (input, checkpoints, logging) is in `trainer`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from optax import contrib as optax_contrib

from zf_jax import model
from zf_jax.arch import Arch
from zf_jax.options import check_choices, option

DATA_AXIS = "data"
LR_SCHEDULES = ("plateau", "manual", "constant", "cosine")
OPTIMIZERS = ("sgd", "adam")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The recipe of Section 3; every default is the paper's value.

  weight_decay: not in the paper, so 0 by default (the RMS renormalisation is
    the paper's only explicit regulariser besides dropout). Our ImageNet
    flagfiles set 5e-4, the value of Krizhevsky et al. (2012) whose
    implementation the paper's was based on.
  lr_schedule: "plateau" anneals by `lr_decay_factor` when the validation
    error has not improved for `plateau_patience` evaluations (the paper's
    manual rule, automated with `optax.contrib.reduce_on_plateau`); "manual"
    multiplies by `lr_decay_factor` at each step in `lr_decay_steps`;
    "constant" never anneals; "cosine" (not in the paper) rises linearly from 0
    over `warmup_steps`, then follows a half cosine down to 0 at `total_steps`
    (Loshchilov & Hutter 2017), for short runs with a fixed budget.
  first_layer_lr_scale: multiplies the learning rate of the first conv
    layer's weights (not in the paper: 1 by default). With the paper's
    [-128, 128] pixels and He init (whose first layer is scaled down by the
    pixels' spread s = `model.INPUT_SCALE`), that layer's gradients are ~s
    times larger and its weights ~s times smaller than the other layers', so
    its relative step is ~s^2 larger; 1 / s^2 makes SGD on raw pixels behave
    like SGD on unit-scale inputs, which lets small models use 10-30x higher
    learning rates without killing their relus (the quickstart uses it).
  """
  learning_rate: float = option(1e-2, "Initial learning rate (Section 3: 1e-2).")
  momentum: float = option(0.9, "SGD momentum (Section 3: 0.9).")
  nesterov: bool = option(False, "Nesterov momentum (not in the paper).")
  optimizer: str = option("sgd", "sgd: SGD with momentum (Section 3); adam: Adam with "
                          "b1=--momentum (not in the paper).", choices=OPTIMIZERS)
  batch_size: int = option(128, "Global batch size, over all devices (Section 3: 128).")
  dropout: float = option(0.5, "Dropout rate on fc layers 6 and 7 (Section 3: 0.5).")
  rms_radius: float | None = option(
      0.1, "Conv filter RMS renormalisation radius (Section 3: 0.1); 0 turns it off "
      "(Fig. 6 (a)).", off=0)
  weight_decay: float = option(0.0, "L2 weight decay on weights (not in the paper).")
  init_scheme: str = option("paper", "Weight initialisation: paper (N(0, 1e-2^2), biases 0) "
                            "or he.", choices=model.INIT_SCHEMES)
  lr_schedule: str = option(
      "plateau", "plateau: anneal when the validation error plateaus; manual: at "
      "--lr_decay_epochs; constant; cosine: warm-up over --warmup_epochs, then a half "
      "cosine to 0 at the last step (not in the paper).", choices=LR_SCHEDULES)
  lr_decay_factor: float = option(0.1, "Learning rate multiplier of each anneal.")
  lr_decay_steps: tuple[int, ...] = option(
      (), "Steps at which lr_schedule=manual anneals.", flag=False)  # From lr_decay_epochs.
  warmup_steps: int = option(0, "Steps of lr_schedule=cosine's linear warm-up.",
                             flag=False)  # From warmup_epochs.
  total_steps: int = option(0, "Steps of the whole run (lr_schedule=cosine).",
                            flag=False)  # Set by the trainer.
  first_layer_lr_scale: float = option(
      1.0, "Multiplies conv1's weight learning rate (not in the paper; 1/64^2 suits He init "
      "on [-128, 128] pixels).")
  conv_init_scale: float = option(
      1.0, "Multiplies the initial weights of conv layers 2 and up (not in the paper): below 1, "
      "a short run moves them further from their random start, and the deconvnet projects "
      "through learned filters rather than noise.")
  plateau_patience: int = option(2, "Evaluations without improvement before annealing.")
  plateau_min_delta: float = option(
      1e-3, "Absolute improvement of the validation error that counts (plateau rule).")

  def __post_init__(self):
    check_choices(self)
    if self.learning_rate <= 0:
      raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
    if self.batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
    if self.rms_radius is not None and self.rms_radius <= 0:
      raise ValueError(f"rms_radius must be > 0 (or None for no clipping), got {self.rms_radius}")
    if not 0 <= self.dropout < 1:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
    if self.warmup_steps < 0:
      raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
    if not self.conv_init_scale > 0:
      raise ValueError(f"conv_init_scale must be > 0, got {self.conv_init_scale}")
    if not self.first_layer_lr_scale > 0:
      raise ValueError(f"first_layer_lr_scale must be > 0, got {self.first_layer_lr_scale}")


@struct.dataclass
class TrainState:
  """Everything a resumed run needs: step, params, optimizer and plateau state, RNG."""
  step: jax.Array
  params: model.Params
  opt_state: Any
  plateau: Any  # optax.contrib ReduceLROnPlateauState: `scale` multiplies the learning rate.
  rng: jax.Array


def clip_filter_rms(params: model.Params, radius: float = 0.1) -> model.Params:
  """Renormalises conv filters whose RMS exceeds `radius` to RMS `radius` (Section 3).

  A filter is one output channel of an HWIO conv kernel (all kh x kw x cin
  weights). Filters within the radius, biases and fully connected weights
  are returned unchanged.
  """
  def clip(name, p):
    if not name.startswith("conv"):
      return p
    w = p["w"]
    rms = jnp.sqrt(jnp.mean(jnp.square(w), axis=(0, 1, 2), keepdims=True))
    scale = jnp.where(rms > radius, radius / rms, jnp.ones_like(rms))
    return {**p, "w": w * scale}

  return {name: clip(name, p) for name, p in params.items()}


def _decay_mask(params):
  return {name: {"w": True, "b": False} for name in params}


def _schedule(config: TrainConfig) -> optax.Schedule:
  """The learning rate by step, before the plateau rule's scale."""
  if config.lr_schedule == "manual" and config.lr_decay_steps:
    return optax.piecewise_constant_schedule(
        config.learning_rate, {int(s): config.lr_decay_factor for s in config.lr_decay_steps})
  if config.lr_schedule == "cosine":
    if not config.warmup_steps < config.total_steps:
      raise ValueError("lr_schedule=cosine needs warmup_steps < total_steps, got warmup_steps="
                       f"{config.warmup_steps}, total_steps={config.total_steps}")
    return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, config.warmup_steps,
                                              config.total_steps)
  return optax.constant_schedule(config.learning_rate)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
  """SGD with momentum (Section 3), optional weight decay on weights, manual schedule.

  Updates are SGD's, then the first conv layer's weight update is multiplied by
  `first_layer_lr_scale` (momentum is linear, so this equals a smaller
  learning rate for that layer alone).
  """
  lr = _schedule(config)
  parts = []
  if config.weight_decay:
    parts.append(optax.add_decayed_weights(config.weight_decay, mask=_decay_mask))
  if config.optimizer == "adam":
    parts.append(optax.adam(lr, b1=config.momentum, nesterov=config.nesterov))
  else:
    parts.append(optax.sgd(lr, momentum=config.momentum, nesterov=config.nesterov))
  if config.first_layer_lr_scale != 1.0:
    parts.append(optax.stateless(functools.partial(_scale_first_layer,
                                                   scale=config.first_layer_lr_scale)))
  return optax.chain(*parts)


def _scale_first_layer(updates, params, *, scale):
  """Multiplies the update of the first conv layer's weights by `scale`."""
  del params
  first = _first_conv(updates)
  return {**updates, first: {**updates[first], "w": updates[first]["w"] * scale}}


def _first_conv(params) -> str:
  return min((name for name in params if name.startswith("conv")), key=lambda n: int(n[4:]))


def _scale_upper_convs(params, scale):
  """Multiplies the weights of every conv layer but the first by `scale`."""
  first = _first_conv(params)
  return {name: {**p, "w": p["w"] * scale} if name.startswith("conv") and name != first else p
          for name, p in params.items()}


def make_plateau(config: TrainConfig) -> optax.GradientTransformationExtraArgs:
  """The validation-error plateau rule; its `scale` is applied to every update."""
  return optax_contrib.reduce_on_plateau(
      factor=config.lr_decay_factor, patience=config.plateau_patience, rtol=0.0,
      atol=config.plateau_min_delta)


def learning_rate(state: TrainState, config: TrainConfig) -> jax.Array:
  """The learning rate in force at `state.step` (schedule times plateau scale)."""
  return _schedule(config)(state.step) * state.plateau.scale


def _replicated(mesh):
  return None if mesh is None else jax.NamedSharding(mesh, jax.P())


def _split(mesh):
  return None if mesh is None else jax.NamedSharding(mesh, jax.P(DATA_AXIS))


def create_train_state(rng: jax.Array, arch: Arch, config: TrainConfig,
                       mesh: jax.sharding.Mesh | None = None) -> TrainState:
  """A fresh state: paper init (Section 3), optimizer state, RNG; replicated on `mesh`."""
  arch = dataclasses.replace(arch, dropout=config.dropout)
  init_key, train_key = jax.random.split(rng)

  def init():
    params = model.init(init_key, arch, scheme=config.init_scheme)
    params = _scale_upper_convs(params, config.conv_init_scale)  # x1.0 is exact: a no-op.
    if config.rms_radius is not None:
      params = clip_filter_rms(params, config.rms_radius)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=make_optimizer(config).init(params),
                      plateau=make_plateau(config).init(params), rng=train_key)

  return jax.jit(init, out_shardings=_replicated(mesh))()


def _correct(scores, labels):
  """Whether each label is the top-1 / among the top-5 scores (logits or log-probs)."""
  top5 = jax.lax.top_k(scores, min(5, scores.shape[-1]))[1]  # < 5 classes: all of them.
  return jnp.argmax(scores, -1) == labels, jnp.any(top5 == labels[:, None], axis=-1)


def make_train_step(arch: Arch, config: TrainConfig, mesh: jax.sharding.Mesh | None = None):
  """Returns `step(state, batch) -> (state, metrics)`, jit-compiled, state donated.

  `batch` is {"image": (B, H, W, 3) float32, "label": (B,) int32}; with a
  mesh, B is split over its "data" axis. Metrics: "loss", "top1_error",
  "top5_error" (of this batch, with dropout) and "learning_rate".
  """
  arch = dataclasses.replace(arch, dropout=config.dropout)
  tx = make_optimizer(config)

  def step(state: TrainState, batch):
    rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
      logits, _ = model.apply(params, batch["image"], arch, train=True, rng=rng)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
      return jnp.mean(loss), _correct(logits, batch["label"])

    (loss, (c1, c5)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    updates = jax.tree.map(lambda u: u * state.plateau.scale, updates)
    params = optax.apply_updates(state.params, updates)
    if config.rms_radius is not None:
      params = clip_filter_rms(params, config.rms_radius)
    metrics = {"loss": loss, "top1_error": 1.0 - jnp.mean(c1), "top5_error": 1.0 - jnp.mean(c5),
               "learning_rate": learning_rate(state, config)}
    new = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new, metrics

  replicated = _replicated(mesh)
  shardings = {} if mesh is None else dict(
      in_shardings=(replicated, _split(mesh)), out_shardings=(replicated, replicated))
  return jax.jit(step, donate_argnums=0, **shardings)


@functools.lru_cache(maxsize=16)  # One compile per (arch, mesh), however many evaluations.
def make_eval_step(arch: Arch, mesh: jax.sharding.Mesh | None = None):
  """Returns `eval_step(params, batch) -> (sums, probs)`, jit-compiled.

  `batch["image"]` is (B, H, W, 3) (centre crop) or (B, K, H, W, 3) (K crops,
  e.g. the paper's 10: their softmax outputs are averaged); `batch["mask"]`
  is 1 for real examples, 0 for padding. `sums` holds masked totals
  ("count", "loss", "top1_errors", "top5_errors"); `probs` (B, C) the
  averaged class probabilities, for ensembles (Table 2).
  """
  def eval_step(params, batch):
    images, labels, mask = batch["image"], batch["label"], batch["mask"]
    crops = images.shape[1] if images.ndim == 5 else 1
    flat = images.reshape(-1, *images.shape[-3:])
    logits, _ = model.apply(params, flat, arch)
    probs = jnp.mean(jax.nn.softmax(logits).reshape(labels.shape[0], crops, -1), axis=1)
    return sums_from_probs(probs, labels, mask), probs

  replicated = _replicated(mesh)
  shardings = {} if mesh is None else dict(
      in_shardings=(replicated, _split(mesh)), out_shardings=(replicated, _split(mesh)))
  return jax.jit(eval_step, **shardings)


def sums_from_probs(probs: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
  """Masked error counts and loss of class probabilities (one model or an ensemble)."""
  mask = mask.astype(jnp.float32)
  log_p = jnp.log(jnp.maximum(probs, jnp.finfo(probs.dtype).tiny))
  c1, c5 = _correct(log_p, labels)
  nll = -jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]
  return {"count": jnp.sum(mask), "loss": jnp.sum(nll * mask),
          "top1_errors": jnp.sum((1.0 - c1) * mask), "top5_errors": jnp.sum((1.0 - c5) * mask)}


def errors_from_sums(sums: dict[str, Any]) -> dict[str, float]:
  """{"count", "loss", "top1_error", "top5_error"} (means) from `sums_from_probs` totals."""
  sums = {k: float(v) for k, v in sums.items()}
  n = max(sums["count"], 1.0)
  return {"count": int(sums["count"]), "loss": sums["loss"] / n,
          "top1_error": sums["top1_errors"] / n, "top5_error": sums["top5_errors"] / n}


@functools.partial(jax.jit, static_argnames=("config",))
def update_plateau(state: TrainState, validation_error: jax.Array, config: TrainConfig
                   ) -> TrainState:
  """Feeds one validation error to the plateau rule; anneals the rate if it plateaued."""
  if config.lr_schedule != "plateau":
    return state
  zeros = jax.tree.map(jnp.zeros_like, state.params)
  _, plateau = make_plateau(config).update(zeros, state.plateau, value=validation_error)
  return state.replace(plateau=plateau)
