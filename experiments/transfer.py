r"""Tables 4-7 and Fig. 9 (Sections 5.2, 5.3): a trained network's features on other datasets.

  python -m experiments.transfer --table=4 --run=runs/zfnet --workdir=runs/transfer
  python -m experiments.transfer --table=5 --run=runs/zfnet --workdir=runs/transfer \
      --dataset=folder:$HOME/data/caltech256 --split=256_ObjectCategories
  python -m experiments.transfer --table=fig9 ...   (the same dataset as Table 5)
  python -m experiments.transfer --table=6 --run=runs/zfnet --workdir=runs/transfer
  python -m experiments.transfer --table=7 --run=runs/zfnet --workdir=runs/transfer [--n=60 ...]

--run is a trained workdir (python -m experiments.train_imagenet); its layers
stay fixed. Tables 4, 5 and Fig. 9 sample --folds folds of --n training and
up to --n_test test images per class from all images of --split, fit a
softmax on layer 7's features, and (unless --noscratch) train the same
architecture from scratch on each fold's training images for
--scratch_steps steps. Table 6 fits a 20-way softmax on voc/2012's train
images and scores per-class AP on its validation images (the test labels
are not public). Table 7 fits a linear SVM on each layer and a softmax on
layers 5 and 7. Each writes <workdir>/tables/<table>.{md,json} (the paper's
numbers beside ours), Fig. 9 its PNG, and a section of <workdir>/report.html.
Features are cached in <workdir>/features/, from-scratch runs (which resume
by themselves) in <workdir>/scratch/.

Defaults: --table=4 and 7 read tfds' caltech101 (split train+test: the paper
samples from all images); 5 and fig9 need --dataset=folder:<Caltech-256>
(BUILD.md); 6 reads voc/2012. Any tfds classification dataset works, e.g.
the embedded default: pretrain on some Fashion-MNIST classes
(--classes=0,1,2,3,4), transfer to the others:

  python -m experiments.transfer --table=fig9 --run=runs/fashion_0-4 \
      --dataset=fashion_mnist_debian --split=test --classes=5,6,7,8,9 \
      --workdir=runs/transfer
"""

import dataclasses
import os

import jax
from absl import flags

from experiments import cli
from zf_jax.files import check_folder
from zf_jax.options import numbers
from zf_jax.runs import trainer
from zf_jax.runs import workdir as workdir_lib
from zf_jax.section5 import transfer
from zf_jax.report import page
from zf_jax.section5.features import Target, check_layers, extract

flags.DEFINE_enum("table", None, list(transfer.EXPERIMENTS), "Which table (or Fig. 9).",
                  required=True)
flags.DEFINE_string("run", None, "Trained workdir whose layers are the features.",
                    required=True)
flags.DEFINE_string("workdir", None, "Where tables, figures, report.html, cached features and "
                    "from-scratch runs go.", required=True)
flags.DEFINE_integer("step", None, "Checkpoint of --run (default: the latest).")
flags.DEFINE_string("dataset", None, "tfds dataset or folder:<root> (default: caltech101 for "
                    "Tables 4 and 7, voc/2012 for 6; Table 5 and fig9 need one).")
flags.DEFINE_string("data_dir", None, "tfds data_dir of --dataset (default: --run's).")
flags.DEFINE_string("split", None, "Split the folds are drawn from; Table 6: the training "
                    "split (default: train+test for caltech101, train for voc/2012).")
flags.DEFINE_string("test_split", "validation", "Table 6: the split scored.")
flags.DEFINE_list("classes", [], "Use these classes of --dataset only (e.g. the ones --run "
                  "was not trained on).")
flags.DEFINE_list("n", [], "Training images per class (default: the paper's: Table 4 15,30; "
                  "5 15,30,45,60; fig9 1,2,3,6,10,15,30,45,60; 7 30).")
flags.DEFINE_integer("folds", 5, "Random train/test folds.")
flags.DEFINE_integer("n_test", 50, "Test images per class, at most.")
flags.DEFINE_integer("seed", 0, "Seed of the folds.")
flags.DEFINE_float("l2", transfer.Settings.l2, "Softmax: weight of (1/2)|w|^2 beside the mean "
                   "cross-entropy, on standardised features.")
