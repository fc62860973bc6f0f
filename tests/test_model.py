"""The forward pass: init per Section 3, layer order of Fig. 3, the Trace, dropout."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zf_jax import arch as arch_lib
from zf_jax import layers, model

TINY = arch_lib.get("zfnet_tiny")


def _images(arch, n=3, seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.uniform(-128, 128, (n, arch.image_size, arch.image_size, 3)),
                     jnp.float32)


def test_init_follows_section_3():
  params = model.init(jax.random.key(0), arch_lib.get("zfnet_small"))
  assert set(params) == {"conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"}
  assert params["conv1"]["w"].shape == (5, 5, 3, 32)  # HWIO.
  assert params["fc6"]["w"].shape == (3 * 3 * 64, 256) and params["fc8"]["w"].shape == (256, 10)
  for p in params.values():
    assert not np.any(p["b"])  # "biases are set to 0"
    assert abs(float(jnp.std(p["w"])) - 1e-2) < 1e-3  # "weights initialized to 10^-2"
  he = model.init(jax.random.key(0), arch_lib.get("zfnet_small"), scheme="he")
  assert abs(float(jnp.std(he["fc6"]["w"])) - np.sqrt(2 / 576)) < 2e-3
  with pytest.raises(ValueError, match="unknown init scheme 'xavier'; choose one of paper, he"):
    model.init(jax.random.key(0), TINY, scheme="xavier")


@pytest.mark.parametrize("norm_before_pool", [False, True])
def test_apply_is_conv_relu_pool_then_lrn_and_fc_reads_nhwc(norm_before_pool):
  """Fig. 3's order; or conv -> relu -> LRN -> pool (the imported pytorchcv models')."""
  arch = dataclasses.replace(TINY, convs=tuple(
      dataclasses.replace(c, norm_before_pool=norm_before_pool) for c in TINY.convs))
  params = model.init(jax.random.key(1), arch, scheme="he")
  x = _images(arch)
  logits, trace = model.apply(params, x, arch)
  # Layer by layer by hand: activations are taken after the pool (and after an LRN before it).
  h = x
  for c in arch.convs:
    p = params[f"conv{c.layer}"]
    h = jnp.maximum(layers.conv2d(h, p["w"], p["b"], c.stride, c.padding), 0)
    if c.norm and norm_before_pool:
      h = layers.lrn(h, c.norm.size, c.norm.alpha, c.norm.beta, c.norm.k)
    if c.pool:
      h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                                ((0, 0), *c.pool.padding, (0, 0)))
    np.testing.assert_allclose(trace.activations[c.layer], h, rtol=1e-5, atol=1e-5)
    if c.norm and not norm_before_pool:
      h = layers.lrn(h, c.norm.size, c.norm.alpha, c.norm.beta, c.norm.k)
  flat = np.asarray(h).reshape(len(x), -1)  # NHWC order.
  for name in ("fc6", "fc7"):
    flat = np.maximum(flat @ params[name]["w"] + params[name]["b"], 0)
  np.testing.assert_allclose(logits, flat @ params["fc8"]["w"] + params["fc8"]["b"],
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(trace.images, x)
  assert set(trace.switches) == {1, 2, 5}


def test_dropout_only_in_training():
  params = model.init(jax.random.key(2), TINY, scheme="he")
  x = _images(TINY)
  apply = jax.jit(model.apply, static_argnums=2, static_argnames="train")
  eval_a, _ = apply(params, x, TINY)
  eval_b, _ = apply(params, x, TINY, rng=jax.random.key(5))
  np.testing.assert_array_equal(eval_a, eval_b)
  train_a, _ = apply(params, x, TINY, train=True, rng=jax.random.key(3))
  train_b, _ = apply(params, x, TINY, train=True, rng=jax.random.key(4))
  train_a2, _ = apply(params, x, TINY, train=True, rng=jax.random.key(3))
  assert not np.allclose(train_a, train_b) and not np.allclose(train_a, eval_a)
  np.testing.assert_array_equal(train_a, train_a2)
  # Dropout is on the fc layers only: the conv trace is the same in training.
  _, t_train = apply(params, x, TINY, train=True, rng=jax.random.key(3))
  _, t_eval = apply(params, x, TINY)
  np.testing.assert_array_equal(t_train.activations[5], t_eval.activations[5])
  with pytest.raises(ValueError, match="needs rng="):
    model.apply(params, x, TINY, train=True)


def test_dropout_rate_and_scaling():
  arch = arch_lib.ablate(TINY, remove=(7,))
  params = model.init(jax.random.key(0), arch, scheme="he")
  # Read fc6's output through an identity fc8 to see dropout directly.
  params["fc8"] = {"w": jnp.eye(32, 10), "b": jnp.zeros(10)}
  x = _images(arch, n=64)
  kept = []
  for s in range(4):
    out, _ = model.apply(params, x, arch, train=True, rng=jax.random.key(s))
    ref, _ = model.apply(params, x, arch)
    mask = np.asarray(out) != 0
    np.testing.assert_allclose(np.asarray(out)[mask], 2 * np.asarray(ref)[mask], rtol=1e-5)
    kept.append(mask[np.asarray(ref) != 0].mean())
  assert abs(np.mean(kept) - 0.5) < 0.05


def test_trace_is_a_pytree_through_jit():
  params = model.init(jax.random.key(3), TINY)
  _, trace = jax.jit(model.apply, static_argnums=2)(params, _images(TINY), TINY)
  assert isinstance(trace, model.Trace)
  assert isinstance(trace.switches[1], layers.Switches)
  leaves = jax.tree.leaves(trace)
  assert len(leaves) == 1 + 5 + 3  # images, 5 activation maps, 3 switch indices.


def test_apply_rejects_wrong_image_size():
  params = model.init(jax.random.key(0), TINY)
  with pytest.raises(ValueError, match=r"do not fit arch 'zfnet_tiny': expected \(N, 32, 32, 3\)"):
    model.apply(params, jnp.zeros((1, 28, 28, 1)), TINY)


def test_features_are_the_traced_maps_the_hidden_layers_and_the_logits():
  params = model.init(jax.random.key(0), TINY, scheme="he")
  images = _images(TINY, n=2)
  logits, trace = model.apply(params, images, TINY)
  got = model.features(params, images, TINY, (1, 5, 6, 7, 8))
  for l in (1, 5):
    np.testing.assert_array_equal(got[l], np.asarray(trace.activations[l]).reshape(2, -1))
  np.testing.assert_allclose(got[8], logits, rtol=1e-6)
  # Layer 7 by hand from layer 6: relu(x W + b), and layer 8 from layer 7.
  fc7 = np.maximum(np.asarray(got[6]) @ np.asarray(params["fc7"]["w"]) + params["fc7"]["b"], 0)
  np.testing.assert_allclose(got[7], fc7, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got[8], fc7 @ np.asarray(params["fc8"]["w"]) + params["fc8"]["b"],
                             rtol=1e-5, atol=1e-5)
  assert got[6].shape == (2, TINY.fcs[0].features)
  with pytest.raises(ValueError, match=r"arch 'zfnet_tiny' has no layer 9; choose among "
                                       r"\[1, 2, 3, 4, 5, 6, 7, 8\]"):
    model.features(params, images, TINY, (9,))
