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


@functools.partial(jax.jit, static_argnames=("stride", "padding"))
def conv2d(x: jax.Array, w: jax.Array, b: jax.Array | None, stride: int,
           padding: Padding) -> jax.Array:
  """Convolution (cross-correlation) of NHWC `x` with HWIO `w`, plus bias `b`."""
  y = lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=_DIMS)
  return y if b is None else y + b


@functools.partial(jax.jit, static_argnames=("stride", "padding", "input_shape"))
def conv_transpose(y: jax.Array, w: jax.Array, stride: int, padding: Padding,
                   input_shape: tuple[int, ...]) -> jax.Array:
  """The adjoint of `conv2d(., w, None, stride, padding)`: the deconvnet's filtering.

  Section 2.1: "the deconvnet uses transposed versions of the same filters
  ... flipping each filter vertically and horizontally". A strided conv is
  undone by dilating `y` by `stride`, correlating with the flipped filters
  (input and output channels swapped) and padding so that the output is
  exactly `input_shape` (rows the forward conv never read get zeros).
  """
  kh, kw = w.shape[0], w.shape[1]
  pads = []
  for axis, k in ((0, kh), (1, kw)):
    size, out = input_shape[-3 + axis], y.shape[-3 + axis]
    lo, hi = padding[axis]
    unread = size + lo + hi - k - (out - 1) * stride  # Trailing rows no window reached.
    pads.append((k - 1 - lo, k - 1 - hi + unread))
  w_t = jnp.flip(w, (0, 1)).swapaxes(2, 3)
  return lax.conv_general_dilated(y, w_t, (1, 1), pads, lhs_dilation=(stride, stride),
                                  dimension_numbers=_DIMS)


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
  batch = [(0, 0, 0)] * (y.ndim - 3)
  out = None
  for offset in range(window * window):
    di, dj = divmod(offset, window)
    part = jnp.where(switches.index == offset, y, jnp.zeros((), y.dtype))
    # Interior padding spreads the window grid out to stride spacing.
    placed = lax.pad(part, jnp.zeros((), y.dtype), batch + [
        (di, hp - di - stride * (ho - 1) - 1, stride - 1),
        (dj, wp - dj - stride * (wo - 1) - 1, stride - 1),
        (0, 0, 0)])
    out = placed if out is None else out + placed
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
