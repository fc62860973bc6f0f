r"""Fig. 7: occlusion sensitivity of a few images (Section 4.2).

  python -m experiments.fig7_occlusion --workdir=runs/zfnet --indices=0,1,2 --patch=50 --stride=8

For every position of a grey square: (b) the total activation of the top
conv layer's strongest map, (c) that map's projection, (d) the probability
of the true class, (e) the most probable class. Writes
figures/fig7_occlusion.png, tables/fig7_occlusion.{md,json} and the report section.
"""

from absl import flags

from experiments import cli, common
from zf_jax.options import numbers
from zf_jax.analyses import source
from zf_jax.report import visualize

common.define_flags()
flags.DEFINE_list("indices", [], "Example indices of the split (default: one per class, "
                  "--num_images of them).")
flags.DEFINE_integer("num_images", 4, "Images when --indices is not given.", lower_bound=1)
flags.DEFINE_integer("patch", None, "Side of the grey square, pixels (default: 50 at 224 px, "
                     "scaled to the model's input).", lower_bound=1)
flags.DEFINE_integer("stride", None, "Step between square positions, pixels (default: 8 at "
                     "224 px, scaled).", lower_bound=1)
flags.DEFINE_enum("fill", "grey", list(visualize.FILLS), "Occluder: grey (the paper: the "
                  "mean image) or black (the neutral one where backgrounds are black, e.g. "
                  "Fashion-MNIST).")
flags.DEFINE_integer("chunk", 64, "Positions per batch (bounds memory).", lower_bound=1)

FLAGS = flags.FLAGS


def main(_):
  src = common.open_source()
  indices = numbers("indices", FLAGS.indices) or source.first_of_classes(
      src, FLAGS.num_images)
  if FLAGS.patch is not None and FLAGS.patch > src.arch.image_size:
    raise ValueError(f"--patch={FLAGS.patch} is larger than the model's "
                     f"{src.arch.image_size} px input")
  print(visualize.fig7(src, indices, patch=FLAGS.patch, stride=FLAGS.stride, fill=FLAGS.fill,
                       chunk=FLAGS.chunk))
  print(f"report: {src.run.workdir}/report.html")


if __name__ == "__main__":
  cli.run(main)
