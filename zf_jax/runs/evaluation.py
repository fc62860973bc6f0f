"""Table 2: error rates of trained runs and of their ensembles, beside the paper's.

Table 2 of the paper reports top-1 / top-5 error on the ImageNet 2012
validation set for single convnets (Fig. 3's model, the AlexNet replication,
the wider model (b)) and for ensembles of them ("5 convnets as per Fig. 3 –
(a)", "6 convnets, (a) & (b) combined"). An ensemble averages its members'
softmax probabilities for each example; its errors are those of the average.

`evaluate_runs` restores runs from their workdirs (`zf_jax.runs.workdir`),
evaluates several runs and their ensemble for the centre crop
and the 10 crops of Section 3, `table2` lays the result beside the paper's
numbers, and `write_table2` does all three and writes
`<out>/tables/table2.{md,json}` (what `experiments/evaluate.py` calls).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from zf_jax import files, train
from zf_jax.data import input_pipeline
from zf_jax.report import tables
from zf_jax.runs import trainer
from zf_jax.runs.config import RunConfig
from zf_jax.runs.workdir import Workdir, make_mesh

IMAGENET = "imagenet2012"

# Table 2 verbatim: (model, Val Top-1, Val Top-5, Test Top-5), error in %; the
# paper writes "-" or "--" where it has no number.
PAPER_TABLE2 = (
    ("(Gunji et al., 2012)", "-", "-", "26.2"),
    ("(Krizhevsky et al., 2012), 1 convnet", "40.7", "18.2", "--"),
    ("(Krizhevsky et al., 2012), 5 convnets", "38.1", "16.4", "16.4"),
    ("(Krizhevsky et al., 2012)*, 1 convnets", "39.0", "16.6", "--"),
    ("(Krizhevsky et al., 2012)*, 7 convnets", "36.7", "15.4", "15.3"),
    ("Our replication of (Krizhevsky et al., 2012), 1 convnet", "40.5", "18.1", "--"),
    ("1 convnet as per Fig. 3", "38.4", "16.5", "--"),
    ("5 convnets as per Fig. 3 – (a)", "36.7", "15.3", "15.3"),
    ("1 convnet as per Fig. 3 but with layers 3,4,5: 512,1024,512 maps – (b)",
     "37.5", "16.0", "16.1"),
    ("6 convnets, (a) & (b) combined", "36.0", "14.7", "14.8"),
)
PAPER_TITLE = "ImageNet 2012 classification error rates"
PAPER_FOOTNOTE = ("The * indicates models that were trained on both ImageNet 2011 and 2012 "
                  "training sets.")
NOTES = (
    "The paper does not say which test-time crops its Table 2 uses; ours are shown for "
    "the centre crop and for the 10 crops of Section 3 (4 corners and centre, and their "
    "mirror images; softmax outputs averaged).",
    "An ensemble averages its members' softmax probabilities per example (the paper's "
    "\"5 convnets\" and \"(a) & (b) combined\" rows).",
    "ImageNet's test labels are not public, so our rows have no Test Top-5.",
)


def errors_from_probs(probs, labels) -> dict[str, float]:
  """Top-1 / top-5 error and loss of class probabilities (Table 2's error rates).

  Args:
    probs: (N, C) class probabilities, one row per example.
    labels: (N,) integer labels.

  Returns:
    {"count", "loss", "top1_error", "top5_error"}, errors as fractions.
  """
  probs, labels = np.asarray(probs, np.float32), np.asarray(labels, np.int32)
  return train.errors_from_sums(
      train.sums_from_probs(probs, labels, np.ones(labels.shape, np.float32)))


class _Average:
  """Running mean of members' probabilities; keeps one (N, C) array, not one per member."""

  def __init__(self):
    self.total, self.labels, self.size, self._first = None, None, 0, None

  def add(self, name: str, probs, labels) -> None:
    probs, labels = np.asarray(probs, np.float32), np.asarray(labels)
    if self.total is None:
      self.total, self.labels, self._first = probs.copy(), labels, name
    else:
      # Averaging is per example: only the same examples in the same order may be averaged.
      if labels.shape != self.labels.shape or not np.array_equal(labels, self.labels):
        differ = (f"{labels.size} vs {self.labels.size} examples" if labels.shape !=
                  self.labels.shape else f"{int(np.sum(labels != self.labels))} of "
                  f"{labels.size} labels differ")
        raise ValueError(f"cannot ensemble {name} with {self._first}: their evaluation "
                         f"examples differ ({differ}); use the same dataset and split")
      if probs.shape != self.total.shape:
        raise ValueError(f"cannot ensemble {name} with {self._first}: {probs.shape[-1]} vs "
                         f"{self.total.shape[-1]} classes")
      self.total += probs
    self.size += 1

  def errors(self) -> dict[str, Any]:
    if not self.size:
      raise ValueError("an ensemble needs at least one member")
    return {**errors_from_probs(self.total / self.size, self.labels), "size": self.size}


def ensemble(members: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
  """Errors of the average of several models' softmax outputs (Table 2's ensembles).

  Args:
    members: `trainer.evaluate(..., keep_probs=True)` results (or any dicts
      with "probs" (N, C) and "labels" (N,)) of the same examples in the same
      order; may be a generator, only the running sum is kept.

  Returns:
    {"count", "loss", "top1_error", "top5_error", "size"} of the averaged
    probabilities.

  Raises:
    ValueError: no member, or members whose labels or classes differ.
  """
  average = _Average()
  for i, m in enumerate(members):
    average.add(f"member {i}", m["probs"], m["labels"])
  return average.errors()


def _check_same_data(configs: Sequence[tuple[str, RunConfig, dict]]) -> None:
  first_dir, first, first_facts = configs[0]
  for workdir, cfg, facts in configs[1:]:
    if cfg.dataset != first.dataset:
      raise ValueError(f"runs were trained on different datasets ({first_dir}: {first.dataset}, "
                       f"{workdir}: {cfg.dataset}); an ensemble needs one dataset")
    if int(facts["num_classes"]) != int(first_facts["num_classes"]):
      raise ValueError(f"runs have different numbers of classes ({first_dir}: "
                       f"{first_facts['num_classes']}, {workdir}: {facts['num_classes']})")


def evaluate_runs(workdirs: Sequence[str], crops: Sequence[str] = ("center", "ten"),
                  split: str | None = None, step: int | None = None, *,
                  batch_size: int | None = None, mesh=None) -> dict[str, Any]:
  """Evaluates each run and the ensemble of all of them, for each crop mode (Table 2).

  Runs are restored and evaluated one at a time, so memory holds one model
  and one running sum of probabilities per crop mode.

  Args:
    workdirs: training workdirs; several make an ensemble (the paper's
      "5 convnets", "(a) & (b) combined").
    crops: among "center" and "ten" (Section 3's 10 crops, softmax averaged).
    split: the split to evaluate; None: validation (or test where there is none).
    step: the checkpoint step of every run; None: each run's latest.
    batch_size: global evaluation batch; None: each run's own.
    mesh: None: `workdir.make_mesh()`.

  Returns:
    {"dataset", "split", "crops", "runs": [{"workdir", "arch", "step", "eval":
    {crop: {"count", "loss", "top1_error", "top5_error"}}}], "ensemble":
    {"size", "eval": {crop: {...}}}}; errors are fractions.

  Raises:
    ValueError: unknown crops, a workdir given twice, runs of different
      datasets or whose evaluation examples differ.
    FileNotFoundError: a workdir without config.json or checkpoint (`step`).
  """
  crops = tuple(crops)
  if not workdirs:
    raise ValueError("give at least one run workdir")
  if not crops or any(c not in input_pipeline.EVAL_CROPS for c in crops):
    raise ValueError(f"crops must be among {list(input_pipeline.EVAL_CROPS)}, got {list(crops)}")
  if len(set(crops)) != len(crops):
    raise ValueError(f"crops given twice: {list(crops)}")
  workdirs = [Workdir(w) for w in workdirs]
  for i, w in enumerate(workdirs):
    if w.path in [v.path for v in workdirs[:i]]:
      raise ValueError(f"{w.path} is given twice; an ensemble would count it twice")
  # Every config is checked before any (slow) restore or evaluation.
  configs = [(w.path, *w.read_config()) for w in workdirs]
  _check_same_data(configs)
  if batch_size is not None and batch_size < 1:
    raise ValueError(f"batch size must be >= 1, got {batch_size}")
  mesh = make_mesh() if mesh is None else mesh
  averages = {c: _Average() for c in crops}
  runs, split_name = [], None
  for wd in workdirs:
    run = wd.open(step, mesh=mesh)
    workdir = run.workdir
    icfg = run.input_config(batch_size=batch_size, split=split)
    if icfg.global_batch_size % jax.device_count():
      raise ValueError(f"evaluation batch {icfg.global_batch_size} of {workdir} is not divisible "
                       f"by the {jax.device_count()} devices; set the batch size to a multiple "
                       f"of {jax.device_count()}")
    if split_name is None:
      split_name = input_pipeline.dataset_info(icfg).eval_split
    mean = input_pipeline.load_or_compute_mean_image(icfg)  # The run's own, cached.
    row = {"workdir": workdir, "arch": run.arch.name, "step": run.step, "eval": {}}
    for c in crops:
      r = trainer.evaluate(run.params, run.arch, icfg, mesh, crops=c, mean=mean,
                           keep_probs=True)
      averages[c].add(workdir, r.pop("probs"), r.pop("labels"))
      row["eval"][c] = r
    runs.append(row)
    del run  # Only one model's parameters in memory at a time.
  return {"dataset": configs[0][1].dataset, "split": split_name, "crops": list(crops),
          "runs": runs,
          "ensemble": {"size": len(runs), "eval": {c: {k: v for k, v in a.errors().items()
                                                      if k != "size"}
                                                  for c, a in averages.items()}}}


def _paper_number(cell: str) -> float | None:
  return None if cell.strip("-") == "" else float(cell)


def _default_labels(runs: Sequence[Mapping[str, Any]]) -> list[str]:
  archs = [r["arch"] for r in runs]
  return [r["arch"] if archs.count(r["arch"]) == 1 else
          f"{r['arch']} ({os.path.basename(r['workdir'].rstrip(os.sep))})" for r in runs]


def _split_title(split: str) -> str:
  return {"validation": "Val", "test": "Test", "train": "Train"}.get(split, split)


def _pct(percent: float) -> str:
  return f"{percent:.1f}"  # The paper's precision.


def table2(results: Mapping[str, Any], labels: Sequence[str] | None = None
           ) -> tuple[str, dict[str, Any]]:
  """Table 2 as Markdown and JSON: our runs and ensemble beside the paper's rows.

  Args:
    results: what `evaluate_runs` returned.
    labels: one name per run (e.g. "(a) #1"); None: each run's arch name
      (with its workdir's name where archs repeat).

  Returns:
    (markdown, json_obj). json_obj is {"table", "title", "dataset",
    "split", "crops", "imagenet", "units": "%", "paper": [...], "ours":
    [...], "notes": [...]}; "ours" errors are unrounded percentages.

  Raises:
    ValueError: a number of labels other than the number of runs.
  """
  runs, dataset, split = results["runs"], results["dataset"], results["split"]
  crops = list(results["crops"])
  if labels is None:
    labels = _default_labels(runs)
  labels = [str(l) for l in labels]
  if len(labels) != len(runs):
    raise ValueError(f"{len(labels)} labels for {len(runs)} runs; give one label per workdir")

  def errors(ev):
    return {c: {"top1": 100 * ev[c]["top1_error"], "top5": 100 * ev[c]["top5_error"],
                "loss": ev[c]["loss"], "count": ev[c]["count"]} for c in crops}

  ours = [{"model": label, "kind": "run", "workdir": r["workdir"], "arch": r["arch"],
           "step": r["step"], "errors": errors(r["eval"])} for label, r in zip(labels, runs)]
  if len(runs) > 1:  # A one-model "ensemble" is the model itself.
    ours.append({"model": f"{len(runs)} convnets ensemble", "kind": "ensemble",
                 "members": labels, "errors": errors(results["ensemble"]["eval"])})
  paper = [{"model": m, "val_top1": _paper_number(t1), "val_top5": _paper_number(t5),
            "test_top5": _paper_number(test), "trained_on_imagenet_2011_and_2012": "*" in m}
           for m, t1, t5, test in PAPER_TABLE2]
  is_imagenet = dataset == IMAGENET
  count = runs[0]["eval"][crops[0]]["count"] if runs else 0
  notes = list(NOTES)
  if not is_imagenet:
    notes.insert(0, f"NOT ImageNet: our rows are {dataset} ({split} split); the paper's numbers "
                    "are ImageNet 2012's and are not comparable with them.")
  json_obj = {"table": "Table 2", "title": PAPER_TITLE, "dataset": dataset, "split": split,
              "crops": crops, "imagenet": is_imagenet, "units": "%", "paper": paper,
              "ours": ours, "paper_footnote": PAPER_FOOTNOTE, "notes": notes}

  s = _split_title(split)
  lines = [f"# Table 2: {PAPER_TITLE}", ""]
  if not is_imagenet:
    lines += [f"> **NOT ImageNet.** Our rows are **{dataset}**, not ImageNet 2012: the paper's "
              "numbers below are not comparable with them.", ""]
  lines += [f"## Ours: {dataset}, {split} split ({count} examples), error %", ""]
  header = ["Model", "Step"] + [f"{s} Top-{k} ({tables.CROP_NAMES[c]})" for c in crops for k in (1, 5)]
  lines += tables.markdown_table(header, (
      [row["model"], row["step"] if row["kind"] == "run" else "–"]
      + [_pct(row["errors"][c][k]) for c in crops for k in ("top1", "top5")] for row in ours))
  lines += ["", "## Paper: Zeiler & Fergus (2014), Table 2, ImageNet 2012", ""]
  lines += tables.markdown_table(["Error %", "Val Top-1", "Val Top-5", "Test Top-5"],
                                 PAPER_TABLE2)
  lines += ["", f"Paper's footnote: {PAPER_FOOTNOTE.replace('*', chr(92) + '*')}", ""]
  lines += [f"- {n}" for n in notes]
  return "\n".join(lines) + "\n", json_obj


def write_table2(workdirs: Sequence[str], out: str | None = None, *,
                 labels: Sequence[str] | None = None, crops: Sequence[str] = ("center", "ten"),
                 split: str | None = None, step: int | None = None,
                 batch_size: int | None = None) -> dict[str, Any]:
  """Evaluates runs and their ensemble and writes Table 2 under `out`.

  Args:
    workdirs, crops, split, step, batch_size: as for `evaluate_runs`.
    out: where `tables/table2.{md,json}` go; None: the first workdir.
    labels: as for `table2`.

  Returns:
    {"results", "markdown", "json", "md_path", "json_path"}; the paths are
    None on every process but the first (only process 0 writes).
  """
  if labels is not None and len(labels) != len(workdirs):  # Before the slow part.
    raise ValueError(f"{len(labels)} labels for {len(workdirs)} runs; give one label per workdir")
  if out is not None:
    files.check_folder(out, "out")
  results = evaluate_runs(workdirs, crops=crops, split=split, step=step, batch_size=batch_size)
  markdown, obj = table2(results, labels=labels)
  md_path = json_path = None
  if jax.process_index() == 0:
    md_path, json_path = tables.write_table(out or workdirs[0], "table2", markdown, obj)
  return {"results": results, "markdown": markdown, "json": obj, "md_path": md_path,
          "json_path": json_path}
