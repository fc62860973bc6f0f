"""The convnet's operations as pure functions, with explicit max-pool switches.

Activations are NHWC (any number of leading batch axes for the pooling and
LRN functions; exactly NHWC for the convolutions), filters HWIO. Section 2 of
the paper: each layer is conv -> relu -> [max pool] -> [contrast norm]; the
deconvnet of Section 2.1 runs unpool -> relu -> transposed conv, using the
*switches* recorded by the max pooling on the way up (Fig. 1, bottom).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import struct
from jax import lax

Padding = tuple[tuple[int, int], tuple[int, int]]

_DIMS = ("NHWC", "HWIO", "NHWC")
# Below this many input channels (the image's 3 colours), a conv's input
# gradient (and the deconvnet's transposed conv down to pixels) is a matrix
# product plus shifts: XLA:CPU runs a conv with 3 output channels at ~15
# GFLOP/s. Not for more: with the threshold at 16, zfnet_tiny's layers 2 and 3
# (8 and 12 channels in) took that path and its train step ran 3.5x slower
# (72 ms against 21 ms at batch 64 on 2 cores).
_FEW_CHANNELS = 4


@struct.dataclass
class Switches:
  """Where each max-pooling window found its maximum (Fig. 1, bottom).

  `index[..., i, j, c]` is the winner's offset inside window (i, j), row-major:
  `di * window + dj`; the winner sits at input row `i * stride + di - pad_lo`
  (see `positions`). Only `index` is an array leaf; the geometry is static,
  so a `Switches` passes through `jit`, `vmap`, `device_put` and orbax as is.
  """
  index: jax.Array
  input_hw: tuple[int, int] = struct.field(pytree_node=False)
  window: int = struct.field(pytree_node=False)
  stride: int = struct.field(pytree_node=False)
  padding: Padding = struct.field(pytree_node=False)

  def positions(self) -> tuple[jax.Array, jax.Array]:
    """(rows, cols): input coordinates of every window's winner, shaped like `index`."""
    di, dj = jnp.divmod(self.index.astype(jnp.int32), self.window)
    i = lax.broadcasted_iota(jnp.int32, self.index.shape, self.index.ndim - 3)
    j = lax.broadcasted_iota(jnp.int32, self.index.shape, self.index.ndim - 2)
    return (i * self.stride + di - self.padding[0][0],
            j * self.stride + dj - self.padding[1][0])


def _lax_conv(x, w, stride: int, padding: Padding) -> jax.Array:
  """`lax.conv_general_dilated` that avoids XLA:CPU's slow path for unpadded convs.

  Measured with jax 0.10 on a 2-core EPYC: a convolution with no padding at
  all runs at ~50 GFLOP/s, the same one with any padding at ~150-170 (the
  speed of a stride-1 conv). So an unpadded conv gets one trailing zero row
  and column, and its output is cut back to size: the result is the same.
  """
  if any(lo or hi for lo, hi in padding):
    return lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=_DIMS)
  out_h = (x.shape[-3] - w.shape[0]) // stride + 1
  out_w = (x.shape[-2] - w.shape[1]) // stride + 1
  y = lax.conv_general_dilated(x, w, (stride, stride), ((0, 1), (0, 1)), dimension_numbers=_DIMS)
  return y[..., :out_h, :out_w, :]


