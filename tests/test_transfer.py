"""Specifications of Section 5.2-5.3's transfer experiments (experiments.transfer).

One subprocess pretrains a zfnet_tiny on the tiny test dataset, then runs
the binary for Tables 4, 7 and 6 on fake `caltech101` / `voc/2012` data
served through tfds' mock_data, and Fig. 9 on an ImageFolder of generated
images; the test then checks what it wrote against independent computations.
"""

import json
import os
import textwrap

import numpy as np
import pytest

from conftest import run_module, run_python
from zf_jax.data import input_pipeline
from zf_jax.section5 import features as features_lib
from zf_jax.section5 import folds as folds_lib
from zf_jax.section5 import transfer as transfer_lib

SCRIPT = textwrap.dedent(r'''
  import json, os, sys
  import jax
  import numpy as np, tensorflow as tf, tensorflow_datasets as tfds
  import tiny_dataset
  from absl import flags
  from experiments import transfer as binary
  from zf_jax.runs import trainer
  from zf_jax.runs.config import RunConfig
  from zf_jax.train import TrainConfig

  out, data_dir = sys.argv[1], sys.argv[2]
  tiny_dataset.prepare(data_dir)
  run = os.path.join(out, "pretrained")
  trainer.train_and_evaluate(RunConfig(
      arch="zfnet_tiny", dataset=tiny_dataset.NAME, data_dir=data_dir, num_steps=4,
      train=TrainConfig(batch_size=8, init_scheme="he", dropout=0.0), eval_every_epochs=0,
      final_eval_crops=(), checkpoint_every=4, keep_epochs=()), run)

  rng = np.random.default_rng(0)
  tints = [(80, 0, 0), (0, 80, 0), (0, 0, 80)]
  def image(c):
    return tf.io.encode_png(np.clip(rng.integers(40, 170, (30, 34, 3)) + tints[c], 0, 255
                                    ).astype(np.uint8)).numpy()
  caltech = [(image(i % 3), i % 3) for i in range(27)]  # Classes 0, 1, 2: 9 images each.
  voc = [(image(i % 3), [i % 3] + ([5] if i % 4 == 0 else []), [i % 3]) for i in range(24)]

  def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
    if self.name == "caltech101":
      return tf.data.Dataset.from_tensor_slices(
          {"image": [e[0] for e in caltech], "label": np.array([e[1] for e in caltech])})
    def gen():
      for im, every, easy in voc:
        yield {"image": im, "labels": np.array(every), "labels_no_difficult": np.array(easy)}
    return tf.data.Dataset.from_generator(gen, output_signature={
        "image": tf.TensorSpec([], tf.string), "labels": tf.TensorSpec([None], tf.int64),
        "labels_no_difficult": tf.TensorSpec([None], tf.int64)})

  from zf_jax.runs.workdir import Workdir
  before = Workdir(run).open().params

  def main(*args):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["transfer", f"--run={run}", *args])
    binary.main(None)

  errors = {}
  for bad in (["--table=4", "--n=0"], ["--table=5"], ["--table=7", "--grid=-1"],
              ["--table=4", "--folds=0"]):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["transfer", "--run=x", "--workdir=y", *bad])
    try:
      binary.plan()
    except ValueError as e:
      errors[" ".join(bad)] = str(e)
  json.dump(errors, open(os.path.join(out, "errors.json"), "w"))
  main("--table=fig9", f"--dataset=folder:{out}/folder", "--split=all", "--n=1,3",
       "--folds=2", "--n_test=4", "--scratch_steps=2", f"--workdir={out}/t")
  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    main("--table=4", "--classes=0,1,2", "--n=2,4", "--folds=2", "--noscratch",
         f"--workdir={out}/t")
    main("--table=7", "--classes=0,1,2", "--n=3", "--folds=2", f"--workdir={out}/t")
    main("--table=6", f"--workdir={out}/t")
  after = Workdir(run).open().params
  same = all(np.array_equal(a, b) for a, b in zip(*(jax.tree.leaves(p) for p in (before, after))))
  json.dump({"unchanged": bool(same)}, open(os.path.join(out, "pretrained.json"), "w"))
''')


def _image_folder(root):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(1)
  for c, tint in enumerate(((90, 0, 0), (0, 90, 0))):
    folder = root / "all" / f"class{c}"
    folder.mkdir(parents=True)
    for i in range(6):
      pixels = np.clip(rng.integers(40, 160, (28, 31, 3)) + tint, 0, 255).astype(np.uint8)
      (folder / f"{i}.png").write_bytes(tf.io.encode_png(pixels).numpy())


def test_grid_max_pool_is_the_max_over_near_equal_bins():
  x = np.random.default_rng(0).normal(size=(2, 7, 5, 3)).astype(np.float32)
  got = np.asarray(features_lib.grid_max_pool(x, 3))
  rows, cols = [(0, 3), (2, 5), (4, 7)], [(0, 2), (1, 4), (3, 5)]  # floor / ceil of i*S/3.
  want = np.stack([np.stack([x[:, a:b, c:d].max(axis=(1, 2)) for c, d in cols], axis=1)
                   for a, b in rows], axis=1)
  np.testing.assert_array_equal(got, want)
  assert features_lib.grid_max_pool(x, 0) is x and features_lib.grid_max_pool(x, 8) is x


