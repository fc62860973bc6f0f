"""A run's workdir: the one owner of its layout, configuration, checkpoints and metrics.

  <workdir>/config.json           the RunConfig (zf_jax.runs.config) and facts of the run
                                  (num_classes, steps_per_epoch, total_steps)
  <workdir>/checkpoints/<step>/   orbax checkpoints of the train state (zf_jax.runs.checkpoint)
  <workdir>/damaged_checkpoints/  checkpoints found damaged, moved aside, never deleted
  <workdir>/metrics.jsonl         one JSON row per logged step and evaluation
  <workdir>/tensorboard/          the same as TensorBoard events
  <workdir>/summary.json          the final evaluation (Table 2's numbers)
  <workdir>/figures, tables, report.html   what zf_jax.report writes

The trainer writes a workdir through `Workdir`; evaluation, the analyses and
the figures read it through `Workdir.open` (a restored `Run`) and the
readers below. A damaged checkpoint is never a crash: resuming takes the
newest intact one and says so; reading names the damaged step in one line.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from zf_jax import arch as arch_lib
from zf_jax import train
from zf_jax.data import input_pipeline
from zf_jax.files import atomic_write
from zf_jax.report import page
from zf_jax.runs import checkpoint
from zf_jax.runs import config as config_lib
from zf_jax.runs.config import RunConfig, input_config  # noqa: F401  (also this module's)

CONFIG_FILE = "config.json"
CHECKPOINTS_DIR = "checkpoints"
DAMAGED_DIR = "damaged_checkpoints"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
TENSORBOARD_DIR = "tensorboard"
FACTS = ("num_classes", "steps_per_epoch", "total_steps", "ids_digests")
# What a run and the report write here, removed by `Workdir.clear` (damaged_checkpoints/
# stays: never deleted).
RUN_FILES = (CONFIG_FILE, CHECKPOINTS_DIR, METRICS_FILE, SUMMARY_FILE, TENSORBOARD_DIR,
             page.FIGURES_DIR, page.TABLES_DIR, page.SECTIONS_DIR.split(os.sep)[0],
             page.REPORT_FILE)


class NoRunError(FileNotFoundError):
  """The folder holds no training run (or not the checkpoint asked for)."""


class DamagedCheckpointError(ValueError):
  """A checkpoint's files cannot be read back."""


class OtherRunError(ValueError):
  """The workdir holds a run trained with another configuration than the one asked for."""


def _first_line(e: BaseException, limit: int = 160) -> str:
  text = (str(e).splitlines() or [type(e).__name__])[0]
  return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclasses.dataclass(frozen=True)
class Run:
  """A trained run restored from its workdir: config, arch, parameters, step."""
  workdir: str
  config: RunConfig
  arch: arch_lib.Arch
  params: Any
  step: int

  @functools.cached_property
  def digest(self) -> str:
    """sha1 (hex) of the run's recipe (its preprocessing among it) and parameters: what
    anything computed from the run depends on (a cache keyed by it is never stale, even
    for a run trained again in the same workdir to the same step)."""
    h = hashlib.sha1(repr(sorted(config_lib.recipe(self.config).items())).encode())
    for path, leaf in jax.tree_util.tree_leaves_with_path(self.params):
      h.update(jax.tree_util.keystr(path).encode())
      h.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
    return h.hexdigest()

  def input_config(self, *, batch_size: int | None = None,
                   split: str | None = None) -> input_pipeline.InputConfig:
    """The run's own preprocessing (image size, resize, mean image), for evaluation.

    Args:
      batch_size: global batch; None: the run's evaluation batch size.
      split: the split to read; None: the dataset's validation split (or test).
    """
    cfg = self.config
    batch = batch_size or cfg.eval_batch_size or cfg.train.batch_size
    icfg = input_config(cfg, self.arch.image_size, batch)
    return dataclasses.replace(icfg, eval_split=split) if split else icfg


def make_mesh() -> jax.sharding.Mesh:
  """All devices of all hosts on one "data" axis: data parallel, parameters replicated."""
  return jax.make_mesh((jax.device_count(),), (train.DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Explicit,))


def one_device_mesh() -> jax.sharding.Mesh:
  """`make_mesh`'s axis on this process's first device only."""
  return jax.make_mesh((1,), (train.DATA_AXIS,), axis_types=(jax.sharding.AxisType.Explicit,),
                       devices=jax.local_devices()[:1])


