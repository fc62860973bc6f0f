"""The deconvnet (Section 2.1) against autodiff, and its locality."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zf_jax import arch as arch_lib
from zf_jax import deconv, layers, model

TINY = arch_lib.get("zfnet_tiny")
NO_LRN = dataclasses.replace(
    TINY, name="tiny_no_lrn", convs=tuple(dataclasses.replace(c, norm=None) for c in TINY.convs))


def _setup(arch, n=2, seed=0):
  params = model.init(jax.random.key(seed), arch, scheme="he")
  # Non-zero biases make the relu masks differ from "input > 0" of the signal.
  params = {k: {"w": v["w"], "b": v["b"] + 0.1 * (i % 3 - 1)}
            for i, (k, v) in enumerate(params.items())}
  images = jnp.asarray(np.random.default_rng(seed).uniform(
      -128, 128, (n, arch.image_size, arch.image_size, 3)), jnp.float32)
  _, trace = jax.jit(model.apply, static_argnums=2)(params, images, arch)
  return params, trace


def _random_selection(trace, layer, seed=1):
  rng = np.random.default_rng(seed)
  act = np.asarray(trace.activations[layer])
  return jnp.asarray(act * (rng.uniform(size=act.shape) < 0.3))


def _rectifying(backward):
  """A relu whose backward pass is `backward(x, g)`: autodiff models of the three modes."""
  @jax.custom_vjp
  def f(x):
    return jax.nn.relu(x)
  f.defvjp(lambda x: (jax.nn.relu(x), x), lambda x, g: (backward(x, g),))
  return f


_BACKWARDS = {
    "backprop": lambda x, g: jnp.where(x > 0, g, 0.0),
    "deconvnet": lambda x, g: jax.nn.relu(g),
    "guided": lambda x, g: jnp.where(x > 0, jax.nn.relu(g), 0.0),
}


@jax.custom_vjp
def _lrn_pass_through(x, size, alpha, beta, k):
  return layers.lrn(x, size, alpha, beta, k)


_lrn_pass_through.defvjp(
    lambda x, *a: (layers.lrn(x, *a), None), lambda _, g: (g, None, None, None, None))


def _autodiff_projection(params, arch, images, layer, selection, mode):
  """d/d images of sum(selection * activation) through a model whose relu backward
  rectifies as `mode` says and whose LRN backward is the identity (Section 2.1)."""
  relu = _rectifying(_BACKWARDS[mode])

  def objective(x):
    for c in arch.convs:
      p = params[f"conv{c.layer}"]
      x = relu(layers.conv2d(x, p["w"], p["b"], c.stride, c.padding))
      if c.pool:
        x, _ = layers.max_pool(x, c.pool.window, c.pool.stride, c.pool.padding)
      if c.layer == layer:
        return jnp.vdot(selection, x)
      if c.norm:
        x = _lrn_pass_through(x, c.norm.size, c.norm.alpha, c.norm.beta, c.norm.k)

  return jax.jit(jax.grad(objective))(images)


@pytest.mark.parametrize("layer", [1, 2, 3, 5])
def test_backprop_mode_equals_jax_grad(layer):
  params, trace = _setup(NO_LRN)
  selection = _random_selection(trace, layer)

  def objective(x):
    return jnp.vdot(selection, model.apply(params, x, NO_LRN)[1].activations[layer])

  expected = jax.jit(jax.grad(objective))(trace.images)
  got = deconv.project(params, NO_LRN, trace, layer, selection, mode="backprop")
  assert float(jnp.abs(expected).max()) > 0
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * float(jnp.abs(expected).max()))


@pytest.mark.parametrize("mode", deconv.MODES)
@pytest.mark.parametrize("arch", [NO_LRN, TINY], ids=["no_lrn", "lrn"])
def test_each_mode_equals_autodiff_with_its_rectifier(arch, mode):
  params, trace = _setup(arch)
  for layer in (2, 5):
    selection = _random_selection(trace, layer)
    expected = _autodiff_projection(params, arch, trace.images, layer, selection, mode)
    got = deconv.project(params, arch, trace, layer, selection, mode=mode)
    scale = float(jnp.abs(expected).max())
    assert scale > 0
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * scale)


def test_deconvnet_differs_from_backprop_where_masks_differ():
  params, trace = _setup(NO_LRN)
  selection = deconv.strongest(trace, 5, 0)
  dc = deconv.project(params, NO_LRN, trace, 5, selection, mode="deconvnet")
  bp = deconv.project(params, NO_LRN, trace, 5, selection, mode="backprop")
  assert not np.allclose(dc, bp, atol=1e-3 * float(jnp.abs(bp).max()))
  # From layer 1 the two agree: the only relu on the way down rectifies the
  # (non-negative) unpooled selection, whose support lies where the mask is 1.
  sel1 = deconv.strongest(trace, 1, 3)
  np.testing.assert_allclose(deconv.project(params, NO_LRN, trace, 1, sel1, mode="deconvnet"),
                             deconv.project(params, NO_LRN, trace, 1, sel1, mode="backprop"),
                             rtol=1e-5, atol=1e-5)


def test_project_vmaps_over_selections():
  params, trace = _setup(TINY)
  selections = jax.vmap(lambda f: deconv.strongest(trace, 5, f))(jnp.arange(6))
  for mode in deconv.MODES:
    many = jax.jit(deconv.project_many, static_argnums=(1, 3), static_argnames="mode")(
        params, TINY, trace, 5, selections, mode=mode)
    assert many.shape == (6, *trace.images.shape)
    for k in (0, 5):
      one = deconv.project(params, TINY, trace, 5, selections[k], mode=mode)
      np.testing.assert_allclose(many[k], one, rtol=1e-5, atol=1e-5 * float(jnp.abs(one).max()))


def test_strongest_keeps_only_the_max_of_one_map():
  _, trace = _setup(TINY, n=3)
  act = np.asarray(trace.activations[2])
  sel = np.asarray(deconv.strongest(trace, 2, 4))
  assert sel.shape == act.shape
  for b in range(3):
    assert np.count_nonzero(sel[b]) == (1 if act[b, ..., 4].max() > 0 else 0)
    assert sel[b, ..., 4].max() == act[b, ..., 4].max()
    assert not np.any(np.delete(sel[b], 4, axis=-1))


ZF_LIKE = arch_lib.Arch(  # ZFNet's layer 1 (7x7/2, pad 1, 3x3/2 pool padded) at 64 px.
    name="zf_layer1", image_size=64, num_classes=3, dropout=0.0,
    convs=(arch_lib.get("zfnet").convs[0],), fcs=())


@pytest.mark.parametrize("arch", [ZF_LIKE, TINY], ids=["zf_layer1", "tiny"])
def test_layer1_projection_stays_in_the_receptive_field(arch):
  params, trace = _setup(arch, n=2)
  size, stride, offset = arch_lib.receptive_field(arch, 1)
  c = arch.conv(1)
  sw = trace.switches[1]
  rows, cols = sw.positions()
  for feature in (0, 5):
    selection = deconv.strongest(trace, 1, feature)
    image = np.abs(np.asarray(deconv.project(params, arch, trace, 1, selection))).sum(-1)
    for b in range(2):
      fmap = np.asarray(trace.activations[1][b, ..., feature])
      i, j = np.unravel_index(np.argmax(fmap), fmap.shape)
      assert image[b].any()
      # Inside the unit's receptive field (Fig. 2's patches are cut by this box) ...
      lo_r, lo_c = i * stride - offset, j * stride - offset
      outside = np.ones_like(image[b], bool)
      outside[max(lo_r, 0):lo_r + size, max(lo_c, 0):lo_c + size] = False
      assert not image[b][outside].any()
      # ... and more precisely inside the one conv window its switch chose.
      r = int(rows[b, i, j, feature]) * c.stride - c.padding[0][0]
      q = int(cols[b, i, j, feature]) * c.stride - c.padding[1][0]
      window = np.zeros_like(image[b], bool)
      window[max(r, 0):r + c.kernel, max(q, 0):q + c.kernel] = True
      assert not image[b][~window].any()


# ZFNet's geometry (7x7/2 conv1, padded pools, 5x5/2 conv2 without padding) at
# 112 px with few maps: units of layers 2-3 have receptive fields smaller than
# the image, so project_units' windows stop at every border.
ZF_NARROW = dataclasses.replace(
    arch_lib.get("zfnet"), name="zf_narrow", image_size=112, num_classes=3,
    convs=tuple(dataclasses.replace(c, features=f)
                for c, f in zip(arch_lib.get("zfnet").convs, (8, 12, 16, 16, 8))),
    fcs=tuple(dataclasses.replace(f, features=16) for f in arch_lib.get("zfnet").fcs))


def _units(trace, layer):
  """Units at the corners, edges and middle of the map, of several features and images."""
  n, h, w, c = trace.activations[layer].shape
  places = [(0, 0), (h - 1, w - 1), (0, w - 1), (h - 1, 0), (h // 2, w // 3), (1, w - 2)]
  return [(k % n, r, q, (3 * k) % c) for k, (r, q) in enumerate(places)]


@pytest.mark.parametrize("mode", deconv.MODES)
@pytest.mark.parametrize("arch", [ZF_NARROW, TINY, ZF_LIKE], ids=["zf_narrow", "tiny", "zf_layer1"])
def test_project_units_equals_project_of_one_activation(arch, mode):
  params, trace = _setup(arch, n=2)
  for layer in arch.conv_layers:
    units = _units(trace, layer)
    acts = trace.activations[layer]
    ours = deconv.project_units(params, arch, trace, layer,
                                tuple(jnp.array(u) for u in zip(*units)), mode=mode)
    assert ours.shape == (len(units),) + trace.images.shape[1:]
    for k, (n, r, q, f) in enumerate(units):
      selection = jnp.zeros_like(acts).at[n, r, q, f].set(acts[n, r, q, f])
      want = deconv.project(params, arch, trace, layer, selection, mode=mode)[n]
      scale = float(jnp.max(jnp.abs(want))) or 1.0
      np.testing.assert_allclose(ours[k], want, rtol=0, atol=1e-5 * scale,
                                 err_msg=f"layer {layer} unit {(n, r, q, f)}")


def test_project_units_of_full_zfnet_has_image_shapes():
  arch = arch_lib.get("zfnet")
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), arch))
  images = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  trace = jax.eval_shape(lambda p, x: model.apply(p, x, arch)[1], params, images)
  units = tuple(jax.ShapeDtypeStruct((7,), jnp.int32) for _ in range(4))
  for layer in (2, 5):
    out = jax.eval_shape(lambda p, t, u, layer=layer: deconv.project_units(p, arch, t, layer, u),
                         params, trace, units)
    assert out.shape == (7, 224, 224, 3)


def test_bad_requests_are_one_line_errors():
  params, trace = _setup(TINY)
  sel = deconv.strongest(trace, 5, 0)
  with pytest.raises(ValueError, match="unknown projection mode 'sideways'; choose one of"):
    deconv.project(params, TINY, trace, 5, sel, mode="sideways")
  with pytest.raises(ValueError, match=r"cannot project from layer 6: .* conv layers \[1, 2, 3"):
    deconv.project(params, TINY, trace, 6, sel)
  with pytest.raises(ValueError, match="does not match layer 4's activations"):
    deconv.project(params, TINY, trace, 4, sel)
  units = tuple(jnp.zeros(2, jnp.int32) for _ in range(4))
  with pytest.raises(ValueError, match="unknown projection mode 'sideways'"):
    deconv.project_units(params, TINY, trace, 5, units, mode="sideways")
  with pytest.raises(ValueError, match=r"cannot project from layer 6"):
    deconv.project_units(params, TINY, trace, 6, units)
