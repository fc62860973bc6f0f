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
import functools
import json
import math
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from zf_jax import arch as arch_lib
from zf_jax import files, model, train
from zf_jax.data import input_pipeline
from zf_jax.runs import workdir as workdir_lib
from zf_jax.runs import config as config_lib
from zf_jax.runs.config import RunConfig
from zf_jax.runs.workdir import make_mesh


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
    self._tf = tf = input_pipeline.tensorflow()  # Kept off the GPUs.
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


_PROGRESS_LINES = 5  # An evaluation with a progress label says how far it is this often.


def _eval_progress(batches: Iterable[dict], label: str, num_batches: int,
                   batch_size: int) -> Iterator[dict]:
  """Yields `batches`, and a progress line (bar, %, img/s, ETA) after each fifth of them.

  A line is printed when the next batch is asked for, i.e. once the caller
  has finished with the previous one.
  """
  t0 = time.time()
  for k, batch in enumerate(batches, 1):
    yield batch
    line = k * _PROGRESS_LINES // num_batches
    if k < num_batches and line > (k - 1) * _PROGRESS_LINES // num_batches:
      rate = k * batch_size / max(time.time() - t0, 1e-9)
      _say(f"{_bar(k / num_batches)} {label}: {100 * k / num_batches:.0f}% | {rate:.0f} img/s "
           f"| ETA {_duration((num_batches - k) * batch_size / rate)}")


def _say_done(label: str | None, count: int, seconds: float) -> None:
  if label is not None:
    _say(f"{_bar(1.0)} {label}: {count} images in {_duration(seconds)} | "
         f"{count / max(seconds, 1e-9):.0f} img/s")


def _eval_batches(icfg: input_pipeline.InputConfig, crops: str, split: str | None, mean,
                  label: str | None) -> Iterator[dict]:
  batches = input_pipeline.make_eval_iterator(icfg, crops=crops, split=split, mean=mean)
  if label is None:
    return batches
  return _eval_progress(batches, label, input_pipeline.num_eval_batches(icfg, split),
                        icfg.global_batch_size)


def evaluate(params, arch: arch_lib.Arch, icfg: input_pipeline.InputConfig, mesh, *,
             crops: str = "center", split: str | None = None, mean=None,
             keep_probs: bool = False, progress: str | None = None) -> dict[str, Any]:
  """Top-1 / top-5 error and loss of `params` over a whole split (Table 2).

  Every example counts once (padding is masked). With `keep_probs`, also
  returns "probs" (N, C) and "labels" (N,) in split order on every host, for
  ensembles (average the probs of several models). With `progress`, prints
  a progress line under that label every fifth of the split, and the
  images per second at the end.
  """
  eval_step = train.make_eval_step(arch, mesh)
  totals, probs, labels = None, [], []
  t0 = time.time()
  for batch in _eval_batches(icfg, crops, split, mean, progress):
    batch = _global(batch, mesh)
    sums, p = eval_step(params, batch)
    totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
    if keep_probs:  # Whole global arrays on every host, padding dropped.
      p, mask, label = (multihost_utils.process_allgather(x, tiled=True)
                        for x in (p, batch["mask"], batch["label"]))
      probs.append(p[mask > 0])
      labels.append(label[mask > 0])
  out = train.errors_from_sums(totals)
  _say_done(progress, out["count"], time.time() - t0)
  if keep_probs:
    out["probs"], out["labels"] = np.concatenate(probs), np.concatenate(labels)
  return out


@functools.lru_cache(maxsize=16)  # One compile per (arch, mesh).
def _centre_and_ten_step(arch: arch_lib.Arch, mesh):
  """`train.make_eval_step`'s sums for both crop modes from one batch of Section 3's 10 crops.

  The centre-crop evaluation's image is crop `input_pipeline.CENTRE_OF_TEN` of the 10
  and an image's forward pass does not depend on the rest of its batch, so the
  centre crop costs no forward pass of its own: {"center": sums, "ten": sums},
  each the same computation as `train.make_eval_step` on its own batches.
  """
  def step(params, batch):
    images, labels, mask = batch["image"], batch["label"], batch["mask"]
    logits, _ = model.apply(params, images.reshape(-1, *images.shape[-3:]), arch)
    probs = jax.nn.softmax(logits).reshape(images.shape[0], images.shape[1], -1)
    c = input_pipeline.CENTRE_OF_TEN
    centre = probs[:, c:c + 1]  # A mean over 1 crop, as eval_step's.
    return {"center": train.sums_from_probs(jnp.mean(centre, axis=1), labels, mask),
            "ten": train.sums_from_probs(jnp.mean(probs, axis=1), labels, mask)}

  replicated = jax.NamedSharding(mesh, jax.P())
  return jax.jit(step, in_shardings=(replicated, jax.NamedSharding(mesh, jax.P(train.DATA_AXIS))),
                 out_shardings=replicated)


