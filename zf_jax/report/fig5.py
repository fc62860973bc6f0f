"""Fig. 5 of Zeiler & Fergus (2014): feature invariance (Section 4, "Feature Invariance").

The paper transforms 5 example images (vertical translation, scale, rotation)
and plots, against the amount, the Euclidean distance between the feature
vectors of the original and the transformed image at layers 1 and 7, and the
probability of the true label. `fig5` does the same for a `Source` (a run and
a split, see `zf_jax.analyses.source`) with `zf_jax.analyses.invariance`,
and writes `<workdir>/figures/fig5_invariance.png`, the curves as
`<workdir>/tables/fig5_invariance.{md,json}` and the "Fig. 5" section of
`<workdir>/report.html`. The experiment binary `experiments.fig5_invariance`
calls it with its flags; a notebook can call it with a `Source` it opened.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from zf_jax.analyses import invariance, source
from zf_jax.report import figures, page, tables

NAME = "fig5_invariance"  # The PNG's and the table's file stem.
SHOWN = 5  # Transformed copies of each image in the figure's first column.
SUMMARY_POINTS = 5  # Amounts per transformation in the Markdown table.


def check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
  """`kinds` checked: at least one, each of `invariance.KINDS` (one-line ValueError)."""
  kinds = tuple(invariance.check_kind(k) for k in kinds)
  if not kinds:
    raise ValueError(f"--kinds needs at least one of {', '.join(invariance.KINDS)}")
  return kinds


def _fmt(x: float) -> str:
  return f"{x:.4g}"


def _figure(src: source.Source, examples, curves, layers):
  """Rows: transformations; cols: transformed images, distance per layer, P(true class)."""
  kinds = list(curves)
  names = [src.class_name(l) for l in examples["label"]]
  fig = figures.new_figure(3.2 * (2 + len(layers)), 2.9 * len(kinds))
  axes = fig.subplots(len(kinds), 2 + len(layers), squeeze=False)
  size = src.arch.image_size
  for row, kind in enumerate(kinds):
    c = curves[kind]
    shown = np.linspace(c["amounts"][0], c["amounts"][-1], SHOWN, dtype=np.float32)
    tiles = np.concatenate([
        np.asarray(invariance.transform_amounts(image, kind, shown, size))
        for image in examples["image"]])
    strip = figures.montage(source.display(src, tiles) / 255.0, cols=SHOWN)
    figures.show_image(axes[row][0], strip, f"{invariance.AXIS_LABELS[kind]}: "
                       + ", ".join(f"{a:g}" for a in shown))
    panels = [(c["distance"][l], f"layer {l}: feature distance") for l in layers]
    panels.append((c["prob"], "P(true class)"))
    for col, (values, ylabel) in enumerate(panels, start=1):
      ax = axes[row][col]
      for i, name in enumerate(names):
        ax.plot(c["amounts"], values[i], marker=".", markersize=3, linewidth=1, label=name)
      ax.set_xlabel(invariance.AXIS_LABELS[kind], fontsize=8)
      ax.set_ylabel(ylabel, fontsize=8)
      ax.tick_params(labelsize=7)
      if col == len(panels):
        ax.set_ylim(-0.02, 1.02)
        if row == 0:
          ax.legend(fontsize=6)
  return fig


def _tables(src: source.Source, examples, curves, layers) -> tuple[str, dict[str, Any]]:
  """Markdown: means over the images at a few amounts per kind; JSON: every curve."""
  lines = ["# Fig. 5: feature invariance",
           f"{src.icfg.dataset}:{src.split}, step {src.run.step}, images "
           + ", ".join(f"{i} ({src.class_name(l)})"
                       for i, l in zip(examples["index"], examples["label"]))
           + ". Means over the images; relative distance = distance / length of the "
           "original feature vector."]
  head = ["amount"] + [f"layer {l} {what}" for l in layers for what in ("distance", "relative")]
  head.append("P(true class)")
  obj = {"dataset": src.icfg.dataset, "split": src.split, "step": int(src.run.step),
         "arch": src.arch.name, "layers": layers,
         "images": [{"index": int(i), "label": int(l), "class": src.class_name(l)}
                    for i, l in zip(examples["index"], examples["label"])], "kinds": {}}
  for kind, c in curves.items():
    picks = np.unique(np.linspace(0, len(c["amounts"]) - 1, SUMMARY_POINTS).round().astype(int))
    rows = []
    for k in picks:
      cells = [f"{c['amounts'][k]:g}"]
      for l in layers:
        d = c["distance"][l][:, k]
        cells += [_fmt(d.mean()), _fmt(np.mean(d / np.maximum(c["norm"][l], 1e-12)))]
      cells.append(f"{c['prob'][:, k].mean():.3f}")
      rows.append(cells)
    lines += ["", f"## {invariance.AXIS_LABELS[kind]}", ""]
    lines += tables.markdown_table(head, rows, align="r" * len(head))
    obj["kinds"][kind] = {
        "amounts": c["amounts"].tolist(),
        "distance": {str(l): c["distance"][l].tolist() for l in layers},
        "norm": {str(l): c["norm"][l].tolist() for l in layers},
        "prob": c["prob"].tolist(), "prob_original": c["prob_original"].tolist()}
  return "\n".join(lines) + "\n", obj


def _summary(curves, layers) -> str:
  """One sentence per transformation: relative change at each layer, range of P(true)."""
  parts = []
  for kind, c in curves.items():
    rel = [np.mean(c["distance"][l] / np.maximum(c["norm"][l][:, None], 1e-12)) for l in layers]
    parts.append(f"{invariance.AXIS_LABELS[kind]} ({c['amounts'][0]:g} to {c['amounts'][-1]:g}): "
                 "mean relative feature change " + ", ".join(
                     f"{r:.2f} at layer {l}" for l, r in zip(layers, rel))
                 + f"; P(true class) from {c['prob'].min():.2f} to {c['prob'].max():.2f} "
                 f"(untransformed mean {c['prob_original'].mean():.2f}).")
  return "\n\n".join(parts)


def fig5(src: source.Source, indices: Sequence[int] | None = None, *, num_images: int = 5,
         kinds: Sequence[str] = invariance.KINDS, layers: Sequence[int] = (1, 7),
         num_amounts: int = 25, max_shift: float | None = None,
         max_scale: float = invariance.PAPER_MAX_SCALE,
         batch_size: int | None = None) -> dict[str, str]:
  """Fig. 5 (Section 4): invariance curves of a few images, written into the run's report.

  Args:
    src: the run and split (the paper: 5 validation images).
    indices: example indices of the split to transform; None: the first
      example of each of the first `num_images` classes (file order).
    num_images: see `indices`.
    kinds: transformations, rows of the figure (`invariance.KINDS`).
    layers: feature layers compared (the paper: 1 and 7).
    num_amounts: amounts per transformation (`invariance.default_amounts`).
    max_shift: largest vertical translation in pixels; None: 60 per 224 px.
    max_scale: largest scale ratio (the paper: 1.8).
    batch_size: crops per forward pass; None: the source's batch size.

  Returns:
    {"figure": PNG path, "markdown": table .md path, "json": table .json
    path, "report": report.html path}.

  Raises:
    ValueError: an unknown kind or layer, bad amounts or indices (one line).
  """
  kinds = check_kinds(kinds)
  layers = [int(l) for l in layers]
  size = src.arch.image_size
  amounts = {k: invariance.default_amounts(k, size, num_amounts, max_shift=max_shift,
                                           max_scale=max_scale) for k in kinds}
  if indices is None or not len(indices):
    indices = source.first_of_classes(src, num_images)
  examples = source.load_examples(src, list(indices), resize=True)
  batch_size = batch_size or src.icfg.global_batch_size
  curves = {k: invariance.invariance_curves(src.params, src.arch, examples["image"],
                                            examples["label"], kind=k, amounts=amounts[k],
                                            layers=layers, batch_size=batch_size)
            for k in kinds}

  workdir = src.run.workdir
  png = figures.save(_figure(src, examples, curves, layers),
                     page.figure_path(workdir, f"{NAME}.png"))
  markdown, obj = _tables(src, examples, curves, layers)
  md_path, json_path = tables.write_table(workdir, NAME, markdown, obj)
  text = ("Section 4, Fig. 5: whole resized images translated vertically, scaled and rotated "
          "about the centre of the evaluation crop (bilinear, mean colour beyond the image), then "
          "centre cropped as in evaluation. Curves: Euclidean distance between the feature "
          "vectors of the transformed and the original image at layers "
          f"{', '.join(map(str, layers))}, and the probability of the true label. The paper: "
          "small transformations change layer 1 a lot and the top layer less; the output is "
          "stable to translation and scaling but not to rotation, except for rotationally "
          "symmetric objects.\n\n" + _summary(curves, layers))
  html_path = page.add_section(workdir, "fig5", "Fig. 5: feature invariance", text=text,
                               figures=[png], tables=[NAME])
  return {"figure": png, "markdown": md_path, "json": json_path, "report": html_path}
