"""Tables 4-7 and Fig. 9 (Sections 5.2, 5.3): a trained network's features on other datasets.

"We keep layers 1-7 of our ImageNet-trained model fixed and train a new
softmax classifier on top (for the appropriate number of classes) using the
training images of the new dataset. [...] We also try a second strategy of
training a model from scratch, i.e. resetting layers 1-7 to random values
and train them, as well as the softmax, on the training images of the
dataset." (Section 5.2.)

  Table 4  Caltech-101, 15 and 30 training images per class, 5 folds, mean
           per-class accuracy; pretrained (softmax on layer 7) vs from scratch.
  Table 5  Caltech-256, 15 / 30 / 45 / 60 per class, the same two models.
  Fig. 9   Caltech-256 accuracy against training images per class (few-shot).
  Table 6  PASCAL VOC 2012: a 20-way softmax on the train images, per-class
           average precision. The paper's numbers are from the test server;
           test labels are not public, so ours are on the validation images.
  Table 7  Section 5.3: a linear SVM on layer 1, 2, 3, 4, 5 or 7, a softmax
           on 5 or 7 (Caltech-101 at 30 per class, Caltech-256 at 60).

Protocol (`folds.sample_folds`): per class n training and up to 50 test
images, drawn from all images of the dataset, 5 seeded folds; accuracy is
the mean of the per-class accuracies, reported as mean ± std over folds.
Pretrained: features computed once (`features.extract`), a softmax fitted
on every fold at once (`classifiers.fit_softmax`). From scratch: the same
architecture trained by the ordinary trainer on the fold's training images
only (`--include_ids`), with the pretrained run's recipe for a fixed number
of steps (the paper does not give its schedule), scored on the fold's test
images.
"""

from __future__ import annotations

import dataclasses
import os
import textwrap
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from zf_jax.data import input_pipeline
from zf_jax.report import figures, page, tables
from zf_jax.runs import trainer
from zf_jax.runs import workdir as workdir_lib
from zf_jax.runs.workdir import Run
from zf_jax.section5 import classifiers, folds as folds_lib
from zf_jax.section5.features import LOGITS, FeatureSet, Target, extract

EXPERIMENTS = ("4", "5", "6", "7", "fig9")