def _input_grad(y: jax.Array, w: jax.Array, stride: int, padding: Padding,
                input_hw: tuple[int, int]) -> jax.Array:
  """The adjoint of `_lax_conv(., w, stride, padding)` applied to `y` (NHWC).

  Stride 1 is one correlation with the flipped, transposed filters. A stride s
  > 1 is split into its s x s output phases ("polyphase"): the padded input
  row s * p + a only ever meets the filter taps a, a + s, a + 2s, ..., so each
  phase is a stride-1 correlation of `y` with those taps, and the phases are
  interleaved. Unlike the textbook form (dilate `y` with s - 1 zeros between
  values, then correlate), no multiplication by an inserted zero is done: s^2
  times less work, and every conv here is a fast stride-1 one.
  """
  kh, kw = w.shape[0], w.shape[1]
  (lo_h, hi_h), (lo_w, hi_w) = padding
  hp, wp = input_hw[0] + lo_h + hi_h, input_hw[1] + lo_w + hi_w  # Padded input.
  ho, wo = y.shape[-3], y.shape[-2]
  if (stride == 1 and w.shape[2] >= _FEW_CHANNELS and kh - 1 >= max(lo_h, hi_h)
      and kw - 1 >= max(lo_w, hi_w)):
    # Only the rows inside the padding: pad by k - 1 - lo (and rows never read).
    flipped = jnp.flip(w, (0, 1)).swapaxes(2, 3)
    return _lax_conv(y, flipped, 1, ((kh - 1 - lo_h, kh - 1 - hi_h + hp - kh + 1 - ho),
                                     (kw - 1 - lo_w, kw - 1 - hi_w + wp - kw + 1 - wo)))
  hq, wq = -(-hp // stride), -(-wp // stride)  # Rows and columns per phase.
  batch = [(0, 0, 0)] * (y.ndim - 3)
  if w.shape[2] < _FEW_CHANNELS:
    # Few output channels (the first layer's 3 colours): one matrix product
    # y @ w for all taps at once, then each tap's share is shifted into place.
    z = jnp.einsum("...hwo,ijco->...hwijc", y, w)
  phases = []
  for a in range(stride):
    row = []
    for b in range(stride):
      taps = w[a::stride, b::stride]
      if taps.shape[0] == 0 or taps.shape[1] == 0:  # A kernel smaller than the stride.
        row.append(jnp.zeros(y.shape[:-3] + (hq, wq, w.shape[2]), y.dtype))
      elif w.shape[2] < _FEW_CHANNELS:
        # phase[p] = sum_m z[p - m, tap a + s * m].
        row.append(sum(
            lax.pad(z[..., a + stride * m, b + stride * n, :], jnp.zeros((), y.dtype),
                    batch + [(m, hq - ho - m, 0), (n, wq - wo - n, 0), (0, 0, 0)])
            for m in range(taps.shape[0]) for n in range(taps.shape[1])))
      else:
        # phase[p] = sum_m y[p - m] taps[m]: a correlation with the flipped taps.
        flipped = jnp.flip(taps, (0, 1)).swapaxes(2, 3)
        row.append(_lax_conv(y, flipped, 1, ((taps.shape[0] - 1, hq - ho),
                                             (taps.shape[1] - 1, wq - wo))))
    phases.append(row)
  # Phase (a, b) holds rows s * p + a and columns s * q + b: interleaved by
  # interior padding (a reshape that merges the phase axes would need an
  # explicit output sharding under a mesh).
  full = sum(lax.pad(phases[a][b], jnp.zeros((), y.dtype),
                     batch + [(a, stride - 1 - a, stride - 1), (b, stride - 1 - b, stride - 1),
                              (0, 0, 0)])
             for a in range(stride) for b in range(stride))
  return full[..., lo_h:lo_h + input_hw[0], lo_w:lo_w + input_hw[1], :]


def _filter_grad(x: jax.Array, g: jax.Array, w: jax.Array, stride: int,
                 padding: Padding) -> jax.Array:
  """d/dw of sum(g * _lax_conv(x, w, stride, padding)) for NHWC `x`, `g`: like `w` (HWIO).

  For stride 1 that is XLA's own (fast) transposed conv. For stride s > 1
  XLA computes it as a conv of `x` with `g` dilated by s, at a fraction of
  the machine's speed; here it is matrix products instead: for every filter
  tap (i, j), the input values that tap meets (a strided slice of the padded
  `x`) contracted with `g` over batch and positions. Filters with few weights
  per output (k * k * cin <= 1024, e.g. the first layer's 7 x 7 x 3) stack the
  taps into one (positions, k * k * cin) matrix and do one product.
  """
  if stride == 1:
    return jax.vjp(lambda w: _lax_conv(x, w, 1, padding), w)[1](g)[0]
  kh, kw = w.shape[:2]
  cin, cout = x.shape[-1], g.shape[-1]
  xp = jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [tuple(padding[0]), tuple(padding[1]), (0, 0)])
  ho, wo = g.shape[-3], g.shape[-2]
  taps = [xp[..., i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
          for i in range(kh) for j in range(kw)]
  g2 = g.reshape(-1, cout)
  # Summed over the batch: with a mesh, the products are all-reduced to the
  # filters' (replicated) sharding.
  dot = functools.partial(lax.dot_general, dimension_numbers=(((0,), (0,)), ((), ())),
                          out_sharding=jax.typeof(w).sharding)
  if kh * kw * cin <= 1024:
    cols = jnp.concatenate(taps, axis=-1).reshape(-1, kh * kw * cin)
    return dot(cols, g2).reshape(kh, kw, cin, cout)
  return jnp.stack([dot(t.reshape(-1, cin), g2) for t in taps]).reshape(kh, kw, cin, cout)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, w, stride, padding):
  return _lax_conv(x, w, stride, padding)


