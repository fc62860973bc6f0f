"""The convnet of Fig. 3 as two pure functions: `init` and `apply -> (logits, Trace)`.

Parameters are a plain dict: {"conv1": {"w": HWIO, "b"}, ..., "fc6": {"w":
(in, out), "b"}, "fc7": ..., "fc8": ...}, with the layers an ablation removed
absent. The first fully connected layer reads the top conv output flattened
in NHWC order; "fc8" is always the C-way softmax layer.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

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

  activations[l]: conv layer l's output after relu and max pool, before LRN (after it
    in a layer whose LRN comes before the pool, `ConvSpec.norm_before_pool`).
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


class ConvLayerOut(NamedTuple):
  """What one conv layer computes (Fig. 3), stage by stage; a pytree (passes through jit, vmap).

  conv: the conv output z, before the relu.
  rectified: relu(z).
  pool_input: what the max pool reads: `rectified`, or its LRN in a layer with
    `norm_before_pool`.
  pooled: after the max pool (`pool_input` itself without one): the maps the
    deconvnet starts from (`Trace.activations`).
  switches: the pool's `Switches`, None without a pool.
  output: after the LRN (`pooled` itself without one, or when the LRN came
    before the pool): the next layer's input.
  """
  conv: jax.Array
  rectified: jax.Array
  pool_input: jax.Array
  pooled: jax.Array
  switches: layers.Switches | None
  output: jax.Array


class ConvStackOut(NamedTuple):
  """What conv layers 1..top compute (Fig. 3); a pytree, keyed by paper layer number.

  output: the last layer's output, after its LRN (the fully connected head's input).
  activations: {l: after relu and pool, before LRN}.
  switches: {l: Switches} of the layers that pool.
  relu_masks: {l: conv output > 0} (the forward relu's mask, for `deconv`'s
    "backprop" and "guided" modes).
  """
  output: jax.Array
  activations: dict[int, jax.Array]
  switches: dict[int, layers.Switches]
  relu_masks: dict[int, jax.Array]


class FullyConnectedOut(NamedTuple):
  """What the fully connected head computes (Fig. 3's layers 6, 7 and 8); a pytree.

  logits: (N, C), the softmax layer 8's input.
  hidden: {layer: (N, D) output after relu (and dropout when training)} for
    the hidden layers present (6 and 7 unless ablated).
  """
  logits: jax.Array
  hidden: dict[int, jax.Array]


def conv_layer(params: Params, x: jax.Array, c) -> ConvLayerOut:
  """One conv layer of Fig. 3 (Section 2), conv -> relu -> [max pool] -> [LRN], on NHWC `x`.

  `c` is the layer's `ConvSpec`; with `c.norm_before_pool` the LRN comes
  before the pool. Returns every stage, see `ConvLayerOut`.
  """
  p = params[f"conv{c.layer}"]
  z = layers.conv2d(x, p["w"], p["b"], c.stride, c.padding)
  r = layers.relu(z)
  lrn = None if c.norm is None else functools.partial(
      layers.lrn, size=c.norm.size, alpha=c.norm.alpha, beta=c.norm.beta, k=c.norm.k)
  before = lrn is not None and c.norm_before_pool
  pool_input = lrn(r) if before else r
  pooled, switches = pool_input, None
  if c.pool is not None:
    pooled, switches = layers.max_pool(pool_input, c.pool.window, c.pool.stride, c.pool.padding)
  out = lrn(pooled) if lrn is not None and not before else pooled
  return ConvLayerOut(conv=z, rectified=r, pool_input=pool_input, pooled=pooled,
                      switches=switches, output=out)


def conv_stack(params: Params, images: jax.Array, arch: Arch, top: int | None = None
               ) -> ConvStackOut:
  """The conv layers 1..`top` (all by default): conv -> relu -> [max pool] -> [LRN] (Fig. 3).

  Returns:
    A `ConvStackOut`: the last layer's output after its LRN and, per layer,
    activations, switches and relu masks. Unused parts cost nothing under jit.
  """
  x = images
  activations, switches, relu_masks = {}, {}, {}
  for c in arch.convs:
    if top is not None and c.layer > top:
      break
    out = conv_layer(params, x, c)
    x = out.output
    activations[c.layer] = out.pooled
    relu_masks[c.layer] = out.conv > 0
    if out.switches is not None:
      switches[c.layer] = out.switches
  return ConvStackOut(output=x, activations=activations, switches=switches,
                      relu_masks=relu_masks)


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

  convs = conv_stack(params, images, arch)
  logits = fully_connected(params, convs.output, arch, rng if dropout else None).logits
  return logits, Trace(images=images, activations=convs.activations, switches=convs.switches)


def fully_connected(params: Params, x: jax.Array, arch: Arch,
                    dropout_rng: jax.Array | None = None) -> FullyConnectedOut:
  """The fully connected head of Fig. 3: layers 6 and 7 (relu) and the softmax layer 8.

  Args:
    params: the model's parameters ("fc6", "fc7" (those present), "fc8").
    x: (N, H, W, C) the top conv layer's output after its LRN (`conv_stack`'s
      `output`); flattened in NHWC order, as the first fc layer's weights read it.
    arch: the architecture (its `fcs`: the hidden layers an ablation kept).
    dropout_rng: a `jax.random.key` to apply dropout at rate `arch.dropout`
      to the hidden layers (training, Section 3); None: no dropout.

  Returns:
    A `FullyConnectedOut`: the logits (layer 8 before its softmax) and the
    hidden layers' outputs.
  """
  x = x.reshape(x.shape[0], -1)
  hidden = {}
  for f in arch.fcs:
    p = params[f"fc{f.layer}"]
    x = layers.relu(x @ p["w"] + p["b"])
    if dropout_rng is not None:
      x = _dropout(x, arch.dropout, jax.random.fold_in(dropout_rng, f.layer))
    hidden[f.layer] = x
  return FullyConnectedOut(logits=x @ params["fc8"]["w"] + params["fc8"]["b"], hidden=hidden)


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
  convs = conv_stack(params, images, arch)
  head = fully_connected(params, convs.output, arch)
  out = dict(head.hidden)
  out.update({l: a.reshape(images.shape[0], -1) for l, a in convs.activations.items()})
  out[8] = head.logits
  return {l: out[l] for l in which}