def abstract_state(cfg: RunConfig, arch: arch_lib.Arch, mesh) -> train.TrainState:
  """Shapes, dtypes and shardings of the run's train state, computing nothing."""
  rng = jax.random.key(cfg.seed)
  shapes = jax.eval_shape(lambda: train.create_train_state(rng, arch, cfg.train, mesh))
  # Every leaf replicated on `mesh`, as create_train_state places it (eval_shape leaves
  # constant scalars without a sharding, and orbax would then try the sharding they
  # were saved with: another device count would fail to restore).
  replicated = jax.NamedSharding(mesh, jax.P())
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
                      shapes)


class Workdir:
  """One run's folder. Cheap to create; nothing is read or written until asked."""

  def __init__(self, path: str | os.PathLike):
    self.path = os.path.abspath(os.path.expanduser(os.fspath(path)))

  def __repr__(self) -> str:
    return f"Workdir({self.path!r})"

  def file(self, name: str) -> str:
    """`<workdir>/<name>`."""
    return os.path.join(self.path, name)

  @property
  def checkpoint_dir(self) -> str:
    return self.file(CHECKPOINTS_DIR)

  # --- configuration ---------------------------------------------------------------------

  def no_run(self) -> NoRunError:
    """The one error for "there is no training run here"."""
    what = ("is a file, not a folder" if os.path.isfile(self.path) else "does not exist"
            if not os.path.isdir(self.path) else f"has no {CONFIG_FILE}")
    return NoRunError(f"run workdir {self.path} {what}: not a training workdir (train into it with "
                      f"python -m experiments.train_imagenet --workdir={self.path})")

  def write_config(self, cfg: RunConfig, **facts: Any) -> None:
    """Writes config.json: the config's fields and `facts` (num_classes, ...) beside them."""
    os.makedirs(self.path, exist_ok=True)
    atomic_write(self.file(CONFIG_FILE),
                 json.dumps({**config_lib.to_json(cfg), **facts}, indent=2) + "\n")

  def read_config(self) -> tuple[RunConfig, dict[str, Any]]:
    """(the RunConfig, {fact: value}) of config.json.

    Raises:
      NoRunError: no config.json.
      ValueError: config.json is not a zf_jax run configuration.
    """
    path = self.file(CONFIG_FILE)
    if not os.path.exists(path):
      raise self.no_run()
    try:
      with open(path, encoding="utf-8") as f:
        raw = json.load(f)
      cfg = config_lib.from_json(RunConfig, raw)
      facts = {k: raw[k] for k in FACTS if k in raw}
      int(facts["num_classes"])
    except (json.JSONDecodeError, TypeError, KeyError, AttributeError, ValueError) as e:
      raise ValueError(f"{path} is not a zf_jax run config ({type(e).__name__}: "
                       f"{_first_line(e)})") from None
    return cfg, facts

  def arch(self) -> arch_lib.Arch:
    """The run's architecture, with the number of classes it was trained on."""
    return _arch(*self.read_config())

  def differences(self, cfg: RunConfig, facts: dict[str, Any]) -> list[str]:
    """How the run stored here differs from `cfg` and its `facts` (num_classes, the id
    files' digests, ...): "field stored -> asked" for each recipe field and fact that
    differs; [] for the same run (or a longer one: `config.differences`) or no run."""
    if not os.path.exists(self.file(CONFIG_FILE)):
      return []
    stored, stored_facts = self.read_config()
    out = config_lib.differences(stored, cfg, longer=True)
    for key in ("num_classes", "steps_per_epoch", "ids_digests"):
      if key in facts and stored_facts.get(key, facts[key]) != facts[key]:
        what = ("the images listed by include_ids / exclude_ids" if key == "ids_digests"
                else f"{key} {stored_facts[key]} -> {facts[key]}")
        out.append(what)
    return out

  def has_results(self) -> bool:
    """Whether a run here saved anything worth keeping: a checkpoint or a summary."""
    ckpts = self.checkpoint_dir
    return os.path.exists(self.file(SUMMARY_FILE)) or (
        os.path.isdir(ckpts) and any(n.isdigit() for n in os.listdir(ckpts)))

  def check_same_run(self, cfg: RunConfig, facts: dict[str, Any], *, overwrite: bool = False,
                     say: Callable[[str], None] = print) -> None:
    """Refuses to resume, or to reuse the results of, a run trained with another recipe.

    Nothing happens when the workdir holds no run or the same run. Otherwise,
    with `overwrite` (or when the other run saved no checkpoint yet) its files
    are removed (`clear`) so that `cfg` trains from scratch, and `say` tells
    which fields differed.

    Raises:
      OtherRunError: the workdir holds results of another recipe and not
        `overwrite`; one line naming the differing fields and the way out.
    """
    diff = self.differences(cfg, facts)
    if not diff:
      return
    shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")
    if not overwrite and self.has_results():
      raise OtherRunError(f"{self.path} holds a run trained with another configuration "
                          f"({shown}): pass --overwrite to train it again from scratch there, "
                          "or choose another --workdir")
    if jax.process_index() == 0:
      self.clear()
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("other run cleared")
    say(f"replaced the run in {self.path}, which had another configuration ({shown})")

  def clear(self) -> None:
    """Removes the run's files (`RUN_FILES`): what it trained, logged and reported."""
    for name in RUN_FILES:
      path = self.file(name)
      if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
      elif os.path.lexists(path):
        os.remove(path)

  # --- checkpoints -----------------------------------------------------------------------

  def checkpointer(self, *, keep_latest: int = 3, keep_steps=()) -> checkpoint.Checkpointer:
    """The writing Checkpointer of checkpoints/ (created if needed)."""
    return checkpoint.Checkpointer(self.checkpoint_dir, keep_latest=keep_latest,
                                   keep_steps=keep_steps)

  def _reader(self) -> checkpoint.Checkpointer:
    # Checked first: a Checkpointer would create the folder.
    if not os.path.isdir(self.checkpoint_dir):
      raise NoRunError(f"{self.path} has no {CHECKPOINTS_DIR}/ folder: the run saved no "
                       "checkpoint")
    return checkpoint.Checkpointer(self.checkpoint_dir, read_only=True)

  def steps(self) -> list[int]:
    """The saved checkpoint steps, increasing (damaged ones included until found)."""
    with self._reader() as ckpt:
      return ckpt.all_steps()

  def restore(self, abstract, step: int | None = None) -> tuple[Any, dict, int]:
    """(state, meta, step) of checkpoint `step` (default: the latest), read only.

    Raises:
      NoRunError: no checkpoint, or none for `step` (the message lists the steps).
      DamagedCheckpointError: that checkpoint's files cannot be read; the message
        names the step and the newest intact one.
    """
    with self._reader() as ckpt:
      steps = ckpt.all_steps()
      if not steps:
        raise NoRunError(f"no checkpoint in {self.checkpoint_dir}: the run saved none yet")
      if step is not None and int(step) not in steps:
        raise NoRunError(f"{self.path} has no checkpoint for step {step}; available steps: "
                         f"{', '.join(map(str, steps))}")
      step = steps[-1] if step is None else int(step)
      _quiet_abandoned_reads()
      try:
        state, meta = ckpt.restore(abstract, step)
      except Exception as e:  # pylint: disable=broad-except  # Any unreadable file.
        intact = _newest_intact(ckpt, abstract, [s for s in steps[::-1] if s < step])
        hint = (f"the newest intact one is step {intact[2]}: pass --step={intact[2]}, or rerun "
                "the training command, which resumes from it" if intact else
                "no earlier checkpoint is intact")
        raise DamagedCheckpointError(
            f"checkpoint step {step} in {self.checkpoint_dir} is damaged ({_first_line(e)}); "
            f"{hint}") from None
    return state, meta, step

  def resume(self, ckpt: checkpoint.Checkpointer, abstract,
             say: Callable[[str], None] = print) -> tuple[Any, dict] | None:
    """The newest intact checkpoint of the writing `ckpt`, or None when there is none yet.

    Damaged checkpoints above it are moved to damaged_checkpoints/ (never
    deleted), so that the resumed run can save those steps again; `say` tells
    the user which. Only process 0 moves files.

    Raises:
      DamagedCheckpointError: checkpoints exist but none is intact (nothing is
        moved: the run does not start from scratch over them).
    """
    steps = ckpt.all_steps()
    if not steps:
      return None
    failures: list[tuple[int, str]] = []
    found = _newest_intact(ckpt, abstract, steps[::-1], failures)
    if found is None:
      raise DamagedCheckpointError(
          f"no checkpoint in {self.checkpoint_dir} can be read (" + "; ".join(
              f"step {s}: {why}" for s, why in failures) + "); they are left as they are: "
          "train into a new --workdir, or move them away to start this one from scratch")
    state, meta, step = found
    if failures:
      moved = [self._move_aside(s) for s, _ in failures] if jax.process_index() == 0 else []
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices("damaged checkpoints moved aside")
      ckpt.reload()
      for (s, why), where in zip(failures, moved):
        say(f"checkpoint step {s} is damaged ({why}); moved it to {where}")
      say(f"resuming from step {step}, the newest intact checkpoint")
    return state, meta

  def _move_aside(self, step: int) -> str:
    folder = self.file(DAMAGED_DIR)
    os.makedirs(folder, exist_ok=True)
    target, n = os.path.join(folder, str(step)), 1
    while os.path.exists(target):
      n += 1
      target = os.path.join(folder, f"{step}.{n}")
    shutil.move(os.path.join(self.checkpoint_dir, str(step)), target)
    return target

  def open(self, step: int | None = None, *, mesh=None) -> Run:
    """The run restored from checkpoint `step` (default: the latest), for evaluation or analysis.

    Args:
      step: the checkpoint to read; None: the latest.
      mesh: where the parameters go (replicated); None: the first device, where
        the analyses compute (a run trained on several devices, e.g.
        --cpu_devices, would otherwise repeat every analysis on each of them).

    Raises:
      NoRunError: not a training workdir, no checkpoint, or none for `step`.
      DamagedCheckpointError: that checkpoint cannot be read (one line).
      ValueError: config.json is not a run configuration (e.g. unknown arch).
    """
    cfg, facts = self.read_config()
    arch = _arch(cfg, facts)
    mesh = one_device_mesh() if mesh is None else mesh
    state, _, step = self.restore(abstract_state(cfg, arch, mesh), step)
    return Run(workdir=self.path, config=cfg, arch=arch, params=state.params, step=step)

  # --- metrics and summary ---------------------------------------------------------------

  def metrics(self) -> list[dict[str, Any]]:
    """The rows of metrics.jsonl ({"step", "split", metric: value}), in order; [] if none."""
    path = self.file(METRICS_FILE)
    if not os.path.exists(path):
      return []
    with open(path, encoding="utf-8") as f:
      return [json.loads(line) for line in f if line.strip()]

  def summary(self) -> dict[str, Any] | None:
    """summary.json (status of the final evaluation), or None before the run finished."""
    path = self.file(SUMMARY_FILE)
    if not os.path.exists(path):
      return None
    with open(path, encoding="utf-8") as f:
      return json.load(f)

  def write_summary(self, summary: dict[str, Any]) -> str:
    return atomic_write(self.file(SUMMARY_FILE), json.dumps(summary, indent=2) + "\n")