_CROP_LABELS = {"center": "centre crop", "ten": "10 crops"}


def evaluate_crops(params, arch: arch_lib.Arch, icfg: input_pipeline.InputConfig, mesh,
                   crops: Sequence[str], *, split: str | None = None, mean=None,
                   progress: str | None = None) -> dict[str, dict[str, Any]]:
  """`evaluate` for several crop modes: {mode: result}, in the order of `crops`.

  The centre crop and the 10 crops (Section 3) share one pass over the 10
  crops, with the same results as two passes. With `progress` (e.g. "final
  evaluation"), prints progress lines for each pass (see `evaluate`).
  """
  crops = tuple(crops)
  results = {}
  if {"center", "ten"} <= set(crops):
    step = _centre_and_ten_step(arch, mesh)
    label = None if progress is None else f"{progress}, centre crop and 10 crops in one pass"
    totals, t0 = None, time.time()
    for batch in _eval_batches(icfg, "ten", split, mean, label):
      sums = step(params, _global(batch, mesh))
      totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
    results = {c: train.errors_from_sums(totals[c]) for c in ("center", "ten")}
    _say_done(label, results["ten"]["count"], time.time() - t0)
  for c in crops:
    if c not in results:
      results[c] = evaluate(params, arch, icfg, mesh, crops=c, split=split, mean=mean,
                            progress=None if progress is None else
                            f"{progress}, {_CROP_LABELS.get(c, c)}")
  return {c: results[c] for c in crops}


def _install_stop_handlers(stop: threading.Event):
  previous = {}

  def handler(signum, _frame):
    stop.set()

  if threading.current_thread() is threading.main_thread():
    for sig in (signal.SIGTERM, signal.SIGINT):
      previous[sig] = signal.signal(sig, handler)
  return previous


def use_cpu_devices(n: int) -> None:
  """Makes the CPU backend n JAX devices (`jax_num_cpu_devices`); idempotent.

  Only possible before JAX first computes anything in this process; after
  that, a ValueError unless the CPU backend already has n devices. Devices of
  other platforms (GPU, TPU) are unaffected and remain the default.
  """
  try:
    jax.config.update("jax_num_cpu_devices", n)
  except RuntimeError:  # The backends are up: fine if they already agree.
    have = len(jax.devices("cpu"))
    if have != n:
      raise ValueError(f"cpu_devices={n} must be set before JAX starts; this process already "
                       f"has {have} CPU device(s)") from None