flags.DEFINE_float("svm_c", transfer.Settings.svm_c, "Linear SVM's C (Table 7).")
flags.DEFINE_integer("layer", None, "Tables 4, 5, fig9: the layer whose features the softmax "
                     "reads (default: the top hidden layer, 7 as in the paper); another layer's "
                     "table is named <table>_layer<L>.")
flags.DEFINE_integer("grid", 6, "Conv maps are max-pooled to at most grid x grid before a "
                     "classifier reads them (0: whole maps).")
flags.DEFINE_integer("batch_size", None, "Images per forward pass (default: --run's).")
flags.DEFINE_bool("scratch", True, "Tables 4, 5, fig9: also train from scratch on each fold.")
flags.DEFINE_integer("scratch_steps", transfer.Settings.scratch_steps,
                     "Training steps of each from-scratch run.")

cli.define_overwrite("a from-scratch run in --workdir/scratch/ trained with another recipe "
                     "or on other images (another --run, --scratch_steps, --seed...)")

FLAGS = flags.FLAGS
DEFAULT_N = {"4": (15, 30), "5": (15, 30, 45, 60), "fig9": (1, 2, 3, 6, 10, 15, 30, 45, 60),
             "7": (30,)}


def plan(flag_values=FLAGS) -> tuple[Target, tuple[int, ...], transfer.Settings]:
  """(target, n per class, settings) of the request; a one-line ValueError if it makes no sense."""
  table = flag_values.table
  dataset = flag_values.dataset or {"4": "caltech101", "7": "caltech101",
                                    "6": "voc/2012"}.get(table)
  if dataset is None:
    raise ValueError(f"--table={table} is Caltech-256, which tfds does not download: give "
                     "--dataset=folder:<root> --split=<the folder of class folders> (BUILD.md), "
                     "or any tfds dataset")
  split = flag_values.split or ("train+test" if dataset == "caltech101" else "train")
  ns = tuple(numbers("n", flag_values.n)) if flag_values.n else DEFAULT_N.get(table, ())
  bad = [n for n in ns if n < 1]
  if bad:
    raise ValueError(f"--n: {bad[0]} training images per class; give numbers >= 1")
  for name in ("folds", "n_test", "scratch_steps"):
    if flag_values[name].value < 1:
      raise ValueError(f"--{name} must be >= 1, got {flag_values[name].value}")
  if flag_values.l2 < 0 or flag_values.svm_c <= 0:
    raise ValueError(f"need --l2 >= 0 and --svm_c > 0, got {flag_values.l2}, "
                     f"{flag_values.svm_c}")
  if flag_values.grid < 0:
    raise ValueError(f"--grid must be >= 0 (0: whole maps), got {flag_values.grid}")
  target = Target(dataset=dataset, split=split, data_dir=flag_values.data_dir,
                  classes=tuple(numbers("classes", flag_values.classes)))
  settings = transfer.Settings(num_folds=flag_values.folds, n_test=flag_values.n_test,
                               seed=flag_values.seed, l2=flag_values.l2,
                               svm_c=flag_values.svm_c, scratch_steps=flag_values.scratch_steps)
  return target, ns, settings


def _notes(run, target, settings, extra=()) -> list[str]:
  return [f"Features: {run.arch.name} from {run.workdir} (step {run.step}), trained on "
          f"{run.config.dataset}; centre crop, the run's own preprocessing; conv maps "
          f"max-pooled to at most {FLAGS.grid}x{FLAGS.grid}.",
          f"Protocol: {settings.num_folds} folds (seed {settings.seed}) of n training and up to "
          f"{settings.n_test} test images per class from {target.describe()}; mean per-class "
          f"accuracy, ± its std over folds. Softmax: L-BFGS, l2 {settings.l2:g} on "
          "standardised features.", *extra]