def _arch(cfg: RunConfig, facts: dict[str, Any]) -> arch_lib.Arch:
  return cfg.network(int(facts["num_classes"]))


def _newest_intact(ckpt: checkpoint.Checkpointer, abstract, steps, failures=None):
  """(state, meta, step) of the first of `steps` that restores; failures collected."""
  _quiet_abandoned_reads()
  for s in steps:
    try:
      state, meta = ckpt.restore(abstract, s)
      return state, meta, s
    except Exception as e:  # pylint: disable=broad-except  # Any unreadable file.
      logging.debug("checkpoint %s unreadable: %s", s, e)
      if failures is not None:
        failures.append((s, _first_line(e)))
  return None


def _quiet_abandoned_reads() -> None:
  """Silences the echoes of a failed restore (installed before a restore is tried).

  When one array of a damaged checkpoint cannot be read, orbax gives up and
  closes its event loop while TensorStore still completes the other reads:
  their callbacks print "RuntimeError: Event loop is closed" tracebacks (as
  unraisable exceptions) and asyncio logs "Future exception was never
  retrieved" with the same error, pages of text over the one-line message.
  Only those two are dropped; every other unraisable and log record passes.
  """
  previous = sys.unraisablehook
  if getattr(previous, "zf_jax_quiet", False):
    return

  def hook(info):
    if not (isinstance(info.exc_value, RuntimeError)
            and str(info.exc_value) == "Event loop is closed"):
      previous(info)

  hook.zf_jax_quiet = True
  sys.unraisablehook = hook
  logging.getLogger("asyncio").addFilter(
      lambda record: "exception was never retrieved" not in str(record.msg))
