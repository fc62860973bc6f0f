r"""Correspondence analysis: reproduces Table 1 and Fig. 8 of the paper (Section 4.3).

Masks the same part in N images of one class, and random parts of the same
size, and measures how consistently each mask changes the features at layers
5 and 7 (zf_jax.analyses.correspondence says how Delta is normalised and what the ±
means). On the embedded Fashion-MNIST run of the README, with the built-in
parts (5 T-shirts; sleeves and neck in the role of the eyes and nose):

  python -m experiments.table1_correspondence --workdir=runs/quickstart

Any other dataset needs a parts file (format: zf_jax.analyses.correspondence.PARTS_FORMAT),
e.g. 5 frontal dog images of the ImageNet validation set, as in the paper:

  python -m experiments.table1_correspondence --workdir=runs/zfnet \
      --parts=dog_faces.json --num_random=100

Writes <workdir>/tables/table1.{md,json} (the paper's numbers beside ours),
<workdir>/figures/table1_parts.png (Fig. 8: each image, then each part masked,
then random masks) and the "Table 1" section of <workdir>/report.html.
"""

import numpy as np
from absl import flags
from matplotlib.patches import Rectangle

from experiments import cli, common
from zf_jax.analyses import correspondence, source
from zf_jax.report import figures, page, tables

flags.DEFINE_string("parts", None, "Part boxes, a JSON file (see zf_jax.analyses.correspondence."
                    "PARTS_FORMAT); default: the built-in ones of the dataset, if any.")
flags.DEFINE_integer("num_random", 50, "Random-part draws (each masks every image once).",
                     lower_bound=1)
flags.DEFINE_integer("seed", 0, "numpy seed of the random boxes.")
flags.DEFINE_list("layers", ["5", "7"], "The paper's layer numbers to measure at.")
flags.DEFINE_integer("random_columns", 3, "Random masks shown per image in the figure.",
                     lower_bound=0)

FLAGS = flags.FLAGS


def _layers(values) -> tuple[int, ...]:
  layers = cli.numbers("layers", values)
  if not layers:
    raise ValueError("--layers needs at least one layer number, e.g. 5,7")
  return layers


def parts_figure(images: np.ndarray, masked: list[np.ndarray], boxes: list[np.ndarray],
                 titles: list[str], row_labels: list[str]):
  """Fig. 8: per image, the original, then each masking with its box outlined in red.

  images: (N, S, S, 3) uint8; masked[c]: (N, S, S, 3) uint8 of column c;
  boxes[c]: (N, 4) its boxes.
  """
  rows = [[images[i]] + [m[i] for m in masked] for i in range(len(images))]
  cols = len(rows[0])
  titles = [["original"] + list(titles)] + [[""] * cols] * (len(rows) - 1)
  fig = figures.image_rows(rows, titles, row_labels)
  for i in range(len(rows)):
    for c, b in enumerate(boxes):
      y0, x0, y1, x1 = b[i]
      fig.axes[i * cols + c + 1].add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0,
                                                     fill=False, ec="red", lw=1))
  return fig


def main(_):
  layers = _layers(FLAGS.layers)
  src = common.open_source()
  dataset = src.icfg.dataset
  parts = (correspondence.load_parts(FLAGS.parts) if FLAGS.parts
           else correspondence.builtin_parts(dataset))
  correspondence.check_parts(parts, dataset=dataset, split=src.split,
                             image_size=src.icfg.image_size)
  ex = source.load_examples(src, parts.indices)
  correspondence.check_labels(parts, ex["label"])
  result = correspondence.analyse(src.params, src.arch, ex["image"], parts,
                                  num_random=FLAGS.num_random, seed=FLAGS.seed, layers=layers,
                                  batch_size=FLAGS.batch_size)
  labels = sorted(set(int(l) for l in ex["label"]))
  class_name = ", ".join(src.class_name(l) for l in labels)
  markdown, table = correspondence.table1(result, parts, dataset=dataset, split=src.split,
                                          class_name=class_name)
  table["workdir"], table["step"] = src.run.workdir, src.run.step
  md_path, json_path = tables.write_table(FLAGS.workdir, "table1", markdown, table)

  size = parts.image_size
  columns = [(name, parts.boxes[name]) for name in parts.names]
  columns += [(f"random {r + 1}", result["random_boxes"][r])
              for r in range(min(FLAGS.random_columns, FLAGS.num_random))]
  masked = [source.display(src, np.asarray(correspondence.occlude(
      ex["image"], correspondence.box_masks(b, size)))) for _, b in columns]
  fig = parts_figure(source.display(src, ex["image"]), masked, [b for _, b in columns],
                     [name for name, _ in columns], [f"#{i}" for i in parts.indices])
  fig_path = figures.save(fig, page.figure_path(FLAGS.workdir, "table1_parts.png"))

  comparable = ("" if dataset == correspondence.IMAGENET else
                f"NOT ImageNet: these are {dataset} parts, not the paper's dog faces, so the "
                "paper's numbers shown beside ours are not comparable with them.\n\n")
  text = (f"{comparable}Section 4.3: the same part is masked (grey) in {len(parts.indices)} "
          f"images of class {class_name} ({', '.join(parts.names)}), and random parts of the same "
          f"size ({FLAGS.num_random} draws). A lower mean feature sign change means masking the "
          "part changes the features more consistently across images: implicit correspondence. "
          "The figure is Fig. 8's: original, each part masked, random masks.")
  random5 = result["random"].get(5)
  items = {"images": ", ".join(map(str, parts.indices)), "step": src.run.step}
  if random5:
    items["random, layer 5"] = f"{random5['mean']:.3f} ± {random5['std']:.3f}"
  html_path = page.add_section(FLAGS.workdir, "table1", "Table 1: correspondence", text=text,
                            figures=[fig_path], tables=["table1"], items=items)
  print(markdown)
  print(f"Table 1 written to {md_path} and {json_path}")
  print(f"Fig. 8 (images and masks) written to {fig_path}")
  print(f"Report: {html_path}")


if __name__ == "__main__":
  cli.run(main)