# The paper's numbers: {method: {n per class: (mean, std or None)}}.
PAPER_TABLE4 = {
    "(Bo et al., 2013)": {30: (81.4, 0.33)},
    "(Jianchao et al., 2009)": {15: (73.2, None), 30: (84.3, None)},
    "Non-pretrained convnet": {15: (22.8, 1.5), 30: (46.5, 1.7)},
    "ImageNet-pretrained convnet": {15: (83.8, 0.5), 30: (86.5, 0.5)},
}
PAPER_TABLE5 = {
    "(Sohn et al., 2011)": {15: (35.1, None), 30: (42.1, None), 45: (45.7, None),
                            60: (47.9, None)},
    "(Bo et al., 2013)": {15: (40.5, 0.4), 30: (48.0, 0.2), 45: (51.9, 0.2), 60: (55.2, 0.3)},
    "Non-pretrained convnet": {15: (9.0, 1.4), 30: (22.5, 0.7), 45: (31.2, 0.5),
                               60: (38.8, 1.4)},
    "ImageNet-pretrained convnet": {15: (65.7, 0.2), 30: (70.6, 0.2), 45: (72.7, 0.4),
                                    60: (74.2, 0.3)},
}
SCRATCH, PRETRAINED = "Non-pretrained convnet", "ImageNet-pretrained convnet"
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")
# Table 6 (AP %, PASCAL 2012 test set): class: ([A] Sande et al., [B] Yan et al., Ours).
PAPER_TABLE6 = {
    "aeroplane": (92.0, 97.3, 96.0), "bicycle": (74.2, 84.2, 77.1),
    "bird": (73.0, 80.8, 88.4), "boat": (77.5, 85.3, 85.5), "bottle": (54.3, 60.8, 55.8),
    "bus": (85.2, 89.9, 85.8), "car": (81.9, 86.8, 78.6), "cat": (76.4, 89.3, 91.2),
    "chair": (65.2, 75.4, 65.0), "cow": (63.2, 77.8, 74.4),
    "diningtable": (63.2, 77.8, 67.7), "dog": (68.9, 83.0, 87.8),
    "horse": (78.2, 87.5, 86.0), "motorbike": (81.0, 90.1, 85.1),
    "person": (91.6, 95.0, 90.9), "pottedplant": (55.9, 57.8, 52.2),
    "sheep": (69.4, 79.2, 83.6), "sofa": (65.4, 73.4, 61.1), "train": (86.7, 94.5, 91.8),
    "tvmonitor": (77.4, 80.7, 76.1),
}
PAPER_TABLE6_MEAN = (74.3, 82.2, 79.0)
# Table 7: (classifier, layer): (Caltech-101 at 30/class, Caltech-256 at 60/class).
PAPER_TABLE7 = {
    ("svm", 1): ((44.8, 0.7), (24.6, 0.4)), ("svm", 2): ((66.2, 0.5), (39.6, 0.3)),
    ("svm", 3): ((72.3, 0.4), (46.0, 0.3)), ("svm", 4): ((76.6, 0.4), (51.3, 0.1)),
    ("svm", 5): ((86.2, 0.8), (65.6, 0.3)), ("svm", 7): ((85.5, 0.4), (71.7, 0.2)),
    ("softmax", 5): ((82.9, 0.4), (65.7, 0.5)), ("softmax", 7): ((85.4, 0.4), (72.6, 0.1)),
}
TITLES = {
    "4": "Table 4. Caltech-101 classification accuracy (mean per-class %, 5 folds)",
    "5": "Table 5. Caltech-256 classification accuracies (mean per-class %, 5 folds)",
    "fig9": "Fig. 9. Accuracy as the number of training images per class is varied",
    "6": "Table 6. PASCAL 2012 classification: per-class average precision (%)",
    "7": "Table 7. Discriminative information in each layer (mean per-class accuracy %)",
}


@dataclasses.dataclass(frozen=True)
class Settings:
  """How classifiers are fitted and scored (flags of experiments.transfer)."""
  num_folds: int = 5
  n_test: int = 50
  seed: int = 0
  l2: float = 1e-3  # Softmax: mean cross-entropy + l2 / 2 |w|^2 on standardised features.
  svm_c: float = 0.01  # LinearSVC's C on standardised features.
  scratch_steps: int = 300


# --- Scoring --------------------------------------------------------------------------------


def softmax_accuracies(fs: FeatureSet, layer: int, folds: Sequence[folds_lib.Fold], l2: float
                       ) -> list[float]:
  """Per fold, the mean per-class test accuracy of a softmax fitted on its training images."""
  x = fs.features[layer]
  train = np.stack([x[f.train] for f in folds])
  test = np.stack([x[f.test] for f in folds])
  model, _ = classifiers.fit_softmax(train, np.stack([fs.labels[f.train] for f in folds]),
                                     num_classes=fs.num_classes, l2=l2)
  predicted = np.asarray(classifiers.scores(model, test)).argmax(-1)
  return [100 * classifiers.mean_class_accuracy(fs.labels[f.test], p)
          for f, p in zip(folds, predicted)]


def svm_accuracies(fs: FeatureSet, layer: int, folds: Sequence[folds_lib.Fold], c: float,
                   seed: int) -> list[float]:
  """Per fold, the mean per-class test accuracy of a linear SVM (Table 7)."""
  x = fs.features[layer]
  out = []
  for f in folds:
    s = classifiers.svm_scores(x[f.train], fs.labels[f.train], x[f.test], c=c, seed=seed)
    out.append(100 * classifiers.mean_class_accuracy(fs.labels[f.test], s.argmax(-1)))
  return out