def test_transfer_binary_writes_every_table_from_fixed_features(tmp_path):
  _image_folder(tmp_path / "folder")
  script = tmp_path / "script.py"
  script.write_text(SCRIPT)
  result = run_python(str(script), str(tmp_path), str(tmp_path / "tfds"), timeout=900)
  assert result.returncode == 0, result.stderr[-6000:]
  out = tmp_path / "t"

  errors = json.loads((tmp_path / "errors.json").read_text())
  assert errors == {
      "--table=4 --n=0": "--n: 0 training images per class; give numbers >= 1",
      "--table=5": errors["--table=5"], "--table=7 --grid=-1": errors["--table=7 --grid=-1"],
      "--table=4 --folds=0": "--folds must be >= 1, got 0"}
  assert "--dataset=folder:<root>" in errors["--table=5"]
  assert "--grid must be >= 0" in errors["--table=7 --grid=-1"]

  # Table 4: the pretrained accuracies are those of an independent softmax (scikit-learn's,
  # same L2, same standardisation) on the cached layer-7 features and the same folds.
  from sklearn.linear_model import LogisticRegression  # pylint: disable=import-outside-toplevel
  table4 = json.loads((out / "tables" / "table4.json").read_text())
  cache = sorted(p for p in (out / "features").iterdir() if p.name.startswith("caltech101"))[0]
  with np.load(cache) as z:
    x, labels = z["layer7"].astype(np.float64), z["labels"]
  assert x.shape[0] == 27 and sorted(set(labels.tolist())) == [0, 1, 2]
  for n in (2, 4):
    folds = folds_lib.sample_folds(labels, n, n_test=50, num_folds=2, seed=0)
    ours = table4["pretrained"][str(n)]["folds"]
    for f, acc in zip(folds, ours):
      mean, std = x[f.train].mean(0), x[f.train].std(0)
      std = np.where(std > 1e-6 * (1 + np.abs(mean)), std, 1.0)
      clf = LogisticRegression(C=1 / (1e-3 * len(f.train)), tol=1e-10, max_iter=10_000)
      clf.fit((x[f.train] - mean) / std, labels[f.train])
      pred = clf.predict((x[f.test] - mean) / std)
      per_class = [np.mean(pred[labels[f.test] == c] == c) for c in range(3)]
      assert acc == pytest.approx(100 * np.mean(per_class), abs=1e-6)
    assert len(folds[0].test) == 3 * (9 - n)
  assert table4["scratch"] == {}
  md = (out / "tables" / "table4.md").read_text()
  assert "| ImageNet-pretrained convnet (paper) | - | - | 83.8 ± 0.5 | 86.5 ± 0.5 |" in md
  assert "| Non-pretrained convnet (ours) | not run | not run | - | - |" in md
  assert "| zf_tiny_images-pretrained convnet (ours) |" in md  # Not ImageNet: says so.

  # Table 7: one row per conv layer and layer 7 (SVM), softmax on 5 and 7.
  table7 = json.loads((out / "tables" / "table7.json").read_text())
  assert list(table7["rows"]["3"]) == ["SVM (1)", "SVM (2)", "SVM (3)", "SVM (4)", "SVM (5)",
                                       "SVM (7)", "Softmax (5)", "Softmax (7)"]
  assert all(len(c["folds"]) == 2 and 0 <= c["mean"] <= 100
             for c in table7["rows"]["3"].values())
  assert "| SVM (1) | 44.8 ± 0.7 | 24.6 ± 0.4 |" in (out / "tables" / "table7.md").read_text()

  # Table 6: per-class AP on the (fake) validation images. Classes 0-2 are scored; class 5
  # (bus) is only ever a difficult second object, so, like the absent classes, it has no
  # training image and no AP.
  table6 = json.loads((out / "tables" / "table6.json").read_text())
  assert list(table6["ap"]) == list(transfer_lib.VOC_CLASSES)
  scored = {name for name, ap in table6["ap"].items() if ap is not None}
  assert scored == {"aeroplane", "bicycle", "bird"}
  assert table6["test_images"] == 24 and "voc/2012:validation" in table6["title"]
  assert "| cat | 76.4 | 89.3 | 91.2 | - |" in (out / "tables" / "table6.md").read_text()

  # Layers 1-7 stayed as trained: the run's parameters are the same after every table.
  assert json.loads((tmp_path / "pretrained.json").read_text()) == {"unchanged": True}

  # Fig. 9 on an image folder, with from-scratch runs trained on each fold's images only.
  fig9 = json.loads((out / "tables" / "fig9.json").read_text())
  assert set(fig9["scratch"]) == {"1", "3"} and len(fig9["scratch"]["3"]["folds"]) == 2
  (ids_file,) = (out / "scratch" / "n3-fold1").glob("train_ids-*.txt")  # Named by content.
  ids = ids_file.read_text().split("\n")[1:-1]
  assert len(ids) == 6 and all(i.startswith("all/class") for i in ids)
  assert ids_file.name == f"train_ids-{input_pipeline.ids_digest(ids)[:12]}.txt"
  config = json.loads((out / "scratch" / "n3-fold1" / "config.json").read_text())
  assert config["include_ids"] == str(ids_file) and config["num_steps"] == 2
  assert (out / "figures" / "fig9.png").stat().st_size > 10_000
  report = (out / "report.html").read_text()
  assert all(title in report for title in ("Table 4.", "Table 6.", "Table 7.", "Fig. 9."))


def test_a_bad_request_gets_one_line_and_writes_nothing(tmp_path):
  result = run_module("experiments.transfer", "--table=4", "--run=nowhere", "--n=1,x",
                      f"--workdir={tmp_path / 'out'}")
  assert result.returncode == 2
  assert result.stderr.strip().count("\n") == 0 and "--n" in result.stderr
  assert not (tmp_path / "out").exists()
