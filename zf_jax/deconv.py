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
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from zf_jax import layers, model
from zf_jax.arch import Arch, ConvSpec, feature_shapes
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
  masks = (model.conv_stack(params, trace.images, arch, layer).relu_masks
           if mode != "deconvnet" else {})
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


class WindowStep(NamedTuple):
  """One step of `project_units`' descent below a single unit (see `_walk`).

  Every start and size is a (rows, columns) pair. Starts may be traced ints,
  sizes are static: the geometry depends on the unit's place only, not on
  any value.

  kind: "unpool" or "conv" (the transposed conv).
  spec: the layer's ConvSpec.
  start, size: the window the step reads, in that layer's map.
  out_start, out_size: where the step's full output begins in the map below
    (possibly overhanging it) and how big it is.
  new_start, new_size: that output cut back inside the map below (`_recut`).
  padding: the op's padding ((lo, hi), (lo, hi)): the most the output overhangs.
  """
  kind: str
  spec: ConvSpec
  start: tuple
  size: tuple[int, int]
  out_start: tuple
  out_size: tuple[int, int]
  new_start: tuple
  new_size: tuple[int, int]
  padding: tuple[tuple[int, int], tuple[int, int]]


def _walk(arch: Arch, layer: int, image_hw: tuple[int, int], row, col) -> list[WindowStep]:
  """The windows `project_units` descends through, for the unit at (row, col) of `layer`.

  Returns the steps from the top down (see `WindowStep`).
  """
  shapes = feature_shapes(arch)
  convs = [c for c in arch.convs if c.layer <= layer]
  start, size, steps = (row, col), (1, 1), []

  def step(kind, spec, k, stride, pad, below):
    nonlocal start, size
    out_start = tuple(start[a] * stride - pad[a][0] for a in range(2))
    out_size = tuple((size[a] - 1) * stride + k for a in range(2))
    new_size = tuple(min(out_size[a], below[a]) for a in range(2))
    new_start = tuple(jnp.clip(out_start[a], 0, below[a] - new_size[a]) for a in range(2))
    steps.append(WindowStep(kind=kind, spec=spec, start=start, size=size, out_start=out_start,
                            out_size=out_size, new_start=new_start, new_size=new_size,
                            padding=pad))
    start, size = new_start, new_size

  for i in reversed(range(len(convs))):
    c = convs[i]
    if c.pool is not None:
      step("unpool", c, c.pool.window, c.pool.stride, c.pool.padding,
           shapes[c.layer]["conv"][:2])
    below = shapes[convs[i - 1].layer]["out"][:2] if i else image_hw
    step("conv", c, c.kernel, c.stride, c.padding, tuple(below))
  return steps


def _recut(full: jax.Array, step: WindowStep) -> jax.Array:
  """A step's full output (overhanging the map below by at most its padding) cut to its
  window inside the map, zeros where the output has none."""
  margin = [max(lo, hi) for lo, hi in step.padding]
  full = jnp.pad(full, ((margin[0], margin[0]), (margin[1], margin[1]), (0, 0)))
  at = [step.new_start[a] - step.out_start[a] + margin[a] for a in range(2)]
  return lax.dynamic_slice(full, (at[0], at[1], 0), step.new_size + full.shape[2:])


@functools.partial(jax.jit, static_argnames=("arch", "layer", "mode", "chunk"))
def project_units(params: Params, arch: Arch, trace: Trace, layer: int,
                  units: tuple[jax.Array, jax.Array, jax.Array, jax.Array], *,
                  mode: str = "deconvnet", chunk: int = 64) -> jax.Array:
  """Projects single activations of layer `layer`, each on its own image: (K, *image).

  `units` = (image, row, col, feature), int arrays of shape (K,): unit k is
  activation `trace.activations[layer][image[k], row[k], col[k], feature[k]]`.
  Result k equals row `image[k]` of `project` of a selection that keeps only
  that activation (Section 2.1; Fig. 2 projects one activation at a time), for
  every `mode` of `project`. `chunk` units are projected together (bounds
  memory; does not change results).

  Faster than `project` by skipping what is zero: below one activation the
  reconstruction stays inside that unit's receptive field, so each step
  (unpool, rectify, transposed conv) runs on a window that grows layer by
  layer (for ZFNet's layer 5: 3, 5, 7, 9, 19, 41, 83 and 171 pixels wide of
  13 ... 224), cut from the trace at the unit's position (`_walk`). The
  windows of the trace (switches, relu masks) are first gathered for every
  unit, then the chunks descend as batches.
  """
  _check(arch, trace, layer, mode)
  if chunk < 1:
    raise ValueError(f"chunk must be >= 1, got {chunk}")
  units = tuple(jnp.asarray(u, jnp.int32) for u in units)
  masks = (model.conv_stack(params, trace.images, arch, layer).relu_masks
           if mode != "deconvnet" else {})
  acts = trace.activations[layer]
  hw = trace.images.shape[1:3]

  def gather(unit):
    """What the descent of one unit reads from the trace: its value and windows."""
    n, r, c, f = unit
    read = []
    for st in _walk(arch, layer, hw, r, c):
      layer_ = st.spec.layer
      if st.kind == "unpool":
        index = trace.switches[layer_].index
        read.append(lax.dynamic_slice(index, (n, *st.start, 0),
                                      (1, *st.size, index.shape[-1]))[0])
      elif mode != "deconvnet":
        m = masks[layer_]
        read.append(lax.dynamic_slice(m, (n, *st.start, 0), (1, *st.size, m.shape[-1]))[0])
    return acts[n, r, c, f], read

  # A loop of its own, so that the gathers are materialised rather than fused
  # (and recomputed per element) into the unpooling below.
  values, reads = lax.map(gather, units)

  def descend(x):
    (n, r, c, f), value, read = x
    read = iter(read)
    signal = jnp.where(jnp.arange(acts.shape[-1]) == f, value, jnp.zeros((), acts.dtype))
    signal = signal.reshape(1, 1, -1)
    for st in _walk(arch, layer, hw, r, c):
      spec = st.spec
      if st.kind == "unpool":
        local = layers.Switches(index=next(read), window=spec.pool.window,
                                stride=spec.pool.stride, padding=((0, 0), (0, 0)),
                                input_hw=st.out_size)
        signal = _recut(layers.unpool(signal, local), st)
        continue
      if mode in ("deconvnet", "guided"):
        signal = layers.relu(signal)
      if mode in ("backprop", "guided"):
        signal = jnp.where(next(read), signal, jnp.zeros((), signal.dtype))
      w = params[f"conv{spec.layer}"]["w"]
      full = layers.conv_transpose(signal[None], w, spec.stride, ((0, 0), (0, 0)),
                                   (1, *st.out_size, w.shape[2]))[0]
      signal = _recut(full, st)
    canvas = jnp.zeros(trace.images.shape[1:], signal.dtype)
    return lax.dynamic_update_slice(canvas, signal, (*st.new_start, 0))

  return lax.map(descend, (units, values, reads), batch_size=chunk)