def scratch_config(run: Run, target: Target, ids_file: str, num_train: int, steps: int):
  """The pretrained run's recipe, re-initialised, on a fold's training images (Section 5.2)."""
  cfg = run.config
  devices = jax.device_count()  # The batch is split over them.
  batch = max(devices, min(cfg.train.batch_size, num_train) // devices * devices)
  return dataclasses.replace(
      cfg, dataset=target.dataset, data_dir=target.data_dir, train_split=target.split,
      eval_split=target.split, classes=target.classes, include_ids=ids_file, exclude_ids=None,
      num_steps=steps, eval_every_epochs=0, final_eval_crops=(), keep_epochs=(),
      checkpoint_every=steps, keep_checkpoints=1, log_every=max(1, steps // 3),
      eval_batch_size=None, visualize=False, distributed=False, mean_max_examples=None,
      train=dataclasses.replace(cfg.train, batch_size=batch))


def scratch_accuracies(run: Run, target: Target, fs: FeatureSet, n: int,
                       folds: Sequence[folds_lib.Fold], root: str, steps: int,
                       say: Callable[[str], None] = print, *,
                       overwrite: bool = False) -> list[float]:
  """Per fold: the architecture trained from scratch on the fold's training images, its mean
  per-class accuracy on the fold's test images. Runs live in <root>/scratch/n<n>-fold<k>;
  one trained with another recipe or other images stops this with one line unless
  `overwrite` (`trainer.train_and_evaluate`)."""
  out = []
  for k, f in enumerate(folds):
    wd = os.path.join(root, "scratch", f"n{n}-fold{k}")
    train_ids = fs.ids[f.train].tolist()
    # Named by its content: other images are another file, so another recipe for the run
    # there, and the file that run trained on is never rewritten.
    ids = os.path.join(wd, f"train_ids-{input_pipeline.ids_digest(train_ids)[:12]}.txt")
    if not os.path.exists(ids):
      input_pipeline.write_ids(
          ids, train_ids, f"fold {k}: {n} training images per class of {target.describe()}")
    say(f"from scratch, {n} per class, fold {k + 1}/{len(folds)}: training in {wd}")
    summary = trainer.train_and_evaluate(scratch_config(run, target, ids, len(f.train), steps),
                                         wd, overwrite=overwrite)
    if summary["status"] != "complete":
      raise InterruptedError(f"stopped while training {wd}; run the same command to resume")
    scratch = workdir_lib.Workdir(wd).open(mesh=workdir_lib.make_mesh())
    logits = extract(scratch, target, (LOGITS,), cache_dir=wd, say=None)
    if not np.array_equal(logits.ids, fs.ids):
      raise RuntimeError(f"{target.describe()} read in another order for {wd}")
    predicted = logits.features[LOGITS][f.test].argmax(-1)
    out.append(100 * classifiers.mean_class_accuracy(fs.labels[f.test], predicted))
  return out


def _cell(values: Sequence[float] | None) -> dict[str, Any] | None:
  if not values:
    return None
  mean, std = folds_lib.mean_std(values)
  return {"mean": mean, "std": std, "folds": list(values)}


def fold_curve(run: Run, target: Target, fs: FeatureSet, ns: Sequence[int], settings: Settings,
               root: str, *, scratch: bool, say: Callable[[str], None] = print,
               overwrite: bool = False
               ) -> dict[str, dict[int, Any]]:
  """{"pretrained": {n: cell}, "scratch": {n: cell}}: Tables 4, 5 and Fig. 9's measurements.

  Pretrained: a softmax on the features of `fs`'s layer (the paper's: 7).
  A cell is {"mean", "std" (over folds), "folds": [accuracy per fold]}.
  """
  (top,) = [l for l in fs.features if l != LOGITS]
  curve: dict[str, dict[int, Any]] = {"pretrained": {}, "scratch": {}}
  for n in ns:
    folds = folds_lib.sample_folds(fs.labels, n, n_test=settings.n_test,
                                   num_folds=settings.num_folds, seed=settings.seed)
    curve["pretrained"][n] = _cell(softmax_accuracies(fs, top, folds, settings.l2))
    say(f"pretrained, {n} per class: {curve['pretrained'][n]['mean']:.1f}% "
        f"± {curve['pretrained'][n]['std']:.1f}")
    if scratch:
      curve["scratch"][n] = _cell(scratch_accuracies(run, target, fs, n, folds, root,
                                                     settings.scratch_steps, say,
                                                     overwrite=overwrite))
      say(f"from scratch, {n} per class: {curve['scratch'][n]['mean']:.1f}% "
          f"± {curve['scratch'][n]['std']:.1f}")
  return curve


def layer_table(fs: FeatureSet, n: int, rows: Sequence[tuple[str, int]], settings: Settings,
                say: Callable[[str], None] = print) -> dict[str, Any]:
  """Table 7's measurements: {"<classifier> (<layer>)": cell} at n training images per class."""
  folds = folds_lib.sample_folds(fs.labels, n, n_test=settings.n_test,
                                 num_folds=settings.num_folds, seed=settings.seed)
  out = {}
  for kind, layer in rows:
    values = (svm_accuracies(fs, layer, folds, settings.svm_c, settings.seed) if kind == "svm"
              else softmax_accuracies(fs, layer, folds, settings.l2))
    out[row_name(kind, layer)] = _cell(values)
    say(f"{row_name(kind, layer)}, {n} per class: {out[row_name(kind, layer)]['mean']:.1f}%")
  return out


def row_name(kind: str, layer: int) -> str:
  return f"{'SVM' if kind == 'svm' else 'Softmax'} ({layer})"


def voc_table(train: FeatureSet, test: FeatureSet, layer: int, l2: float) -> dict[str, Any]:
  """Table 6's measurements: a softmax on `train` (soft targets: 1/k on each of an image's k
  classes, difficult ones left out), per-class AP on `test` (difficult images ignored).
  A class without a training image gets no AP (None)."""
  positive = (train.labels == 1).astype(np.float32)
  keep = positive.sum(1) > 0  # An image with only difficult objects teaches nothing here.
  seen = positive.sum(0) > 0
  soft = positive[keep][:, seen]
  soft /= soft.sum(1, keepdims=True)
  model, _ = classifiers.fit_softmax(train.features[layer][keep][None], soft[None],
                                     num_classes=int(seen.sum()), l2=l2)
  scores = np.zeros((len(test.ids), train.num_classes), np.float32)  # Unseen: no AP.
  scores[:, seen] = np.asarray(classifiers.scores(model, test.features[layer][None]))[0]
  ap = 100 * classifiers.voc_average_precision(scores, test.labels)
  ap[~seen] = np.nan
  names = test.class_names or tuple(map(str, range(test.num_classes)))
  return {"ap": {name: float(v) if np.isfinite(v) else None for name, v in zip(names, ap)},
          "mean": float(np.nanmean(ap)), "train_images": int(keep.sum()),
          "test_images": int(len(test.ids))}


# --- Tables ---------------------------------------------------------------------------------


def _pm(cell: Any) -> str:
  if cell is None:
    return "-"
  if isinstance(cell, tuple):
    mean, std = cell
    return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"
  return f"{cell['mean']:.1f} ± {cell['std']:.1f}"


def table_title(experiment: str, target: Target, run: Run) -> str:
  """A table's title: the paper's caption, and what ours was measured on."""
  return (f"{TITLES[experiment]}: ours on {target.describe()}, features of "
          f"{run.arch.name} trained on {run.config.dataset}")


def curve_markdown(experiment: str, title: str, ns: Sequence[int],
                   curve: Mapping[str, Mapping[int, Any]], notes: Sequence[str],
                   pretrained_on: str = "ImageNet") -> str:
  """Tables 4 / 5 (and Fig. 9's numbers): the paper's rows, then ours, one column per n
  (the paper's n and ours). `pretrained_on` names the data our features were trained on."""
  paper = PAPER_TABLE5 if experiment in ("5", "fig9") else PAPER_TABLE4
  ns = sorted(set(ns) | {n for values in paper.values() for n in values})  # Ours and theirs.
  header = ["Acc %"] + [f"{n}/class" for n in ns]
  rows = [[f"{name} (paper)"] + [_pm(values.get(n)) for n in ns]
          for name, values in paper.items()]

  def ours(key: str, n: int) -> str:
    if n not in curve["pretrained"]:
      return "-"
    return "not run" if key == "scratch" and not curve["scratch"] else _pm(curve[key].get(n))

  rows.append([f"{SCRATCH} (ours)"] + [ours("scratch", n) for n in ns])
  rows.append([f"{pretrained_on}-pretrained convnet (ours)"] + [ours("pretrained", n)
                                                               for n in ns])
  body = "\n".join(tables.markdown_table(header, rows))
  return "\n\n".join([f"# {title}", body, *notes]) + "\n"


def voc_markdown(title: str, result: Mapping[str, Any], notes: Sequence[str]) -> str:
  header = ["AP %", "[A] (paper)", "[B] (paper)", "Ours (paper, test)", "Ours (validation)"]
  rows = []
  for name, ap in result["ap"].items():
    paper = PAPER_TABLE6.get(name)
    rows.append([name, *([f"{v:.1f}" for v in paper] if paper else ["-"] * 3),
                 "-" if ap is None else f"{ap:.1f}"])
  rows.append(["Mean", *(f"{v:.1f}" for v in PAPER_TABLE6_MEAN), f"{result['mean']:.1f}"])
  body = "\n".join(tables.markdown_table(header, rows))
  return "\n\n".join([f"# {title}", body, *notes]) + "\n"


def layers_markdown(title: str, n: int, result: Mapping[str, Any], notes: Sequence[str]) -> str:
  header = ["Acc %", "Cal-101 (30/class) (paper)", "Cal-256 (60/class) (paper)",
            f"Ours ({n}/class)"]
  rows = []
  for name, cell in result.items():
    kind, layer = name.split(" (")
    paper = PAPER_TABLE7.get((kind.lower(), int(layer.rstrip(")"))), (None, None))
    rows.append([name, _pm(paper[0]), _pm(paper[1]), _pm(cell)])
  body = "\n".join(tables.markdown_table(header, rows))
  return "\n\n".join([f"# {title}", body, *notes]) + "\n"


def plot_curve(title: str, curve: Mapping[str, Mapping[int, Any]], path: str,
               dataset: str, pretrained_on: str = "ImageNet") -> str:
  """Fig. 9: accuracy against training images per class, ours beside the paper's."""
  fig = figures.new_figure(7.5, 4.6)
  ax = fig.add_subplot(1, 1, 1)
  for key, label, color in (("pretrained", f"ours, {pretrained_on}-pretrained", "#c44e52"),
                            ("scratch", "ours, from scratch", "#4c72b0")):
    points = sorted((n, c) for n, c in curve[key].items() if c)
    if points:
      ax.errorbar([n for n, _ in points], [c["mean"] for _, c in points],
                  yerr=[c["std"] for _, c in points], marker="o", color=color, capsize=3,
                  label=f"{label} ({dataset})")
  for name, color in ((PRETRAINED, "#c44e52"), (SCRATCH, "#4c72b0"),
                      ("(Bo et al., 2013)", "#55a868"), ("(Sohn et al., 2011)", "#8172b2")):
    values = PAPER_TABLE5[name]
    ax.plot(list(values), [v[0] for v in values.values()], linestyle="--", marker="x",
            color=color, alpha=0.7, label=f"paper: {name} (Caltech-256)")
  ax.set_xlabel("training images per class")
  ax.set_ylabel("mean per-class accuracy %")
  ax.set_ylim(0, 100)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="lower right")
  ax.set_title("\n".join(textwrap.wrap(title, 90)), fontsize=8)
  return figures.save(fig, path)


def write(root: str, name: str, markdown: str, result: Mapping[str, Any], *, title: str,
          text: str, pngs: Sequence[str] = (), items: Mapping[str, str] | None = None
          ) -> tuple[str, str, str]:
  """`<root>/tables/<name>.{md,json}` and its section of `<root>/report.html`."""
  md, js = tables.write_table(root, name, markdown, result)
  report = page.add_section(root, name, title, text=text, figures=list(pngs), tables=[name],
                            captions=[title] * len(pngs), items=dict(items or {}))
  return md, js, report


def curve_json(curve: Mapping[str, Mapping[int, Any]]) -> dict[str, Any]:
  return {k: {str(n): c for n, c in v.items()} for k, v in curve.items()}