def _conv_fwd(x, w, stride, padding):
  return _lax_conv(x, w, stride, padding), (x, w)


def _conv_bwd(stride, padding, res, g):
  x, w = res
  return (_input_grad(g, w, stride, padding, x.shape[-3:-1]),
          _filter_grad(x, g, w, stride, padding))


_conv.defvjp(_conv_fwd, _conv_bwd)


@functools.partial(jax.jit, static_argnames=("stride", "padding"))
def conv2d(x: jax.Array, w: jax.Array, b: jax.Array | None, stride: int,
           padding: Padding) -> jax.Array:
  """Convolution (cross-correlation) of NHWC `x` with HWIO `w`, plus bias `b`.

  The same numbers as `lax.conv_general_dilated`; its gradients are computed
  by `_input_grad` and `_filter_grad` (reverse mode only), which XLA:CPU runs
  2-3x faster than its own for the strided first layers.
  """
  padding = tuple(tuple(p) for p in padding)
  y = _conv(x, w, stride, padding)
  return y if b is None else y + b


@functools.partial(jax.jit, static_argnames=("stride", "padding", "input_shape"))
def conv_transpose(y: jax.Array, w: jax.Array, stride: int, padding: Padding,
                   input_shape: tuple[int, ...]) -> jax.Array:
  """The adjoint of `conv2d(., w, None, stride, padding)`: the deconvnet's filtering.

  Section 2.1: "the deconvnet uses transposed versions of the same filters
  ... flipping each filter vertically and horizontally". The output is
  exactly `input_shape` (rows the forward conv never read get zeros); a
  strided conv is undone phase by phase (see `_input_grad`), which is the
  textbook "dilate by the stride, then correlate with the flipped filters"
  without the multiplications by the inserted zeros.
  """
  padding = tuple(tuple(p) for p in padding)
  return _input_grad(y, w, stride, padding, tuple(input_shape[-3:-1]))


def relu(x: jax.Array) -> jax.Array:
  """max(x, 0) (Section 2); its gradient at 0 is 0."""
  return jax.nn.relu(x)


def _pad_spatial(x, padding, value):
  cfg = [(0, 0)] * (x.ndim - 3) + [tuple(padding[0]), tuple(padding[1]), (0, 0)]
  return jnp.pad(x, cfg, constant_values=value)


def _window_slices(xp, window, stride, out_hw):
  """Yields (offset, slice): for every window offset, that element of all windows."""
  ho, wo = out_hw
  for di in range(window):
    for dj in range(window):
      yield di * window + dj, xp[..., di:di + stride * (ho - 1) + 1:stride,
                                  dj:dj + stride * (wo - 1) + 1:stride, :]


