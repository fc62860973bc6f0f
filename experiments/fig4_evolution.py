r"""Fig. 4: the evolution of chosen feature maps across the saved checkpoints (Section 4).

  python -m experiments.fig4_evolution --workdir=runs/zfnet --maps_per_layer=4

The trainer keeps the checkpoints of epochs 1, 2, 5, 10, 20, 30, 40, 64
(--keep_epochs). For each, one pass over the first --max_examples training
images finds every chosen map's strongest activation, projected to pixels.
Writes figures/fig4_evolution.png and the report section.
"""

from absl import flags

from experiments import cli, common
from zf_jax.options import numbers
from zf_jax.report import visualize

common.define_flags()
flags.DEFINE_list("steps", [], "Checkpoint steps (default: every checkpoint kept).")
flags.DEFINE_list("layers", [], "Conv layers (default: all).")
flags.DEFINE_integer("maps_per_layer", 4, "Maps per layer, chosen at random.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of the choice of maps.")
flags.DEFINE_integer("max_examples", 10_000, "Training examples searched per checkpoint "
                     "(0: the whole split).", lower_bound=0)

FLAGS = flags.FLAGS


def main(_):
  if FLAGS.step is not None:
    raise ValueError("--step does not apply to Fig. 4 (it reads several checkpoints): use --steps")
  path = visualize.fig4(FLAGS.workdir, steps=numbers("steps", FLAGS.steps) or None,
                        layers=numbers("layers", FLAGS.layers) or None,
                        maps_per_layer=FLAGS.maps_per_layer, seed=FLAGS.seed,
                        max_examples=FLAGS.max_examples or None, dataset=FLAGS.dataset,
                        split=FLAGS.split or "train", data_dir=FLAGS.data_dir,
                        batch_size=FLAGS.batch_size)
  print(path)
  print(f"report: {FLAGS.workdir}/report.html")


if __name__ == "__main__":
  cli.run(main)