def train_and_evaluate(cfg: RunConfig, workdir: str, *, overwrite: bool = False,
                       batch_transform: Callable[[int, dict], dict] | None = None
                       ) -> dict[str, Any]:
  """Trains `cfg.arch` on `cfg.dataset` per Section 3 and evaluates it.

  Args:
    cfg: the run.
    workdir: checkpoints/, metrics.jsonl, tensorboard/, config.json and
      summary.json go here. An existing run of the same recipe is resumed
      (fields marked `recipe=False`, e.g. log_every, may differ).
    overwrite: train from scratch over a run of another recipe in `workdir`
      (default: refuse, naming the fields that differ).
    batch_transform: optional `(step, host_batch) -> host_batch` applied
      before each step (debugging, fault injection in tests).

  Returns:
    The summary: status ("complete" or "interrupted"), steps, timings and
    the final evaluation per crop mode.

  Raises:
    ValueError: an inconsistent configuration (one line).
    workdir.OtherRunError: `workdir` holds a run of another recipe (one line).
    NonFiniteLossError: the loss became NaN / inf; the last good checkpoint
      is left as it was.
  """
  if cfg.cpu_devices is not None:
    use_cpu_devices(cfg.cpu_devices)
  if cfg.distributed and not jax.distributed.is_initialized():  # Once, for several runs.
    jax.distributed.initialize(cfg.coordinator_address, cfg.num_processes, cfg.process_id)
  wd = workdir_lib.Workdir(workdir)
  files.check_folder(wd.path, "workdir")
  for name, size in (("batch size", cfg.train.batch_size),
                     ("evaluation batch size", cfg.eval_batch_size)):
    if size is not None and size % jax.device_count():
      raise ValueError(f"{name} {size} is not divisible by the {jax.device_count()} devices; "
                       f"use a multiple of {jax.device_count()}")
  mesh = make_mesh()
  plan = config_lib.resolve(cfg)
  cfg, arch, icfg = plan.config, plan.arch, plan.input
  total, spe = plan.total_steps, plan.steps_per_epoch
  keep = sorted(e * spe for e in cfg.keep_epochs if 0 < e * spe <= total)
  wd.check_same_run(cfg, plan.facts, overwrite=overwrite, say=_say)
  os.makedirs(wd.path, exist_ok=True)
  if jax.process_index() == 0:
    wd.write_config(cfg, **plan.facts)

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
    state, train_seconds = _train_loop(cfg, arch, icfg, mesh, mean, state, meta, total, spe,
                                       ckpt, wd, batch_transform)
    summary = {"status": "interrupted" if int(state.step) < total else "complete",
               "step": int(state.step), "total_steps": total, "arch": arch.name,
               "dataset": cfg.dataset, "workdir": wd.path, "train_seconds": train_seconds}
    if summary["status"] == "complete":
      summary.update(_final_eval(cfg, arch, icfg, mesh, mean, state, wd, train_seconds))
  finally:
    ckpt.close()
  return summary


def _eval_input(cfg: RunConfig, icfg: input_pipeline.InputConfig) -> input_pipeline.InputConfig:
  return dataclasses.replace(icfg, global_batch_size=cfg.eval_batch_size or icfg.global_batch_size)


def _final_eval(cfg, arch, icfg, mesh, mean, state, wd: workdir_lib.Workdir,
                train_seconds: float):
  done = wd.summary()
  if done and done.get("step") == int(state.step) and "eval" in done:
    missing = tuple(c for c in cfg.final_eval_crops if c not in done["eval"])
    if not missing:
      _say(f"training is already complete ({done['step']} steps); results in "
           f"{wd.file(workdir_lib.SUMMARY_FILE)}")
      return {"eval": {c: done["eval"][c] for c in cfg.final_eval_crops},
              "already_complete": True,
              "train_seconds": done.get("train_seconds", train_seconds)}
    earlier = done["eval"]  # Kept: the same parameters, the other crops are added.
  else:
    earlier, missing = {}, cfg.final_eval_crops
  results = evaluate_crops(state.params, arch, _eval_input(cfg, icfg), mesh,
                           missing, mean=mean, progress="final evaluation")
  results = {**earlier, **results}
  for crops, r in results.items():
    _say(f"{crops}-crop evaluation on {r['count']} examples: top-1 error {r['top1_error']:.4f}, "
         f"top-5 error {r['top5_error']:.4f}")
  if jax.process_index() == 0:
    wd.write_summary({"step": int(state.step), "arch": arch.name, "dataset": cfg.dataset,
                      "eval": results, "train_seconds": train_seconds})
  return {"eval": results}


def _train_loop(cfg, arch, icfg, mesh, mean, state, meta, total, spe, ckpt, wd,
                batch_transform):
  """Runs steps state.step .. total; returns the last good state and the training seconds.

  Training seconds (wall time of training and its validations, summed over
  resumed sessions) are kept in the checkpoints' metadata and logged with
  each validation, so accuracy can be read against time.
  """
  start = int(state.step)
  seconds0, t_session = float(meta.get("train_seconds", 0.0)), time.time()
  if start >= total:
    return state, seconds0

  def seconds() -> float:
    return round(seconds0 + time.time() - t_session, 1)
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
                            "num_classes": arch.num_classes, "best_validation_error": best,
                            "train_seconds": seconds()})

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
        log.write(step, "validation", {**{k: r[k] for k in ("loss", "top1_error", "top5_error")},
                                       "train_seconds": seconds()})
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
  return state, seconds()
