"""Specification of zf_jax.runs.checkpoint: what the trainer relies on to resume."""

from __future__ import annotations

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import struct

from conftest import run_python
from zf_jax.runs.checkpoint import Checkpointer

_TMP_SUFFIX = ".orbax-checkpoint-tmp"


@struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState
  rng: jax.Array


def _state(seed: int = 0) -> TrainState:
  """A small train state with every leaf kind the trainer uses."""
  k = jax.random.key(seed)
  params = {"conv1": {"w": jax.random.normal(k, (3, 3, 3, 4)), "b": jnp.zeros(4)},
            "fc": {"w": jax.random.normal(k, (8, 2), jnp.bfloat16)}}
  tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.01, momentum=0.9))
  opt_state = tx.init(params)  # NamedTuples, including an EmptyState
  opt_state = jax.tree.map(lambda x: x + 0.5, opt_state)  # non-trivial momentum
  return TrainState(step=jnp.int32(7 + seed), params=params, opt_state=opt_state,
                    rng=jax.random.fold_in(k, 123))


def _leaf_bytes(x):
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return str(x.dtype), np.asarray(jax.random.key_data(x)).tobytes()
  return str(x.dtype), x.shape, np.asarray(x).tobytes()


def _assert_bitwise_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert _leaf_bytes(x) == _leaf_bytes(y)


def _save(ckpt: Checkpointer, step: int, seed: int = 0) -> None:
  assert ckpt.save(step, _state(seed), {"step": step, "seed": seed})


def test_save_then_restore_is_bitwise_identical_with_identical_meta(tmp_path):
  state = _state()
  meta = {"step": 7, "epoch": 2, "input_position": {"shard": 3, "offset": 12345},
          "lr": 0.01, "tags": ["a", "b"], "finished": False}
  with Checkpointer(tmp_path) as ckpt:
    assert ckpt.save(7, state, meta)
    for target in (jax.eval_shape(_state), _state(seed=1)):  # abstract and concrete
      restored, restored_meta = ckpt.restore(target)
      _assert_bitwise_equal(restored, state)
      assert isinstance(restored, TrainState)
      assert isinstance(restored.opt_state[1][0], optax.TraceState)
      assert restored_meta == meta


def test_typed_prng_key_round_trips_as_a_typed_key(tmp_path):
  state = {"rng": jax.random.key(42), "keys": jax.random.split(jax.random.key(1), 3)}
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state, {})
    restored, _ = ckpt.restore(jax.eval_shape(lambda: state))
  assert restored["rng"].dtype == state["rng"].dtype
  np.testing.assert_array_equal(jax.random.uniform(restored["rng"], (4,)),
                                jax.random.uniform(state["rng"], (4,)))
  _assert_bitwise_equal(restored, state)


