r"""Trains a convnet with the recipe of Section 3 and evaluates it (Table 2).

ZFNet (Fig. 3) on ImageNet 2012, on every device of every host:

  python -m experiments.train_imagenet --flagfile=experiments/zfnet.flags \
      --workdir=runs/zfnet --data_dir=~/tensorflow_datasets

Also experiments/alexnet.flags (the paper's baseline) and zfnet_wide.flags
(Table 2 (b)). Any tfds image classification dataset works (--dataset). The
run resumes from the latest checkpoint in --workdir by itself; SIGTERM or
Ctrl-C saves a checkpoint and exits. Several hosts: run the same command on
each with --distributed (and --coordinator_address, --num_processes,
--process_id where the cluster does not provide them).
"""

import dataclasses
import os
import time

from absl import flags
import jax

from experiments import cli
from zf_jax import arch as arch_lib
from zf_jax.runs import trainer
from zf_jax.report import visualize
from zf_jax.train import TrainConfig

_D = trainer.RunConfig()
_T = TrainConfig()

flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, figures).",
                    required=True)
flags.DEFINE_enum("arch", _D.arch, arch_lib.names(), "Architecture preset.")
flags.DEFINE_string("dataset", _D.dataset, "tfds image classification dataset name.")
flags.DEFINE_string("data_dir", None, "tfds data_dir (default: tfds' own).")
flags.DEFINE_integer("batch_size", _T.batch_size, "Global batch size, over all devices.")
flags.DEFINE_float("num_epochs", _D.num_epochs, "Epochs to train (Section 3: 70).")
flags.DEFINE_integer("num_steps", None, "Steps to train; overrides --num_epochs.")
flags.DEFINE_float("learning_rate", _T.learning_rate, "Initial learning rate.")
flags.DEFINE_float("momentum", _T.momentum, "SGD momentum.")
flags.DEFINE_float("weight_decay", _T.weight_decay, "L2 weight decay on weights (not in paper).")
flags.DEFINE_float("dropout", _T.dropout, "Dropout rate on fc layers 6 and 7.")
flags.DEFINE_float("rms_radius", _T.rms_radius,
                   "Conv filter RMS renormalisation radius; 0 turns it off (Fig. 6 (a)).")
flags.DEFINE_float("first_layer_lr_scale", _T.first_layer_lr_scale,
                   "Multiplies conv1's weight learning rate (not in paper; 1/64^2 suits He "
                   "init on [-128, 128] pixels).")
flags.DEFINE_enum("init_scheme", _T.init_scheme, ["paper", "he"], "Weight initialisation.")
flags.DEFINE_enum("lr_schedule", _T.lr_schedule, list(trainer.train.LR_SCHEDULES),
                  "plateau: anneal 10x when validation error plateaus; manual: at "
                  "--lr_decay_epochs; constant.")
flags.DEFINE_list("lr_decay_epochs", [], "Epochs at which --lr_schedule=manual anneals.")
flags.DEFINE_integer("plateau_patience", _T.plateau_patience,
                     "Evaluations without improvement before annealing.")
flags.DEFINE_enum("train_crops", _D.train_crops, ["ten", "random"],
                  "ten: the paper's 10 fixed crops; random: random crops and flips.")
flags.DEFINE_integer("resize_size", None, "Smaller side before cropping (default 256/224 of "
                     "the arch's input).")
flags.DEFINE_integer("seed", _D.seed, "Seed for init, dropout and data order.")
flags.DEFINE_integer("eval_batch_size", None, "Global evaluation batch (default: --batch_size).")
flags.DEFINE_integer("eval_every_epochs", _D.eval_every_epochs,
                     "Validate every N epochs (0: only at the end).")
flags.DEFINE_list("final_eval_crops", list(_D.final_eval_crops), "center and/or ten.")
flags.DEFINE_integer("log_every", _D.log_every, "Steps between progress lines.")
flags.DEFINE_integer("checkpoint_every", _D.checkpoint_every, "Steps between checkpoints.")
flags.DEFINE_integer("keep_checkpoints", _D.keep_checkpoints, "Latest checkpoints kept.")
flags.DEFINE_list("keep_epochs", [str(e) for e in _D.keep_epochs],
                  "Epoch-end checkpoints kept forever (Fig. 4).")
