"""The deconvnet: projecting chosen activations back to pixel space (Section 2.1).

"To examine a given convnet activation, we set all other activations in the
layer to zero and pass the feature maps as input to the attached deconvnet
layer. Then we successively (i) unpool, (ii) rectify and (iii) filter to
reconstruct the activity in the layer beneath that gave rise to the chosen
activation. This is then repeated until input pixel space is reached."

The descent is its own chain of pure functions (`layers.unpool`,
`layers.relu`, `layers.conv_transpose`), not autodiff with a hook. Contrast
normalisation is not used on the way down and biases are not used (ECCV
text: "we do not use any contrast normalization operations when in this
reconstruction path").
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from zf_jax import layers, model
from zf_jax.arch import Arch
from zf_jax.model import Params, Trace

MODES = ("deconvnet", "backprop", "guided")


def _check(arch: Arch, trace: Trace, layer: int, mode: str) -> None:
  if mode not in MODES:
    raise ValueError(f"unknown projection mode {mode!r}; choose one of {', '.join(MODES)}")
  if layer not in arch.conv_layers:
    raise ValueError(f"cannot project from layer {layer}: arch {arch.name!r} has conv layers "
                     f"{list(arch.conv_layers)}")
  if layer not in trace.activations:
    raise ValueError(f"the trace holds no activations of layer {layer}")


@functools.partial(jax.jit, static_argnames=("arch", "layer", "mode"))
def project(params: Params, arch: Arch, trace: Trace, layer: int, selection: jax.Array, *,
            mode: str = "deconvnet") -> jax.Array:
  """Projects `selection` of conv layer `layer` down to pixel space.

  Args:
    params: the trained parameters (only conv filters are used).
    arch: the architecture (static).
    trace: from `model.apply` on the images whose activations are examined;
      its switches steer the unpooling (Section 2.1).
    layer: paper number of the conv layer the selection lives in (static).
    selection: shaped like `trace.activations[layer]`: that layer's maps with
      every activation not to be projected set to zero (see `strongest`).
    mode: how the signal is rectified below each unpooling:
      "deconvnet": relu of the reconstructed signal (the paper);
      "backprop": the forward relu's mask (the paper's footnote, i.e. the
        gradient of sum(selection * activation) when no LRN is in the way);
      "guided": both.

  Returns:
    The reconstruction, shaped like `trace.images`.

  `vmap` over selections of one trace (`project_many`) computes the trace's
  part of the work (the relu masks of "backprop"/"guided") once.
  """
  _check(arch, trace, layer, mode)
  expected = trace.activations[layer].shape
  if selection.shape != expected:
    raise ValueError(f"selection of shape {selection.shape} does not match layer {layer}'s "
                     f"activations {expected}")
  convs = [c for c in arch.convs if c.layer <= layer]
  # The forward relu masks, recomputed from the images (once per trace under vmap).
  masks = model.conv_stack(params, trace.images, arch, layer)[3] if mode != "deconvnet" else {}
  signal = selection
  for i in reversed(range(len(convs))):
    c = convs[i]
    if c.pool is not None:
      signal = layers.unpool(signal, trace.switches[c.layer])
    if mode in ("deconvnet", "guided"):
      signal = layers.relu(signal)
    if mode in ("backprop", "guided"):
      signal = jnp.where(masks[c.layer], signal, jnp.zeros((), signal.dtype))
    below = trace.activations[convs[i - 1].layer].shape if i else trace.images.shape
    signal = layers.conv_transpose(signal, params[f"conv{c.layer}"]["w"], c.stride, c.padding,
                                   below)
  return signal


def project_many(params: Params, arch: Arch, trace: Trace, layer: int, selections: jax.Array,
                 *, mode: str = "deconvnet") -> jax.Array:
  """`project` vmapped over a leading axis of `selections`: (K, *activation) -> (K, *images)."""
  return jax.vmap(lambda s: project(params, arch, trace, layer, s, mode=mode))(selections)


@functools.partial(jax.jit, static_argnames=("layer",))
def strongest(trace: Trace, layer: int, feature: int | jax.Array) -> jax.Array:
  """Keeps only the largest activation of feature map `feature`, per image.

  Returns a selection for `project`: zeros everywhere but at each image's
  strongest location of map `feature` (first in row-major order on ties),
  which keeps its value. `feature` may be traced, so this vmaps over maps.
  """
  acts = trace.activations[layer]
  n, h, w, c = acts.shape
  fmap = jnp.take(acts, feature, axis=-1).reshape(n, h * w)
  best = jnp.argmax(fmap, axis=1)
  at_best = (jnp.arange(h * w) == best[:, None]).reshape(n, h, w, 1)
  in_map = (jnp.arange(c) == feature).reshape(1, 1, 1, c)
  return jnp.where(at_best & in_map, acts, jnp.zeros((), acts.dtype))
