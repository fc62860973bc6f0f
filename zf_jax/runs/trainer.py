"""The training run: input, sharded steps, checkpoints, evaluation, logs (Section 3).

`train_and_evaluate(config, workdir)` is what `experiments/train_imagenet.py`
calls and what a notebook can call. It resumes by itself from the latest
checkpoint in `workdir`, saves and exits cleanly on SIGTERM / SIGINT, stops
loudly on a non-finite loss without touching the last good checkpoint, and
writes `metrics.jsonl`, TensorBoard events and `summary.json`.

Several hosts: every process runs the same command with `distributed=True`;
`jax.distributed.initialize()` connects them (coordinator from the arguments
or the cluster environment), each process reads `global_batch /
process_count` examples, and `jax.make_array_from_process_local_data` joins
them into one global batch split over the mesh's "data" axis.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import threading
import time
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from zf_jax import arch as arch_lib
from zf_jax import train
from zf_jax.data import input_pipeline
from zf_jax.runs import workdir as workdir_lib
from zf_jax.runs.config import RunConfig
from zf_jax.runs.workdir import input_config, make_mesh


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or infinite; the run stopped before saving it."""


def _global(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  sharding = jax.NamedSharding(mesh, jax.P(train.DATA_AXIS))
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


class _Log:
  """metrics.jsonl + TensorBoard, written by process 0 only."""

  def __init__(self, wd: workdir_lib.Workdir):
    self._on = jax.process_index() == 0
    if not self._on:
      return
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  # input_pipeline hid GPUs.
    self._tf = tf
    self._file = open(wd.file(workdir_lib.METRICS_FILE), "a", encoding="utf-8")
    self._tb = tf.summary.create_file_writer(wd.file(workdir_lib.TENSORBOARD_DIR))

  def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
    if not self._on:
      return
    self._file.write(json.dumps({"step": step, "split": split, **metrics}) + "\n")
    self._file.flush()
    with self._tb.as_default(step=step):
      for k, v in metrics.items():
        self._tf.summary.scalar(f"{split}/{k}", v)

  def close(self) -> None:
    if self._on:
      self._file.close()
      self._tb.close()


def _say(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


def _bar(fraction: float, width: int = 20) -> str:
  """A text progress bar, e.g. [#######.............]."""
  done = min(width, max(0, int(fraction * width)))
  return "[" + "#" * done + "." * (width - done) + "]"


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rest = divmod(seconds, 3600)
  return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


def evaluate(params, arch: arch_lib.Arch, icfg: input_pipeline.InputConfig, mesh, *,
             crops: str = "center", split: str | None = None, mean=None,
             keep_probs: bool = False) -> dict[str, Any]:
  """Top-1 / top-5 error and loss of `params` over a whole split (Table 2).

  Every example counts once (padding is masked). With `keep_probs`, also
  returns "probs" (N, C) and "labels" (N,) in split order on every host, for
  ensembles (average the probs of several models).
  """
  eval_step = train.make_eval_step(arch, mesh)
  totals, probs, labels = None, [], []
  for batch in input_pipeline.make_eval_iterator(icfg, crops=crops, split=split, mean=mean):
    batch = _global(batch, mesh)
    sums, p = eval_step(params, batch)
    totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
    if keep_probs:  # Whole global arrays on every host, padding dropped.
      p, mask, label = (multihost_utils.process_allgather(x, tiled=True)
                        for x in (p, batch["mask"], batch["label"]))
      probs.append(p[mask > 0])
      labels.append(label[mask > 0])
  out = train.errors_from_sums(totals)
  if keep_probs:
    out["probs"], out["labels"] = np.concatenate(probs), np.concatenate(labels)
  return out


def _install_stop_handlers(stop: threading.Event):
  previous = {}

  def handler(signum, _frame):
    stop.set()

  if threading.current_thread() is threading.main_thread():
    for sig in (signal.SIGTERM, signal.SIGINT):
      previous[sig] = signal.signal(sig, handler)
  return previous


def train_and_evaluate(cfg: RunConfig, workdir: str, *,
                       batch_transform: Callable[[int, dict], dict] | None = None
                       ) -> dict[str, Any]:
  """Trains `cfg.arch` on `cfg.dataset` per Section 3 and evaluates it.

  Args:
    cfg: the run.
    workdir: checkpoints/, metrics.jsonl, tensorboard/, config.json and
      summary.json go here. An existing run in it is resumed.
    batch_transform: optional `(step, host_batch) -> host_batch` applied
      before each step (debugging, fault injection in tests).

  Returns:
    The summary: status ("complete" or "interrupted"), steps, timings and
    the final evaluation per crop mode.

  Raises:
    ValueError: an inconsistent configuration (one line).
    NonFiniteLossError: the loss became NaN / inf; the last good checkpoint
      is left as it was.
  """
  if cfg.distributed:
    jax.distributed.initialize(cfg.coordinator_address, cfg.num_processes, cfg.process_id)
  wd = workdir_lib.Workdir(workdir)
  os.makedirs(wd.path, exist_ok=True)
  batch = cfg.train.batch_size
  for name, size in (("batch size", batch), ("evaluation batch size", cfg.eval_batch_size)):
    if size is not None and size % jax.device_count():
      raise ValueError(f"{name} {size} is not divisible by the {jax.device_count()} devices; "
                       f"use a multiple of {jax.device_count()}")
  mesh = make_mesh()
  arch = arch_lib.get(cfg.arch)
  icfg = input_config(cfg, arch.image_size, batch)
  info = input_pipeline.dataset_info(icfg)
  arch = arch_lib.with_classes(arch, info.num_classes)
  total = cfg.num_steps if cfg.num_steps is not None else math.ceil(
      cfg.num_epochs * info.steps_per_epoch)
  spe = info.steps_per_epoch
  keep = sorted(e * spe for e in cfg.keep_epochs if 0 < e * spe <= total)
  if cfg.lr_decay_epochs:
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, lr_decay_steps=tuple(round(e * spe) for e in cfg.lr_decay_epochs)))
  if jax.process_index() == 0:
    wd.write_config(cfg, num_classes=arch.num_classes, steps_per_epoch=spe, total_steps=total)

  # Process 0 computes the mean image (cached beside the data); the others then read it.
  if jax.process_index() == 0:
    input_pipeline.load_or_compute_mean_image(icfg)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("mean image")
  mean = input_pipeline.load_or_compute_mean_image(icfg)

  ckpt = wd.checkpointer(keep_latest=cfg.keep_checkpoints, keep_steps=keep)
  try:
    resumed = wd.resume(ckpt, workdir_lib.abstract_state(cfg, arch, mesh), say=_say)
    if resumed is not None:
      state, meta = resumed
      _say(f"resumed from {wd.checkpoint_dir} at step {int(state.step)} of {total}")
    else:
      state = train.create_train_state(jax.random.key(cfg.seed), arch, cfg.train, mesh)
      meta = {}
    state = _train_loop(cfg, arch, icfg, mesh, mean, state, meta, total, spe, ckpt, wd,
                        batch_transform)
    summary = {"status": "interrupted" if int(state.step) < total else "complete",
               "step": int(state.step), "total_steps": total, "arch": arch.name,
               "dataset": cfg.dataset, "workdir": wd.path}
    if summary["status"] == "complete":
      summary.update(_final_eval(cfg, arch, icfg, mesh, mean, state, wd))
  finally:
    ckpt.close()
  return summary


