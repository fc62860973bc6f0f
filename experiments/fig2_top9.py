r"""Fig. 2: the top 9 activations of feature maps over a split, projected to pixels (Section 4).

  python -m experiments.fig2_top9 --workdir=runs/zfnet --layers=1,2,3,4,5 --maps_per_layer=16

One streaming pass over the split keeps every map's 9 strongest activations
(one per image); each is projected by the deconvnet with its own image's
switches, beside the image patch its unit sees. Writes
figures/fig2_layer<l>.png, tables/fig2_top9.{md,json} and the report section.
"""

from absl import flags

from experiments import cli, common
from zf_jax.options import numbers
from zf_jax import deconv
from zf_jax.report import visualize

common.define_flags()
flags.DEFINE_list("layers", [], "Conv layers to show (default: all).")
flags.DEFINE_integer("maps_per_layer", 16, "Maps per layer, chosen at random; 0: all of them.",
                     lower_bound=0)
flags.DEFINE_integer("top", 9, "Activations kept per map (the paper: 9).", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of the choice of maps.")
flags.DEFINE_enum("mode", "deconvnet", list(deconv.MODES), "Projection: the paper's deconvnet, "
                  "backprop (gradient) or guided.")
flags.DEFINE_integer("max_examples", None, "Stream only the first N examples of the split.",
                     lower_bound=1)

FLAGS = flags.FLAGS


def main(_):
  src = common.open_source()
  paths = visualize.fig2(src, layers=numbers("layers", FLAGS.layers) or None,
                         maps_per_layer=FLAGS.maps_per_layer, k=FLAGS.top, seed=FLAGS.seed,
                         mode=FLAGS.mode, max_examples=FLAGS.max_examples)
  print("\n".join(paths))
  print(f"report: {src.run.workdir}/report.html")


if __name__ == "__main__":
  cli.run(main)
