"""Section 4's figures for a trained run, each written into the run's report.

Each `fig*` function computes one figure of the paper for a `Source` (a
restored run and a split, see `zf_jax.analyses.source`), writes PNGs to
`<workdir>/figures/`, the numbers behind them to `<workdir>/tables/`, and
its section of `<workdir>/report.html`. The experiment binaries and the
quickstart (`zf_jax.report.run_report`) call these with their flags.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import matplotlib
from matplotlib.patches import Patch
import numpy as np

from zf_jax import chunks, occlusion
from zf_jax.analyses import filters, source, topk
from zf_jax.data import input_pipeline
from zf_jax.report import figures, page, tables
from zf_jax.runs.workdir import Workdir
from zf_jax.arch import Arch


def pick_maps(arch: Arch, layer: int, count: int, seed: int = 0) -> list[int]:
  """`count` feature maps of `layer` chosen at random (seeded, sorted); all when count <= 0."""
  n = arch.conv(layer).features
  if count <= 0 or count >= n:
    return list(range(n))
  return sorted(np.random.default_rng([seed, layer]).choice(n, count, replace=False).tolist())


def _batches_with_valid(src: source.Source, max_examples: int | None):
  for batch in source.batches(src, max_examples=max_examples):
    # Pad the last batch to the common size: one compiled update for the whole pass.
    n, size = len(batch["index"]), src.icfg.global_batch_size
    padded = chunks.pad_to({"image": batch["image"], "index": batch["index"]}, size)
    yield {**padded, "valid": np.arange(size) < n}


def top_activations(src: source.Source, layers: Sequence[int], k: int = 9,
                    max_examples: int | None = None) -> topk.TopK:
  """Fig. 2 (Section 4): one pass over the split, the k strongest activations of every map."""
  return topk.over_batches(src.params, src.arch, _batches_with_valid(src, max_examples), layers, k)


def kept_examples(src: source.Source, state: topk.TopK, maps: dict[int, Sequence[int]]
                  ) -> dict[int, np.ndarray]:
  """{example index: preprocessed image} of every entry `state` keeps for `maps` {layer: maps}."""
  wanted = sorted({int(i) for l, m in maps.items() for i in np.asarray(state.index[l])[list(m)]
                   .ravel() if i >= 0})
  data = source.load_examples(src, wanted)
  return dict(zip(data["index"].tolist(), data["image"]))


def _block(tiles: np.ndarray, cols: int) -> np.ndarray:
  return figures.montage(tiles, cols, pad=1, fill=1.0)


def top9_panels(src: source.Source, state: topk.TopK, layer: int, maps: Sequence[int],
                examples: dict[int, np.ndarray], *, mode: str = "deconvnet"
                ) -> tuple[np.ndarray, np.ndarray]:
  """(projection patches, image patches) of the kept activations of `maps`, in [0, 1].

  Both (len(maps), k, size, size, 3) with size the layer's receptive field;
  projections are contrast-normalised one by one (grey = 0).
  """
  index = np.asarray(state.index[layer])[list(maps)]
  blank = np.zeros((src.arch.image_size,) * 2 + (3,), np.float32)
  images = np.stack([[examples.get(int(i), blank) for i in row] for row in index])
  proj = topk.project_top(src.params, src.arch, state, layer, maps, images, mode=mode)
  rows, cols = np.asarray(state.row[layer])[list(maps)], np.asarray(state.col[layer])[list(maps)]
  if src.grayscale:
    proj = figures.channel_mean(proj)
  proj_patches = figures.signed_to_unit(topk.patches(src.arch, layer, proj, rows, cols))
  pixels = source.display(src, images).astype(np.float32) / 255.0
  image_patches = topk.patches(src.arch, layer, pixels, rows, cols, fill=0.5)
  empty = index < 0
  proj_patches[empty] = 1.0
  image_patches[empty] = 1.0
  return proj_patches, image_patches


def fig2(src: source.Source, *, layers: Sequence[int] | None = None, maps_per_layer: int = 16,
         k: int = 9, seed: int = 0, mode: str = "deconvnet", max_examples: int | None = None,
         maps_per_row: int = 4) -> list[str]:
  """Fig. 2 (Section 4): per layer, `maps_per_layer` maps x top-k projections beside their patches.

  Args:
    src: the run and split (the paper: the validation set).
    layers: conv layers (default: all).
    maps_per_layer: maps shown per layer, chosen at random (seeded); 0: all.
    k: activations per map (the paper: 9).
    seed: the choice of maps.
    mode: `deconv.project` mode.
    max_examples: stream only the first examples of the split (None: all).
    maps_per_row: maps side by side in the figure.

  Returns:
    The PNG paths, one per layer.
  """
  arch = src.arch
  layers = tuple(layers or arch.conv_layers)
  state = top_activations(src, layers, k, max_examples)
  chosen = {l: pick_maps(arch, l, maps_per_layer, seed) for l in layers}
  examples = kept_examples(src, state, chosen)
  workdir = src.run.workdir
  paths, record = [], {}
  side = math.ceil(math.sqrt(k))
  for l in layers:
    proj, pixels = top9_panels(src, state, l, chosen[l], examples, mode=mode)
    blocks, titles = [], []
    for a, m in enumerate(chosen[l]):
      blocks.append([_block(proj[a], side), _block(pixels[a], side)])
      dead = not np.asarray(state.value[l])[m, 0] > 0
      titles.append([f"map {m}" + (" (never active)" if dead else ""), ""])
    rows, row_titles = [], []
    for start in range(0, len(blocks), maps_per_row):
      rows.append([b for pair in blocks[start:start + maps_per_row] for b in pair])
      row_titles.append([t for pair in titles[start:start + maps_per_row] for t in pair])
    fig = figures.image_rows(rows, row_titles, cell=1.5)
    size = arch.image_size
    fig.suptitle(f"Layer {l}: top {k} activations of {len(chosen[l])} maps over "
                 f"{src.icfg.dataset}:{src.split} (projections | image patches, "
                 f"{topk.receptive_field(arch, l)[0]} px receptive field of {size} px)", fontsize=9)
    paths.append(figures.save(fig, page.figure_path(workdir, f"fig2_layer{l}.png")))
    record[str(l)] = {
        "maps": chosen[l],
        "value": np.asarray(state.value[l])[chosen[l]].round(6).tolist(),
        "index": np.asarray(state.index[l])[chosen[l]].tolist(),
        "row": np.asarray(state.row[l])[chosen[l]].tolist(),
        "col": np.asarray(state.col[l])[chosen[l]].tolist()}
  md = ["# Fig. 2: strongest activations", "",
        f"Run {workdir} at step {src.run.step}, {src.icfg.dataset}:{src.split}"
        f"{'' if max_examples is None else f' (first {max_examples} examples)'}, top {k} per map.",
        ""]
  rows = []
  for l in layers:
    v = np.asarray(state.value[l])
    kth = v[:, -1][np.isfinite(v[:, -1])]
    rows.append([l, f"{len(chosen[l])} of {arch.conv(l).features}", f"{v[:, 0].max():.4g}",
                 f"{np.median(kth) if len(kth) else float('nan'):.4g}"])
  md += tables.markdown_table(["layer", "maps shown", "strongest activation (max over maps)",
                               f"median of the {k}th"], rows)
  tables.write_table(workdir, "fig2_top9", "\n".join(md), {
      "run": workdir, "step": src.run.step, "dataset": src.icfg.dataset, "split": src.split,
      "k": k, "mode": mode, "layers": record})
  page.add_section(
      workdir, "fig2", "Fig. 2: top activations projected to pixels",
      text=(f"For each layer, {maps_per_layer or 'all'} feature maps; for each map its {k} "
            f"strongest activations over {src.icfg.dataset}:{src.split}, one per image, each "
            f"projected alone to pixel space by the {mode} (left block, contrast-normalised, grey "
            "is zero) beside the image patch its unit sees (right block). Section 4, Fig. 2."),
      figures=paths, tables=["fig2_top9"],
      captions=[f"Layer {l}: {len(chosen[l])} maps, their top {k} projections | image patches "
                f"({topk.receptive_field(arch, l)[0]} px receptive field)" for l in layers])
  return paths


def filter_panel(params, arch, grayscale: bool) -> np.ndarray:
  """Fig. 6's panel (Section 4.1): the first layer's filters in a square montage.

  Each filter (one output map: kh x kw x 3 weights) is stretched min..max on
  its own; on grey data the mean of its channels (`figures.channel_mean`).
  Small filters are upscaled 4x so that the 2 px gaps stay thin.
  """
  w = np.moveaxis(np.asarray(params[f"conv{arch.convs[0].layer}"]["w"]), -1, 0)
  tiles = figures.minmax_to_unit(figures.channel_mean(w) if grayscale else w)
  if tiles.shape[1] < 8:
    tiles = np.kron(tiles, np.ones((1, 4, 4, 1), np.float32))
  return figures.montage(tiles, int(math.ceil(math.sqrt(len(tiles)))), pad=2)


def fig6_filters(workdirs: Sequence[str], labels: Sequence[str] | None = None,
                 out: str | None = None, step: int | None = None) -> str:
  """Fig. 6 (Section 4.1): layer-1 filters of one or more runs, one panel each.

  Written into the first run's report (or `out`). `step`: the first run's
  checkpoint (default: each run's latest).

  Each filter (one output map: kh x kw x 3 weights) is stretched min..max on
  its own, as in the paper's filter figures. Runs trained on grey images
  show the mean of the filter's channels (`figures.channel_mean`).
  """
  if not workdirs:
    raise ValueError("fig6_filters needs at least one run workdir")
  runs = [Workdir(w).open(step if i == 0 else None) for i, w in enumerate(workdirs)]
  # A run with a constant mean colour (imported ImageNet weights) is in colour; asking its
  # dataset would need ImageNet on this machine.
  grey = [not r.config.mean_rgb and input_pipeline.split_info(r.input_config()).grayscale
          for r in runs]
  labels = list(labels or [f"{r.arch.name} ({os.path.basename(r.workdir)}, step {r.step})"
                           + (", channel mean" if g else "") for r, g in zip(runs, grey)])
  panels = [filter_panel(run.params, run.arch, grayscale) for run, grayscale in zip(runs, grey)]
  fig = figures.image_rows([panels], [labels], cell=4.0, fontsize=9)
  fig.suptitle("Layer-1 filters (each stretched to its own range)", fontsize=10)
  out = out or runs[0].workdir
  path = figures.save(fig, page.figure_path(out, "fig6_filters.png"))
  rows = []  # One per panel (two runs may share a label).
  for label, r in zip(labels, runs):
    w = np.asarray(r.params[f"conv{r.arch.convs[0].layer}"]["w"])
    corr = filters.neighbour_correlation(w)
    rows.append({"run": label, "workdir": r.workdir, "step": r.step,
                 "rms": np.sqrt(np.mean(np.square(w), axis=(0, 1, 2))).round(5).tolist(),
                 "neighbour_correlation": corr.round(4).tolist(),
                 "median_neighbour_correlation": float(np.median(corr))})
  tables.write_table(out, "fig6_filter_rms", "\n".join(
      ["# Fig. 6: layer-1 filters", "",
       "Structure: the median over filters of the correlation between neighbouring taps of "
       "each (channel-mean) filter; about 0 for random filters, towards 1 for smooth edges "
       "and blobs (zf_jax.analyses.filters).", ""] + tables.markdown_table(
          ["run", "filters", "max RMS", "median RMS", "at the radius 0.1",
           "neighbour correlation (median)", "structure"],
          [[r["run"], len(r["rms"]), f"{max(r['rms']):.4f}", f"{np.median(r['rms']):.4f}",
            sum(x >= 0.0999 for x in r["rms"]), f"{r['median_neighbour_correlation']:.2f}",
            filters.verdict(r["median_neighbour_correlation"])] for r in rows])),
      {"runs": rows, "learned_threshold": filters.LEARNED})
  page.add_section(
      out, "fig6", "Fig. 6: layer-1 filters",
      text=("The first layer's filters, each shown stretched to its own range. Section 4.1: "
            "without the RMS renormalisation of Section 3 a few filters dominate; ZFNet's 7x7 "
            "stride-2 filters have fewer dead and aliased ones than AlexNet's 11x11 stride 4. "
            "The table's neighbour correlation tells learned filters (smooth, "
            f"at least {filters.LEARNED}) from noise (about 0)."),
      figures=[path], tables=["fig6_filter_rms"])
  return path


def fig6_layer2(sources: Sequence[source.Source], maps: int, *, k: int = 9, seed: int = 0,
                max_examples: int | None = None, out: str | None = None) -> str:
  """Fig. 6 (d)/(e) (Section 4.1): layer-2 top-k projections of `maps` maps, one row per run."""
  rows, titles, labels = [], [], []
  side = math.ceil(math.sqrt(k))
  for src in sources:
    state = top_activations(src, (2,), k, max_examples)
    chosen = pick_maps(src.arch, 2, maps, seed)
    proj, _ = top9_panels(src, state, 2, chosen, kept_examples(src, state, {2: chosen}))
    rows.append([_block(p, side) for p in proj])
    titles.append([f"map {m}" for m in chosen])
    labels.append(f"{src.arch.name} ({os.path.basename(src.run.workdir)})")
  fig = figures.image_rows(rows, titles, labels, cell=1.6)
  fig.suptitle(f"Layer-2 features: top {k} projections per map, one row per run", fontsize=9)
  out = out or sources[0].run.workdir
  path = figures.save(fig, page.figure_path(out, "fig6_layer2.png"))
  section = page.sections(out)
  previous = next((s for s in section if s["key"] == "fig6"), None)
  kept = [(f, c) for f, c in zip((previous or {}).get("figures", []),
                                  (previous or {}).get("captions") or [None] * 99)
          if not f.endswith("fig6_layer2.png")]
  figs = [os.path.join(out, f) for f, _ in kept]
  captions = [c or "Layer-1 filters" for _, c in kept] + ["Layer-2 top projections per run"]
  page.add_section(out, "fig6", "Fig. 6: layer-1 filters and layer-2 features",
                     text=(previous or {}).get("text", "") + "\n\nLayer-2 projections of each "
                     "run (Fig. 6 (d), (e)).", figures=figs + [path],
                     tables=(previous or {}).get("tables", []), captions=captions)
  return path


FILLS = ("grey", "black")


def fig7(src: source.Source, indices: Sequence[int], *, patch: int | None = None,
         stride: int | None = None, fill: str = "grey", chunk: int = 64) -> str:
  """Fig. 7 (Section 4.2): occlusion sensitivity of a few images, one row each: (a)-(e).

  `fill`: "grey" (the paper: the mean image, 0 after mean subtraction) or
  "black" (pixel value 0: the neutral occluder of datasets with a black
  background such as Fashion-MNIST, where a grey square is a feature itself).
  """
  if fill not in FILLS:
    raise ValueError(f"fill must be one of {', '.join(FILLS)}, got {fill!r}")
  size = src.arch.image_size
  fill_value = 0.0 if fill == "grey" else -src.mean_crop()
  # Defaults (the paper gives no sizes): a 50 px square every 8 px at 224 px, scaled to the input.
  patch = patch or max(1, round(size * 50 / 224))
  stride = stride or max(1, round(size * 8 / 224))
  data = source.load_examples(src, indices)
  pixels = source.display(src, data["image"])
  rows, titles, record, legends = [], [], [], []
  cmap = matplotlib.colormaps["tab20"]
  for image, label, index, px in zip(data["image"], data["label"], data["index"], pixels):
    maps = occlusion.occlusion(src.params, src.arch, image, int(label), patch=patch,
                               stride=stride, fill=fill_value, chunk=chunk)
    proj = np.asarray(occlusion.feature_projection(src.params, src.arch, image, maps.feature))
    proj = figures.channel_mean(proj) if src.grayscale else proj
    shown = px.copy()
    y0, x0, y1, x1 = maps.box(maps.prob.shape[0] // 2, maps.prob.shape[1] // 2)
    shown[y0:y1, x0:x1] = source.display(
        src, np.broadcast_to(fill_value, (1, size, size, 3)))[0][y0:y1, x0:x1]
    heat = lambda m, cm: matplotlib.colormaps[cm](np.asarray(m))[..., :3]
    classes = cmap(np.asarray(maps.top_class) % 20)[..., :3]
    activity = figures.minmax_to_unit(np.asarray(maps.activity)[..., None])[..., 0]
    rows.append([shown, heat(activity, "viridis"), figures.signed_to_unit(proj),
                 heat(np.clip(maps.prob, 0, 1), "jet"), classes])
    found, area = np.unique(np.asarray(maps.top_class), return_counts=True)
    legends.append(found[np.argsort(-area)][:6])
    titles.append([
        f"(a) #{index}: {src.class_name(label)}",
        f"(b) map {int(maps.feature)} of layer {maps.layer}",
        "(c) its projection",
        f"(d) p(true): {float(maps.unoccluded_prob):.2f} unoccluded, "
        f"{float(maps.prob.min()):.2f}..{float(maps.prob.max()):.2f}",
        "(e) most probable class"])
    record.append({"index": int(index), "label": int(label),
                   "feature": int(maps.feature), "layer": maps.layer,
                   "unoccluded_prob": float(maps.unoccluded_prob),
                   "prob": np.asarray(maps.prob).round(5).tolist(),
                   "top_class": np.asarray(maps.top_class).tolist(),
                   "activity": np.asarray(maps.activity).round(5).tolist()})
  fig = figures.image_rows(rows, titles, cell=2.2, fontsize=7)
  for i, found in enumerate(legends):
    fig.axes[i * 5 + 4].legend(handles=[Patch(color=cmap(c % 20), label=src.class_name(c))
                                        for c in found], fontsize=6, loc="center left",
                               bbox_to_anchor=(1.0, 0.5), frameon=False)
  fig.suptitle(f"Occlusion sensitivity: {patch} px {fill} square, stride {stride} px", fontsize=9)
  workdir = src.run.workdir
  path = figures.save(fig, page.figure_path(workdir, "fig7_occlusion.png"))
  md = ["# Fig. 7: occlusion sensitivity", "",
        f"{fill.capitalize()} square {patch} px, stride {stride} px, run step {src.run.step}.", ""]
  rows = []
  for r in record:
    p = np.array(r["prob"])
    i, j = np.unravel_index(p.argmin(), p.shape)
    rows.append([r["index"], src.class_name(r["label"]), f"{r['unoccluded_prob']:.3f}",
                 f"{p.min():.3f}", f"rows {i * stride}..{i * stride + patch}, cols "
                 f"{j * stride}..{j * stride + patch}"])
  md += tables.markdown_table(["example", "true class", "p(true), unoccluded", "lowest p(true)",
                               "occluder at the lowest"], rows)
  tables.write_table(workdir, "fig7_occlusion", "\n".join(md),
                     {"patch": patch, "stride": stride, "fill": fill, "images": record})
  page.add_section(
      workdir, "fig7", "Fig. 7: occlusion sensitivity",
      text=(f"Per image: (a) the image with the {fill} square (shown at the centre position); "
            f"(b) total activation of the layer-{src.arch.convs[-1].layer} map strongest on the "
            "unoccluded image, by square position; (c) that map's strongest activation "
            "projected to pixels; (d) probability of the true class by square position (blue "
            "low); (e) most probable class by square position. Section 4.2, Fig. 7."),
      figures=[path], tables=["fig7_occlusion"])
  return path


def fig4(workdir: str, *, steps: Sequence[int] | None = None, layers: Sequence[int] | None = None,
         maps_per_layer: int = 4, seed: int = 0, max_examples: int | None = 10_000,
         dataset: str | None = None, split: str = "train", data_dir: str | None = None,
         batch_size: int = 64, mode: str = "deconvnet") -> str:
  """Fig. 4 (Section 4): the strongest activation of chosen maps over the saved checkpoints.

  For each checkpoint (default: the epoch ends kept, `config.FIG4_EPOCHS`,
  or every checkpoint when none is at an epoch end), one streaming pass over
  the first `max_examples` training images finds each chosen map's strongest
  activation, projected to pixels and cut to its receptive field. Rows:
  (layer, map); columns: checkpoints. (An extra pass per checkpoint, not
  tracked during training.)
  """
  wd = Workdir(workdir)
  workdir = wd.path
  spe = wd.read_config()[1].get("steps_per_epoch")
  available = wd.steps()
  if steps is None:  # The epoch ends the trainer kept (FIG4_EPOCHS); else every checkpoint.
    steps = [s for s in available if spe and s % spe == 0] or available
  steps = sorted(steps)
  missing = [s for s in steps if s not in available]
  if missing or not steps:
    raise ValueError(f"no checkpoint for step(s) {missing or steps} in {wd.checkpoint_dir}; "
                     "available: "
                     f"{', '.join(map(str, available)) or 'none'}")
  columns, layers_, chosen = [], None, None
  for s in steps:
    src = source.open_source(workdir, step=s, dataset=dataset, split=split, data_dir=data_dir,
                               batch_size=batch_size)
    if layers_ is None:
      layers_ = tuple(layers or src.arch.conv_layers)
      chosen = {l: pick_maps(src.arch, l, maps_per_layer, seed) for l in layers_}
    state = top_activations(src, layers_, 1, max_examples)
    examples = kept_examples(src, state, chosen)
    column = []
    for l in layers_:
      proj, _ = top9_panels(src, state, l, chosen[l], examples, mode=mode)
      column.extend(proj[:, 0])
    columns.append(column)
  titles = [f"step {s}" + (f"\nepoch {s / spe:.3g}" if spe else "") for s in steps]
  labels = [f"L{l} map {m}" for l in layers_ for m in chosen[l]]
  # Patches differ in size across layers; each axes scales its own to the same cell.
  rows = [[columns[c][r] for c in range(len(steps))] for r in range(len(labels))]
  fig = figures.image_rows(rows, [titles if r == 0 else [""] * len(steps)
                                  for r in range(len(rows))], labels, cell=1.3, fontsize=7)
  fig.suptitle("Strongest activation of chosen maps,\nby checkpoint", fontsize=9)
  path = figures.save(fig, page.figure_path(workdir, "fig4_evolution.png"))
  page.add_section(
      workdir, "fig4", "Fig. 4: feature evolution during training",
      text=(f"Rows: feature maps (layer, map); columns: saved checkpoints. Each tile is the "
            f"projection of the map's strongest activation over the first "
            f"{max_examples or 'all'} examples of the {split} split at that checkpoint, cut to "
            "the unit's receptive field. Section 4 (Feature Evolution during Training), "
            "Fig. 4."), figures=[path])
  return path