def _eval_input(cfg: RunConfig, icfg: input_pipeline.InputConfig) -> input_pipeline.InputConfig:
  return dataclasses.replace(icfg, global_batch_size=cfg.eval_batch_size or icfg.global_batch_size)


def _final_eval(cfg, arch, icfg, mesh, mean, state, wd: workdir_lib.Workdir):
  done = wd.summary()
  if done and done.get("step") == int(state.step) and "eval" in done:
    _say(f"training is already complete ({done['step']} steps); results in "
         f"{wd.file(workdir_lib.SUMMARY_FILE)}")
    return {"eval": done["eval"], "already_complete": True}
  icfg_eval = _eval_input(cfg, icfg)
  results = {}
  for crops in cfg.final_eval_crops:
    r = evaluate(state.params, arch, icfg_eval, mesh, crops=crops, mean=mean)
    results[crops] = r
    _say(f"{crops}-crop evaluation on {r['count']} examples: top-1 error {r['top1_error']:.4f}, "
         f"top-5 error {r['top5_error']:.4f}")
  if jax.process_index() == 0:
    wd.write_summary({"step": int(state.step), "arch": arch.name, "dataset": cfg.dataset,
                      "eval": results})
  return {"eval": results}


def _train_loop(cfg, arch, icfg, mesh, mean, state, meta, total, spe, ckpt, wd,
                batch_transform):
  """Runs steps state.step .. total; returns the last good state."""
  start = int(state.step)
  if start >= total:
    return state
  train_step = train.make_train_step(arch, cfg.train, mesh)
  batches = input_pipeline.make_train_iterator(icfg, start_step=start, mean=mean)
  log = _Log(wd)
  stop = threading.Event()
  previous = _install_stop_handlers(stop)
  icfg_eval = _eval_input(cfg, icfg)
  best = meta.get("best_validation_error")
  t0, n0, step = time.time(), start, start
  pending = None  # (step, metrics) of the last dispatched step, checked one step late.

  def check(item):
    s, m = item
    loss = float(m["loss"])
    if not math.isfinite(loss):
      last = ckpt.latest_step()
      kept = ("no checkpoint was saved yet" if last is None else
              f"the last good checkpoint (step {last}) is untouched")
      raise NonFiniteLossError(f"loss is {loss} at step {s}; stopped without saving it and "
                               f"{kept}: lower the learning rate and rerun")
    return s, {k: float(v) for k, v in m.items()}

  def save(step, state):
    ckpt.save(step, state, {"step": step, "epoch": step / spe, "arch": arch.name,
                            "num_classes": arch.num_classes, "best_validation_error": best})

  try:
    while step < total:
      host = next(batches)
      if batch_transform is not None:
        host = batch_transform(step, host)
      state, metrics = train_step(state, _global(host, mesh))
      if pending is not None:
        done_step, values = check(pending)
        if done_step % cfg.log_every == 0:
          log.write(done_step, "train", values)
      step += 1
      pending = (step, metrics)
      epoch_end = step % spe == 0
      if step % cfg.log_every == 0 or step == total:
        rate = (step - n0) * icfg.global_batch_size / max(time.time() - t0, 1e-9)
        eta = (total - step) * icfg.global_batch_size / max(rate, 1e-9)
        _, values = check(pending)
        _say(f"{_bar(step / total)} step {step}/{total} ({100 * step / total:.0f}%) "
             f"epoch {step / spe:.2f} "
             f"loss {values['loss']:.4f} top-1 err {values['top1_error']:.3f} "
             f"lr {values['learning_rate']:.2g} | {rate:.0f} img/s | ETA {_duration(eta)}")
      if epoch_end and cfg.eval_every_epochs and (step // spe) % cfg.eval_every_epochs == 0 \
          and step < total:
        check(pending)
        r = evaluate(state.params, arch, icfg_eval, mesh, crops="center", mean=mean)
        log.write(step, "validation", {k: r[k] for k in ("loss", "top1_error", "top5_error")})
        best = r["top1_error"] if best is None else min(best, r["top1_error"])
        state = train.update_plateau(state, r["top1_error"], cfg.train)
        _say(f"epoch {step // spe}: validation top-1 error {r['top1_error']:.4f}, "
             f"top-5 {r['top5_error']:.4f}")
      stopping = stop.is_set()
      if jax.process_count() > 1:  # Hosts see a signal at different steps; stop together.
        stopping = step % cfg.log_every == 0 and bool(
            multihost_utils.process_allgather(np.array(stopping)).any())
      if step % cfg.checkpoint_every == 0 or epoch_end or step == total or stopping:
        check(pending)  # Never save a non-finite state.
        save(step, state)
      if stopping:
        _say(f"stopped by signal at step {step}; checkpoint saved. Run the same command "
             "to resume.")
        break
    if pending is not None:
      done_step, values = check(pending)
      log.write(done_step, "train", values)
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
    log.close()
  _say(f"trained {step - start} steps in {_duration(time.time() - t0)}")
  return state
