"""Properties of the pure layer functions: switches, unpooling, transposed conv, LRN."""

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from zf_jax import arch as arch_lib
from zf_jax import layers


def _normal(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


def _np_max_pool(x, window, stride, padding):
  """Brute force: every window of the -inf padded input, first maximum in row-major order."""
  n, h, w, c = x.shape
  (plo, phi), (qlo, qhi) = padding
  xp = np.full((n, h + plo + phi, w + qlo + qhi, c), -np.inf, x.dtype)
  xp[:, plo:plo + h, qlo:qlo + w] = x
  ho = (h + plo + phi - window) // stride + 1
  wo = (w + qlo + qhi - window) // stride + 1
  y = np.zeros((n, ho, wo, c), x.dtype)
  rows = np.zeros((n, ho, wo, c), np.int64)
  cols = np.zeros((n, ho, wo, c), np.int64)
  for b in range(n):
    for i in range(ho):
      for j in range(wo):
        for k in range(c):
          win = xp[b, i * stride:i * stride + window, j * stride:j * stride + window, k]
          a = int(np.argmax(win))  # First occurrence on ties.
          y[b, i, j, k] = win.flat[a]
          rows[b, i, j, k] = i * stride + a // window - plo
          cols[b, i, j, k] = j * stride + a % window - qlo
  return y, rows, cols


# The pools of ZFNet (Fig. 3): 110 -> 55 and 26 -> 13 padded, 13 -> 6 unpadded.
ZF_POOLS = [((110, 110), ((0, 1), (0, 1)), (55, 55)),
            ((26, 26), ((0, 1), (0, 1)), (13, 13)),
            ((13, 13), ((0, 0), (0, 0)), (6, 6))]


@pytest.mark.parametrize("hw,padding,out_hw", ZF_POOLS)
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_switches_match_brute_force(hw, padding, out_hw, ties):
  rng = np.random.default_rng(0)
  shape = (2, *hw, 3)
  # With ties (few distinct values, as after a relu) the first location must win.
  x = (rng.integers(0, 3, shape) if ties else rng.normal(size=shape)).astype(np.float32)
  y, sw = jax.jit(layers.max_pool, static_argnums=(1, 2, 3))(x, 3, 2, padding)
  y_ref, rows_ref, cols_ref = _np_max_pool(x, 3, 2, padding)
  assert y.shape[1:3] == out_hw
  np.testing.assert_array_equal(y, y_ref)
  rows, cols = sw.positions()
  np.testing.assert_array_equal(rows, rows_ref)
  np.testing.assert_array_equal(cols, cols_ref)
  # The switch points at the value that was pooled, inside the unpadded input.
  assert rows.min() >= 0 and rows.max() < hw[0] and cols.max() < hw[1]
  np.testing.assert_array_equal(layers.pool_at(x, sw), y)


@pytest.mark.parametrize("hw,padding,out_hw", ZF_POOLS)
def test_unpool_is_adjoint_of_pool(hw, padding, out_hw):
  x = _normal(1, (2, *hw, 5))
  _, sw = layers.max_pool(jax.nn.relu(x), 3, 2, padding)  # Ties at 0, as in the model.
  y = _normal(2, (2, *out_hw, 5))
  lhs = jnp.vdot(layers.pool_at(x, sw), y)
  rhs = jnp.vdot(x, layers.unpool(y, sw))
  np.testing.assert_allclose(lhs, rhs, rtol=1e-5)
  # And it is *the* adjoint: identical to the transpose JAX derives for pool_at.
  transpose = jax.linear_transpose(lambda v: layers.pool_at(v, sw), x)
  np.testing.assert_allclose(layers.unpool(y, sw), transpose(y)[0], rtol=1e-6, atol=1e-6)


def test_unpool_sums_where_overlapping_windows_share_a_winner():
  # One big value at (2, 2) wins all four 3x3/2 windows of a 5x5 map.
  x = np.zeros((1, 5, 5, 1), np.float32)
  x[0, 2, 2, 0] = 10.0
  _, sw = layers.max_pool(x, 3, 2, ((0, 0), (0, 0)))
  y = np.array([1.0, 2.0, 3.0, 4.0], np.float32).reshape(1, 2, 2, 1)
  up = np.array(layers.unpool(y, sw))
  assert up[0, 2, 2, 0] == 10.0
  up[0, 2, 2, 0] = 0.0
  assert not up.any()  # Locations that won nothing are 0.


def test_max_pool_gradient_flows_to_switches_only():
  x = jax.nn.relu(_normal(2, (1, 26, 26, 4)))
  y, sw = layers.max_pool(x, 3, 2, ((0, 1), (0, 1)))
  g = _normal(3, y.shape)
  grad = jax.grad(lambda v: jnp.vdot(layers.max_pool(v, 3, 2, ((0, 1), (0, 1)))[0], g))(x)
  np.testing.assert_allclose(grad, layers.unpool(g, sw), rtol=1e-6, atol=1e-6)


def test_pool_and_unpool_under_jit_and_vmap():
  x = _normal(4, (3, 2, 26, 26, 4))  # A stack of batches.
  pad = ((0, 1), (0, 1))
  pool = lambda v: layers.max_pool(v, 3, 2, pad)
  y_v, sw_v = jax.jit(jax.vmap(pool))(x)
  g = _normal(5, y_v.shape)
  up_v = jax.jit(jax.vmap(layers.unpool))(g, sw_v)
  for i in range(3):
    y, sw = pool(x[i])
    np.testing.assert_array_equal(y_v[i], y)
    np.testing.assert_array_equal(sw_v.index[i], sw.index)
    np.testing.assert_array_equal(up_v[i], layers.unpool(g[i], sw))


def _zf_conv_shapes(arch):
  """(input NHWC, HWIO filter, stride, padding) of every conv layer of `arch`."""
  size, cin, out = arch.image_size, 3, []
  shapes = arch_lib.feature_shapes(arch)
  for c in arch.convs:
    out.append(((1, size, size, cin), (c.kernel, c.kernel, cin, c.features), c.stride, c.padding))
    size, cin = shapes[c.layer]["out"][0], c.features
  return out


@pytest.mark.parametrize("x_shape,w_shape,stride,padding",
                         _zf_conv_shapes(arch_lib.get("zfnet"))
                         + _zf_conv_shapes(arch_lib.get("alexnet"))[:2])
def test_conv_transpose_is_adjoint_of_conv2d(x_shape, w_shape, stride, padding):
  x = _normal(6, x_shape)
  w = _normal(7, w_shape)
  y_shape = jax.eval_shape(lambda: layers.conv2d(x, w, None, stride, padding)).shape
  y = _normal(8, y_shape)
  xt = layers.conv_transpose(y, w, stride, padding, x_shape)
  assert xt.shape == x_shape
  lhs = jnp.vdot(layers.conv2d(x, w, None, stride, padding), y)
  rhs = jnp.vdot(x, xt)
  np.testing.assert_allclose(lhs, rhs, rtol=2e-4)


def test_conv_transpose_equals_the_derived_transpose_and_flipped_filters():
  x = _normal(7, (2, 23, 23, 3))
  w = _normal(8, (7, 7, 3, 4))
  # The reference is XLA's own transposition of its conv (ours has a custom gradient).
  conv = lambda v: lax.conv_general_dilated(v, w, (2, 2), ((1, 1), (1, 1)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
  y = _normal(9, conv(x).shape)
  derived = jax.linear_transpose(conv, x)(y)[0]
  ours = layers.conv_transpose(y, w, 2, ((1, 1), (1, 1)), x.shape)
  np.testing.assert_allclose(ours, derived, rtol=1e-5, atol=1e-4)
  # Stride 1, "same" padding: a plain correlation with the flipped, transposed filters.
  y1 = _normal(10, (2, 23, 23, 4))
  flipped = jnp.flip(w[2:5, 2:5], (0, 1)).swapaxes(2, 3)
  np.testing.assert_allclose(
      layers.conv_transpose(y1, w[2:5, 2:5], 1, ((1, 1), (1, 1)), x.shape),
      layers.conv2d(y1, flipped, None, 1, ((1, 1), (1, 1))), rtol=1e-5, atol=1e-4)


# (x shape, w shape, stride, padding): strides 1-4, no padding (XLA's slow path
# that conv2d avoids), uneven padding, rows the conv never reads, kernels
# smaller than the stride, and the colours' 3 (layers._FEW_CHANNELS) or more input channels.
_GEOMETRIES = [
    ((2, 23, 23, 3), (7, 7, 3, 4), 2, ((1, 1), (1, 1))),
    ((2, 12, 12, 3), (5, 5, 3, 4), 1, ((2, 2), (2, 2))),
    ((2, 24, 24, 5), (5, 5, 5, 6), 2, ((0, 0), (0, 0))),
    ((2, 25, 25, 5), (5, 5, 5, 6), 2, ((0, 0), (0, 0))),
    ((2, 27, 27, 3), (11, 11, 3, 4), 4, ((2, 2), (2, 2))),
    ((2, 13, 13, 20), (3, 3, 20, 5), 1, ((1, 1), (1, 1))),
    ((2, 12, 12, 20), (3, 3, 20, 5), 1, ((0, 0), (0, 0))),
    ((2, 12, 11, 6), (3, 3, 6, 5), 1, ((0, 2), (2, 1))),
    ((2, 9, 9, 4), (1, 1, 4, 3), 2, ((0, 0), (0, 0))),
    ((2, 10, 10, 4), (2, 2, 4, 3), 3, ((1, 0), (0, 1))),
    ((2, 14, 14, 40), (5, 5, 40, 8), 2, ((1, 2), (0, 1))),
    ((2, 15, 15, 40), (5, 5, 40, 8), 2, ((0, 0), (0, 0))),
]


@pytest.mark.parametrize("x_shape,w_shape,stride,padding", _GEOMETRIES)
def test_conv2d_and_its_gradients_equal_xlas(x_shape, w_shape, stride, padding):
  """conv2d's faster forward path and custom gradients give XLA's own numbers."""
  x, w = _normal(11, x_shape), _normal(12, w_shape)
  ref = lambda x, w: lax.conv_general_dilated(x, w, (stride, stride), padding,
                                              dimension_numbers=("NHWC", "HWIO", "NHWC"))
  ours = lambda x, w: layers.conv2d(x, w, None, stride, padding)
  y, ref_vjp = jax.vjp(ref, x, w)
  np.testing.assert_allclose(ours(x, w), y, rtol=1e-5, atol=1e-5)
  g = _normal(13, y.shape)
  for got, want in zip(jax.vjp(ours, x, w)[1](g), ref_vjp(g)):
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(want))))
  np.testing.assert_allclose(layers.conv_transpose(g, w, stride, padding, x_shape),
                             ref_vjp(g)[0], rtol=0,
                             atol=1e-5 * float(jnp.max(jnp.abs(ref_vjp(g)[0]))))


