"""One source for a run's configuration: dataclass fields -> flags -> config -> config.json.

Every field of RunConfig / TrainConfig is written once (with its help); the
flags, the config built from them and config.json all follow from it, and
every binary that trains shows the same flags with the same help.
"""

import dataclasses
import glob
import json
import os
import re

from absl import flags
import pytest

from conftest import REPO, run_module, run_python
from experiments import cli
from zf_jax.runs import config
from zf_jax.runs.config import RunConfig
from zf_jax.runs.workdir import Workdir
from zf_jax.train import TrainConfig


def all_fields():
  """(field, owner class) of every configuration field, nested ones included."""
  out = []
  for cls in (RunConfig, TrainConfig):
    out += [(f, cls) for f in dataclasses.fields(cls) if f.name != "train"]
  return out


def parsed(*argv) -> flags.FlagValues:
  fv = flags.FlagValues()
  config.define_flags(flag_values=fv)
  fv(["prog", *argv])
  return fv


def test_every_field_has_help_and_a_flag_unless_derived():
  names = config.flag_names()
  assert len(names) == len(set(names)), "two fields would make the same flag"
  for f, cls in all_fields():
    assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
    assert (f.name in names) == f.metadata["flag"], f.name
  assert "lr_decay_steps" not in names  # Derived from lr_decay_epochs by the trainer.


def test_defaults_are_the_papers_and_flags_default_to_them():
  assert config.from_flags(flag_values=parsed()) == RunConfig()
  t = RunConfig().train
  assert (t.learning_rate, t.momentum, t.batch_size, t.dropout, t.rms_radius) == (
      1e-2, 0.9, 128, 0.5, 0.1)  # Section 3.
  assert RunConfig().num_epochs == 70


def test_flags_build_the_config_they_describe():
  fv = parsed("--arch=zfnet_small", "--learning_rate=0.05", "--rms_radius=0",
              "--lr_decay_epochs=1.5,3", "--final_eval_crops=center", "--keep_epochs=1,2",
              "--num_steps=7", "--distributed", "--train_crops=random")
  cfg = config.from_flags(flag_values=fv)
  assert cfg == RunConfig(
      arch="zfnet_small", num_steps=7, distributed=True, train_crops="random",
      lr_decay_epochs=(1.5, 3.0), final_eval_crops=("center",), keep_epochs=(1, 2),
      train=TrainConfig(learning_rate=0.05, rms_radius=None))


@pytest.mark.parametrize("argv, message", [
    (["--keep_epochs=1,two"], "--keep_epochs takes comma-separated integers, got 1,two"),
    (["--final_eval_crops=center,nine"], "unknown final_eval_crops 'nine'; choose one of center"),
    (["--lr_decay_epochs=x"], "--lr_decay_epochs takes comma-separated numbers"),
    (["--num_epochs=0"], "num_epochs must be > 0"),
    (["--cpu_devices=0"], "cpu_devices must be >= 1, got 0"),
    (["--warmup_epochs=-1"], "warmup_epochs must be >= 0, got -1"),
])
def test_bad_values_are_one_line_errors_naming_them(argv, message):
  with pytest.raises(ValueError, match=re.escape(message)) as excinfo:
    config.from_flags(flag_values=parsed(*argv))
  assert "\n" not in str(excinfo.value)


def test_config_json_round_trips_and_ignores_facts_and_unknown_keys(tmp_path):
  cfg = RunConfig(arch="zfnet_tiny", lr_decay_epochs=(1.5,), train=TrainConfig(
      lr_decay_steps=(3, 9), rms_radius=None, init_scheme="he"))
  wd = Workdir(tmp_path / "run")
  wd.write_config(cfg, num_classes=10, steps_per_epoch=6, total_steps=12)
  raw = json.loads((tmp_path / "run" / "config.json").read_text())
  assert raw["train"]["learning_rate"] == 1e-2 and raw["num_classes"] == 10
  assert wd.read_config() == (cfg, {"num_classes": 10, "steps_per_epoch": 6, "total_steps": 12})
  raw["added_by_a_newer_version"] = 1
  (tmp_path / "run" / "config.json").write_text(json.dumps(raw))
  assert wd.read_config()[0] == cfg


def test_no_run_is_one_message(tmp_path):
  for path in (tmp_path / "missing", tmp_path):
    with pytest.raises(FileNotFoundError, match="not a training workdir") as excinfo:
      Workdir(path).open()
    assert "\n" not in str(excinfo.value)


# --- Binaries -----------------------------------------------------------------------------


def training_binaries() -> list[str]:
  """Every experiments/ binary that takes the training flags."""
  found = []
  for path in sorted(glob.glob(os.path.join(REPO, "experiments", "*.py"))):
    with open(path, encoding="utf-8") as f:
      if "config.define_flags()" in f.read():
        found.append(os.path.splitext(os.path.basename(path))[0])
  return found


