"""Small helpers of the exploration notebook (notebooks/explore.ipynb): one run, looked inside.

The notebook calls the library (`zf_jax.model`, `zf_jax.deconv`,
`zf_jax.occlusion`, `zf_jax.analyses`, `zf_jax.report`); what is here only
arranges their results for a notebook:

- `at_step` / `default_step_b`: the same run and images at another checkpoint,
  or at its initialisation (Section 4.1's comparisons, Fig. 4's idea);
- `scratch`: the report's figure functions (`zf_jax.report.visualize`) write
  into a run's folder; pointed at a scratch folder they leave the run as it is;
- `trace_summary`: the Trace and its Switches as a plain table (Section 2.1);
- `predictions_figure`, `rectification_figure`, `filters_figure`,
  `top9_figure`: figures drawn with `zf_jax.report.figures`;
- `png`: a Figure as a PNG output, which a committed notebook keeps.
"""

from __future__ import annotations

import dataclasses
import io
import math
import tempfile
from collections.abc import Sequence

import jax
import numpy as np
from matplotlib.figure import Figure

from zf_jax import deconv, train
from zf_jax.analyses import source
from zf_jax.arch import receptive_field
from zf_jax.model import Trace
from zf_jax.report import figures, visualize
from zf_jax.runs.workdir import Workdir

MODES = ("deconvnet", "backprop", "guided")


def default_step_b(workdir: str, step: int | None = None) -> int:
  """The checkpoint to compare with `step` (None: the latest): the earliest saved one.

  When the run kept only that checkpoint, 0: its initialisation (see `at_step`).
  """
  steps = Workdir(workdir).steps()
  step = steps[-1] if step is None and steps else step
  earlier = [s for s in steps if s != step]
  return earlier[0] if earlier else 0


def at_step(src: source.Source, step: int) -> source.Source:
  """`src` (same dataset, split and preprocessing) with the run's parameters at `step`.

  Step 0 without a checkpoint is the initialisation, rebuilt as the trainer
  built it (`train.create_train_state` from the run's seed and recipe).

  Raises:
    NoRunError: no checkpoint for `step` (the message lists the saved ones).
  """
  wd = Workdir(src.run.workdir)
  if step == 0 and 0 not in wd.steps():
    cfg = src.run.config
    state = train.create_train_state(jax.random.key(cfg.seed), src.arch, cfg.train)
    device = jax.tree.leaves(src.params)[0].sharding
    run = dataclasses.replace(src.run, params=jax.device_put(state.params, device), step=0)
  else:
    run = wd.open(step)
  return dataclasses.replace(src, run=run)


def scratch(src: source.Source, folder: str | None = None) -> source.Source:
  """`src` with its run's workdir pointed at `folder` (default: a new temporary one).

  `zf_jax.report.visualize`'s figures (`fig2`, `fig7`, ...) write their PNGs,
  tables and report section into the run's workdir; called with this source
  they write into `folder` and leave the run untouched. They return PNG paths.
  """
  folder = folder or tempfile.mkdtemp(prefix="zf_jax_explore_")
  return dataclasses.replace(src, run=dataclasses.replace(src.run, workdir=folder))


def png(fig: Figure, dpi: float | None = None):
  """`fig` rendered once as a PNG output (an `IPython.display.Image`).

  A PNG output shows wherever the notebook is read (GitHub included), with
  no pyplot state or JavaScript.
  """
  from IPython.display import Image  # pylint: disable=import-outside-toplevel
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=dpi or fig.dpi)
  return Image(data=buf.getvalue(), format="png")


def _projection_tiles(src: source.Source, proj: np.ndarray) -> np.ndarray:
  """Projections shown as the report shows them: contrast-normalised, grey is 0."""
  proj = np.asarray(proj, np.float32)
  return figures.signed_to_unit(figures.channel_mean(proj) if src.grayscale else proj)


def predictions_figure(src: source.Source, images: np.ndarray, labels: np.ndarray,
                       logits: np.ndarray, cols: int = 6) -> Figure:
  """The images (the mean added back) titled with true and predicted class (p of it)."""
  probs = np.asarray(jax.nn.softmax(np.asarray(logits, np.float32), axis=-1))
  pixels = source.display(src, images)
  tiles, titles = [], []
  for px, label, p in zip(pixels, labels, probs):
    pred = int(np.argmax(p))
    mark = "" if pred == int(label) else " (wrong)"
    tiles.append(px)
    titles.append(f"true: {src.class_name(label)}\npred: {src.class_name(pred)} "
                  f"{p[pred]:.2f}{mark}")
  rows = [tiles[i:i + cols] for i in range(0, len(tiles), cols)]
  heads = [titles[i:i + cols] for i in range(0, len(titles), cols)]
  return figures.image_rows(rows, heads, cell=1.5, fontsize=7)