@pytest.mark.parametrize("size", [5, 4])
def test_lrn_matches_its_formula(size):
  a = np.random.default_rng(3).normal(size=(2, 3, 3, 7)).astype(np.float32) * 20
  alpha, beta, k = 5e-4, 0.75, 2.0
  ref = np.empty_like(a)
  for c in range(7):
    lo, hi = max(0, c - size // 2), min(7, c + (size - 1) // 2 + 1)
    ref[..., c] = a[..., c] / (k + alpha / size * (a[..., lo:hi] ** 2).sum(-1)) ** beta
  np.testing.assert_allclose(layers.lrn(a, size, alpha, beta, k), ref, rtol=1e-5)


def test_switches_survive_device_put_and_orbax(tmp_path):
  x = _normal(11, (2, 26, 26, 3))
  _, sw = layers.max_pool(x, 3, 2, ((0, 1), (0, 1)))
  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
  sharding = jax.NamedSharding(mesh, jax.P("data"))
  placed = jax.device_put(sw, sharding)
  assert isinstance(placed, layers.Switches) and placed.index.sharding == sharding
  np.testing.assert_array_equal(placed.index, sw.index)

  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.save(0, args=ocp.args.StandardSave({"switches": sw}))
    mngr.wait_until_finished()
    restored = mngr.restore(0, args=ocp.args.StandardRestore({"switches": sw}))["switches"]
  assert isinstance(restored, layers.Switches)
  assert (restored.input_hw, restored.window, restored.stride, restored.padding) == (
      sw.input_hw, sw.window, sw.stride, sw.padding)
  assert restored.index.dtype == sw.index.dtype
  np.testing.assert_array_equal(restored.index, sw.index)
  y = jnp.ones(sw.index.shape)
  np.testing.assert_array_equal(layers.unpool(y, restored), layers.unpool(y, sw))
