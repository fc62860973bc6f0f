r"""Correspondence analysis: reproduces Table 1 and Fig. 8 of the paper (Section 4.3).

Masks the same part in N images of one class, and random parts of the same
size, and measures how consistently each mask changes the features at layers
5 and 7 (zf_jax.analyses.correspondence says how Delta is normalised and what the ±
means). On the embedded Fashion-MNIST run of the README, with the built-in
parts (5 T-shirts; sleeves and neck in the role of the eyes and nose):

  python -m experiments.table1_correspondence --workdir=runs/quickstart

Any other dataset needs a parts file (format: zf_jax.analyses.part_boxes.PARTS_FORMAT),
e.g. 5 frontal dog images of the ImageNet validation set, as in the paper:

  python -m experiments.table1_correspondence --workdir=runs/zfnet \
      --parts=dog_faces.json --num_random=100

Writes <workdir>/tables/table1.{md,json} (the paper's numbers beside ours),
<workdir>/figures/table1_parts.png (Fig. 8: each image, then each part masked,
then random masks) and the "Table 1" section of <workdir>/report.html, with
zf_jax.report.table1.table1 (what a notebook calls with an opened Source).
"""

from absl import flags

from experiments import cli, common
from zf_jax.options import numbers
from zf_jax.report import table1

common.define_flags()
flags.DEFINE_string("parts", None, "Part boxes, a JSON file (see zf_jax.analyses.part_boxes."
                    "PARTS_FORMAT); default: the built-in ones of the dataset, if any.")
flags.DEFINE_integer("num_random", 50, "Random-part draws (each masks every image once).",
                     lower_bound=1)
flags.DEFINE_integer("seed", 0, "numpy seed of the random boxes.")
flags.DEFINE_list("layers", ["5", "7"], "The paper's layer numbers to measure at.")
flags.DEFINE_integer("random_columns", 3, "Random masks shown per image in the figure.",
                     lower_bound=0)

FLAGS = flags.FLAGS


def _layers(values) -> tuple[int, ...]:
  layers = numbers("layers", values)
  if not layers:
    raise ValueError("--layers needs at least one layer number, e.g. 5,7")
  return layers


def main(_):
  layers = _layers(FLAGS.layers)
  out = table1.table1(common.open_source(), FLAGS.parts or None, num_random=FLAGS.num_random,
                      seed=FLAGS.seed, layers=layers, random_columns=FLAGS.random_columns)
  with open(out["markdown"], encoding="utf-8") as f:
    print(f.read())
  print(f"Table 1 written to {out['markdown']} and {out['json']}")
  print(f"Fig. 8 (images and masks) written to {out['figure']}")
  print(f"Report: {out['report']}")


if __name__ == "__main__":
  cli.run(main)
