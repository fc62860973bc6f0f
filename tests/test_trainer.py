"""Specifications of the training run (zf_jax.runs.trainer and experiments/train_imagenet.py).

What a run promises, each checked on a real (if tiny) run:

* it trains, evaluates (centre and 10 crops) and writes its logs, checkpoints
  and summary; a finished run asked again reports instead of retraining;
* the result does not depend on how many devices or processes share the
  work (data parallel over 1 device, 4 devices, 2 processes x 2 devices),
  and the processes of a run stop together when one of them is signalled;
* killed mid-run (SIGKILL) and rerun, it ends exactly where an
  uninterrupted run ends; SIGTERM saves, exits 0, and the rerun finishes;
* a non-finite loss stops it without saving, leaving the last good checkpoint;
* bad requests end the binary with one line on stderr, no traceback;
* the learning-rate plateau rule anneals when (and only when) it should.

Data: tfds' mock ImageNet (random sizes) for the end-to-end run, and
`tiny_dataset.zf_tiny_images` (a real prepared tfds dataset, so per-process
split slicing is real) for the rest. Runs that need a fresh JAX (device
counts, processes, signals) are subprocesses with timeouts that print the
child's output on failure.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import re
import signal
import socket
import sys
import time

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
  sys.path.insert(0, TESTS_DIR)

import tiny_dataset  # noqa: E402  (registers zf_tiny_images)
from conftest import (Child, child_env, finalized_steps, run_module,  # noqa: E402
                      run_python, wait_for_checkpoint)

from zf_jax import arch as arch_lib  # noqa: E402
from zf_jax.data import input_pipeline  # noqa: E402
from zf_jax.runs import checkpoint  # noqa: E402
from zf_jax import train  # noqa: E402
from zf_jax.runs import trainer  # noqa: E402
from zf_jax.runs.config import RunConfig  # noqa: E402
from zf_jax.runs import workdir as workdir_lib  # noqa: E402
from zf_jax.runs.workdir import make_mesh  # noqa: E402
from zf_jax.train import TrainConfig  # noqa: E402

BATCH = 8
TINY_RUN = dict(arch="zfnet_tiny", dataset=tiny_dataset.NAME, resize_size=36, shuffle_buffer=16,
                mean_max_examples=16, final_eval_crops=("center",))
STEPS_PER_EPOCH = tiny_dataset.SPLITS["train"] // BATCH  # 8
NUM_VALIDATION = tiny_dataset.SPLITS["validation"]  # 24

# ---------------------------------------------------------------------------
# Subprocess helpers.


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# ---------------------------------------------------------------------------
# State helpers.


def abstract_state(run: RunConfig, num_classes: int):
  arch = arch_lib.with_classes(arch_lib.get(run.arch), num_classes)
  return workdir_lib.abstract_state(run, arch, make_mesh())


def restore(workdir, run: RunConfig, step=None, num_classes=tiny_dataset.NUM_CLASSES):
  with checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
    return ckpt.restore(abstract_state(run, num_classes), step)


def flat(state) -> dict[str, np.ndarray]:
  """Every array of a TrainState by path (typed PRNG keys as their key data)."""
  def value(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    return np.asarray(x)

  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  return {jax.tree_util.keystr(path): value(x) for path, x in leaves}


def assert_same_arrays(a: dict, b: dict, rtol=0.0, atol=0.0, what=""):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol, err_msg=f"{what}{k}")


@pytest.fixture(scope="module", name="data_dir")
def _data_dir(tmp_path_factory):
  """A tfds data_dir with zf_tiny_images prepared (shared by the in- and out-of-process runs)."""
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  tiny_dataset.prepare(data_dir)
  return data_dir


def tiny_config(data_dir, **overrides) -> RunConfig:
  tcfg = overrides.pop("train", {})
  return RunConfig(**{**TINY_RUN, "data_dir": data_dir, **overrides},
                           train=TrainConfig(**{"batch_size": BATCH, "init_scheme": "he",
                                                **tcfg}))


# ---------------------------------------------------------------------------
# 1. End to end on mock ImageNet.


def read_jsonl(path) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_train_and_evaluate_end_to_end_on_mock_imagenet_then_reports_already_complete(
    tmp_path, capsys, monkeypatch):
  # tfds' mock_data swaps tf.io.gfile / epath for a fake file system while
  # `as_dataset` runs, process-wide: an orbax save finishing in its background
  # thread at that moment would write into the fake one. Saves are synchronous
  # here; the real-dataset runs below keep them asynchronous.
  monkeypatch.setattr(checkpoint, "Checkpointer",
                      functools.partial(checkpoint.Checkpointer, async_save=False))
  workdir = str(tmp_path / "run")
  cfg = RunConfig(
      arch="zfnet_tiny", dataset="imagenet2012", data_dir=str(tmp_path / "tfds"),
      resize_size=36, num_steps=5, train=TrainConfig(batch_size=BATCH, init_scheme="he"),
      final_eval_crops=("center", "ten"), log_every=1, checkpoint_every=3, shuffle_buffer=16,
      mean_max_examples=8)
  num_examples = 16  # Per split: 2 steps per epoch; images of random small sizes.
  with tfds.testing.mock_data(num_examples=num_examples):
    summary = trainer.train_and_evaluate(cfg, workdir)
  first_output = capsys.readouterr().out

  assert summary["status"] == "complete", summary
  assert summary["step"] == summary["total_steps"] == 5
  assert "already_complete" not in summary
  assert set(summary["eval"]) == {"center", "ten"}
  for crops, r in summary["eval"].items():
    assert r["count"] == num_examples, (crops, r)
    assert 0.0 <= r["top1_error"] <= 1.0 and 0.0 <= r["top5_error"] <= r["top1_error"]
    assert np.isfinite(r["loss"]) and r["loss"] > 0
  assert "trained 5 steps" in first_output

  lines = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  train_steps = [m["step"] for m in lines if m["split"] == "train"]
  validation_steps = [m["step"] for m in lines if m["split"] == "validation"]
  assert train_steps == [1, 2, 3, 4, 5]  # log_every=1
  assert validation_steps == [2, 4]  # Every epoch end before the last step.
  for m in lines:
    assert {"loss", "top1_error", "top5_error"} <= m.keys() and np.isfinite(m["loss"])
  assert all("learning_rate" in m for m in lines if m["split"] == "train")

  # Steps 3 and 5 (checkpoint_every, the end) and the epoch ends 2 and 4 (kept for Fig. 4).
  assert finalized_steps(os.path.join(workdir, "checkpoints")) == [2, 3, 4, 5]
  state, meta = restore(workdir, cfg, num_classes=1000)
  assert int(state.step) == 5 and meta["step"] == 5

  # The final evaluation's shared pass (centre crop = crop 4 of the 10) gives what
  # a separate pass per crop mode gives.
  arch = arch_lib.with_classes(arch_lib.get("zfnet_tiny"), 1000)
  icfg = workdir_lib.input_config(cfg, arch.image_size, BATCH)
  with tfds.testing.mock_data(num_examples=num_examples):
    mean = input_pipeline.load_or_compute_mean_image(icfg)
    for crops in ("center", "ten"):
      alone = trainer.evaluate(state.params, arch, icfg, make_mesh(), crops=crops, mean=mean)
      shared = summary["eval"][crops]
      assert (alone["count"], alone["top1_error"], alone["top5_error"]) == \
          (shared["count"], shared["top1_error"], shared["top5_error"]), crops
      assert alone["loss"] == pytest.approx(shared["loss"], rel=1e-5), crops

  # Training time: growing with each validation, saved with the checkpoints, summarised.
  seconds = [m["train_seconds"] for m in lines if m["split"] == "validation"]
  assert 0 < seconds[0] < seconds[1] <= meta["train_seconds"] <= summary["train_seconds"]

  events = glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
  assert events
  tags = {v.tag for e in events for ev in tf.compat.v1.train.summary_iterator(e)
          for v in ev.summary.value}
  assert {"train/loss", "train/learning_rate", "validation/top1_error"} <= tags

  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    config = json.load(f)
  assert (config["arch"], config["num_classes"], config["total_steps"]) == ("zfnet_tiny", 1000, 5)
  with open(os.path.join(workdir, "summary.json"), encoding="utf-8") as f:
    assert json.load(f)["eval"] == summary["eval"]

  # Asked again: nothing is trained or evaluated, the recorded results come back.
  with tfds.testing.mock_data(num_examples=num_examples):
    again = trainer.train_and_evaluate(cfg, workdir)
  second_output = capsys.readouterr().out
  assert again["status"] == "complete" and again["already_complete"] is True, again
  assert again["eval"] == summary["eval"]
  assert again["train_seconds"] == summary["train_seconds"]
  assert "resumed from" in second_output and "already complete" in second_output
  assert "trained" not in second_output and "evaluation on" not in second_output
  assert read_jsonl(os.path.join(workdir, "metrics.jsonl")) == lines
  assert finalized_steps(os.path.join(workdir, "checkpoints")) == [2, 3, 4, 5]


# ---------------------------------------------------------------------------
# 2, 3. Devices and processes do not change the result.

# Trains in a fresh process (device count fixed before JAX starts), then saves
# the initial and the final train state of this process to <out>.npz and the
# summary to <out>.json.
RUN_SCRIPT = r'''
import json, os, signal, sys
args = json.loads(sys.argv[1])
import jax
jax.config.update("jax_num_cpu_devices", args["devices"])
if args["distributed"]:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")

import numpy as np
import tiny_dataset  # noqa: F401  (registers zf_tiny_images)
from zf_jax import arch as arch_lib, train
from zf_jax.data import input_pipeline
from zf_jax.runs import checkpoint, trainer
from zf_jax.runs.config import RunConfig
from zf_jax.runs.workdir import abstract_state, input_config, make_mesh
from zf_jax.train import TrainConfig

run = dict(args["run"])
tcfg = TrainConfig(**run.pop("train"))
run["final_eval_crops"] = tuple(run["final_eval_crops"])
cfg = RunConfig(train=tcfg, **run, **(args["distributed"] or {}))
workdir = args["workdir"]


def as_processes(n):
  """Feeds the global batches that n processes would read (process 0's rows first)."""
  iterators = []

  def transform(step, host):
    if not iterators:
      icfg = input_config(cfg, arch_lib.get(cfg.arch).image_size, cfg.train.batch_size)
      mean = input_pipeline.load_or_compute_mean_image(icfg)
      iterators.extend(input_pipeline.make_train_iterator(
          icfg, start_step=step, process_index=p, process_count=n, mean=mean) for p in range(n))
    parts = [next(it) for it in iterators]
    return {k: np.concatenate([part[k] for part in parts]) for k in host}

  return transform


def sigterm_self_at(step_to_stop):
  """SIGTERMs this process when it reaches `step_to_stop` (as a preemption would)."""
  def transform(step, host):
    if step == step_to_stop:
      os.kill(os.getpid(), signal.SIGTERM)
    return host
  return transform


transform = as_processes(args["as_processes"]) if args["as_processes"] else None
if args.get("sigterm_at") is not None:
  transform = sigterm_self_at(args["sigterm_at"])
summary = trainer.train_and_evaluate(cfg, workdir, batch_transform=transform)
out = args["out"] + f".p{jax.process_index()}"
with open(out + ".json", "w") as f:
  json.dump({**summary, "device_count": jax.device_count(),
             "process_count": jax.process_count()}, f)
if summary["status"] != "complete":
  sys.exit(0)

arch = arch_lib.with_classes(arch_lib.get(cfg.arch), args["num_classes"])
mesh = make_mesh()
init = train.create_train_state(jax.random.key(cfg.seed), arch, cfg.train, mesh)
abstract = abstract_state(cfg, arch, mesh)
with checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
  final, _ = ckpt.restore(abstract, summary["total_steps"])


def local(tree):  # Replicated arrays: this process's copy is the whole value.
  leaves = jax.tree_util.tree_flatten_with_path({"params": tree.params,
                                                 "opt_state": tree.opt_state})[0]
  return {jax.tree_util.keystr(p): np.asarray(x.addressable_data(0)) for p, x in leaves}


np.savez(out + ".npz", **{"init" + k: v for k, v in local(init).items()},
         **{"final" + k: v for k, v in local(final).items()})
print("saved", out, flush=True)
'''

# 10 steps of batch 8 with dropout: an epoch end (step 8: validation, plateau
# rule, checkpoint) and the last step's checkpoint.
PARITY_RUN = dict(TINY_RUN, num_steps=10, log_every=5, checkpoint_every=1000,
                  train=dict(batch_size=BATCH, init_scheme="he", dropout=0.5))
# Sums over the batch run in another order on another number of devices.
# Parameters (|w| < 1, moved by up to ~0.5 in these 10 steps) agree within
# ~2e-6; the momentum traces (sums of gradients, up to ~7) within ~5e-5.
PARITY_RTOL, PARITY_ATOL, PARITY_MOMENTUM_ATOL = 1e-4, 1e-5, 2e-4


def start_parity_run(spawn, tmp_dir, data_dir, name, *, devices, as_processes=0,
                     distributed=None, sigterm_at=None, log_name=None):
  script = os.path.join(tmp_dir, "run_and_save.py")
  if not os.path.exists(script):
    with open(script, "w", encoding="utf-8") as f:
      f.write(RUN_SCRIPT)
  args = {"devices": devices, "as_processes": as_processes, "distributed": distributed,
          "sigterm_at": sigterm_at, "num_classes": tiny_dataset.NUM_CLASSES,
          "workdir": os.path.join(tmp_dir, name), "out": os.path.join(tmp_dir, name),
          "run": {**PARITY_RUN, "data_dir": data_dir}}
  log_name = log_name or name
  return spawn(log_name + (f"-p{distributed['process_id']}" if distributed else ""),
               [sys.executable, script, json.dumps(args)], logdir=tmp_dir)


def load_summary(tmp_dir, name, process=0):
  with open(os.path.join(tmp_dir, f"{name}.p{process}.json"), encoding="utf-8") as f:
    return json.load(f)


def load_parity_result(tmp_dir, name, process=0):
  out = os.path.join(tmp_dir, f"{name}.p{process}")
  with np.load(out + ".npz") as z:
    arrays = dict(z)
  summary = load_summary(tmp_dir, name, process)
  split = lambda prefix: {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
  return {"init": split("init"), "final": split("final"), "summary": summary}


@pytest.fixture(scope="module", name="single_process_runs")
def _single_process_runs(tmp_path_factory, data_dir):
  """The parity run on 1 and on 4 devices of one process, concurrently.

  Both are fed the global batches that 2 processes read (each its half of
  the split, with its own shuffle and crops), so that the 2-process run of
  test 3 can be compared with them.
  """
  tmp_dir = str(tmp_path_factory.mktemp("parity"))
  children = []
  try:
    for devices in (1, 4):
      children.append(start_parity_run(Child, tmp_dir, data_dir, f"devices{devices}",
                                       devices=devices, as_processes=2))
    for child in children:
      child.check(timeout=240)
  finally:
    for child in children:
      child.kill()
  return {**{d: load_parity_result(tmp_dir, f"devices{d}") for d in (1, 4)}, "tmp_dir": tmp_dir}


def assert_parity(result, reference, what):
  assert result["summary"]["status"] == "complete", result["summary"]
  assert result["summary"]["step"] == PARITY_RUN["num_steps"]
  assert result["summary"]["eval"]["center"]["count"] == NUM_VALIDATION
  assert_same_arrays(result["init"], reference["init"], rtol=1e-6, atol=1e-7, what=what + " init ")
  for part, atol in (("['params']", PARITY_ATOL), ("['opt_state']", PARITY_MOMENTUM_ATOL)):
    pick = lambda arrays: {k: v for k, v in arrays.items() if k.startswith(part)}  # noqa: E731
    assert pick(result["final"])
    assert_same_arrays(pick(result["final"]), pick(reference["final"]), rtol=PARITY_RTOL,
                       atol=atol, what=what + " final ")
  # The loss, not the error counts: a near-tie may flip one example's top-1.
  np.testing.assert_allclose(result["summary"]["eval"]["center"]["loss"],
                             reference["summary"]["eval"]["center"]["loss"], rtol=1e-4)


def test_one_device_and_four_devices_train_the_same_parameters(single_process_runs):
  one, four = single_process_runs[1], single_process_runs[4]
  assert one["summary"]["device_count"] == 1 and four["summary"]["device_count"] == 4
  # The comparison means something only if training moved every parameter
  # array far more than the tolerance (here by 0.017 to 0.8).
  moved = {k: float(np.max(np.abs(one["final"][k] - one["init"][k]))) for k in one["final"]
           if k.startswith("['params']")}
  assert len(moved) == 16 and min(moved.values()) > 100 * PARITY_ATOL, moved
  assert_parity(four, one, "4 devices vs 1:")


def test_a_run_saved_on_four_devices_opens_on_one(single_process_runs):
  # The figure binaries open a --cpu_devices run in a process of one device.
  run = workdir_lib.Workdir(os.path.join(single_process_runs["tmp_dir"], "devices4")).open()
  assert run.step == PARITY_RUN["num_steps"]
  final = single_process_runs[4]["final"]
  for path, leaf in jax.tree_util.tree_flatten_with_path(run.params)[0]:
    np.testing.assert_array_equal(np.asarray(leaf), final["['params']" + jax.tree_util.keystr(path)])


def run_two_processes(spawn, tmp_dir, data_dir, name, log_name, timeout, sigterm=None):
  """Runs the parity run as 2 processes x 2 devices on loopback; fails if either fails.

  sigterm: (process, step): that process alone SIGTERMs itself at that step.
  """
  port = free_port()
  processes = [
      start_parity_run(spawn, tmp_dir, data_dir, name, devices=2, log_name=log_name,
                       distributed=dict(distributed=True, coordinator_address=f"127.0.0.1:{port}",
                                        num_processes=2, process_id=i),
                       sigterm_at=sigterm[1] if sigterm and sigterm[0] == i else None)
      for i in range(2)]
  reports = lambda: "".join(p.report() for p in processes)  # noqa: E731
  deadline = time.monotonic() + timeout
  while any(p.alive() for p in processes):
    if any(not p.alive() and p.proc.returncode != 0 for p in processes):
      break  # Its peer would wait for it until JAX's own (long) timeouts.
    if time.monotonic() > deadline:
      for p in processes:
        p.kill()  # SIGKILL: a hung run ignores SIGTERM (it asks the run to stop).
      pytest.fail(f"the 2-process run ({log_name}) did not finish in {timeout} s" + reports())
    time.sleep(0.2)
  for p in processes:
    p.kill()
  codes = [p.proc.returncode for p in processes]
  assert codes == [0, 0], f"the 2-process run ({log_name}) exited with {codes}" + reports()
  return processes


def test_cpu_devices_split_the_cpu_before_jax_starts_and_only_then():
  script = """
import jax, pytest
from zf_jax.runs import trainer
trainer.use_cpu_devices(3)
assert jax.device_count() == 3, jax.devices()
trainer.use_cpu_devices(3)  # Again, once JAX has started: the same count is fine.
with pytest.raises(ValueError, match=r"^cpu_devices=2 must be set before JAX starts; this process already has 3 CPU device"):
  trainer.use_cpu_devices(2)
print("OK")
"""
  out = run_python("-c", script, timeout=120)
  assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stdout + out.stderr


def test_two_processes_of_two_devices_stop_together_and_train_the_same_parameters(
    spawn, tmp_path, data_dir, single_process_runs):
  """2 processes x 2 devices (gloo on loopback) end where 1 process x 4 devices ends.

  The reference is the 4-device run of `single_process_runs`, fed the global
  batches of 2 processes: by design each process reads its own half of the
  split with its own shuffle and crop draws, so an unmodified 1-process run
  trains on other batches and cannot be compared.
  """
  # Process 1 alone is SIGTERMed while it prepares step 4 (batch 3): the hosts
  # agree at the next log step (5), save checkpoint 5 together and exit 0.
  tmp_dir = str(tmp_path)
  first = run_two_processes(spawn, tmp_dir, data_dir, "processes2", "stopped", timeout=240,
                            sigterm=(1, 3))
  for i in range(2):
    summary = load_summary(tmp_dir, "processes2", i)
    assert (summary["status"], summary["step"]) == ("interrupted", 5), summary
  assert "stopped by signal at step 5" in first[0].stdout(), first[0].report()
  assert finalized_steps(os.path.join(tmp_dir, "processes2", "checkpoints")) == [5]

  # The same command again resumes on both and finishes.
  second = run_two_processes(spawn, tmp_dir, data_dir, "processes2", "resumed", timeout=240)
  assert "resumed from" in second[0].stdout(), second[0].report()
  p0, p1 = (load_parity_result(tmp_dir, "processes2", i) for i in range(2))
  assert (p0["summary"]["process_count"], p0["summary"]["device_count"]) == (2, 4)
  assert_same_arrays(p1["final"], p0["final"], what="process 1 vs process 0: ")
  assert_parity(p0, single_process_runs[4], "2 processes x 2 devices vs 1 x 4:")


# ---------------------------------------------------------------------------
# 4, 5. Killed and stopped runs resume to the same result (through the binary).

BINARY_WRAPPER = """\
import tiny_dataset  # noqa: F401  (registers zf_tiny_images for tfds.builder)
from experiments import cli, train_imagenet
cli.run(train_imagenet.main)
"""
BINARY_STEPS = 24  # 3 epochs: validation and the plateau rule at steps 8 and 16.


def binary_args(tmp_dir, workdir, data_dir) -> list[str]:
  wrapper = os.path.join(tmp_dir, "train_tiny.py")
  if not os.path.exists(wrapper):
    with open(wrapper, "w", encoding="utf-8") as f:
      f.write(BINARY_WRAPPER)
  return [sys.executable, wrapper, f"--workdir={workdir}", "--arch=zfnet_tiny",
          f"--dataset={tiny_dataset.NAME}", f"--data_dir={data_dir}", f"--batch_size={BATCH}",
          f"--num_steps={BINARY_STEPS}", "--checkpoint_every=2", "--log_every=1",
          "--resize_size=36", "--init_scheme=he", "--mean_max_examples=16",
          "--final_eval_crops=center", "--eval_every_epochs=1", "--keep_checkpoints=2"]


def binary_run_config(data_dir) -> RunConfig:
  """The RunConfig of `binary_args` (for restoring its checkpoints)."""
  return tiny_config(data_dir, num_steps=BINARY_STEPS)


class _Lazy:
  def __init__(self, child: Child, workdir: str):
    self.child, self.workdir, self._output = child, workdir, None

  def result(self) -> str:
    if self._output is None:
      self._output = self.child.check(timeout=300)
    return self._output


@pytest.fixture(scope="module", name="uninterrupted")
def _uninterrupted(tmp_path_factory, data_dir):
  """The binary run never interrupted; started here, awaited by `.result()`."""
  tmp_dir = str(tmp_path_factory.mktemp("binary"))
  workdir = os.path.join(tmp_dir, "uninterrupted")
  lazy = _Lazy(Child("uninterrupted", binary_args(tmp_dir, workdir, data_dir), tmp_dir), workdir)
  yield lazy
  lazy.child.kill()


def final_state(workdir, data_dir):
  state, meta = restore(workdir, binary_run_config(data_dir))
  assert int(state.step) == meta["step"] == BINARY_STEPS
  return flat(state), meta


def start_binary_run(spawn, tmp_path, data_dir, name):
  """(child, workdir, checkpoint dir, args) of the binary run `name` started in tmp_path."""
  workdir = str(tmp_path / name)
  args = binary_args(str(tmp_path), workdir, data_dir)
  return spawn(name, args), workdir, os.path.join(workdir, "checkpoints"), args


def test_sigkill_mid_run_then_rerun_ends_exactly_as_an_uninterrupted_run(
    spawn, tmp_path, data_dir, uninterrupted):
  killed, workdir, ckpt_dir, args = start_binary_run(spawn, tmp_path, data_dir, "killed")
  # After the first epoch (validation, plateau rule, the Fig. 4 checkpoint at
  # 8): the rerun must skip a whole epoch of data and restore the best error.
  wait_for_checkpoint(killed, ckpt_dir, STEPS_PER_EPOCH + 2)
  os.kill(killed.pid, signal.SIGKILL)
  assert killed.wait(60) == -signal.SIGKILL
  steps = finalized_steps(ckpt_dir)
  assert steps and STEPS_PER_EPOCH < steps[-1] < BINARY_STEPS, steps  # Killed mid-run.
  assert "complete" not in killed.stdout()

  resumed = spawn("resumed", args)
  output = resumed.check(timeout=300)
  match = re.search(r"resumed from .* at step (\d+) of (\d+)", output)
  assert match, resumed.report()
  assert int(match.group(1)) >= steps[-1] and int(match.group(2)) == BINARY_STEPS
  assert f"complete: {BINARY_STEPS}/{BINARY_STEPS} steps" in output, resumed.report()

  uninterrupted.result()
  expected, expected_meta = final_state(uninterrupted.workdir, data_dir)
  got, got_meta = final_state(workdir, data_dir)
  assert_same_arrays(got, expected, what="resumed vs uninterrupted: ")
  assert got_meta["best_validation_error"] == expected_meta["best_validation_error"]


def test_sigterm_saves_exits_zero_and_the_rerun_finishes(
    spawn, tmp_path, data_dir, uninterrupted):
  stopped, workdir, ckpt_dir, args = start_binary_run(spawn, tmp_path, data_dir, "stopped")
  wait_for_checkpoint(stopped, ckpt_dir, 2)
  os.kill(stopped.pid, signal.SIGTERM)
  rc = stopped.wait(120)
  output = stopped.stdout()
  assert rc == 0, f"exit {rc} after SIGTERM" + stopped.report()
  match = re.search(r"stopped by signal at step (\d+)", output)
  assert match, stopped.report()
  step = int(match.group(1))
  assert 2 <= step < BINARY_STEPS, stopped.report()
  assert step in finalized_steps(ckpt_dir), (step, finalized_steps(ckpt_dir))
  assert f"interrupted: {step}/{BINARY_STEPS} steps" in output, stopped.report()
  assert "Traceback" not in stopped.stderr(), stopped.report()

  rerun = spawn("rerun", args)
  output = rerun.check(timeout=300)
  assert f"at step {step} of {BINARY_STEPS}" in output, rerun.report()
  assert f"complete: {BINARY_STEPS}/{BINARY_STEPS} steps" in output, rerun.report()

  uninterrupted.result()
  expected, _ = final_state(uninterrupted.workdir, data_dir)
  got, _ = final_state(workdir, data_dir)
  assert_same_arrays(got, expected, what="stopped+rerun vs uninterrupted: ")


# ---------------------------------------------------------------------------
# 6. A non-finite loss.


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, data_dir):
  workdir = str(tmp_path / "nan")
  cfg = tiny_config(data_dir, num_steps=10, checkpoint_every=2, eval_every_epochs=0, log_every=50)
  poisoned_step = 5  # The 6th step (state step 5 -> 6); checkpoints 2 and 4 come before it.
  seen = []

  def poison(step, batch):
    seen.append(step)
    if step == poisoned_step:
      return {**batch, "image": np.full_like(batch["image"], np.nan)}
    return batch

  handler_before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(trainer.NonFiniteLossError) as excinfo:
    trainer.train_and_evaluate(cfg, workdir, batch_transform=poison)
  message = str(excinfo.value)
  assert "\n" not in message
  # Steps are counted as in the logs: batch `poisoned_step` is step poisoned_step + 1.
  assert re.search(rf"\bat step {poisoned_step + 1}\b", message), message
  assert re.search(r"\(step 4\)", message), message  # Names the last good checkpoint.
  assert seen[:poisoned_step + 1] == list(range(poisoned_step + 1))
  assert signal.getsignal(signal.SIGTERM) == handler_before  # Handlers restored.
  assert not os.path.exists(os.path.join(workdir, "summary.json"))

  # Step 6 was a checkpoint step: it was not saved; step 4 is the last good one.
  assert finalized_steps(os.path.join(workdir, "checkpoints")) == [2, 4]
  state, meta = restore(workdir, cfg)
  assert int(state.step) == meta["step"] == 4
  for name, value in flat(state.params).items():
    assert np.all(np.isfinite(value)), name


# ---------------------------------------------------------------------------
# 6b. A damaged checkpoint.


def damage(checkpoint_dir: str, step: int) -> None:
  """Truncates every array data file of checkpoint `step` to half, as a full disk would."""
  data = [p for p in glob.glob(os.path.join(checkpoint_dir, str(step), "state", "**", "*"),
                               recursive=True) if os.path.isfile(p) and "_METADATA" not in p]
  assert data
  for path in data:
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)


def test_damaged_latest_checkpoint_resumes_from_the_one_before_and_is_kept(
    tmp_path, data_dir, capsys):
  workdir = str(tmp_path / "damaged")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  first = tiny_config(data_dir, num_steps=6, checkpoint_every=2, eval_every_epochs=0)
  assert trainer.train_and_evaluate(first, workdir)["status"] == "complete"
  assert finalized_steps(ckpt_dir) == [2, 4, 6]
  damage(ckpt_dir, 6)
  damaged_files = sorted(os.path.relpath(p, os.path.join(ckpt_dir, "6"))
                         for p in glob.glob(os.path.join(ckpt_dir, "6", "**"), recursive=True))

  # Reading it (evaluation, analyses) names the damaged step and the intact one.
  with pytest.raises(workdir_lib.DamagedCheckpointError) as excinfo:
    workdir_lib.Workdir(workdir).open()
  message = str(excinfo.value)
  assert "\n" not in message
  assert "checkpoint step 6" in message and "damaged" in message and "--step=4" in message
  assert workdir_lib.Workdir(workdir).open(step=4).step == 4
  proc = run_module("experiments.evaluate", f"--workdirs={workdir}")  # Table 2's binary.
  assert proc.returncode == 2, proc.stderr
  (line,) = meaningful_stderr(proc.stderr)  # The same message; which array failed first varies.
  assert line.startswith(f"error: checkpoint step 6 in {ckpt_dir} is damaged (")
  assert line.endswith(message[message.index("); the newest intact one is step 4"):])

  # The same command with more steps: resumes from step 4, says so, keeps step 6's files.
  capsys.readouterr()
  longer = tiny_config(data_dir, num_steps=8, checkpoint_every=2, eval_every_epochs=0)
  summary = trainer.train_and_evaluate(longer, workdir)
  output = capsys.readouterr().out
  assert summary["status"] == "complete" and summary["step"] == 8
  assert re.search(r"checkpoint step 6 is damaged \(.+\); moved it to .*damaged_checkpoints",
                   output)
  assert "resumed from" in output and "at step 4 of 8" in output, output
  kept = os.path.join(workdir, workdir_lib.DAMAGED_DIR, "6")
  assert sorted(os.path.relpath(p, kept) for p in glob.glob(os.path.join(kept, "**"),
                                                            recursive=True)) == damaged_files
  assert 6 in finalized_steps(ckpt_dir)  # Saved again by the resumed run.

  # Resuming from step 4 ends exactly where an undamaged run of 8 steps ends.
  straight = str(tmp_path / "straight")
  trainer.train_and_evaluate(longer, straight)
  got, _ = restore(workdir, longer)
  expected, _ = restore(straight, longer)
  assert_same_arrays(flat(got), flat(expected), what="resumed past damage vs straight: ")


def test_when_no_checkpoint_is_intact_the_run_stops_and_moves_nothing(tmp_path, data_dir):
  workdir = str(tmp_path / "all_damaged")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  cfg = tiny_config(data_dir, num_steps=4, checkpoint_every=2, eval_every_epochs=0)
  trainer.train_and_evaluate(cfg, workdir)
  for step in finalized_steps(ckpt_dir):
    damage(ckpt_dir, step)
  with pytest.raises(workdir_lib.DamagedCheckpointError, match=r"step 4: .*step 2: ") as excinfo:
    trainer.train_and_evaluate(tiny_config(data_dir, num_steps=6, checkpoint_every=2,
                                           eval_every_epochs=0), workdir)
  assert "\n" not in str(excinfo.value)
  assert finalized_steps(ckpt_dir) == [2, 4]  # Not trained from scratch over them.
  assert not os.path.exists(os.path.join(workdir, workdir_lib.DAMAGED_DIR))


# ---------------------------------------------------------------------------
# 7. Bad requests: one line on stderr, no traceback.


# Warnings, in Python logging's format ("WARNING:absl:...", TF's "WARNING: All log
# messages before absl::InitializeLog() ...") or absl's ("W1122 00:46:59.101 ...
# file_utils.py:394] Variant folder ... has no dataset_info.json", which tfds
# logs before it finds that imagenet2012 needs a manual download).
_WARNING_LINE = re.compile(r"WARNING\b|W\d{4} \d\d:\d\d:\d\d")


def meaningful_stderr(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines()
          if line.strip() and not _WARNING_LINE.match(line)]


def test_bad_flags_end_with_one_error_line_and_no_traceback(spawn, tmp_path):
  empty = tmp_path / "empty_tfds"
  empty.mkdir()
  binary = [sys.executable, "-m", "experiments.train_imagenet"]
  cases = {  # name: (flags, extra env, text the line must contain)
      "unknown_arch": (["--arch=nope"], {}, ["--arch"]),
      "missing_flagfile": ([f"--flagfile={tmp_path / 'nope.flags'}"], {}, ["nope.flags"]),
      "batch_not_divisible": (["--batch_size=3"],
                              {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
                              ["batch size 3", "2 devices"]),
      "imagenet_not_downloaded": ([f"--data_dir={empty}", "--dataset=imagenet2012"], {},
                                  ["ILSVRC2012_img_train.tar",
                                   os.path.join(str(empty), "downloads", "manual")]),
      "zero_epochs": (["--num_epochs=0"], {}, ["num_epochs"]),
      # --cpu_devices really splits the CPU: 128 does not divide over 3 devices.
      "cpu_devices_batch": (["--cpu_devices=3"], {}, ["batch size 128", "3 devices"]),
      "cpu_devices_zero": (["--cpu_devices=0"], {}, ["cpu_devices must be >= 1, got 0"]),
  }
  children = {}
  for name, (flags, env, _) in cases.items():
    children[name] = spawn(name, binary + [f"--workdir={tmp_path / name}"] + flags,
                           env=child_env(**env), cwd=str(tmp_path))
  for name, (_, _, needles) in cases.items():
    child = children[name]
    rc = child.wait(180)
    stderr = child.stderr()
    assert rc != 0, f"{name}: exit 0" + child.report()
    assert "Traceback" not in stderr, f"{name}: traceback" + child.report()
    lines = meaningful_stderr(stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{name}: {lines}" + child.report()
    for needle in needles:
      assert needle in lines[0], f"{name}: {needle!r} not in {lines[0]!r}"


# ---------------------------------------------------------------------------
# 8. The learning-rate plateau rule.


def test_plateau_anneals_after_patience_evaluations_without_improvement():
  config = TrainConfig(batch_size=BATCH, init_scheme="he", plateau_patience=2)
  arch = arch_lib.with_classes(arch_lib.get("zfnet_tiny"), tiny_dataset.NUM_CLASSES)

  def scales(errors):
    state = train.create_train_state(jax.random.key(0), arch, config)
    out = []
    for e in errors:
      state = train.update_plateau(state, np.float32(e), config)
      out.append(float(state.plateau.scale))
    return out

  # The first error sets the best; two more without improvement anneal 10x (at
  # the 3rd), the count restarts, two more anneal again (at the 5th).
  np.testing.assert_allclose(scales([0.5] * 5), [1, 1, 0.1, 0.1, 0.01], rtol=1e-6)
  np.testing.assert_allclose(scales([0.5, 0.4, 0.3, 0.2, 0.1]), [1] * 5)
  # Improvements smaller than plateau_min_delta (1e-3) do not count.
  np.testing.assert_allclose(scales([0.5, 0.4995, 0.4991]), [1, 1, 0.1], rtol=1e-6)
  # Other schedules ignore the validation error.
  constant = TrainConfig(batch_size=BATCH, init_scheme="he", lr_schedule="constant")
  state = train.create_train_state(jax.random.key(0), arch, constant)
  for e in [0.5] * 4:
    state = train.update_plateau(state, np.float32(e), constant)
  assert float(state.plateau.scale) == 1.0


def test_train_step_uses_and_reports_the_annealed_learning_rate():
  # No dropout or clipping: the first SGD step moves the parameters by -lr * scale * grad.
  config = TrainConfig(batch_size=BATCH, init_scheme="he", dropout=0.0, rms_radius=None,
                       learning_rate=0.01)
  arch = arch_lib.with_classes(arch_lib.get("zfnet_tiny"), tiny_dataset.NUM_CLASSES)
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(0, 50, (BATCH, 32, 32, 3)).astype(np.float32),
           "label": (np.arange(BATCH) % tiny_dataset.NUM_CLASSES).astype(np.int32)}
  step = train.make_train_step(arch, config)

  def one_step(errors):
    state = train.create_train_state(jax.random.key(0), arch, config)
    for e in errors:
      state = train.update_plateau(state, np.float32(e), config)
    before = jax.tree.map(np.asarray, state.params)
    state, metrics = step(state, batch)  # Donates `state`.
    moved = jax.tree.map(lambda new, old: np.asarray(new) - old, state.params, before)
    return float(metrics["learning_rate"]), moved

  lr_full, moved_full = one_step([])
  lr_annealed, moved_annealed = one_step([0.5, 0.5, 0.5])
  assert lr_full == pytest.approx(0.01, rel=1e-6)
  assert lr_annealed == pytest.approx(0.001, rel=1e-6)
  for k, full in jax.tree_util.tree_flatten_with_path(moved_full)[0]:
    assert np.max(np.abs(full)) > 0, k
  jax.tree.map(lambda a, f: np.testing.assert_allclose(a, 0.1 * f, rtol=1e-3, atol=1e-7),
               moved_annealed, moved_full)
