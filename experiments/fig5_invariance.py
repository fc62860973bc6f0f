r"""Fig. 5: feature invariance to vertical translation, scale and rotation (Section 4).

For a trained run (e.g. the README's quickstart):

  python -m experiments.fig5_invariance --workdir=runs/quickstart

Five validation images (the first of five classes, or --indices) are
translated vertically (-60..60 px at 224 px input, scaled with the input
size), zoomed (1..1.8) and rotated (0..360 degrees). For each amount the
figure plots the Euclidean distance between the feature vectors of the
transformed and the original image at layers 1 and 7 (cols 2, 3) and the
probability of the true label (col 4); col 1 shows the images transformed.
Writes <workdir>/figures/fig5_invariance.png, tables/fig5_invariance.{md,json}
(every curve) and the "Fig. 5" section of <workdir>/report.html.
"""

import numpy as np
from absl import flags

from experiments import cli, common
from zf_jax.analyses import invariance, source
from zf_jax.report import figures, page, tables

flags.DEFINE_integer("num_images", 5, "Images to transform: the first of this many classes "
                     "(ignored with --indices).", lower_bound=1)
flags.DEFINE_list("indices", [], "Example indices in --split to transform (default: see "
                  "--num_images).")
flags.DEFINE_list("kinds", list(invariance.KINDS), "Transformations, any of "
                  f"{', '.join(invariance.KINDS)} (rows of the figure).")
flags.DEFINE_list("layers", ["1", "7"], "Feature layers compared (Fig. 5: 1 and 7).")
flags.DEFINE_integer("num_amounts", 25, "Amounts per transformation.", lower_bound=2)
flags.DEFINE_float("max_shift", None, "Largest vertical translation in pixels (default: 60 per "
                   "224 px of input).")
flags.DEFINE_float("max_scale", invariance.PAPER_MAX_SCALE, "Largest scale ratio.")

FLAGS = flags.FLAGS

_SHOWN = 5  # Transformed copies of each image in the figure's first column.
_SUMMARY_POINTS = 5  # Amounts per transformation in the Markdown table.


def _fmt(x: float) -> str:
  return f"{x:.4g}"


def _figure(src, examples, curves, layers):
  """Rows: transformations; cols: transformed images, distance per layer, P(true class)."""
  kinds = list(curves)
  names = [src.class_name(l) for l in examples["label"]]
  fig = figures.new_figure(3.2 * (2 + len(layers)), 2.9 * len(kinds))
  axes = fig.subplots(len(kinds), 2 + len(layers), squeeze=False)
  size = src.arch.image_size
  for row, kind in enumerate(kinds):
    c = curves[kind]
    shown = np.linspace(c["amounts"][0], c["amounts"][-1], _SHOWN, dtype=np.float32)
    tiles = np.concatenate([
        np.asarray(invariance.transform_amounts(image, kind, shown, size))
        for image in examples["image"]])
    strip = figures.montage(source.display(src, tiles) / 255.0, cols=_SHOWN)
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


def _tables(src, examples, curves, layers):
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
    lines += ["", f"## {invariance.AXIS_LABELS[kind]}", "",
              "| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    picks = np.unique(np.linspace(0, len(c["amounts"]) - 1, _SUMMARY_POINTS).round().astype(int))
    for k in picks:
      cells = [f"{c['amounts'][k]:g}"]
      for l in layers:
        d = c["distance"][l][:, k]
        cells += [_fmt(d.mean()), _fmt(np.mean(d / np.maximum(c["norm"][l], 1e-12)))]
      cells.append(f"{c['prob'][:, k].mean():.3f}")
      lines.append("| " + " | ".join(cells) + " |")
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


def main(_):
  kinds = [invariance.check_kind(k) for k in FLAGS.kinds]
  if not kinds:
    raise ValueError(f"--kinds needs at least one of {', '.join(invariance.KINDS)}")
  layers = list(cli.numbers("layers", FLAGS.layers))
  indices = list(cli.numbers("indices", FLAGS.indices))
  src = common.open_source()
  size = src.arch.image_size
  amounts = {k: invariance.default_amounts(k, size, FLAGS.num_amounts, max_shift=FLAGS.max_shift,
                                           max_scale=FLAGS.max_scale) for k in kinds}
  if not indices:
    indices = source.first_of_classes(src, FLAGS.num_images)
  examples = source.load_examples(src, indices, resize=True)
  curves = {k: invariance.invariance_curves(src.params, src.arch, examples["image"],
                                            examples["label"], kind=k, amounts=amounts[k],
                                            layers=layers, batch_size=FLAGS.batch_size)
            for k in kinds}

  workdir = FLAGS.workdir
  png = figures.save(_figure(src, examples, curves, layers),
                     page.figure_path(workdir, "fig5_invariance.png"))
  markdown, obj = _tables(src, examples, curves, layers)
  md_path, json_path = tables.write_table(workdir, "fig5_invariance", markdown, obj)
  text = ("Section 4, Fig. 5: whole resized images translated vertically, scaled and rotated "
          "about the centre of the evaluation crop (bilinear, mean colour beyond the image), then "
          "centre cropped as in evaluation. Curves: Euclidean distance between the feature "
          "vectors of the transformed and the original image at layers "
          f"{', '.join(map(str, layers))}, and the probability of the true label. The paper: "
          "small transformations change layer 1 a lot and the top layer less; the output is "
          "stable to translation and scaling but not to rotation, except for rotationally "
          "symmetric objects.\n\n" + _summary(curves, layers))
  html_path = page.add_section(workdir, "fig5", "Fig. 5: feature invariance", text=text,
                            figures=[png], tables=["fig5_invariance"])
  print(f"Fig. 5 written to {png}, {md_path} and {json_path}; report: {html_path}")


if __name__ == "__main__":
  cli.run(main)