_ANNOTATION = re.compile(r"\((default: |an? |a comma separated)")  # absl's notes after the help.


def helpshort_entries(text: str) -> dict[str, str]:
  """{flag: help text} of absl's --helpshort output (wrapped lines joined)."""
  entries, name = {}, None
  for line in text.splitlines():
    m = re.match(r"  --(?:\[no\])?(\w+):(.*)", line)
    if m:
      name = m.group(1)
      entries[name] = m.group(2)
    elif name and line.startswith("    ") and not _ANNOTATION.match(line.strip()):
      entries[name] += " " + line.strip()
    else:
      name = None
  # An enum's choices come first ("<a|b>: help"; a long list on a line of its own).
  return {k: re.sub(r"^\s*(<[^>]*>\s*:\s*)?", "", v) for k, v in entries.items()}


def test_every_training_binary_shows_every_training_flag_with_its_help():
  binaries = training_binaries()
  assert {"train_imagenet", "compute_mean"} <= set(binaries)
  helps = {f.name: " ".join(f.metadata["help"].split()) for f, _ in all_fields()
           if f.metadata["flag"]}
  for binary in binaries:
    proc = run_module(f"experiments.{binary}", "--helpshort")
    shown = helpshort_entries(proc.stdout)
    for name, text in helps.items():
      assert name in shown, f"{binary} --helpshort lacks --{name}"
      assert shown[name] == text, (binary, name)


def test_shipped_flagfiles_are_found_by_bare_name_from_any_folder(tmp_path):
  assert {"zfnet.flags", "alexnet.flags", "zfnet_wide.flags", "quickstart.flags"} <= set(
      cli.shipped_flagfiles())
  # As the mission types it, from the root, without training: a bad --arch after the
  # flagfile fails once the flagfile was read.
  proc = run_module("experiments.train_imagenet", "--flagfile=zfnet.flags",
                    f"--workdir={tmp_path / 'w'}", "--arch=nope")
  assert proc.returncode == 2 and "--arch" in proc.stderr, proc.stderr
  assert cli.resolve_flagfiles(["p", "--flagfile=zfnet.flags"]) == [
      "p", f"--flagfile={os.path.join(cli.FLAGFILES_DIR, 'zfnet.flags')}"]
  assert cli.resolve_flagfiles(["p", "--flagfile", "alexnet"]) == [
      "p", f"--flagfile={os.path.join(cli.FLAGFILES_DIR, 'alexnet.flags')}"]
  own = tmp_path / "zfnet.flags"  # A file of that name in the current folder wins.
  own.write_text("--arch=alexnet\n")
  assert cli.resolve_flagfiles(["p", f"--flagfile={own}"]) == ["p", f"--flagfile={own}"]


def test_an_unknown_flagfile_is_one_line_listing_the_shipped_ones(tmp_path):
  proc = run_module("experiments.train_imagenet", "--flagfile=zfnett.flags",
                    f"--workdir={tmp_path}", cwd=str(tmp_path))
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr
  assert "zfnett.flags" in lines[0] and "zfnet.flags, zfnet_wide.flags" in lines[0]


def test_imagenet_flagfiles_differ_only_in_the_arch():
  def lines(name):
    with open(os.path.join(cli.FLAGFILES_DIR, name), encoding="utf-8") as f:
      return [l.strip() for l in f if l.startswith("--")]
  zfnet = lines("zfnet.flags")
  for name, arch in (("alexnet.flags", "alexnet"), ("zfnet_wide.flags", "zfnet_wide")):
    assert lines(name) == [l.replace("--arch=zfnet", f"--arch={arch}") for l in zfnet]
  defaults = parsed()
  for l in zfnet + lines("quickstart.flags"):  # Only what differs from the defaults.
    name, _, value = l[2:].partition("=")
    value = value or "true"  # A bare boolean flag.
    if name in defaults:
      flag = defaults[name]
      assert flag.parser.parse(value) != flag.default or name == "arch", l


def test_no_module_imports_tensorflow_until_data_is_read():
  """TensorFlow's import (~3 s of CPU) waits for the first read: a binary answers a bad flag
  or `--help` without it. Its first use keeps it off the GPUs (sources.tensorflow). The
  binaries import only zf_jax and experiments' cli / common (besides absl and the like)."""
  code = """if True:
    import importlib, pkgutil, sys
    import zf_jax
    for mod in pkgutil.walk_packages(zf_jax.__path__, "zf_jax."):
      importlib.import_module(mod.name)
    # The binaries define their flags at import (two cannot share a process): one of them.
    from experiments import cli, common, train_imagenet
    assert "tensorflow" not in sys.modules, "imported at start-up"
    from zf_jax.data import input_pipeline
    assert int(input_pipeline.tf.constant(3)) == 3 and "tensorflow" in sys.modules
    assert input_pipeline.tensorflow().config.get_visible_devices("GPU") == []
  """
  done = run_python("-c", code)
  assert done.returncode == 0, done.stderr[-3000:]
