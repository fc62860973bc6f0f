"""A run's whole report: the training section and the quickstart's figures, in one call.

`after_training(summary)` is what `experiments.train_imagenet --visualize`
does once a run is complete: the training curves and accuracy, then
Section 4's figures of `zf_jax.report.visualize` (Figs. 6, 2, 7 and 4) for
the run, all in `<workdir>/report.html`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import jax

from zf_jax.analyses import source
from zf_jax.report import figures, page, tables
from zf_jax.report.visualize import fig2, fig4, fig6_filters, fig7
from zf_jax.runs.workdir import Workdir


def training_section(workdir: str) -> str:
  """The run's training curves and final accuracy as the report's first section."""
  wd = Workdir(workdir)
  workdir = wd.path
  curves: dict[str, list[tuple[int, float]]] = {}
  for row in wd.metrics():
    for key in ("loss", "top1_error"):
      if key in row:
        curves.setdefault(f"{row['split']} {key}", []).append((row["step"], row[key]))
  items = {}
  summary = wd.summary()
  if summary:
    items["arch / dataset"] = f"{summary.get('arch')} / {summary.get('dataset')}"
    items["steps"] = summary.get("step")
    for crops, r in summary.get("eval", {}).items():
      items[f"accuracy ({tables.CROP_NAMES.get(crops, crops)}, "
            f"{r['count']} images)"] = f"{100 * (1 - r['top1_error']):.2f}%"
    if "train_seconds" in summary:
      items["training time"] = f"{summary['train_seconds'] / 60:.1f} min"
  figs = []
  if curves:
    fig = figures.new_figure(8, 3)
    ax_loss, ax_err = fig.subplots(1, 2)
    for name, pts in sorted(curves.items()):
      steps, values = zip(*sorted(pts))
      (ax_loss if name.endswith("loss") else ax_err).plot(steps, values, label=name,
                                                          marker="o" if "valid" in name else None)
    for ax, title in ((ax_loss, "loss"), (ax_err, "top-1 error")):
      ax.set_xlabel("step")
      ax.set_title(title, fontsize=9)
      ax.legend(fontsize=7)
    figs.append(figures.save(fig, page.figure_path(workdir, "training.png")))
  return page.add_section(workdir, "training", "Training", items=items, figures=figs,
                          captions=["Loss and top-1 error against training step"] * len(figs),
                            text="Loss and top-1 error during training (metrics.jsonl); "
                            "final accuracy from summary.json.")


def after_training(summary: dict) -> str | None:
  """The report of a finished run (`trainer.train_and_evaluate`'s summary), or None.

  Written once: a rerun of a complete run reuses it. With several processes
  the analyses (one process each) are left to the figure binaries.
  """
  if summary["status"] != "complete":
    return None
  workdir = summary["workdir"]
  if jax.process_count() > 1:
    if jax.process_index() == 0:
      print("--visualize is skipped with several processes: run `python -m experiments."
            f"fig2_top9 --workdir={workdir}` (and the other figure binaries) on one host")
    return None
  path = os.path.join(workdir, page.REPORT_FILE)
  if summary.get("already_complete") and os.path.exists(path):
    return path
  print("writing the visualisations (Figs. 2, 4, 6, 7) ...", flush=True)
  return quick_report(workdir)


def quick_report(workdir: str, *, maps_per_layer: int = 8, occlusion_images: int = 4,
                 fill: str = "black", evolution: bool = True, max_examples: int | None = None,
                 evolution_examples: int = 2_000, batch_size: int = 128,
                 say: Callable[[str], None] | None = None) -> str:
  """The embedded default's report: training, Figs. 6, 2, 7 (and 4) for one run.

  Args:
    workdir: a finished training run.
    maps_per_layer: Fig. 2 maps per layer.
    occlusion_images: Fig. 7 rows (test images, one per class first).
    fill: Fig. 7's occluder (see `fig7`); black suits the embedded Fashion-MNIST.
    evolution: also Fig. 4, over the checkpoints the run kept.
    max_examples: stream only this many examples of the evaluation split for Fig. 2.
    evolution_examples: training images streamed per checkpoint for Fig. 4.
    batch_size: images per forward pass.
    say: prints one progress line per figure (default: print).

  Returns:
    The path of report.html.
  """
  say = say or (lambda line: print(line, flush=True))
  src = None
  steps = [("training curves", lambda: training_section(workdir)),
           ("Fig. 6: layer-1 filters", lambda: fig6_filters([workdir])),
           ("Fig. 2: top-9 projections of every layer", lambda: fig2(
               source_(), maps_per_layer=maps_per_layer, max_examples=max_examples)),
           # Fashion-MNIST's background is black: a black occluder is its neutral one (see fig7).
           ("Fig. 7: occlusion", lambda: fig7(
               source_(), source.first_of_classes(source_(), occlusion_images), fill=fill))]
  if evolution:
    steps.append(("Fig. 4: evolution over the checkpoints", lambda: fig4(
        workdir, maps_per_layer=2, max_examples=evolution_examples, batch_size=batch_size)))

  def source_():
    nonlocal src
    src = src or source.open_source(workdir, batch_size=batch_size)
    return src

  t0 = time.time()
  for i, (what, make) in enumerate(steps, 1):
    t = time.time()
    make()
    say(f"report {i}/{len(steps)}: {what} ({time.time() - t:.0f} s)")
  path = page.write_report(workdir)
  say(f"report written in {time.time() - t0:.0f} s")
  return path