flags.DEFINE_integer("mean_max_examples", None, "Images averaged for the mean image "
                     "(default: the whole train split).")
flags.DEFINE_bool("visualize", False, "After training, write the report: curves, layer-1 "
                  "filters (Fig. 6), top-9 projections (Fig. 2), occlusion (Fig. 7), evolution "
                  "(Fig. 4) into <workdir>/report.html.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (several hosts).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (--distributed).")
flags.DEFINE_integer("num_processes", None, "Number of processes (--distributed).")
flags.DEFINE_integer("process_id", None, "This process's index (--distributed).")

FLAGS = flags.FLAGS


def config_from_flags() -> trainer.RunConfig:
  """The RunConfig the flags describe (raises ValueError for inconsistent values)."""
  decay_epochs = cli.numbers("lr_decay_epochs", FLAGS.lr_decay_epochs, float)
  tcfg = TrainConfig(
      learning_rate=FLAGS.learning_rate, momentum=FLAGS.momentum, batch_size=FLAGS.batch_size,
      dropout=FLAGS.dropout, rms_radius=FLAGS.rms_radius or None,
      weight_decay=FLAGS.weight_decay, init_scheme=FLAGS.init_scheme,
      first_layer_lr_scale=FLAGS.first_layer_lr_scale,
      lr_schedule=FLAGS.lr_schedule, plateau_patience=FLAGS.plateau_patience)
  cfg = trainer.RunConfig(
      arch=FLAGS.arch, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
      resize_size=FLAGS.resize_size, train_crops=FLAGS.train_crops,
      num_epochs=FLAGS.num_epochs, num_steps=FLAGS.num_steps, seed=FLAGS.seed, train=tcfg,
      eval_batch_size=FLAGS.eval_batch_size, eval_every_epochs=FLAGS.eval_every_epochs,
      final_eval_crops=tuple(FLAGS.final_eval_crops), log_every=FLAGS.log_every,
      checkpoint_every=FLAGS.checkpoint_every, keep_checkpoints=FLAGS.keep_checkpoints,
      keep_epochs=cli.numbers("keep_epochs", FLAGS.keep_epochs),
      mean_max_examples=FLAGS.mean_max_examples, distributed=FLAGS.distributed,
      coordinator_address=FLAGS.coordinator_address, num_processes=FLAGS.num_processes,
      process_id=FLAGS.process_id)
  if decay_epochs:
    cfg = dataclasses.replace(cfg, lr_decay_epochs=decay_epochs)
  return cfg


def _accuracy(summary) -> str:
  names = {"center": "centre crop", "ten": "10 crops"}
  return ", ".join(f"{100 * (1 - r['top1_error']):.2f}% ({names.get(c, c)})"
                   for c, r in summary.get("eval", {}).items())


def main(_):
  start = time.time()
  try:
    summary = trainer.train_and_evaluate(config_from_flags(), FLAGS.workdir)
  except trainer.NonFiniteLossError as e:
    cli.fail(str(e), status=1)
  done = summary["status"] == "complete"
  line = f"{summary['status']}: {summary['step']}/{summary['total_steps']} steps"
  if done and summary.get("eval"):
    line += f"; {summary['dataset']} accuracy {_accuracy(summary)}"
  report = None
  if done and FLAGS.visualize and jax.process_count() > 1:
    if jax.process_index() == 0:  # The analyses run in one process; the mesh spans all.
      print("--visualize is skipped with several processes: run `python -m experiments."
            f"fig2_top9 --workdir={summary['workdir']}` (and the other figure binaries) "
            "on one host")
  elif done and FLAGS.visualize:
    report = os.path.join(summary["workdir"], "report.html")
    if not (summary.get("already_complete") and os.path.exists(report)):
      print("writing the visualisations (Figs. 2, 4, 6, 7) ...", flush=True)
      report = visualize.quick_report(summary["workdir"])
  print(f"{line}; {time.time() - start:.0f} s; outputs in {summary['workdir']}")
  if report:
    print(f"report: {report}")


if __name__ == "__main__":
  cli.run(main)
