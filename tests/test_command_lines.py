"""Every bad command line of every binary in experiments/ ends in one line, and changes nothing.

For each binary: an unknown flag, a stray argument, a missing flagfile, a
missing path, a file where a folder is expected, a folder with no run, zero
and negative counts, malformed lists, an unknown dataset or split, and the
binary's own bad values. Each must exit non-zero with no traceback, at most
two lines on stderr (no TensorFlow or absl log lines either), naming the bad
value; and a real trained run given to it, an empty folder, a file and the
paths that did not exist are byte for byte (or absent) as before.

The command lines run in one child process (tests/command_lines.py: each
binary's own `cli.run(main)`, what `python -m experiments.<binary>` runs,
with fds 1 and 2 captured), which costs one start-up instead of ~150. The
process boundary itself is tested elsewhere (test_trainer.py, test_dedup.py,
test_ablation.py run binaries as users do).
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from conftest import TESTS_DIR, run_python

# {run}: a copy of the shared trained run; {empty}: an empty folder; {file}: a text file;
# {missing}: a path that does not exist; {new}: a folder that must not be created;
# {data}: the run's tfds data_dir.
ANALYSES = ("fig2_top9", "fig4_evolution", "fig5_invariance", "fig6_filters",
            "fig7_occlusion", "table1_correspondence")
COMMON = [  # (id, args, what the line says), for every binary.
    ("unknown-flag", ["--nonsense=1"], "nonsense"),
    # A binary with required flags names them first.
    ("stray-argument", ["extra"], ""),
    ("missing-flagfile", ["--flagfile={missing}/x.flags"], "no flagfile {missing}/x.flags"),
]
RUN_ARGS = ["--workdir={run}"]
# The quickstart's flags on the shared data, on the one CPU device this process has.
QUICK = ["--data_dir={data}", "--cpu_devices=1"]
ANALYSIS_CASES = [
    ("missing-workdir", ["--workdir={missing}"], "{missing} does not exist"),
    ("file-workdir", ["--workdir={file}"], "{file} is a file"),
    ("empty-workdir", ["--workdir={empty}"], "has no config.json"),
    ("negative-step", [*RUN_ARGS, "--step=-1"], "no checkpoint for step -1"),
    ("unknown-step", [*RUN_ARGS, "--step=7"], "no checkpoint for step 7"),
    ("zero-batch", [*RUN_ARGS, "--batch_size=0"], "batch_size"),
    ("unknown-split", [*RUN_ARGS, "--split=nope"], "nope"),
    ("unknown-dataset", [*RUN_ARGS, "--dataset=nonsense"], "nonsense"),
]
OWN = {
    "fig2_top9": [
        ("layer-9", [*RUN_ARGS, "--layers=9"], "9"),
        ("layer-list", [*RUN_ARGS, "--layers=1,x"], "--layers"),
        ("zero-top", [*RUN_ARGS, "--top=0"], "top"),
        ("negative-maps", [*RUN_ARGS, "--maps_per_layer=-1"], "maps_per_layer"),
        ("zero-examples", [*RUN_ARGS, "--max_examples=0"], "max_examples"),
        ("unknown-mode", [*RUN_ARGS, "--mode=magic"], "magic"),
    ],
    "fig4_evolution": [  # (--step: "does not apply to Fig. 4 ... use --steps".)
        ("step-list", [*RUN_ARGS, "--steps=a"], "--steps"),
        ("unknown-steps", [*RUN_ARGS, "--steps=7"], "7"),
        ("zero-maps", [*RUN_ARGS, "--maps_per_layer=0"], "maps_per_layer"),
        ("negative-examples", [*RUN_ARGS, "--max_examples=-5"], "max_examples"),
    ],
    "fig5_invariance": [
        ("unknown-kind", [*RUN_ARGS, "--kinds=spin"], "spin"),
        ("one-amount", [*RUN_ARGS, "--num_amounts=1"], "num_amounts"),
        ("negative-index", [*RUN_ARGS, "--indices=-1"], "-1"),
        ("index-list", [*RUN_ARGS, "--indices=1,b"], "--indices"),
        ("zero-images", [*RUN_ARGS, "--num_images=0"], "num_images"),
        ("layer-9", [*RUN_ARGS, "--layers=9"], "9"),
    ],
    "fig6_filters": [
        ("missing-compare", [*RUN_ARGS, "--compare={missing}"], "{missing}"),
        ("negative-layer2", [*RUN_ARGS, "--layer2_maps=-1"], "layer2_maps"),
    ],
    "fig7_occlusion": [
        ("index-list", [*RUN_ARGS, "--indices=a"], "--indices"),
        ("huge-index", [*RUN_ARGS, "--indices=99999999"], "99999999"),
        ("zero-patch", [*RUN_ARGS, "--patch=0"], "patch"),
        ("negative-stride", [*RUN_ARGS, "--stride=-1"], "stride"),
        ("unknown-fill", [*RUN_ARGS, "--fill=pink"], "pink"),
        ("zero-chunk", [*RUN_ARGS, "--chunk=0"], "chunk"),
    ],
    "table1_correspondence": [
        ("missing-parts", [*RUN_ARGS, "--parts={missing}"], "{missing}"),
        ("parts-folder", [*RUN_ARGS, "--parts={empty}"], "{empty}"),
        ("zero-random", [*RUN_ARGS, "--num_random=0"], "num_random"),
        ("layer-list", [*RUN_ARGS, "--layers=x"], "--layers"),
    ],
    "train_imagenet": [
        ("no-workdir", [], "--workdir"),
        ("unknown-arch", ["--workdir={new}", "--arch=nope"], "nope"),
        ("negative-steps", ["--workdir={new}", "--num_steps=-1"], "num_steps"),
        ("zero-epochs", ["--workdir={new}", "--num_epochs=0"], "num_epochs"),
        ("zero-batch", ["--workdir={new}", "--batch_size=0"], "batch"),
        ("negative-rate", ["--workdir={new}", "--learning_rate=-1"], "learning_rate"),
        ("remove-list", ["--workdir={new}", "--remove=a"], "--remove"),
        ("unknown-crops", ["--workdir={new}", "--train_crops=x"], "train_crops"),
        ("unknown-dataset", ["--workdir={new}", "--dataset=nonsense", "--data_dir={data}"],
         "nonsense"),
        ("unknown-split", ["--workdir={new}", "--flagfile=quickstart.flags", *QUICK,
                           "--train_split=nope"], "nope"),
        ("file-workdir", ["--workdir={file}", "--flagfile=quickstart.flags", *QUICK], "{file}"),
        ("other-recipe", ["--workdir={run}", "--flagfile=quickstart.flags", *QUICK],
         "another configuration (arch zfnet_tiny -> zfnet_small"),
        ("missing-ids", ["--workdir={new}", "--flagfile=quickstart.flags", *QUICK,
                         "--include_ids={missing}"], "{missing}"),
    ],
    "compute_mean": [
        ("unknown-dataset", ["--dataset=nonsense", "--data_dir={data}"], "nonsense"),
        ("zero-examples", ["--flagfile=quickstart.flags", *QUICK, "--mean_max_examples=0"],
         "mean_max_examples"),
    ],
    "ablation": [
        ("row-13", ["--workdir={new}", "--all", "--rows=13"], "13"),
        ("row-list", ["--workdir={new}", "--rows=x"], "--rows"),
        ("remove-9", ["--workdir={new}", "--remove=9"], "9"),
        ("unknown-base", ["--workdir={new}", "--base=vgg"], "vgg"),
        ("file-workdir", ["--workdir={file}", "--flagfile=quickstart.flags", *QUICK],
         "{file}"),
    ],
    "dedup": [
        ("unknown-source", ["--source=nonsense:train", "--target=nonsense:test",
                            "--workdir={new}"], "nonsense"),
        ("no-split", ["--source=imagenet2012", "--target=caltech101:train", "--workdir={new}"],
         "DATASET:SPLIT"),
        ("threshold-2", ["--source=a:train", "--target=b:train", "--workdir={new}",
                         "--threshold=2"], "threshold"),
        ("size-1", ["--source=a:train", "--target=b:train", "--workdir={new}", "--size=1"],
         "size"),
        ("zero-k", ["--source=a:train", "--target=b:train", "--workdir={new}", "--k=0"], "k"),
        ("zero-chunk", ["--source=a:train", "--target=b:train", "--workdir={new}",
                        "--chunk_size=0"], "chunk_size"),
        ("zero-batch", ["--source=a:train", "--target=b:train", "--workdir={new}",
                        "--batch_size=0"], "batch_size"),
        ("unknown-split", ["--source=fashion_mnist_debian:nope",
                           "--target=fashion_mnist_debian:test", "--data_dir={data}",
                           "--workdir={new}"], "nope"),
        ("file-workdir", ["--source=fashion_mnist_debian:test[:8]",
                          "--target=fashion_mnist_debian:test[:4]", "--data_dir={data}",
                          "--workdir={file}"], "{file}"),
    ],
    "evaluate": [
        ("missing-workdir", ["--workdirs={missing}"], "{missing} does not exist"),
        ("empty-workdir", ["--workdirs={empty}"], "has no config.json"),
        ("file-workdir", ["--workdirs={file}"], "{file} is a file"),
        ("no-workdirs", ["--workdirs="], "workdir"),
        ("unknown-crops", ["--workdirs={run}", "--crops=five"], "five"),
        ("negative-step", ["--workdirs={run}", "--step=-1"], "-1"),
        ("zero-batch", ["--workdirs={run}", "--eval_batch=0"], "got 0"),
        ("labels", ["--workdirs={run}", "--labels=a,b"], "labels"),
        ("unknown-split", ["--workdirs={run}", "--split=nope"], "nope"),
        ("file-out", ["--workdirs={run}", "--out={file}"], "{file}"),
    ],
    "import_weights": [
        ("unknown-source", ["--source=vgg", "--file={file}", "--workdir={new}"], "vgg"),
        ("missing-file", ["--source=pytorchcv:zfnet", "--file={missing}.safetensors",
                          "--workdir={new}"], "{missing}"),
        ("not-weights", ["--source=pytorchcv:zfnet", "--file={file}", "--workdir={new}"],
         "{file}"),
        ("workdir-with-run", ["--source=pytorchcv:zfnet", "--file={missing}.safetensors",
                              "--workdir={run}"], "{run}"),
    ],
    "report": [
        ("missing-workdir", ["--workdirs={missing}", "--out={new}"], "{missing}"),
        ("empty-workdir", ["--workdirs={empty}", "--out={new}"], "{empty}"),
        ("file-out", ["--workdirs={run}", "--out={file}"], "{file}"),
        ("no-workdirs", ["--workdirs=", "--out={new}"], "workdirs"),
    ],
    "transfer": [
        ("unknown-table", ["--table=9", "--run={run}", "--workdir={new}"], "9"),
        ("missing-run", ["--table=7", "--run={missing}", "--workdir={new}"], "{missing}"),
        ("empty-run", ["--table=7", "--run={empty}", "--workdir={new}"], "has no config.json"),
        ("zero-n", ["--table=4", "--run={run}", "--workdir={new}", "--n=0"], "--n"),
        ("n-list", ["--table=4", "--run={run}", "--workdir={new}", "--n=a"], "--n"),
        ("zero-folds", ["--table=4", "--run={run}", "--workdir={new}", "--folds=0"], "folds"),
        ("negative-grid", ["--table=7", "--run={run}", "--workdir={new}", "--grid=-1"], "grid"),
        ("class-list", ["--table=7", "--run={run}", "--workdir={new}", "--classes=x"],
         "--classes"),
        ("no-caltech256", ["--table=5", "--run={run}", "--workdir={new}"], "--dataset"),
        ("file-workdir", ["--table=7", "--run={run}", "--workdir={file}"], "{file} is a file"),
        ("unknown-dataset", ["--table=7", "--run={run}", "--workdir={new}",
                             "--dataset=nonsense"], "nonsense"),
        ("unknown-layer", ["--table=4", "--run={run}", "--workdir={new}", "--layer=9",
                           "--dataset=fashion_mnist_debian", "--split=test"], "9"),
    ],
}
# Fig. 4 reads several checkpoints: its --step is refused whatever its value.
SAYS = {("fig4_evolution", "negative-step"): "use --steps",
        ("fig4_evolution", "unknown-step"): "use --steps",
        # Fig. 6 reads no images unless asked for layer 2.
        ("fig6_filters", "unknown-split"): "--split applies to the layer-2 projections only",
        ("fig6_filters", "unknown-dataset"): "--dataset applies to the layer-2 projections only"}
BINARIES = sorted([*ANALYSES, *(b for b in OWN if b not in ANALYSES)])
CASES = [(b, i, args, SAYS.get((b, i), says)) for b in BINARIES
         for i, args, says in COMMON + (ANALYSIS_CASES if b in ANALYSES else []) + OWN.get(b, [])]


def test_every_binary_has_its_cases():
  shipped = sorted(f[:-3] for f in os.listdir(os.path.join(os.path.dirname(TESTS_DIR),
                                                           "experiments"))
                   if f.endswith(".py") and f not in ("__init__.py", "cli.py", "common.py"))
  assert BINARIES == shipped


def _snapshot(*paths) -> dict:
  out = {}
  for path in paths:
    if os.path.isfile(path):
      with open(path, "rb") as f:
        out[path] = f.read()
    for root, dirs, files in os.walk(path):
      out[root] = sorted(dirs)
      for name in files:
        with open(os.path.join(root, name), "rb") as f:
          out[os.path.join(root, name)] = f.read()
  return out


@pytest.fixture(scope="module", name="outcomes")
def _outcomes(tmp_path_factory, fashion_run, fashion_data_dir):
  root = tmp_path_factory.mktemp("command_lines")
  paths = {"run": str(root / "run"), "empty": str(root / "empty"), "file": str(root / "notes.txt"),
           "missing": str(root / "missing"), "new": str(root / "new"), "data": fashion_data_dir}
  shutil.copytree(fashion_run[0], paths["run"])
  os.makedirs(paths["empty"])
  with open(paths["file"], "w", encoding="utf-8") as f:
    f.write("not a run\n")
  before = _snapshot(paths["run"], paths["empty"], paths["file"])
  cases = [{"binary": b, "args": [a.format(**paths) for a in args]} for b, _, args, _ in CASES]
  cases_path, results_path = root / "cases.json", root / "results.json"
  cases_path.write_text(json.dumps(cases), encoding="utf-8")
  proc = run_python(os.path.join(TESTS_DIR, "command_lines.py"), str(cases_path),
                    str(results_path), timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  results = json.loads(results_path.read_text(encoding="utf-8"))
  changed = [p for p, v in _snapshot(paths["run"], paths["empty"], paths["file"]).items()
             if before.get(p) != v] + [p for p in before if not os.path.lexists(p)]
  created = [p for p in (paths["missing"], paths["new"]) if os.path.lexists(p)]
  return paths, dict(zip([(b, i) for b, i, _, _ in CASES], results)), changed, created


def test_no_command_line_changed_a_run_a_folder_or_a_file_or_created_one(outcomes):
  _, _, changed, created = outcomes
  assert not changed and not created, (changed, created)


@pytest.mark.parametrize("binary,case,args,says", CASES,
                         ids=[f"{b}-{i}" for b, i, _, _ in CASES])
def test_a_bad_command_line_ends_in_one_line_naming_the_value(outcomes, binary, case, args,
                                                              says):
  paths, results, _, _ = outcomes
  del args
  result = results[(binary, case)]
  lines = [l for l in result["stderr"].splitlines() if l.strip()]
  shown = f"exit {result['status']}\nstdout:\n{result['stdout'][-2000:]}\nstderr:\n" \
          f"{result['stderr'][-3000:]}"
  assert result["status"] not in (0, None), shown
  assert "Traceback" not in result["stderr"], shown
  assert 1 <= len(lines) <= 2, shown
  assert lines[0].startswith("error: ") or "FATAL Flags parsing error" in lines[0], shown
  assert says.format(**paths) in result["stderr"], shown
