r"""Evaluates trained runs and their ensemble: reproduces Table 2 of the paper.

One model, centre crop and the 10 crops of Section 3 ("1 convnet as per
Fig. 3"):

  python -m experiments.evaluate --workdirs=runs/zfnet --crops=center,ten

An ensemble averages the softmax outputs of several runs: pass their
workdirs. The paper's "5 convnets as per Fig. 3 – (a)" and "6 convnets, (a) &
(b) combined" (with (b) = --arch=zfnet_wide):

  python -m experiments.evaluate \
      --workdirs=runs/zfnet_1,runs/zfnet_2,runs/zfnet_3,runs/zfnet_4,runs/zfnet_5 \
      --labels=a1,a2,a3,a4,a5 --out=runs/table2_a
  python -m experiments.evaluate \
      --workdirs=runs/zfnet_1,runs/zfnet_2,runs/zfnet_3,runs/zfnet_4,runs/zfnet_5,runs/zfnet_wide \
      --out=runs/table2_ab

Each run's own preprocessing (image size, mean image) and latest checkpoint
(or --step) are used; the split is the dataset's validation split unless
--split says otherwise. Writes <out>/tables/table2.md and table2.json (out
defaults to the first workdir), with the paper's Table 2 beside ours.
"""

from absl import flags

from experiments import cli
from zf_jax.runs import evaluation

flags.DEFINE_list("workdirs", None, "Training workdirs; several make an ensemble.",
                  required=True)
flags.DEFINE_list("crops", ["center", "ten"], "center and/or ten (Section 3's 10 crops).")
flags.DEFINE_list("labels", None, "One row name per workdir (default: its arch name).")
flags.DEFINE_integer("step", None, "Checkpoint step of every run (default: each run's latest).")
flags.DEFINE_string("split", None, "Split to evaluate (default: validation, else test).")
flags.DEFINE_string("out", None, "Directory for tables/table2.{md,json} (default: the first "
                    "workdir).")
flags.DEFINE_integer("eval_batch", None, "Global evaluation batch (default: each run's own).")

FLAGS = flags.FLAGS


def main(_):
  out = evaluation.write_table2(FLAGS.workdirs, FLAGS.out, labels=FLAGS.labels,
                                crops=FLAGS.crops, split=FLAGS.split, step=FLAGS.step,
                                batch_size=FLAGS.eval_batch)
  if out["md_path"]:
    print(out["markdown"])
    print(f"Table 2 written to {out['md_path']} and {out['json_path']}")


if __name__ == "__main__":
  cli.run(main)
