r"""Section 5.2: the ImageNet training images that are also in Caltech, to leave out of training.

"Using normalized correlation, we identified these few 'overlap' images and
removed them from our Imagenet training set and then retrained our Imagenet
models" (footnote: Caltech-101, 44 images in common out of 9,144, at most 10
in one class; Caltech-256, 243 of 30,607, at most 18).

  python -m experiments.dedup --source=imagenet2012:train \
      --target=caltech101:train+test --workdir=runs/dedup --data_dir=~/tensorflow_datasets

  python -m experiments.dedup --source=imagenet2012:train \
      --target=folder:~/data/caltech256:all --workdir=runs/dedup256

--source and --target are DATASET:SPLIT: a tfds name or folder:<root> (an
image folder <root>/<split>/<class>/<image>), and any tfds split
("train", "train+test", "train[:10%]"). Every image becomes a --size px grey
thumbnail (`input_pipeline.thumbnails`); the target's are held on the
device and the source's streamed past them (`zf_jax.section5.dedup`). A
source image is a duplicate of a target image when their thumbnails'
normalised correlation is >= --threshold.

Writes, under --workdir, only once the whole source has been read:
  duplicates.json    every match (source id, target id, target class,
                     correlation), the counts, the targets that came closest
                     below the threshold;
  exclude_ids.txt    the matched source ids, one per line after a `#` comment
                     line: train on the rest with --exclude_ids=<this file>;
  tables/dedup.{md,json}  images in common, out of how many, the most in one
                     class, beside the paper's footnote (Caltech-101 and
                     Caltech-256 only);
  dedup_search.npz   the search so far, saved every minute: the same command
                     after a kill resumes from it (a rerun once complete
                     only rewrites the outputs); another request over it
                     stops with a line naming what differs, or with
                     --overwrite starts again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np
from absl import flags

from experiments import cli
from zf_jax.data import input_pipeline
from zf_jax.files import atomic_write, check_folder
from zf_jax.report import tables
from zf_jax.section5 import dedup, dedup_state

flags.DEFINE_string("source", None, "DATASET:SPLIT searched for copies, e.g. imagenet2012:train "
                    "(its matched ids go to exclude_ids.txt).", required=True)
flags.DEFINE_string("target", None, "DATASET:SPLIT whose images are looked for, e.g. "
                    "caltech101:train+test or folder:<root>:<split>.", required=True)
flags.DEFINE_string("workdir", None, "Folder for duplicates.json, exclude_ids.txt and "
                    "tables/dedup.{md,json}.", required=True)
flags.DEFINE_string("data_dir", None, "tfds data_dir (default: tfds' own).")
flags.DEFINE_float("threshold", dedup.DEFAULT_THRESHOLD, "Least normalised correlation of a "
                   "duplicate, in (0, 1] (see zf_jax/section5/dedup.py for how it was chosen).")
flags.DEFINE_integer("size", dedup.DEFAULT_SIZE, "Thumbnail side in pixels (>= 2).")
flags.DEFINE_integer("chunk_size", dedup.DEFAULT_CHUNK, "Source thumbnails per matrix product.")
flags.DEFINE_integer("k", dedup.DEFAULT_K, "Nearest sources kept per target.")
flags.DEFINE_integer("batch_size", 512, "Thumbnails per batch read from the input pipeline.")
cli.define_overwrite("the search of another request (other --source, --target, --threshold, "
                     "--size, --chunk_size or --k) whose state is in --workdir")

FLAGS = flags.FLAGS
PROGRESS_SECONDS = 5.0
STATE_FILE = "dedup_search.npz"  # The search so far: a killed pass resumes from it.
SAVE_SECONDS = 60.0
NEAR_MISSES = 100  # Targets listed in duplicates.json whose best source is just below.


def _spec(part: tuple[str, str]) -> str:
  return f"{part[0]}:{part[1]}"


def _classes_of(labels: np.ndarray) -> list[tuple[int, ...]]:
  """Per image, its classes: the label, or those present in a multi-label vector."""
  if labels.ndim == 1:
    return [(int(l),) for l in labels]
  return [tuple(np.flatnonzero(row).tolist()) for row in labels]


class Progress:
  """Prints "images done / total, rate" at most every PROGRESS_SECONDS."""

  def __init__(self, what: str, total: int):
    self.what, self.total = what, total
    self.start = self.last = time.monotonic()
    self.before = 0  # Done by an earlier, interrupted pass.

  def start_at(self, done: int) -> None:
    self.before = done

  def __call__(self, done: int, final: bool = False) -> None:
    now = time.monotonic()
    if not final and now - self.last < PROGRESS_SECONDS:
      return
    self.last = now
    rate = (done - self.before) / max(now - self.start, 1e-9)
    left = (f", {(self.total - done) / rate / 60:.1f} min left"
            if not final and rate > 0 and self.total > done else "")
    pct = f" ({100 * done / self.total:.0f}%)" if self.total else ""
    print(f"{self.what}: {done:,}/{self.total:,} images{pct}, {rate:,.0f} img/s{left}",
          flush=True)


def _read_target(cfg, split: str, req: dedup.Request, total: int):
  ids, labels, thumbs = [], [], []
  progress = Progress(f"target {cfg.dataset}:{split}", total)
  for batch in input_pipeline.thumbnails(cfg, split, size=req.size, batch_size=req.batch_size):
    ids.extend(batch["id"].tolist())
    labels.append(batch["label"])
    thumbs.append(batch["thumb"])
    progress(len(ids))
  progress(len(ids), final=True)
  if not ids:
    raise ValueError(f"--target={cfg.dataset}:{split} has no decodable images")
  return ids, np.concatenate(labels), np.concatenate(thumbs)


def _finite(x: float) -> float | None:
  return round(float(x), 6) if np.isfinite(x) else None


def table(req: dedup.Request, counts: dict, paper: dict | None) -> tuple[str, dict]:
  """tables/dedup.{md,json}: ours beside the paper's footnote."""
  title = (f"Section 5.2: images of {_spec(req.target)} also in {_spec(req.source)} "
           f"(normalised correlation of {req.size} px grey thumbnails >= {req.threshold:g})")
  header = ["", "Images in common", "Target images", "Max overlap for a class",
            "Source images removed"]
  classes = ", ".join(counts["max_overlap_classes"][:5])
  rows = [["ours", f"{counts['images_in_common']:,}", f"{counts['total_target_images']:,}",
           f"{counts['max_overlap_per_class']}" + (f" ({classes})" if classes else ""),
           f"{counts['source_images_removed']:,}"]]
  if paper:
    rows.append([f"paper ({paper['dataset']})", f"{paper['common']:,}", f"{paper['total']:,}",
                 f"{paper['max_per_class']}", "-"])
  bands = [[f">= {b}", f"{n:,}"] for b, n in zip(dedup.BANDS, counts["nearest_bands"].values())]
  lines = [f"# {title}", "",
           *tables.markdown_table(header, rows, align="lrrrr"), ""]
  if not paper:
    lines += ["paper: — (its footnote counts Caltech-101 and Caltech-256 only)", ""]
  lines += [f"{counts['source_images_searched']:,} source images searched; "
            f"{counts['pairs']:,} (source, target) pairs at or above the threshold.", "",
            "Target images by the correlation of their nearest source image:", "",
            *tables.markdown_table(["Nearest correlation", "Target images"], bands)]
  obj = {"title": title, "source": _spec(req.source), "target": _spec(req.target),
         "threshold": req.threshold, "size": req.size,
         "ours": {k: counts[k] for k in ("images_in_common", "total_target_images",
                                         "max_overlap_per_class", "max_overlap_classes",
                                         "source_images_removed", "source_images_searched",
                                         "pairs", "nearest_bands")},
         "paper": ({"dataset": paper["dataset"], "images_in_common": paper["common"],
                    "total_target_images": paper["total"],
                    "max_overlap_per_class": paper["max_per_class"]} if paper else None)}
  return "\n".join(lines) + "\n", obj


