"""Section 3's recipe: RMS renormalisation, SGD + momentum, dropout, evaluation averaging."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from zf_jax import arch as arch_lib
from zf_jax import model, train

TINY = arch_lib.get("zfnet_tiny")


def _filter_rms(w):
  return np.sqrt(np.mean(np.square(np.asarray(w)), axis=(0, 1, 2)))


def _batch(n=8, seed=0, arch=TINY):
  rng = np.random.default_rng(seed)
  return {"image": jnp.asarray(rng.uniform(-128, 128, (n, arch.image_size, arch.image_size, 3)),
                               jnp.float32),
          "label": jnp.asarray(rng.integers(0, arch.num_classes, n), jnp.int32)}


def test_clip_filter_rms_projects_onto_the_radius():
  params = model.init(jax.random.key(0), TINY)  # Paper init: RMS ~ 0.01 ...
  params = {k: {"w": 50 * v["w"], "b": v["b"] + 1.0} for k, v in params.items()}  # ... now ~ 0.5.
  params["conv3"]["w"] = params["conv3"]["w"] * 1e-3  # These stay inside the radius.
  clipped = train.clip_filter_rms(params, 0.1)
  for name in ("conv1", "conv2", "conv4", "conv5"):
    before, after = _filter_rms(params[name]["w"]), _filter_rms(clipped[name]["w"])
    assert (before > 0.1).all()
    np.testing.assert_allclose(after, 0.1, rtol=1e-5)  # Rescaled to exactly the radius ...
    # ... by a per-filter scale (direction kept).
    ratio = np.asarray(clipped[name]["w"]) / np.asarray(params[name]["w"])
    np.testing.assert_allclose(ratio, np.broadcast_to(0.1 / before, ratio.shape), rtol=1e-4)
  np.testing.assert_array_equal(clipped["conv3"]["w"], params["conv3"]["w"])
  for name in ("fc6", "fc7", "fc8"):
    np.testing.assert_array_equal(clipped[name]["w"], params[name]["w"])
  for name in params:
    np.testing.assert_array_equal(clipped[name]["b"], params[name]["b"])
  twice = train.clip_filter_rms(clipped, 0.1)
  for name in params:
    np.testing.assert_allclose(twice[name]["w"], clipped[name]["w"], rtol=1e-6)


def test_one_filter_above_radius_is_the_only_one_changed():
  params = model.init(jax.random.key(1), TINY)  # Paper init: RMS ~ 0.01.
  w = np.array(params["conv1"]["w"])
  w[..., 3] *= 50.0  # RMS ~ 0.5.
  params["conv1"]["w"] = jnp.asarray(w)
  clipped = np.asarray(train.clip_filter_rms(params)["conv1"]["w"])
  np.testing.assert_allclose(_filter_rms(clipped)[3], 0.1, rtol=1e-5)
  np.testing.assert_array_equal(np.delete(clipped, 3, -1), np.delete(w, 3, -1))


@pytest.mark.parametrize("first_scale", [1.0, 1 / 64**2])
def test_train_step_is_sgd_with_momentum_then_rms_clipping(first_scale):
  cfg = train.TrainConfig(batch_size=8, dropout=0.0, rms_radius=0.1, init_scheme="he",
                          learning_rate=1e-3, momentum=0.9, weight_decay=5e-4,
                          first_layer_lr_scale=first_scale)
  arch = dataclasses.replace(TINY, dropout=0.0)
  state = train.create_train_state(jax.random.key(2), arch, cfg)
  step = train.make_train_step(arch, cfg)
  params = jax.tree.map(np.asarray, state.params)
  velocity = jax.tree.map(np.zeros_like, params)

  @jax.jit
  def grad(p, batch):
    def loss(p):
      logits, _ = model.apply(p, batch["image"], arch)
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return jax.grad(loss)(p)

  for i in range(3):
    batch = _batch(seed=i)
    grads = jax.tree.map(np.asarray, grad(params, batch))
    # Weight decay on weights only, momentum trace, learning rate, then renormalise.
    grads = {k: {"w": g["w"] + 5e-4 * params[k]["w"], "b": g["b"]} for k, g in grads.items()}
    velocity = jax.tree.map(lambda v, g: 0.9 * v + g, velocity, grads)
    # The first conv layer's weights alone move at first_layer_lr_scale times the rate.
    rates = {k: {"w": 1e-3 * (first_scale if k == "conv1" else 1.0), "b": 1e-3} for k in params}
    params = jax.tree.map(lambda p, v, r: p - r * v, params, velocity, rates)
    params = jax.tree.map(np.asarray, train.clip_filter_rms(params, 0.1))
    state, metrics = step(state, batch)
    assert int(state.step) == i + 1
  for name in params:
    np.testing.assert_allclose(state.params[name]["w"], params[name]["w"], rtol=1e-4, atol=1e-6)
    if name.startswith("conv"):
      assert (_filter_rms(state.params[name]["w"]) <= 0.1 + 1e-6).all()
  assert set(metrics) == {"loss", "top1_error", "top5_error", "learning_rate"}


def test_train_step_learns_and_dropout_depends_on_step():
  fit = train.TrainConfig(batch_size=8, init_scheme="he", learning_rate=1e-3, dropout=0.0)
  state = train.create_train_state(jax.random.key(3), TINY, fit)
  step = train.make_train_step(TINY, fit)
  batch = _batch(seed=7)
  losses = []
  for _ in range(30):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.1 * losses[0]  # It memorises one fixed batch.
  cfg = train.TrainConfig(batch_size=8, init_scheme="he", learning_rate=1e-3)  # Dropout 0.5.
  step = train.make_train_step(TINY, cfg)
  # Same state and batch give the same step (RNG is fold_in(key, step)) ...
  s1 = train.create_train_state(jax.random.key(3), TINY, cfg)
  s2 = train.create_train_state(jax.random.key(3), TINY, cfg)
  a, _ = step(s1, batch)
  b, _ = step(s2, batch)
  np.testing.assert_array_equal(a.params["fc6"]["w"], b.params["fc6"]["w"])
  # ... and a different step number draws a different dropout mask.
  c, _ = step(train.create_train_state(jax.random.key(3), TINY, cfg).replace(step=jnp.int32(5)),
              batch)
  assert not np.allclose(a.params["fc6"]["w"], c.params["fc6"]["w"])


def test_manual_schedule_and_plateau_scale_the_learning_rate():
  cfg = train.TrainConfig(batch_size=8, init_scheme="he", lr_schedule="manual",
                          lr_decay_steps=(2,), learning_rate=0.05)
  state = train.create_train_state(jax.random.key(4), TINY, cfg)
  step = train.make_train_step(TINY, cfg)
  rates = []
  for i in range(4):
    state, metrics = step(state, _batch(seed=i))
    rates.append(float(metrics["learning_rate"]))
  np.testing.assert_allclose(rates, [0.05, 0.05, 0.005, 0.005], rtol=1e-6)

  cfg = train.TrainConfig(batch_size=8, plateau_patience=2)
  state = train.create_train_state(jax.random.key(4), TINY, cfg)
  scales = []
  for error in (0.5, 0.4, 0.4, 0.4, 0.4):
    state = train.update_plateau(state, jnp.float32(error), cfg)
    scales.append(float(state.plateau.scale))
  assert scales == pytest.approx([1.0, 1.0, 1.0, 0.1, 0.1])
  _, metrics = train.make_train_step(TINY, cfg)(state, _batch())
  assert float(metrics["learning_rate"]) == pytest.approx(1e-3)


def test_cosine_schedule_warms_up_linearly_then_follows_half_a_cosine_to_zero():
  cfg = train.TrainConfig(batch_size=8, init_scheme="he", lr_schedule="cosine",
                          learning_rate=0.04, warmup_steps=2, total_steps=6)
  state = train.create_train_state(jax.random.key(4), TINY, cfg)
  step = train.make_train_step(TINY, cfg)
  rates = []
  for i in range(6):
    state, metrics = step(state, _batch(seed=i))
    rates.append(float(metrics["learning_rate"]))
  # Steps 0, 1 rise from 0; then 0.04 * (1 + cos(pi * t / 4)) / 2 for t = 0..3.
  expected = [0.0, 0.02] + [0.02 * (1 + np.cos(np.pi * t / 4)) for t in range(4)]
  np.testing.assert_allclose(rates, expected, rtol=1e-5, atol=1e-9)


def test_nesterov_momentum_looks_ahead_along_the_velocity():
  cfg = train.TrainConfig(batch_size=8, dropout=0.0, rms_radius=None, init_scheme="he",
                          learning_rate=1e-3, momentum=0.9, nesterov=True)
  arch = dataclasses.replace(TINY, dropout=0.0)
  state = train.create_train_state(jax.random.key(2), arch, cfg)
  step = train.make_train_step(arch, cfg)
  params = jax.tree.map(np.asarray, state.params)
  velocity = jax.tree.map(np.zeros_like, params)
  loss = lambda p, b: optax.softmax_cross_entropy_with_integer_labels(  # noqa: E731
      model.apply(p, b["image"], arch)[0], b["label"]).mean()
  grad = jax.jit(jax.grad(loss))
  for i in range(3):
    batch = _batch(seed=i)
    g = jax.tree.map(np.asarray, grad(params, batch))
    velocity = jax.tree.map(lambda v, g: 0.9 * v + g, velocity, g)
    # Sutskever et al. (2013) in the form optax uses: step along g + momentum * v.
    params = jax.tree.map(lambda p, g, v: p - 1e-3 * (g + 0.9 * v), params, g, velocity)
    state, _ = step(state, batch)
  for name in params:
    np.testing.assert_allclose(state.params[name]["w"], params[name]["w"], rtol=1e-4, atol=1e-6)


def test_adam_is_adam_with_b1_momentum_and_conv1_scaled():
  cfg = train.TrainConfig(batch_size=8, dropout=0.0, rms_radius=None, init_scheme="he",
                          optimizer="adam", learning_rate=1e-3, momentum=0.8,
                          first_layer_lr_scale=0.25)
  arch = dataclasses.replace(TINY, dropout=0.0)
  state = train.create_train_state(jax.random.key(2), arch, cfg)
  step = train.make_train_step(arch, cfg)
  params = jax.tree.map(np.asarray, state.params)
  mu = jax.tree.map(np.zeros_like, params)
  nu = jax.tree.map(np.zeros_like, params)
  loss = lambda p, b: optax.softmax_cross_entropy_with_integer_labels(  # noqa: E731
      model.apply(p, b["image"], arch)[0], b["label"]).mean()
  grad = jax.jit(jax.grad(loss))
  for t in range(1, 3):
    batch = _batch(seed=t)
    g = jax.tree.map(np.asarray, grad(params, batch))
    mu = jax.tree.map(lambda m, g: 0.8 * m + 0.2 * g, mu, g)
    nu = jax.tree.map(lambda v, g: 0.999 * v + 0.001 * g * g, nu, g)
    rates = {k: {"w": 1e-3 * (0.25 if k == "conv1" else 1.0), "b": 1e-3} for k in params}
    params = jax.tree.map(
        lambda p, m, v, r: p - r * (m / (1 - 0.8**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8),
        params, mu, nu, rates)
    state, _ = step(state, batch)
  for name in params:
    np.testing.assert_allclose(state.params[name]["w"], params[name]["w"], rtol=1e-4, atol=1e-6)


def test_eval_step_averages_softmax_over_crops_and_masks_padding():
  params = model.init(jax.random.key(5), TINY, scheme="he")
  params["fc8"]["w"] = params["fc8"]["w"] * 1e-2  # Moderate logits: no probability underflows.
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(-128, 128, (4, 10, 32, 32, 3)), jnp.float32)
  labels = jnp.asarray([1, 2, 3, 4], jnp.int32)
  mask = jnp.asarray([1, 1, 1, 0], jnp.float32)
  sums, probs = train.make_eval_step(TINY)(params, {"image": images, "label": labels,
                                                     "mask": mask})
  per_crop = jax.nn.softmax(model.apply(params, images.reshape(40, 32, 32, 3), TINY)[0])
  expected = np.asarray(per_crop).reshape(4, 10, -1).mean(1)
  np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-7)
  top1 = expected.argmax(-1) != np.asarray(labels)
  assert float(sums["count"]) == 3
  assert float(sums["top1_errors"]) == top1[:3].sum()
  nll = -np.log(expected[np.arange(4), labels])
  np.testing.assert_allclose(float(sums["loss"]), nll[:3].sum(), rtol=1e-4)


def test_bad_recipe_values_are_one_line_errors():
  with pytest.raises(ValueError, match="unknown lr_schedule 'linear'; choose one of plateau"):
    train.TrainConfig(lr_schedule="linear")
  with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'; choose one of sgd, adam"):
    train.TrainConfig(optimizer="rmsprop")
  with pytest.raises(ValueError, match="warmup_steps must be >= 0, got -1"):
    train.TrainConfig(warmup_steps=-1)
  with pytest.raises(ValueError, match="cosine needs warmup_steps < total_steps, got "
                     "warmup_steps=5, total_steps=5"):
    train.make_optimizer(train.TrainConfig(lr_schedule="cosine", warmup_steps=5, total_steps=5))
  with pytest.raises(ValueError, match="rms_radius must be > 0"):
    train.TrainConfig(rms_radius=0.0)
  with pytest.raises(ValueError, match="learning_rate must be > 0"):
    train.TrainConfig(learning_rate=-1.0)
  with pytest.raises(ValueError, match="first_layer_lr_scale must be > 0, got 0.0"):
    train.TrainConfig(first_layer_lr_scale=0.0)
  with pytest.raises(ValueError, match="conv_init_scale must be > 0, got -0.5"):
    train.TrainConfig(conv_init_scale=-0.5)


def test_conv_init_scale_multiplies_the_initial_weights_of_conv_layers_above_the_first():
  key = jax.random.key(3)
  base = train.TrainConfig(init_scheme="he", rms_radius=None)
  plain = train.create_train_state(key, TINY, base).params
  scaled = train.create_train_state(
      key, TINY, dataclasses.replace(base, conv_init_scale=0.25)).params
  assert set(plain) == set(scaled)
  for name in plain:
    factor = 0.25 if name.startswith("conv") and name != "conv1" else 1.0
    np.testing.assert_allclose(scaled[name]["w"], factor * plain[name]["w"], rtol=1e-6,
                               err_msg=name)
    np.testing.assert_array_equal(scaled[name]["b"], plain[name]["b"])
  # Scaled before the RMS renormalisation: filters are still clipped to the radius.
  clipped = train.create_train_state(
      key, TINY, dataclasses.replace(base, conv_init_scale=100.0, rms_radius=0.1)).params
  rms = jnp.sqrt(jnp.mean(jnp.square(clipped["conv3"]["w"]), axis=(0, 1, 2)))
  np.testing.assert_allclose(rms, 0.1, rtol=1e-5)


def test_top5_error_counts_every_class_when_there_are_fewer_than_five():
  probs = jnp.asarray([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], jnp.float32)
  sums = train.sums_from_probs(probs, jnp.asarray([2, 0]), jnp.ones(2))
  assert float(sums["top1_errors"]) == 2.0 and float(sums["top5_errors"]) == 0.0