def trace_summary(trace: Trace) -> str:
  """A plain table: per conv layer, its activation's shape and its pooling switches, if any.

  A pooled layer's line reads e.g. `1      (6, 14, 14, 32) float32   (6, 14, 14, 32) int8:
  3x3 windows, stride 2, over 28x28`; a layer without pooling says "no pooling".
  """
  shape = lambda x: f"{tuple(x.shape)} {x.dtype}"
  rows = [("layer", "activations (relu, pool)", "switches (winner's offset in its window)"),
          ("input", shape(trace.images), "")]
  for l in sorted(trace.activations):
    s = trace.switches.get(l)
    rows.append((str(l), shape(trace.activations[l]), "no pooling" if s is None else
                 f"{shape(s.index)}: {s.window}x{s.window} windows, stride {s.stride}, "
                 f"over {s.input_hw[0]}x{s.input_hw[1]}"))
  widths = [max(len(r[c]) for r in rows) for c in range(2)]
  return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]}".rstrip() for r in rows)


def strongest_map(trace: Trace, layer: int, image: int) -> int:
  """The map of `layer` holding the largest single activation on image `image`."""
  a = np.asarray(trace.activations[layer][image])
  return int(np.argmax(a.reshape(-1, a.shape[-1]).max(axis=0)))


def rectification_figure(src: source.Source, trace: Trace, layers: Sequence[int],
                         images: Sequence[int] = (0,), modes: Sequence[str] = MODES) -> Figure:
  """Section 2.1 and its footnote: one activation projected in each rectification mode.

  One row per (image, layer): the image, then the projection of the
  strongest activation of that layer's strongest map (`deconv.strongest`)
  by `deconv.project` in each of `modes`, contrast-normalised (grey is 0).
  """
  pixels = source.display(src, np.asarray(trace.images))
  rows, titles, labels = [], [], []
  for i in images:
    for l in layers:
      f = strongest_map(trace, l, i)
      sel = deconv.strongest(trace, l, f)
      projs = [np.asarray(deconv.project(src.params, src.arch, trace, l, sel, mode=m))[i]
               for m in modes]
      rows.append([pixels[i]] + list(_projection_tiles(src, np.stack(projs))))
      titles.append([f"image {i}"] + list(modes))
      labels.append(f"layer {l}, map {f}")
  return figures.image_rows(rows, titles, labels, cell=1.4, fontsize=7)


def filters_figure(sources: Sequence[source.Source]) -> Figure:
  """Fig. 6's panel (Section 4.1) for each source side by side: its first layer's filters.

  Each filter is stretched to its own range; on grey datasets the mean of
  its channels (the part the data meets), as `visualize.fig6_filters` shows them.
  """
  panels = [visualize.filter_panel(src.params, src.arch, src.grayscale) for src in sources]
  titles = [f"step {src.run.step}" + (" (initialisation)" if src.run.step == 0 else "")
            for src in sources]
  return figures.image_rows([panels], [titles], cell=3.0, fontsize=8)


def top9_figure(sources: Sequence[source.Source], maps: dict[int, Sequence[int]], *, k: int = 9,
                max_examples: int | None = None) -> Figure:
  """Fig. 2's top-k of `maps` ({layer: maps}), one row per (layer, source): Fig. 4's idea.

  Each source (e.g. the same run at two checkpoints, `at_step`) finds its own
  k strongest activations of each map over the first `max_examples` of its
  split (`visualize.top_activations`, one pass) and projects them
  (`visualize.top9_panels`). Per map, as in Fig. 2: the projections | the
  image patches, both cut to the unit's receptive field.
  """
  side = math.ceil(math.sqrt(k))
  block = lambda tiles: figures.montage(tiles, side, pad=1, fill=1.0)
  layers = sorted(maps)
  found = {}
  for s, src in enumerate(sources):
    state = visualize.top_activations(src, layers, k, max_examples)
    examples = visualize.kept_examples(src, state, maps)
    for l in layers:
      proj, pixels = visualize.top9_panels(src, state, l, maps[l], examples)
      found[l, s] = [b for p, x in zip(proj, pixels) for b in (block(p), block(x))]
  rows, titles, labels = [], [], []
  for l in layers:
    for s, src in enumerate(sources):
      rows.append(found[l, s])
      titles.append([t for m in maps[l] for t in (f"map {m}", "")] if s == 0
                    else [""] * len(found[l, s]))
      labels.append(f"layer {l}, step {src.run.step}")
  fig = figures.image_rows(rows, titles, labels, cell=1.3, fontsize=7)
  fig.suptitle("Per map: top projections | image patches (each unit's receptive field: "
               + ", ".join(f"{receptive_field(sources[0].arch, l)[0]} px in layer {l}"
                           for l in layers) + ")", fontsize=8)
  return fig