def main(_):
  req = dedup.request(FLAGS.source, FLAGS.target, FLAGS.threshold, FLAGS.size,
                      FLAGS.chunk_size, FLAGS.k, FLAGS.batch_size)
  check_folder(FLAGS.workdir, "workdir")  # Before the long pass, not after it.
  src_cfg = input_pipeline.InputConfig(dataset=req.source[0], data_dir=FLAGS.data_dir)
  tgt_cfg = input_pipeline.InputConfig(dataset=req.target[0], data_dir=FLAGS.data_dir)
  # Both datasets and splits exist before anything is read or written.
  tgt_info = input_pipeline.split_info(tgt_cfg, req.target[1])
  src_info = input_pipeline.split_info(src_cfg, req.source[1])
  target_ids, target_labels, target_thumbs = _read_target(tgt_cfg, req.target[1], req,
                                                          tgt_info.num_examples)
  print(f"searching {src_info.num_examples:,} images of {_spec(req.source)} for "
        f"{len(target_ids):,} of {_spec(req.target)} (threshold {req.threshold:g}, "
        f"{req.size} px thumbnails)", flush=True)
  key = dedup_state.request_key(req, FLAGS.data_dir, target_ids, target_thumbs)
  state_path = os.path.join(FLAGS.workdir, STATE_FILE)
  resume = dedup_state.resume_state(state_path, key, overwrite=FLAGS.overwrite)
  progress = Progress(f"source {_spec(req.source)}", src_info.num_examples)
  complete = resume is not None and resume.position >= src_info.num_examples
  if complete:
    print(f"the search was complete in {state_path}; reusing it", flush=True)
    batches = iter(())
  else:
    if resume is not None:
      print(f"resuming the search after {resume.num_source:,} source images ({state_path})",
            flush=True)
      progress.start_at(resume.num_source)
    batches = ((b["id"].tolist(), b["thumb"], b["position"]) for b in input_pipeline.thumbnails(
        src_cfg, req.source[1], size=req.size, batch_size=req.batch_size,
        start=resume.position if resume else 0))

  def save(state):
    os.makedirs(FLAGS.workdir, exist_ok=True)
    dedup_state.save_state(state_path, state, json.dumps(key, sort_keys=True))

  result = dedup.search(batches, target_thumbs, target_ids, threshold=req.threshold,
                        chunk_size=req.chunk_size, k=req.k, progress=progress, resume=resume,
                        save=save, save_seconds=SAVE_SECONDS)
  if not complete:
    progress(result.num_source, final=True)
  # Complete: a rerun of the same request rewrites the tables without searching again.
  save(dataclasses.replace(result.state, position=src_info.num_examples))

  classes = _classes_of(np.asarray(target_labels))
  names = tgt_info.class_names
  counts = dedup.overlap(result, target_ids, classes, names)
  label_of = dict(zip(target_ids, classes))
  class_name = lambda t: ", ".join(names[c] if names and c < len(names) else str(c)
                                   for c in label_of[t])
  paper_key = dedup.paper_key(req.target[0])
  paper = dedup.PAPER[paper_key] if paper_key else None
  best = result.nearest_corr[:, 0]
  near = [i for i in np.argsort(-best, kind="stable") if best[i] < req.threshold][:NEAR_MISSES]
  report = {
      "source": _spec(req.source), "target": _spec(req.target), "data_dir": FLAGS.data_dir,
      "size": req.size, "threshold": req.threshold, "counts": counts, "paper": paper,
      "matches": [{"source_id": m.source_id, "target_id": m.target_id,
                   "target_class": class_name(m.target_id),
                   "correlation": round(m.correlation, 6)} for m in result.matches],
      "near_misses": [{"target_id": target_ids[i], "target_class": class_name(target_ids[i]),
                       "nearest_source_id": result.nearest_ids[i][0],
                       "correlation": _finite(best[i])}
                      for i in near if np.isfinite(best[i])],
  }
  removed = sorted({m.source_id for m in result.matches})
  md_text, table_obj = table(req, counts, paper)

  os.makedirs(FLAGS.workdir, exist_ok=True)
  dup_path = atomic_write(os.path.join(FLAGS.workdir, "duplicates.json"),
                          json.dumps(report, indent=2, allow_nan=False) + "\n")
  header = (f"Section 5.2: the {len(removed)} images of {_spec(req.source)} whose {req.size} px "
            f"thumbnail correlates >= {req.threshold:g} with an image of {_spec(req.target)} "
            "(experiments/dedup.py); train without them: --exclude_ids=<this file>")
  ids_path = input_pipeline.write_ids(os.path.join(FLAGS.workdir, "exclude_ids.txt"),
                                      removed, header)
  md, _ = tables.write_table(FLAGS.workdir, "dedup", md_text, table_obj)
  print(f"{counts['images_in_common']:,} of {counts['total_target_images']:,} target images "
        f"found in the source (at most {counts['max_overlap_per_class']} in one class); "
        f"{len(removed):,} source images to leave out\n"
        f"duplicates: {dup_path}\nexclude ids: {ids_path}\ntable: {md}")


if __name__ == "__main__":
  cli.run(main)
