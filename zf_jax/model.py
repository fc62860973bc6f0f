"""The convnet of Fig. 3 as two pure functions: `init` and `apply -> (logits, Trace)`.

Parameters are a plain dict: {"conv1": {"w": HWIO, "b"}, ..., "fc6": {"w":
(in, out), "b"}, "fc7": ..., "fc8": ...}, with the layers an ablation removed
absent. The first fully connected layer reads the top conv output flattened
in NHWC order; "fc8" is always the C-way softmax layer.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import struct

from zf_jax import layers
from zf_jax.arch import Arch, flat_features

Params = dict[str, dict[str, jax.Array]]

INIT_SCHEMES = ("paper", "he")
INPUT_SCALE = 64.0  # Std of mean-subtracted pixels in [-128, 128] (Section 3), roughly.


@struct.dataclass
class Trace:
  """What the forward pass leaves for the deconvnet (Section 2.1).

  activations[l]: conv layer l's output after relu and max pool, before LRN.
  switches[l]: that layer's pooling `Switches` (only for layers that pool).
  images: the input, so that a Trace alone can be projected and cropped.
  """
  images: jax.Array
  activations: dict[int, jax.Array]
  switches: dict[int, layers.Switches]


@functools.partial(jax.jit, static_argnames=("arch", "scheme"))
def init(rng: jax.Array, arch: Arch, *, scheme: str = "paper") -> Params:
  """Initial parameters.

  Args:
    rng: a `jax.random.key`.
    arch: the architecture.
    scheme: "paper" — Section 3: "All weights are initialized to 10^-2 and
      biases are set to 0", read as weights ~ N(0, 0.01^2); "he" — N(0,
      2 / fan_in) (He et al. 2015), with the first layer's weights also
      divided by `INPUT_SCALE`, the spread of the paper's mean-subtracted
      pixels, so every layer sees unit-scale inputs: small models train from
      scratch in a few hundred steps, where the paper's init starts slowly.

  Returns:
    The parameter dict described in the module docstring.
  """
  if scheme not in INIT_SCHEMES:
    raise ValueError(f"unknown init scheme {scheme!r}; choose one of {', '.join(INIT_SCHEMES)}")
  shapes = {}
  cin = 3
  for c in arch.convs:
    shapes[f"conv{c.layer}"] = (c.kernel, c.kernel, cin, c.features)
    cin = c.features
  fin = flat_features(arch)
  for f in arch.fcs:
    shapes[f"fc{f.layer}"] = (fin, f.features)
    fin = f.features
  shapes["fc8"] = (fin, arch.num_classes)

  # One draw for all weights: each separate threefry call costs seconds of
  # XLA compile time on CPU.
  sizes = [math.prod(shape) for shape in shapes.values()]
  noise = jax.random.normal(rng, (sum(sizes),), jnp.float32)
  params, start = {}, 0
  for (name, shape), size in zip(shapes.items(), sizes):
    fan_in = math.prod(shape[:-1])
    std = 1e-2 if scheme == "paper" else math.sqrt(2.0 / fan_in)
    if scheme == "he" and name == "conv1":
      std /= INPUT_SCALE
    w = std * noise[start:start + size].reshape(shape)
    start += size
    params[name] = {"w": w, "b": jnp.zeros(shape[-1:], jnp.float32)}
  return params


def conv_layer(params: Params, x: jax.Array, c) -> tuple[jax.Array, ...]:
  """One conv layer of Fig. 3 (Section 2), conv -> relu -> [max pool] -> [LRN], on NHWC `x`.

  Returns (conv output z, relu(z), after the pool (relu(z) without one), its
  Switches (None without a pool), after the LRN (the next layer's input)).
  """
  p = params[f"conv{c.layer}"]
  z = layers.conv2d(x, p["w"], p["b"], c.stride, c.padding)
  r = layers.relu(z)
  pooled, switches = r, None
  if c.pool is not None:
    pooled, switches = layers.max_pool(r, c.pool.window, c.pool.stride, c.pool.padding)
  out = pooled
  if c.norm is not None:
    out = layers.lrn(pooled, c.norm.size, c.norm.alpha, c.norm.beta, c.norm.k)
  return z, r, pooled, switches, out


def conv_stack(params: Params, images: jax.Array, arch: Arch, top: int | None = None):
  """The conv layers 1..`top` (all by default): conv -> relu -> [max pool] -> [LRN] (Fig. 3).

  Returns:
    (output of the last layer run, after its LRN; activations {l: after pool,
    before LRN}; switches {l: Switches}; relu masks {l: conv output > 0}).
    Unused parts cost nothing under jit.
  """
  x = images
  activations, switches, positive = {}, {}, {}
  for c in arch.convs:
    if top is not None and c.layer > top:
      break
    z, _, activations[c.layer], sw, x = conv_layer(params, x, c)
    positive[c.layer] = z > 0
    if sw is not None:
      switches[c.layer] = sw
  return x, activations, switches, positive


def _dropout(x, rate, rng):
  keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype))


def apply(params: Params, images: jax.Array, arch: Arch, *, train: bool = False,
          rng: jax.Array | None = None) -> tuple[jax.Array, Trace]:
  """Forward pass: logits and the `Trace` the deconvnet needs.

  Args:
    params: from `init` (or a checkpoint).
    images: (N, H, W, 3) float32, already preprocessed (mean-subtracted,
      roughly [-128, 128], Section 3).
    arch: the architecture (static under jit).
    train: apply dropout to the hidden fully connected layers (Section 3:
      "Dropout ... is used in the fully connected layers (6 and 7) with a
      rate of 0.5").
    rng: a `jax.random.key`, required when `train` and `arch.dropout > 0`.

  Returns:
    (logits (N, C), Trace).
  """
  size = arch.image_size
  if images.ndim != 4 or images.shape[1:] != (size, size, 3):
    raise ValueError(f"images of shape {tuple(images.shape)} do not fit arch {arch.name!r}: "
                     f"expected (N, {size}, {size}, 3)")
  dropout = train and arch.dropout > 0
  if dropout and rng is None:
    raise ValueError("apply(train=True) needs rng= (a jax.random.key) for dropout")

  x, activations, switches, _ = conv_stack(params, images, arch)
  logits, _ = _fully_connected(params, x, arch, rng if dropout else None)
  return logits, Trace(images=images, activations=activations, switches=switches)


def _fully_connected(params: Params, x: jax.Array, arch: Arch, dropout_rng=None):
  """Layers 6, 7 (relu, dropout when `dropout_rng`) and 8 on the top conv output.

  Returns (logits, {layer: output after relu (and dropout)} for 6 and 7).
  """
  x = x.reshape(x.shape[0], -1)
  hidden = {}
  for f in arch.fcs:
    p = params[f"fc{f.layer}"]
    x = layers.relu(x @ p["w"] + p["b"])
    if dropout_rng is not None:
      x = _dropout(x, arch.dropout, jax.random.fold_in(dropout_rng, f.layer))
    hidden[f.layer] = x
  return x @ params["fc8"]["w"] + params["fc8"]["b"], hidden


@functools.partial(jax.jit, static_argnames=("arch", "which"))
def features(params: Params, images: jax.Array, arch: Arch, which: tuple[int, ...]
             ) -> dict[int, jax.Array]:
  """Feature vectors of `images` at the paper's layers, flattened: {l: (N, D_l)}.

  Conv layer l: its maps after relu and max pool (the deconvnet's starting
  point, `Trace.activations[l]`) flattened in NHWC order; fully connected
  layer 6 or 7: its output after relu (no dropout); 8: the logits. These are
  the vectors of Section 4.2's invariance curves (Fig. 5) and Section 4.3's
  correspondence measure (Table 1).
  """
  valid = set(arch.conv_layers) | {f.layer for f in arch.fcs} | {8}
  bad = [l for l in which if l not in valid]
  if bad:
    raise ValueError(f"arch {arch.name!r} has no layer {bad[0]}; choose among {sorted(valid)}")
  x, activations, _, _ = conv_stack(params, images, arch)
  logits, out = _fully_connected(params, x, arch)
  out.update({l: a.reshape(images.shape[0], -1) for l, a in activations.items()})
  out[8] = logits
  return {l: out[l] for l in which}
