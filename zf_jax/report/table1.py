"""Table 1 and Fig. 8 of Zeiler & Fergus (2014): Section 4.3, "Correspondence Analysis".

The paper masks the same part (right eye, left eye, nose) in 5 frontal dog
images, and random parts, and reports how consistently each mask changes
the features at layers 5 and 7 ("Mean Feature Sign Change", Table 1; the
masked images are Fig. 8). `zf_jax.analyses.correspondence` computes the
numbers; this module lays them out beside the paper's and writes them into a
run's report: `table1` does it all for a `Source` (a run and a split, see
`zf_jax.analyses.source`), writing `<workdir>/tables/table1.{md,json}`,
`<workdir>/figures/table1_parts.png` and the "Table 1" section of
`<workdir>/report.html`. The experiment binary
`experiments.table1_correspondence` calls it with its flags; a notebook can
call it with a `Source` it opened.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.patches import Rectangle

from zf_jax.analyses import correspondence, part_boxes, source
from zf_jax.analyses.correspondence import PAPER_TABLE1, PAPER_TITLE
from zf_jax.analyses.part_boxes import PartBoxes
from zf_jax.report import figures, page, tables

NAME = "table1"  # The table's file stem and the report section's key.
FIGURE = "table1_parts.png"

NOTES = (
    "Mean feature sign change = Delta_l / (N (N-1) D_l): the paper's Delta_l = sum over image "
    "pairs i != j of the Hamming distance between sign(eps_i) and sign(eps_j), as a fraction "
    "of the feature length D_l, averaged over the pairs. The raw Delta_l is in the JSON.",
    "± is the std over the image pairs (named parts) and over the pairs of all random draws "
    "pooled (random); the JSON also has the std of the per-draw means.",
    "Random: in each draw every image gets its own randomly placed box of the same size as one "
    "of the named parts' boxes (draws cycle through the parts), inside the image's object box.",
    "Masks are filled with 0, the mean pixel (grey) of the preprocessed images.",
)


def _pm(stats: Mapping[str, float]) -> str:
  return f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def render(result: Mapping[str, Any], parts: PartBoxes, *, dataset: str, split: str,
           class_name: str | None = None) -> tuple[str, dict[str, Any]]:
  """Table 1 (Section 4.3) as Markdown and JSON: our parts and random parts beside the paper's rows.

  Args:
    result: `correspondence.analyse`'s measurements.
    parts: the part boxes they were measured with.
    dataset, split: where the images come from (the paper: ImageNet validation).
    class_name: the images' class, for the heading.

  Returns:
    (markdown, json_obj); json_obj = {"table", "title", "dataset", "split",
    "imagenet", "class", "indices", "layers", "dims", "paper", "ours", "notes"}.
  """
  layers = list(result["layers"])
  is_imagenet = dataset == correspondence.IMAGENET
  ours = [{"occlusion": p, "kind": "part", "boxes": parts.boxes[p].tolist(),
           "layers": {str(l): result["parts"][p][l] for l in layers}} for p in parts.names]
  ours.append({"occlusion": "Random", "kind": "random", "draws": result["num_random"],
               "boxes": np.asarray(result["random_boxes"]).tolist(),
               "layers": {str(l): result["random"][l] for l in layers}})
  paper = [{"occlusion": name, "layers": {str(l): {"mean": m, "std": s}
                                          for l, (m, s) in rows.items()}}
           for name, rows in PAPER_TABLE1]
  notes = list(NOTES)
  if not is_imagenet:
    notes.insert(0, f"NOT ImageNet: our rows are {dataset} ({split} split) with its own parts; "
                    "the paper's numbers are for ImageNet dog faces and are not comparable.")
  json_obj = {"table": "Table 1", "title": PAPER_TITLE, "dataset": dataset, "split": split,
              "imagenet": is_imagenet, "class": class_name, "indices": list(parts.indices),
              "layers": layers, "dims": {str(l): d for l, d in result["dims"].items()},
              "paper": paper, "ours": ours, "notes": notes}

  lines = [f"# Table 1: {PAPER_TITLE}", ""]
  if not is_imagenet:
    lines += [f"> **NOT ImageNet.** Our rows are **{dataset}** parts, not ImageNet dog faces: "
              "the paper's numbers below are not comparable with them.", ""]
  what = f" of class {class_name}" if class_name else ""
  lines += [f"## Ours: {dataset}, {split} split, {len(parts.indices)} images{what} "
            f"(indices {', '.join(map(str, parts.indices))})", ""]
  lines += tables.markdown_table(
      ["Occlusion location"] + [f"Mean feature sign change, layer {l}" for l in layers],
      [[f"Random ({row['draws']} draws)" if row["kind"] == "random" else row["occlusion"]]
       + [_pm(row["layers"][str(l)]) for l in layers] for row in ours])
  dims = ", ".join(f"D_{l} = {result['dims'][l]}" for l in layers)
  lines += ["", f"Raw Delta_l (sum over ordered pairs i != j; {dims}; random: mean over draws):",
            ""]
  lines += tables.markdown_table(
      ["Occlusion location"] + [f"Delta_{l}" for l in layers],
      [[row["occlusion"]] + [f"{row['layers'][str(l)]['delta']:g}" for l in layers]
       for row in ours])
  paper_layers = [l for l in layers if l in (5, 7)]
  if paper_layers:
    lines += ["", "## Paper: Zeiler & Fergus (2014), Table 1, 5 ImageNet dog images", ""]
    lines += tables.markdown_table(
        ["Occlusion Location"] + [f"Mean Feature Sign Change Layer {l}" for l in paper_layers],
        [[name] + [f"{rows[l][0]:.3f} ± {rows[l][1]:.3f}" for l in paper_layers]
         for name, rows in PAPER_TABLE1])
  lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
  return "\n".join(lines) + "\n", json_obj


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


def table1(src: source.Source, parts: PartBoxes | str | os.PathLike | None = None, *,
           num_random: int = 50, seed: int = 0,
           layers: Sequence[int] = correspondence.DEFAULT_LAYERS, random_columns: int = 3,
           batch_size: int | None = None) -> dict[str, str]:
  """Table 1 and Fig. 8 (Section 4.3) for a run, written into its report.

  Args:
    src: the run and split the parts' images are in.
    parts: the part boxes, or the path of a parts file
      (`part_boxes.PARTS_FORMAT`); None: the dataset's built-in ones.
    num_random: random-part draws (each masks every image once).
    seed: numpy seed of the random boxes.
    layers: the paper's layer numbers to measure at (the paper: 5 and 7).
    random_columns: random masks shown per image in the figure.
    batch_size: images per forward pass; None: the source's batch size.

  Returns:
    {"markdown": table .md path, "json": table .json path, "figure": PNG
    path, "report": report.html path}.

  Raises:
    ValueError / FileNotFoundError: parts that do not fit the source (one line).
  """
  dataset = src.icfg.dataset
  if parts is None:
    parts = part_boxes.builtin_parts(dataset)
  elif not isinstance(parts, PartBoxes):
    parts = part_boxes.load_parts(parts)
  part_boxes.check_parts(parts, dataset=dataset, split=src.split,
                             image_size=src.icfg.image_size)
  ex = source.load_examples(src, parts.indices)
  part_boxes.check_labels(parts, ex["label"])
  result = correspondence.analyse(src.params, src.arch, ex["image"], parts,
                                  num_random=num_random, seed=seed, layers=layers,
                                  batch_size=batch_size or src.icfg.global_batch_size)
  labels = sorted(set(int(l) for l in ex["label"]))
  class_name = ", ".join(src.class_name(l) for l in labels)
  markdown, table = render(result, parts, dataset=dataset, split=src.split,
                           class_name=class_name)
  workdir = src.run.workdir
  table["workdir"], table["step"] = workdir, src.run.step
  md_path, json_path = tables.write_table(workdir, NAME, markdown, table)

  size = parts.image_size
  columns = [(name, parts.boxes[name]) for name in parts.names]
  columns += [(f"random {r + 1}", result["random_boxes"][r])
              for r in range(min(random_columns, num_random))]
  masked = [source.display(src, np.asarray(correspondence.occlude(
      ex["image"], correspondence.box_masks(b, size)))) for _, b in columns]
  fig = parts_figure(source.display(src, ex["image"]), masked, [b for _, b in columns],
                     [name for name, _ in columns], [f"#{i}" for i in parts.indices])
  fig_path = figures.save(fig, page.figure_path(workdir, FIGURE))

  comparable = ("" if dataset == correspondence.IMAGENET else
                f"NOT ImageNet: these are {dataset} parts, not the paper's dog faces, so the "
                "paper's numbers shown beside ours are not comparable with them.\n\n")
  text = (f"{comparable}Section 4.3: the same part is masked (grey) in {len(parts.indices)} "
          f"images of class {class_name} ({', '.join(parts.names)}), and random parts of the same "
          f"size ({num_random} draws). A lower mean feature sign change means masking the "
          "part changes the features more consistently across images: implicit correspondence. "
          "The figure is Fig. 8's: original, each part masked, random masks.")
  random5 = result["random"].get(5)
  items = {"images": ", ".join(map(str, parts.indices)), "step": src.run.step}
  if random5:
    items["random, layer 5"] = f"{random5['mean']:.3f} ± {random5['std']:.3f}"
  html_path = page.add_section(workdir, NAME, "Table 1: correspondence", text=text,
                               figures=[fig_path], tables=[NAME], items=items)
  return {"markdown": md_path, "json": json_path, "figure": fig_path, "report": html_path}
