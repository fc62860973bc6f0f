r"""Trains a convnet with the recipe of Section 3 and evaluates it (Table 2).

ZFNet (Fig. 3) on ImageNet 2012, on every device of every host:

  python -m experiments.train_imagenet --flagfile=zfnet.flags \
      --workdir=runs/zfnet --data_dir=~/tensorflow_datasets

Also alexnet.flags (the paper's baseline), zfnet_wide.flags (Table 2 (b))
and quickstart.flags (the embedded default), all in experiments/flagfiles/
and found by bare name. Every flag of the run is a field of
zf_jax.runs.config.RunConfig / zf_jax.train.TrainConfig, with the paper's
value as its default; flags after --flagfile override it. Any tfds image
classification dataset works (--dataset). The run resumes from the latest
intact checkpoint in --workdir by itself; SIGTERM or Ctrl-C saves a
checkpoint and exits. A --workdir trained with another recipe (another
--arch, rate, schedule, dataset...) is not resumed: the binary names the
fields that differ and stops, or with --overwrite trains it again from
scratch. Several hosts: run the same command on
each with --distributed (and --coordinator_address, --num_processes,
--process_id where the cluster does not provide them).
"""

import time

from absl import flags

from experiments import cli
from zf_jax.report import run_report, tables
from zf_jax.runs import config, trainer

flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, figures).",
                    required=True)
config.define_flags()
cli.define_overwrite("the run in --workdir when it was trained with another recipe")

FLAGS = flags.FLAGS


def _accuracy(summary) -> str:
  return ", ".join(f"{100 * (1 - r['top1_error']):.2f}% ({tables.CROP_NAMES.get(c, c)})"
                   for c, r in summary.get("eval", {}).items())


def main(_):
  start = time.time()
  cfg = config.from_flags()
  try:
    summary = trainer.train_and_evaluate(cfg, FLAGS.workdir, overwrite=FLAGS.overwrite)
  except trainer.NonFiniteLossError as e:
    cli.fail(str(e), status=1)
  report = run_report.after_training(summary) if cfg.visualize else None
  line = f"{summary['status']}: {summary['step']}/{summary['total_steps']} steps"
  if summary["status"] == "complete" and summary.get("eval"):
    line += f"; {summary['dataset']} accuracy {_accuracy(summary)}"
  print(f"{line}; {time.time() - start:.0f} s; outputs in {summary['workdir']}")
  if report:
    print(f"report: {report}")


if __name__ == "__main__":
  cli.run(main)
