r"""Fig. 5: feature invariance to vertical translation, scale and rotation (Section 4).

For a trained run (e.g. the README's quickstart):

  python -m experiments.fig5_invariance --workdir=runs/quickstart

Five validation images (the first of five classes, or --indices) are
translated vertically (-60..60 px at 224 px input, scaled with the input
size), zoomed (1..1.8) and rotated (0..360 degrees). For each amount the
figure plots the Euclidean distance between the feature vectors of the
transformed and the original image at layers 1 and 7 (cols 2, 3) and the
probability of the true label (col 4); col 1 shows the images transformed.
Writes <workdir>/figures/fig5_invariance.png, tables/fig5_invariance.{md,json}
(every curve) and the "Fig. 5" section of <workdir>/report.html, with
zf_jax.report.fig5.fig5 (what a notebook calls with an opened Source).
"""

from absl import flags

from experiments import cli, common
from zf_jax.options import numbers
from zf_jax.analyses import invariance
from zf_jax.report import fig5

common.define_flags()
flags.DEFINE_integer("num_images", 5, "Images to transform: the first of this many classes "
                     "(ignored with --indices).", lower_bound=1)
flags.DEFINE_list("indices", [], "Example indices in --split to transform (default: see "
                  "--num_images).")
flags.DEFINE_list("kinds", list(invariance.KINDS), "Transformations, any of "
                  f"{', '.join(invariance.KINDS)} (rows of the figure).")
flags.DEFINE_list("layers", ["1", "7"], "Feature layers compared (Fig. 5: 1 and 7).")
flags.DEFINE_integer("num_amounts", 25, "Amounts per transformation.", lower_bound=2)
flags.DEFINE_float("max_shift", None, "Largest vertical translation in pixels (default: 60 per "
                   "224 px of input).")
flags.DEFINE_float("max_scale", invariance.PAPER_MAX_SCALE, "Largest scale ratio.")

FLAGS = flags.FLAGS


def main(_):
  kinds = fig5.check_kinds(FLAGS.kinds)  # Before the run is opened: bad flags fail fast.
  layers = numbers("layers", FLAGS.layers)
  indices = numbers("indices", FLAGS.indices) or None
  out = fig5.fig5(common.open_source(), indices, num_images=FLAGS.num_images, kinds=kinds,
                  layers=layers, num_amounts=FLAGS.num_amounts, max_shift=FLAGS.max_shift,
                  max_scale=FLAGS.max_scale)
  print(f"Fig. 5 written to {out['figure']}, {out['markdown']} and {out['json']}; "
        f"report: {out['report']}")


if __name__ == "__main__":
  cli.run(main)
