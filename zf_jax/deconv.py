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
from jax import lax

from zf_jax import layers, model
from zf_jax.arch import Arch, feature_shapes
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



def _window(full: jax.Array, start, extent: tuple[int, int], padding: layers.Padding):
  """Re-cuts a window of a map to lie inside it.

  `full` (h, w, C) holds rows [start[0], start[0] + h) and columns [start[1],
  start[1] + w) of a map `extent` = (H, W) big: the output of an unpool or a
  transposed conv with `padding` on a window inside the map above, so it
  overhangs the map by at most that padding. Returns (window, its start):
  min(h, H) x min(w, W) cells inside the map that hold every cell of `full`
  inside it (zeros where `full` has none).
  """
  offsets, new = [], []
  sizes = (min(full.shape[0], extent[0]), min(full.shape[1], extent[1]))
  margin = [max(lo, hi) for lo, hi in padding]
  full = jnp.pad(full, ((margin[0], margin[0]), (margin[1], margin[1]), (0, 0)))
  for axis in range(2):
    new.append(jnp.clip(start[axis], 0, extent[axis] - sizes[axis]))
    offsets.append(new[axis] - start[axis] + margin[axis])
  return lax.dynamic_slice(full, (offsets[0], offsets[1], 0), sizes + full.shape[2:]), tuple(new)


@functools.partial(jax.jit, static_argnames=("arch", "layer", "mode"))
def project_units(params: Params, arch: Arch, trace: Trace, layer: int,
                  units: tuple[jax.Array, jax.Array, jax.Array, jax.Array], *,
                  mode: str = "deconvnet") -> jax.Array:
  """Projects single activations of layer `layer`, each on its own image: (K, *image).

  `units` = (image, row, col, feature), int arrays of shape (K,): unit k is
  activation `trace.activations[layer][image[k], row[k], col[k], feature[k]]`.
  Result k equals row `image[k]` of `project` of a selection that keeps only
  that activation (Section 2.1; Fig. 2 projects one activation at a time), for
  every `mode` of `project`.

  Faster than `project` by skipping what is zero: below one activation the
  reconstruction stays inside that unit's receptive field, so each step
  (unpool, rectify, transposed conv) runs on a window that grows layer by
  layer (for ZFNet's layer 5: 3, 5, 7, 9, 19, 41, 83 and 171 pixels wide of
  13 ... 224), cut from the trace at the unit's position. The K windows are
  one batch: one call projects many units of many images.
  """
  _check(arch, trace, layer, mode)
  image, row, col, feature = (jnp.asarray(u, jnp.int32) for u in units)
  convs = [c for c in arch.convs if c.layer <= layer]
  shapes = feature_shapes(arch)
  masks = model.conv_stack(params, trace.images, arch, layer)[3] if mode != "deconvnet" else {}
  acts = trace.activations[layer]

  def one(n, r, c, f):
    value = acts[n, r, c, f]
    signal = jnp.where(jnp.arange(acts.shape[-1]) == f, value, jnp.zeros((), acts.dtype))
    signal, start = signal.reshape(1, 1, -1), (r, c)
    for i in reversed(range(len(convs))):
      cv = convs[i]
      if cv.pool is not None:  # Unpool the window with its own switches.
        sw = trace.switches[cv.layer]
        h, w, ch = signal.shape
        index = lax.dynamic_slice(sw.index, (n, start[0], start[1], 0), (1, h, w, ch))[0]
        local = layers.Switches(index=index, window=sw.window, stride=sw.stride,
                                padding=((0, 0), (0, 0)),
                                input_hw=((h - 1) * sw.stride + sw.window,
                                          (w - 1) * sw.stride + sw.window))
        signal, start = _window(layers.unpool(signal, local),
                                (start[0] * sw.stride - sw.padding[0][0],
                                 start[1] * sw.stride - sw.padding[1][0]), sw.input_hw,
                                sw.padding)
      if mode in ("deconvnet", "guided"):
        signal = layers.relu(signal)
      if mode in ("backprop", "guided"):
        keep = lax.dynamic_slice(masks[cv.layer], (n, start[0], start[1], 0),
                                 (1,) + signal.shape)[0]
        signal = jnp.where(keep, signal, jnp.zeros((), signal.dtype))
      h, w, _ = signal.shape
      wts = params[f"conv{cv.layer}"]["w"]
      full = layers.conv_transpose(signal[None], wts, cv.stride, ((0, 0), (0, 0)),
                                   (1, (h - 1) * cv.stride + cv.kernel,
                                    (w - 1) * cv.stride + cv.kernel, wts.shape[2]))[0]
      below = shapes[convs[i - 1].layer]["out"][:2] if i else trace.images.shape[1:3]
      signal, start = _window(full, (start[0] * cv.stride - cv.padding[0][0],
                                     start[1] * cv.stride - cv.padding[1][0]), tuple(below),
                                 cv.padding)
    canvas = jnp.zeros(trace.images.shape[1:], signal.dtype)
    return lax.dynamic_update_slice(canvas, signal, (start[0], start[1], 0))

  return jax.vmap(one)(image, row, col, feature)