def _out_hw(hw, window, stride, padding):
  return tuple((n + p[0] + p[1] - window) // stride + 1 for n, p in zip(hw, padding))


@functools.partial(jax.jit, static_argnames=("window", "stride", "padding"))
def max_pool(x: jax.Array, window: int, stride: int,
             padding: Padding) -> tuple[jax.Array, Switches]:
  """Max pooling that also returns its switches (Section 2.1, "Unpooling").

  Windows are `window` x `window`, `stride` apart, over `x` padded with -inf.
  Ties go to the first location in row-major window order. The gradient of
  the pooled output flows to the switch location only, so autodiff through
  `max_pool` and `unpool` with its switches agree exactly.
  """
  hw = (x.shape[-3], x.shape[-2])
  out_hw = _out_hw(hw, window, stride, padding)
  xp = _pad_spatial(x, padding, -jnp.inf)
  dtype = jnp.int8 if window * window <= 127 else jnp.int32
  best, index = None, None
  for offset, s in _window_slices(xp, window, stride, out_hw):
    if best is None:
      best, index = s, jnp.zeros(s.shape, dtype)
      continue
    wins = s > best  # Strict: an equal later value does not take the switch.
    best = jnp.where(wins, s, best)
    index = jnp.where(wins, jnp.asarray(offset, dtype), index)
  switches = Switches(index=index, input_hw=hw, window=window, stride=stride,
                      padding=tuple(map(tuple, padding)))
  return best, switches


@jax.jit
def pool_at(x: jax.Array, switches: Switches) -> jax.Array:
  """Reads `x` at the switch locations: pooling with the switches held fixed.

  `max_pool(x, ...)[0] == pool_at(x, switches)` for the switches of `x`
  itself. This linear map is what `unpool` is the adjoint of.
  """
  xp = _pad_spatial(x, switches.padding, 0.0)
  out = jnp.zeros(switches.index.shape, x.dtype)
  for offset, s in _window_slices(xp, switches.window, switches.stride,
                                  switches.index.shape[-3:-1]):
    out = jnp.where(switches.index == offset, s, out)
  return out


@jax.jit
def unpool(y: jax.Array, switches: Switches) -> jax.Array:
  """Places every value of `y` at the input location that won its window.

  Where overlapping windows chose the same location the values add up, which
  makes `unpool` the exact adjoint of `pool_at` (pooling with fixed switches);
  locations that won nothing are 0. Section 2.1, Fig. 1 (bottom).
  """
  window, stride, padding = switches.window, switches.stride, switches.padding
  h, w = switches.input_hw
  hp, wp = h + padding[0][0] + padding[0][1], w + padding[1][0] + padding[1][1]
  ho, wo = y.shape[-3], y.shape[-2]
  # Row s * q + a of the padded input is offset di = a + s * m of window q - m,
  # so each of the s x s phases (a, b) of the input only gathers the offsets
  # di = a (mod s), dj = b (mod s), shifted by m: every output value sums
  # about (window / stride)^2 terms instead of window^2.
  hq = max(-(-hp // stride), ho + (window - 1) // stride)
  wq = max(-(-wp // stride), wo + (window - 1) // stride)
  zero = jnp.zeros((), y.dtype)
  batch = [(0, 0, 0)] * (y.ndim - 3)
  rows = []
  for a in range(stride):
    row = []
    for b in range(stride):
      part = jnp.zeros(y.shape[:-3] + (hq, wq, y.shape[-1]), y.dtype)
      for di in range(a, window, stride):
        for dj in range(b, window, stride):
          m, n = di // stride, dj // stride
          won = jnp.where(switches.index == di * window + dj, y, zero)
          part = part + lax.pad(won, zero, batch + [(m, hq - ho - m, 0), (n, wq - wo - n, 0),
                                                    (0, 0, 0)])
      row.append(part)
    rows.append(jnp.stack(row, axis=-2))
  out = jnp.stack(rows, axis=-4)  # (..., hq, [a], wq, [b], c)
  out = out.reshape(out.shape[:-5] + (hq * stride, wq * stride, out.shape[-1]))
  return out[..., padding[0][0]:padding[0][0] + h, padding[1][0]:padding[1][0] + w, :]


@functools.partial(jax.jit, static_argnames=("size", "alpha", "beta", "k"))
def lrn(x: jax.Array, size: int, alpha: float, beta: float, k: float) -> jax.Array:
  """Local response (contrast) normalisation across channels (Fig. 3, step iii).

  b_c = a_c / (k + alpha / size * sum_{c'} a_{c'}^2) ** beta, the sum over the
  `size` channels centred on c (size // 2 before, (size - 1) // 2 after),
  zero-padded at the ends: the Caffe / torch.nn.LocalResponseNorm convention.
  """
  c = x.shape[-1]
  sq = jnp.pad(jnp.square(x), [(0, 0)] * (x.ndim - 1) + [(size // 2, (size - 1) // 2)])
  total = sum(sq[..., d:d + c] for d in range(size))
  return x / (k + (alpha / size) * total) ** beta
