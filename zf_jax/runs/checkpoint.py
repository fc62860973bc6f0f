"""Checkpoints of the train state plus a JSON metadata dict, on orbax.

One `Checkpointer` per run directory. Each step directory holds two orbax
items: ``state`` (any pytree of arrays: dicts, NamedTuples such as optax
states, flax.struct dataclasses, typed PRNG keys) written with
``ocp.args.StandardSave``, and ``meta`` (a JSON dict: epoch, input position,
...) written with ``ocp.args.JsonSave``. Retention is ``keep_latest`` newest
steps plus every step in ``keep_steps`` forever (the epoch ends that Fig. 4
visualises). Saves are asynchronous and atomic: orbax writes to
``<step>.orbax-checkpoint-tmp`` and renames when complete, so a run killed
mid-save resumes from the previous finalized step.

Usage::

  abstract = jax.eval_shape(jax.jit(init, out_shardings=shardings), rng)
  with Checkpointer(workdir / "ckpt", keep_steps=epoch_end_steps) as ckpt:
    if ckpt.latest_step() is not None:
      state, meta = ckpt.restore(abstract)
    ...
    ckpt.save(step, state, {"epoch": epoch, "batches_seen": n})
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

PyTree = Any

_STATE = "state"
_META = "meta"


def _as_abstract(leaf: Any) -> Any:
  """Returns a ShapeDtypeStruct carrying `leaf`'s shape, dtype and sharding.

  Args:
    leaf: a jax.Array (possibly already donated, i.e. deleted) or anything else.

  Returns:
    A jax.ShapeDtypeStruct for jax.Arrays; other leaves unchanged.
  """
  # Orbax only needs shape/dtype/sharding; going through ShapeDtypeStruct
  # never reads the target's buffers, which a donating train step may have
  # already invalidated.
  if isinstance(leaf, jax.Array):
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
  return leaf


@contextlib.contextmanager
def _quiet_absl(quiet: bool):
  logger = logging.getLogger("absl")
  level = logger.level
  if quiet:
    logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


class Checkpointer:
  """Saves and restores (train state, metadata) pairs in one run directory."""

  def __init__(
      self,
      directory: str | os.PathLike,
      *,
      keep_latest: int = 3,
      keep_steps: Iterable[int] = (),
      async_save: bool = True,
      read_only: bool = False,
  ):
    """Opens (creating if needed) the checkpoint directory.

    Args:
      directory: run checkpoint directory; relative paths are made absolute
        (orbax requires it). Unrelated files in it are left alone.
      keep_latest: number of newest checkpoints kept.
      keep_steps: steps kept forever in addition (e.g. the epoch ends of Fig. 4).
      async_save: if True, `save` returns once arrays are copied to host and
        the write continues in a background thread.
      read_only: only restore (e.g. to evaluate a run that is still
        training): nothing is created or deleted, so a save in progress in
        another process is left alone.
    """
    if keep_latest < 1:
      raise ValueError(f"keep_latest must be >= 1, got {keep_latest}")
    self.directory = os.path.abspath(os.fspath(directory))
    self.keep_steps = frozenset(int(s) for s in keep_steps)
    preservation = ocm.AnyPreservationPolicy([
        ocm.LatestN(n=keep_latest),
        ocm.CustomSteps(sorted(self.keep_steps)),
    ])
    # orbax warns on every read-only open that it will not save; that is the point.
    with _quiet_absl(read_only):
      options = ocp.CheckpointManagerOptions(
          preservation_policy=preservation,
          enable_async_checkpointing=async_save,
          # Temp dirs left by a killed save are never restorable; drop them.
          cleanup_tmp_directories=not read_only,
          create=not read_only,
          read_only=read_only,
      )
      self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    """Returns the newest saved step, or None if there is none.

    A step counts as soon as its `save` returns; after a restart only
    finalized (fully written) steps are seen.
    """
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Returns every retained step in increasing order."""
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: PyTree, meta: dict) -> bool:
    """Starts writing `state` and `meta` as checkpoint `step`.

    Blocks only for the device-to-host copy and for the previous save to
    finish; the caller may then donate or overwrite `state`.

    Args:
      step: training step; the directory name of the checkpoint.
      state: pytree of arrays (typed PRNG keys allowed).
      meta: JSON-serialisable dict (python scalars, str, lists, dicts).

    Returns:
      True if a save was started; False if `step` already exists (e.g.
      resuming exactly at a saved step).
    """
    step = int(step)
    if step in self._manager.all_steps():
      return False
    args = ocp.args.Composite(**{
        _STATE: ocp.args.StandardSave(state),
        _META: ocp.args.JsonSave(dict(meta)),
    })
    return bool(self._manager.save(step, args=args, force=True))

  def restore(self, abstract_state: PyTree, step: int | None = None) -> tuple[PyTree, dict]:
    """Reads checkpoint `step` (default: latest) into the structure of `abstract_state`.

    Args:
      abstract_state: pytree of jax.ShapeDtypeStruct with `.sharding` set, or
        of concrete arrays; restored arrays get those shardings (resharding
        from how they were saved if needed) and that tree structure.
      step: the step to read; None means `latest_step()`.

    Returns:
      (state, meta) as saved.

    Raises:
      FileNotFoundError: if there is no checkpoint (for `step`).
    """
    # No explicit wait: orbax's restore first waits for an in-flight save.
    steps = self.all_steps()
    if step is None:
      if not steps:
        raise FileNotFoundError(f"No checkpoint in {self.directory}")
      step = steps[-1]
    elif int(step) not in steps:
      raise FileNotFoundError(f"No checkpoint for step {step} in {self.directory} (have {steps})")
    target = jax.tree.map(_as_abstract, abstract_state)
    restored = self._manager.restore(
        int(step),
        args=ocp.args.Composite(**{
            _STATE: ocp.args.StandardRestore(target),
            _META: ocp.args.JsonRestore(),
        }),
    )
    return restored[_STATE], dict(restored[_META])

  def reload(self) -> None:
    """Re-reads the steps on disk (after checkpoints were moved by another hand)."""
    self._manager.reload()

  def wait_until_finished(self) -> None:
    """Blocks until every started save is finalized and old steps deleted."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves, then releases orbax's threads and files."""
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
