"""Table 3 (Section 5.1, zf_jax.section5.ablation and experiments/ablation.py).

* every edit of the paper's 12 rows builds at full size (shapes only) with the
  parameter count of an independent count, and at tiny size trains through
  the binary and is evaluated;
* the table assembles from per-row JSON: the paper's numbers in the right
  rows, pending rows marked, other variants appended;
* `--all` killed mid-row and rerun finishes the same table as an
  uninterrupted run;
* bad requests end with one line naming the bad value, and write nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
  sys.path.insert(0, TESTS_DIR)

import tiny_dataset  # noqa: E402  (registers zf_tiny_images)
from conftest import REPO, child_env, finalized_steps, wait_for_checkpoint  # noqa: E402

from zf_jax import arch as arch_lib  # noqa: E402
from zf_jax import model  # noqa: E402
from zf_jax.runs import config as config_lib  # noqa: E402
from zf_jax.runs.config import RunConfig  # noqa: E402
from zf_jax.section5 import ablation  # noqa: E402

ROWS = ablation.PAPER_TABLE3


def _count(layers) -> int:
  """Weights and biases of (kernel, cin, cout) layers (fc: kernel 1)."""
  return sum(k * k * cin * cout + cout for k, cin, cout in layers)


def independent_count(row: ablation.PaperRow) -> int:
  """The row's parameters from the paper's own description, layer by layer.

  Both bases: conv1 96 maps (AlexNet 11x11, ZFNet 7x7), conv2 256 5x5, conv3-5
  3x3 with 384, 384, 256 maps, a 6x6 top map, fc 6, 7 of 4096, 1000 classes.
  A removed conv layer's successor reads its predecessor's maps.
  """
  conv = {1: (11 if row.base == "alexnet" else 7, 96), 2: (5, 256), 3: (3, 384), 4: (3, 384),
          5: (3, 256)}
  if row.conv:
    conv.update({l: (3, w) for l, w in zip((3, 4, 5), row.conv)})
  fc = {6: row.fc or 4096, 7: row.fc or 4096}
  layers, cin = [], 3
  for l in sorted(conv):
    if l not in row.remove:
      layers.append((conv[l][0], cin, conv[l][1]))
      cin = conv[l][1]
  fin = 6 * 6 * cin
  for l in (6, 7):
    if l not in row.remove:
      layers.append((1, fin, fc[l]))
      fin = fc[l]
  return _count(layers + [(1, fin, 1000)])


@pytest.mark.parametrize("index", range(len(ROWS)), ids=[
    ablation.variant(ablation.row_config(RunConfig(arch="zfnet"), r)) for r in ROWS])
def test_every_row_builds_at_full_size_with_the_independent_parameter_count(index):
  row = ROWS[index]
  net = ablation.row_config(RunConfig(arch="zfnet"), row).network()
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), net))
  counted = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  assert counted == arch_lib.num_params(net) == independent_count(row)
  # Removing a pooling conv layer keeps the 6x6 top map (its pool moves down).
  assert arch_lib.feature_shapes(net)[net.convs[-1].layer]["out"][:2] == (6, 6)
  logits = jax.eval_shape(lambda p, x: model.apply(p, x, net)[0], shapes,
                          jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32))
  assert logits.shape == (2, 1000)


def test_the_paper_rows_at_full_size_are_the_paper_models():
  base = RunConfig(arch="zfnet")
  assert arch_lib.num_params(ablation.row_config(base, ROWS[0]).network()) == 62_378_344
  assert arch_lib.num_params(ablation.row_config(base, ROWS[7]).network()) == 62_357_608
  # Table 2 (b) is Table 3's wide row.
  wide = ablation.row_config(base, ROWS[10]).network()
  assert arch_lib.num_params(wide) == arch_lib.num_params(arch_lib.get("zfnet_wide"))


def test_small_rows_scale_the_paper_widths_by_the_preset():
  edits = [ablation.edits(r, "_small") for r in ROWS]
  assert {e["arch"] for e in edits[:7]} == {"alexnet_small"}
  assert {e["arch"] for e in edits[7:]} == {"zfnet_small"}
  assert [e["fc_features"] for e in edits] == [None] * 5 + [128, 512, None, 128, 512, None, 512]
  assert edits[10]["conv_features"] == (128, 256, 128)  # 96, 96, 64 times 4/3, 8/3, 2.
  assert [ablation.edits(r, "")["fc_features"] for r in ROWS[5:7]] == [2048, 8192]


# --- The table --------------------------------------------------------------------------------


def test_train_error_is_the_mean_of_the_last_epoch_counting_a_repeated_step_once():
  metrics = [{"step": s, "split": "train", "top1_error": e}
             for s, e in ((5, 0.9), (10, 0.5), (15, 0.4), (20, 0.9), (15, 0.2))]
  metrics.append({"step": 20, "split": "validation", "top1_error": 0.0})
  # Steps 11-20 are the last epoch; step 15 was logged twice (a resume): its last value.
  assert ablation.train_error(metrics, total_steps=20, steps_per_epoch=10) == pytest.approx(
      (0.2 + 0.9) / 2)


def _fake_row(root, cfg: RunConfig, val_top1: float) -> str:
  name = ablation.variant(cfg)
  os.makedirs(os.path.join(root, name))
  row = {"variant": name, "arch": cfg.arch, "dataset": cfg.dataset, "params": 123,
         "train_seconds": 60.0, "train_top1": 9.0,
         "center": {"val_top1": val_top1, "val_top5": 1.0, "count": 10},
         "ten": {"val_top1": val_top1 - 1, "val_top5": 0.5, "count": 10},
         "config": config_lib.to_json(cfg)}
  with open(os.path.join(root, name, ablation.ROW_FILE), "w", encoding="utf-8") as f:
    json.dump(row, f)
  return name


def test_table_assembles_from_row_files_beside_the_paper_with_pending_rows(tmp_path):
  cfg = RunConfig(arch="zfnet_small", dataset="fashion_mnist_debian")
  root = str(tmp_path)
  shallow = _fake_row(root, ablation.row_config(cfg, ROWS[4]), 30.0)
  wide = _fake_row(root, ablation.row_config(cfg, ROWS[10]), 8.0)
  extra = _fake_row(root, RunConfig(arch="zfnet_small", dataset=cfg.dataset, remove=(5,)), 12.0)
  md, js, report = ablation.write_table3(root, cfg)
  with open(js, encoding="utf-8") as f:
    table = json.load(f)
  rows = table["rows"]
  assert [r["row"] for r in rows] == list(range(1, 13)) + [None]
  assert (rows[4]["variant"], rows[4]["label"]) == (shallow, "Removed layer 3,4,6,7")
  assert rows[4]["paper"] == {"train_top1": 71.1, "val_top1": 71.3, "val_top5": 50.1}
  assert rows[4]["ours"]["center"]["val_top1"] == 30.0
  assert rows[10]["variant"] == wide == "zfnet_small-conv128,256,128"
  assert rows[10]["paper"]["val_top1"] == 37.5 and rows[10]["ours"]["train_top1"] == 9.0
  assert rows[12]["variant"] == extra and rows[12]["paper"] is None
  assert sum(r["ours"] is None for r in rows) == 10
  assert "not ImageNet" in table["title"] and "fashion_mnist_debian" in table["title"]
  lines = open(md, encoding="utf-8").read().splitlines()
  row5 = next(l for l in lines if "| Removed layer 3,4,6,7 |" in l)
  assert "| 30.0 | 1.0 | 29.0 | 0.5 | 123 | 71.1 | 71.3 | 50.1 |" in row5
  row2 = next(l for l in lines if "| Removed layers 3,4 |" in l)
  assert row2.count("pending") == 6 and "| 41.8 | 45.4 | 22.1 |" in row2
  assert os.path.isfile(os.path.join(root, "figures", "table3.png"))
  assert "table3.md" in open(report, encoding="utf-8").read()
  # Rows of another dataset do not mix into this table.
  with pytest.raises(ValueError, match="give each table its own --workdir"):
    ablation.table3(RunConfig(arch="zfnet_small", dataset="mnist"), ablation.read_rows(root))


# --- The binary -------------------------------------------------------------------------------

WRAPPER = """\
import tiny_dataset  # noqa: F401  (registers zf_tiny_images for tfds.builder)
from experiments import ablation, cli
cli.run(ablation.main)
"""
STEPS = 6


def _args(tmp_path, root, data_dir, rows: str | None) -> list[str]:
  wrapper = tmp_path / "ablation_tiny.py"
  wrapper.write_text(WRAPPER, encoding="utf-8")
  return [sys.executable, str(wrapper), f"--workdir={root}", "--arch=zfnet_tiny", "--all",
          *([f"--rows={rows}"] if rows else []), f"--dataset={tiny_dataset.NAME}", f"--data_dir={data_dir}",
          "--batch_size=8", f"--num_steps={STEPS}", "--checkpoint_every=1", "--log_every=1",
          "--resize_size=36", "--init_scheme=he", "--mean_max_examples=16",
          "--eval_every_epochs=0", "--shuffle_buffer=16"]


def _ours(table_json: str) -> list:
  with open(table_json, encoding="utf-8") as f:
    rows = json.load(f)["rows"]
  return [r["ours"] and {k: v for k, v in r["ours"].items() if k != "train_seconds"}
          for r in rows]


def test_every_row_trains_and_evaluates_and_all_killed_mid_row_resumes_to_the_same_table(
    spawn, tmp_path):
  """The straight run trains all 12 rows of the tiny table; the other is killed in row 2
  of rows 1-2 and rerun."""
  data_dir = str(tmp_path / "tfds")
  tiny_dataset.prepare(data_dir)
  straight_root, killed_root = str(tmp_path / "straight"), str(tmp_path / "killed")
  straight = spawn("straight", _args(tmp_path, straight_root, data_dir, None))
  killed = spawn("killed", _args(tmp_path, killed_root, data_dir, "1,2"))
  second = os.path.join(killed_root, "alexnet_tiny-remove3,4", "checkpoints")
  wait_for_checkpoint(killed, second, 2)
  os.kill(killed.pid, signal.SIGKILL)
  assert killed.wait(60) == -signal.SIGKILL
  assert finalized_steps(second)[-1] < STEPS, "row 2 finished before it was killed"
  assert os.path.isfile(os.path.join(killed_root, "alexnet_tiny", ablation.ROW_FILE))

  output = spawn("rerun", _args(tmp_path, killed_root, data_dir, "1,2")).check(timeout=300)
  assert "[1/2] alexnet_tiny: finished" in output and "skipped" in output, output
  assert "resumed from" in output, output
  straight.check(timeout=600)
  table = os.path.join("tables", "table3.json")
  got, expected = _ours(os.path.join(killed_root, table)), _ours(
      os.path.join(straight_root, table))
  assert got[:2] == expected[:2] and got[2:] == [None] * 10
  # Every edit of both bases trained its steps and was evaluated with both crop modes.
  for row, ours in zip(ROWS, expected):
    net = ablation.row_config(RunConfig(arch="zfnet_tiny"), row).network(
        tiny_dataset.NUM_CLASSES)
    assert ours["variant"] == net.name and ours["params"] == arch_lib.num_params(net)
    assert ours["steps"] == STEPS and 0 <= ours["train_top1"] <= 100, ours
    for crops in ("center", "ten"):
      assert ours[crops]["count"] == tiny_dataset.SPLITS["validation"], ours
      assert 0 <= ours[crops]["val_top1"] <= 100, ours


BAD_REQUESTS = [  # In-process: the message; three of them also through the binary.
    (["--remove=9"], "cannot remove layer 9: removable layers are 3, 4, 5, 6, 7"),
    (["--remove=1"], "cannot remove layer 1: removable layers are 3, 4, 5, 6, 7"),
    (["--remove=3,x"], "--remove takes comma-separated integers, got 3,x"),
    (["--remove=1,2,3,4,5"], "cannot remove layer 1"),
    (["--conv_features=1,2"], "conv_features needs 3 widths for layers (3, 4, 5), got (1, 2)"),
    (["--arch=zfnet_wide"], "--arch=zfnet_wide is not a Table 3 base"),
    (["--all", "--rows=13"], "--rows: no row 13 in Table 3; rows are 1-12"),
    (["--all", "--remove=3,4"], "--all and --rows train the paper's rows; drop --remove"),
]


@pytest.mark.parametrize("flags,message", BAD_REQUESTS, ids=[
    "layer9", "layer1", "not-a-number", "every-conv", "conv-widths", "wide", "row13",
    "all-and-edit"])
def test_bad_requests_are_refused_naming_the_value(flags, message):
  from absl import flags as absl_flags  # pylint: disable=import-outside-toplevel
  from experiments import ablation as binary  # pylint: disable=import-outside-toplevel
  from zf_jax.runs import config  # pylint: disable=import-outside-toplevel
  values = absl_flags.FlagValues()
  for name in ("workdir", "base", "all", "rows", "summarize"):
    values[name] = absl_flags.FLAGS[name]
  config.define_flags(flag_values=values)
  values(["ablation", "--workdir=unused", "--arch=zfnet_small", *flags])
  with pytest.raises(ValueError) as excinfo:
    binary.plan(config.from_flags(flag_values=values), values)
  assert message in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_bad_requests_end_the_binary_with_one_line_and_write_nothing(tmp_path):
  chosen = [BAD_REQUESTS[i] for i in (0, 2, 7)]  # Bad edit, bad number, --all misused.
  children = [subprocess.Popen(  # All at once: each is mostly start-up.
      [sys.executable, "-m", "experiments.ablation", "--flagfile=quickstart.flags",
       f"--workdir={tmp_path / str(i)}", *flags], cwd=REPO, env=child_env(),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i, (flags, _) in enumerate(chosen)]
  for i, ((flags, message), child) in enumerate(zip(chosen, children)):
    _, stderr = child.communicate(timeout=300)
    assert child.returncode == 2, (flags, stderr)
    assert stderr.strip().count("\n") == 0 and message in stderr, (flags, stderr)
    assert not (tmp_path / str(i)).exists(), flags