def main(_):
  target, ns, settings = plan()
  check_folder(FLAGS.workdir, "workdir")  # Before the features and the runs, not after.
  run_wd = workdir_lib.Workdir(FLAGS.run)
  cfg, _ = run_wd.read_config()
  if cfg.cpu_devices:  # The run's devices, before JAX starts: from-scratch runs train alike.
    trainer.use_cpu_devices(cfg.cpu_devices)
  target = dataclasses.replace(target, data_dir=target.data_dir or cfg.data_dir)
  run = run_wd.open(FLAGS.step, mesh=workdir_lib.make_mesh())
  root = os.path.abspath(FLAGS.workdir)
  # From-scratch runs differ only in their data: they compile the same steps, once.
  jax.config.update("jax_compilation_cache_dir", os.path.join(root, "scratch", "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  cache = os.path.join(root, "features")
  top = [l for l in run.arch.conv_layers] + [f.layer for f in run.arch.fcs]
  table = FLAGS.table
  print(f"{transfer.TITLES[table]}: {run.arch.name} ({run.workdir}) on {target.describe()}",
        flush=True)

  if table == "6":
    test = dataclasses.replace(target, split=FLAGS.test_split)
    layer = top[-1]
    train_fs = extract(run, target, (layer,), grid=FLAGS.grid, batch_size=FLAGS.batch_size,
                       cache_dir=cache)
    if train_fs.labels.ndim != 2:
      raise ValueError(f"--table=6 needs a multi-label dataset like voc/2012; "
                       f"{target.dataset} has one label per image (use --table=4)")
    test_fs = extract(run, test, (layer,), grid=FLAGS.grid, batch_size=FLAGS.batch_size,
                      cache_dir=cache)
    result = transfer.voc_table(train_fs, test_fs, layer, settings.l2)
    title = transfer.table_title(table, test, run)
    notes = [f"Softmax on layer {layer}'s features of {target.describe()} "
             f"({result['train_images']} images with a non-difficult object), scored on "
             f"{test.describe()} ({result['test_images']} images): PASCAL VOC 2012's test "
             "labels are not public, so ours are validation numbers; the paper's are test "
             "numbers. AP as VOC's devkit computes it; difficult objects ignored."]
    md = transfer.voc_markdown(title, result, notes)
    out = transfer.write(root, "table6", md, {"title": title, **result}, title=title,
                         text="Section 5.2: a 20-way softmax on the fixed features.")
  elif table == "7":
    conv = list(run.arch.conv_layers)
    fc = [f.layer for f in run.arch.fcs]
    rows = [("svm", l) for l in conv + fc[-1:]] + [("softmax", l) for l in conv[-1:] + fc[-1:]]
    layers = check_layers(run.arch, [l for _, l in rows])
    fs = extract(run, target, layers, grid=FLAGS.grid, batch_size=FLAGS.batch_size,
                 cache_dir=cache)
    results = {n: transfer.layer_table(fs, n, rows, settings) for n in ns}
    title = transfer.table_title(table, target, run)
    md = "\n".join(transfer.layers_markdown(title, n, results[n], _notes(
        run, target, settings, [f"Linear SVM: scikit-learn's LinearSVC, C {settings.svm_c:g} "
                                "on standardised features."])) for n in ns)
    out = transfer.write(root, "table7", md, {"title": title, "rows": {
        str(n): r for n, r in results.items()}}, title=title,
        text="Section 5.3: a classifier on each layer's fixed features; the paper finds "
             "higher layers more discriminative.")
  else:
    layer = top[-1] if FLAGS.layer is None else check_layers(run.arch, [FLAGS.layer])[0]
    fs = extract(run, target, (layer,), grid=FLAGS.grid, batch_size=FLAGS.batch_size,
                 cache_dir=cache)
    curve = transfer.fold_curve(run, target, fs, ns, settings, root,
                                scratch=FLAGS.scratch, overwrite=FLAGS.overwrite)
    title = transfer.table_title(table, target, run) + (
        f" (softmax on layer {layer})" if layer != top[-1] else "")
    extra = [f"From scratch: {run.arch.name} re-initialised and trained by the ordinary "
             f"trainer on each fold's training images for {settings.scratch_steps} steps with "
             "--run's recipe." if FLAGS.scratch else "From scratch: not run (--noscratch)."]
    md = transfer.curve_markdown(table, title, ns, curve, _notes(run, target, settings, extra),
                                 pretrained_on=run.config.dataset)
    name = ("fig9" if table == "fig9" else f"table{table}") + (
        f"_layer{layer}" if layer != top[-1] else "")
    pngs = [transfer.plot_curve(title, curve, page.figure_path(root, f"{name}.png"),
                                target.dataset, run.config.dataset)] if table == "fig9" else []
    out = transfer.write(root, name, md, {"title": title, "n": list(ns),
                                          **transfer.curve_json(curve)},
                         title=title, pngs=pngs,
                         text=f"Section 5.2: a softmax on the fixed layer-{layer} features "
                              "against the same network trained from scratch on the same "
                              "images.")
  print(f"table: {out[0]}\nreport: {out[2]}")


if __name__ == "__main__":
  cli.run(main)