def test_restore_defaults_to_latest_and_reads_a_given_step(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    _save(ckpt, 1, seed=1)
    _save(ckpt, 2, seed=2)
    latest, meta = ckpt.restore(jax.eval_shape(_state))
    assert meta["step"] == 2
    _assert_bitwise_equal(latest, _state(2))
    first, meta = ckpt.restore(jax.eval_shape(_state), step=1)
    assert meta["step"] == 1
    _assert_bitwise_equal(first, _state(1))


def test_restore_without_checkpoint_raises_file_not_found(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    assert ckpt.latest_step() is None and ckpt.all_steps() == []
    with pytest.raises(FileNotFoundError):
      ckpt.restore(jax.eval_shape(_state))
    _save(ckpt, 1)
    with pytest.raises(FileNotFoundError):
      ckpt.restore(jax.eval_shape(_state), step=5)


def test_retention_keeps_latest_n_plus_keep_steps(tmp_path):
  with Checkpointer(tmp_path, keep_latest=2, keep_steps={3}) as ckpt:
    for step in range(1, 9):
      _save(ckpt, step)
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [3, 7, 8]
  on_disk = {p.name for p in tmp_path.iterdir() if p.name.isdigit()}
  assert on_disk == {"3", "7", "8"}


def test_latest_step_survives_restart(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    _save(ckpt, 10, seed=1)
    _save(ckpt, 20, seed=2)
  with Checkpointer(tmp_path) as reopened:  # a new process would do the same
    assert reopened.latest_step() == 20
    assert reopened.all_steps() == [10, 20]
    state, meta = reopened.restore(jax.eval_shape(_state))
    _assert_bitwise_equal(state, _state(2))
    assert meta == {"step": 20, "seed": 2}
    assert not reopened.save(20, _state(2), meta)  # resaving a step is a no-op
    _save(reopened, 30)
    assert reopened.latest_step() == 30


_KILLED_SAVE = """
import os, sys, jax, jax.numpy as jnp
from zf_jax.runs.checkpoint import Checkpointer
ckpt = Checkpointer(sys.argv[1])
ckpt.save(1, {"w": jnp.ones((4,))}, {"step": 1})
ckpt.wait_until_finished()
ckpt.save(2, {"w": jnp.zeros((16_000_000,))}, {"step": 2})  # 64 MB: still writing
os._exit(0)  # like SIGKILL: no finalize, no atexit
"""


def test_interrupted_save_leaves_previous_step_latest_and_restorable(tmp_path):
  proc = run_python("-c", _KILLED_SAVE, str(tmp_path), timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  names = {p.name for p in tmp_path.iterdir()}
  assert "2" not in names and any(n.startswith("2" + _TMP_SUFFIX) for n in names), names
  # A hand-made leftover as well, so the property does not hinge on timing.
  (tmp_path / f"9{_TMP_SUFFIX}-1700000000").mkdir()
  (tmp_path / f"9{_TMP_SUFFIX}-1700000000" / "junk").write_text("partial")
  with Checkpointer(tmp_path) as ckpt:
    assert ckpt.latest_step() == 1 and ckpt.all_steps() == [1]
    state, meta = ckpt.restore({"w": jax.ShapeDtypeStruct((4,), jnp.float32)})
    np.testing.assert_array_equal(state["w"], np.ones(4))
    assert meta == {"step": 1}
    _save(ckpt, 2)  # the step of the broken save can be written again
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [1, 2]
  assert not [p for p in tmp_path.iterdir() if _TMP_SUFFIX in p.name]  # cleaned on open


def test_relative_directory_with_unrelated_files(tmp_path, monkeypatch):
  run = tmp_path / "run"
  (run / "tensorboard").mkdir(parents=True)
  (run / "notes.txt").write_text("keep me")
  monkeypatch.chdir(tmp_path)
  with Checkpointer("run", keep_latest=1) as ckpt:
    assert ckpt.directory == str(run)
    assert ckpt.latest_step() is None
    _save(ckpt, 1)
    _save(ckpt, 2)
  assert (run / "notes.txt").read_text() == "keep me" and (run / "tensorboard").is_dir()
  assert sorted(p.name for p in run.iterdir() if p.name.isdigit()) == ["2"]


_SHARDED_RESTORE = """
import sys
import jax
jax.config.update("jax_num_cpu_devices", 4)
import jax.numpy as jnp, numpy as np
from zf_jax.runs.checkpoint import Checkpointer

mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
rep = jax.NamedSharding(mesh, jax.P())
dat = jax.NamedSharding(mesh, jax.P("data"))
shardings = {"replicated": {"w": rep, "step": rep, "rng": rep}, "sharded": {"x": dat}}

def init():
  return {"replicated": {"w": jnp.arange(12.0).reshape(3, 4), "step": jnp.int32(3),
                         "rng": jax.random.key(5)},
          "sharded": {"x": jnp.arange(32.0).reshape(8, 4)}}

state = jax.jit(init, out_shardings=shardings)()
assert state["sharded"]["x"].sharding == dat
abstract = jax.eval_shape(jax.jit(init, out_shardings=shardings))
with Checkpointer(sys.argv[1]) as ckpt:
  ckpt.save(1, state, {"epoch": 1})
  restored, meta = ckpt.restore(abstract)
  assert meta == {"epoch": 1}
  for a, b, s in zip(jax.tree.leaves(restored), jax.tree.leaves(state), jax.tree.leaves(shardings)):
    assert a.sharding == s, (a.sharding, s)
    assert len(a.addressable_shards) == 4
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
      a, b = jax.random.key_data(a), jax.random.key_data(b)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert restored["sharded"]["x"].addressable_shards[1].data.shape == (2, 4)
  # Resharding on restore: the sharded leaf comes back replicated if asked.
  target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), abstract)
  again, _ = ckpt.restore(target)
  assert again["sharded"]["x"].sharding == rep
  np.testing.assert_array_equal(np.asarray(again["sharded"]["x"]), np.arange(32.0).reshape(8, 4))
print("OK")
"""


def test_restore_places_arrays_with_the_targets_mesh_sharding(tmp_path):
  proc = run_python("-c", textwrap.dedent(_SHARDED_RESTORE), str(tmp_path), timeout=120)
  assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-3000:]


def test_read_only_leaves_a_save_in_progress_alone(tmp_path):
  with Checkpointer(tmp_path / "ckpt", async_save=False) as ckpt:
    _save(ckpt, 1)
  in_progress = tmp_path / "ckpt" / f"2{_TMP_SUFFIX}-1700000000"  # Unfinished save.
  in_progress.mkdir()
  with Checkpointer(tmp_path / "ckpt", read_only=True) as reader:
    assert reader.latest_step() == 1
    state, _ = reader.restore(_state())
    _assert_bitwise_equal(state, _state())
  assert in_progress.exists()  # (A writer would delete it on opening.)
