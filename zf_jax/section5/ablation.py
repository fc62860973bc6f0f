"""Table 3 (Section 5.1): the architecture ablations, trained from scratch, beside the paper's.

"In Table 3, we first explore the architecture of (Krizhevsky et al., 2012)
by adjusting the size of layers, or removing them entirely. In each case,
the model is trained from scratch with the revised architecture. [...] In
Table 3, we modify our model, shown in Fig. 3." The paper's findings:
removing the fully connected layers 6, 7 or the middle conv layers 3, 4
alone costs little; removing both (a 4-layer model) is dramatically worse,
so depth matters; the fc width makes little difference; wider middle conv
layers help; wider conv and fc layers together over-fit.

Each row is a `RunConfig` whose `remove` / `fc_features` / `conv_features`
edit a base preset (`RunConfig.network()` applies them with
`zf_jax.arch.ablate`), trained by the ordinary trainer in its own
sub-workdir named after the variant (`<root>/alexnet-remove3,4`, ...). So a
row is a normal run: it resumes by itself, and every Section 4 binary opens
it.

Scales. The paper's rows are on the 224 px `alexnet` and `zfnet`. The same
12 rows exist for the small presets: `alexnet_small` / `zfnet_small` (the
embedded Fashion-MNIST default) and `alexnet_tiny` / `zfnet_tiny` (tests).
There the paper's widths are scaled by the preset's own: 2048 / 8192 fc
units are 1/2 and 2x the preset's fc width, and 512, 1024, 512 maps are
4/3, 8/3 and 2x its layers 3, 4, 5 (e.g. 128, 256, 128 for `zfnet_small`).

The columns are the paper's: training top-1 error, and validation top-1 and
top-5 error. The paper does not say how it measured the training error; its
rows (a model without dropout, "removed layers 6,7", has a lower training
error than one with it) fit the running error of the training batches, with
dropout and augmentation on, as cuda-convnet reports it. Ours is that: the
mean top-1 error of the training batches logged in the last epoch.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from zf_jax import arch as arch_lib
from zf_jax.files import atomic_write
from zf_jax.report import figures, page, tables
from zf_jax.runs import config as config_lib
from zf_jax.runs.config import RunConfig
from zf_jax.runs.workdir import Workdir

BASES = ("alexnet", "zfnet")
SCALES = {"": "224 px", "_small": "28 px", "_tiny": "32 px"}  # Preset suffix: input size.
ROW_FILE = "table3_row.json"
EDITS = ("arch", "remove", "fc_features", "conv_features")  # The fields that tell rows apart.
TABLE = "table3"
IMAGENET = "imagenet2012"
PAPER_TITLE = ("ImageNet 2012 classification error rates with various architectural changes "
               "to the model of (Krizhevsky et al., 2012) and our model (see Fig. 3).")


@dataclasses.dataclass(frozen=True)
class PaperRow:
  """One row of the paper's Table 3: an edit of a base model and its errors (%)."""
  base: str
  label: str
  train_top1: float
  val_top1: float
  val_top5: float
  remove: tuple[int, ...] = ()
  fc: int | None = None  # The paper's width of fc layers 6, 7 (full size: 4096).
  conv: tuple[int, int, int] | None = None  # The paper's maps of conv 3, 4, 5.


# Table 3 verbatim, in the paper's order.
PAPER_TABLE3 = (
    PaperRow("alexnet", "Our replication of (Krizhevsky et al., 2012), 1 convnet",
             35.1, 40.5, 18.1),
    PaperRow("alexnet", "Removed layers 3,4", 41.8, 45.4, 22.1, remove=(3, 4)),
    PaperRow("alexnet", "Removed layer 7", 27.4, 40.0, 18.4, remove=(7,)),
    PaperRow("alexnet", "Removed layers 6,7", 27.4, 44.8, 22.4, remove=(6, 7)),
    PaperRow("alexnet", "Removed layer 3,4,6,7", 71.1, 71.3, 50.1, remove=(3, 4, 6, 7)),
    PaperRow("alexnet", "Adjust layers 6,7: 2048 units", 40.3, 41.7, 18.8, fc=2048),
    PaperRow("alexnet", "Adjust layers 6,7: 8192 units", 26.8, 40.0, 18.1, fc=8192),
    PaperRow("zfnet", "Our Model (as per Fig. 3)", 33.1, 38.4, 16.5),
    PaperRow("zfnet", "Adjust layers 6,7: 2048 units", 38.2, 40.2, 17.6, fc=2048),
    PaperRow("zfnet", "Adjust layers 6,7: 8192 units", 22.0, 38.8, 17.0, fc=8192),
    PaperRow("zfnet", "Adjust layers 3,4,5: 512,1024,512 maps", 18.8, 37.5, 16.0,
             conv=(512, 1024, 512)),
    PaperRow("zfnet", "Adjust layers 6,7: 8192 units and Layers 3,4,5: 512,1024,512 maps",
             10.0, 38.3, 16.9, fc=8192, conv=(512, 1024, 512)),
)


def split_preset(name: str) -> tuple[str, str]:
  """(base, scale) of a Table 3 base preset: "zfnet_small" -> ("zfnet", "_small").

  Raises:
    ValueError: `name` is not one of the base presets (one line).
  """
  for base in BASES:
    for scale in SCALES:
      if name == base + scale:
        return base, scale
  allowed = ", ".join(b + s for s in SCALES for b in BASES)
  hint = (" (zfnet_wide is the row --arch=zfnet --conv_features=512,1024,512)"
          if name == "zfnet_wide" else "")
  raise ValueError(f"--arch={name} is not a Table 3 base; use one of {allowed}{hint}")


def edits(row: PaperRow, scale: str) -> dict[str, Any]:
  """The `RunConfig` fields of `row` at `scale`: arch, remove, fc_features, conv_features.

  At full size these are the paper's numbers; at a smaller scale the paper's
  widths are scaled by the ratio of the small preset's widths to the full one's.
  """
  full, small = arch_lib.get(row.base), arch_lib.get(row.base + scale)
  fc = conv = None
  if row.fc is not None:
    fc = round(row.fc * small.fcs[0].features / full.fcs[0].features)
  if row.conv is not None:
    conv = tuple(round(w * small.conv(l).features / full.conv(l).features)
                 for l, w in zip((3, 4, 5), row.conv))
  return {"arch": row.base + scale, "remove": row.remove, "fc_features": fc,
          "conv_features": conv or ()}


def row_config(cfg: RunConfig, row: PaperRow) -> RunConfig:
  """`cfg` (the recipe, data and schedule) training `row` at `cfg.arch`'s scale."""
  _, scale = split_preset(cfg.arch)
  return dataclasses.replace(cfg, **edits(row, scale))


def variant(cfg: RunConfig) -> str:
  """The name of `cfg`'s network, e.g. "alexnet_small-remove3,4": its sub-workdir's name."""
  return cfg.network().name


def paper_row_of(cfg: RunConfig) -> int | None:
  """The 1-based paper row that `cfg` trains, or None for an edit the paper did not make."""
  name = variant(cfg)
  for i, row in enumerate(PAPER_TABLE3, 1):
    if variant(row_config(cfg, row)) == name:
      return i
  return None


# --- One row's numbers ------------------------------------------------------------------------


def train_error(metrics: Sequence[Mapping[str, Any]], total_steps: int,
                steps_per_epoch: int) -> float:
  """Mean top-1 error (a fraction) of the training batches logged in the last epoch.

  A step logged twice (a resumed run repeats the steps after its checkpoint)
  counts once, with its last value.
  """
  by_step = {int(m["step"]): float(m["top1_error"]) for m in metrics
             if m.get("split") == "train" and int(m["step"]) <= total_steps}
  if not by_step:
    raise ValueError("no training batches were logged: lower --log_every")
  last = [e for s, e in by_step.items() if s > total_steps - steps_per_epoch]
  return float(np.mean(last if last else [by_step[max(by_step)]]))


def measure(workdir: str) -> dict[str, Any]:
  """One finished row's numbers from its workdir (config.json, metrics.jsonl, summary.json).

  Errors are in percent, as in the paper's table.

  Raises:
    ValueError: the run in `workdir` has not finished its final evaluation.
  """
  wd = Workdir(workdir)
  cfg, facts = wd.read_config()
  summary = wd.summary()
  if not summary or "eval" not in summary:
    raise ValueError(f"run {workdir} has not finished: run the same command to resume it")
  net = cfg.network(int(facts["num_classes"]))
  total, spe = int(facts["total_steps"]), int(facts["steps_per_epoch"])
  out = {"variant": net.name, "arch": cfg.arch, "remove": list(cfg.remove),
         "fc_features": cfg.fc_features, "conv_features": list(cfg.conv_features),
         "dataset": cfg.dataset, "params": arch_lib.num_params(net),
         "steps": int(summary["step"]), "epochs": round(int(summary["step"]) / spe, 2),
         "train_seconds": summary.get("train_seconds"),
         "train_top1": round(100 * train_error(wd.metrics(), total, spe), 2),
         "config": config_lib.to_json(cfg)}
  for crops, r in summary["eval"].items():
    out[crops] = {"val_top1": round(100 * r["top1_error"], 2),
                  "val_top5": round(100 * r["top5_error"], 2), "count": r["count"]}
  return out


def write_row(workdir: str) -> str:
  """`measure(workdir)` written to `<workdir>/table3_row.json`; returns its path."""
  return atomic_write(os.path.join(workdir, ROW_FILE), json.dumps(measure(workdir), indent=2)
                      + "\n")


def recipe_differences(row: Mapping[str, Any], cfg: RunConfig) -> list[str]:
  """How the recipe `row` was trained with differs from `cfg`, the architecture edits aside
  (`config.differences`; [] for the same recipe).

  Args:
    row: a `measure` result (table3_row.json).
    cfg: the table's recipe, resolved as the trainer stores it (`config.resolve`).
  """
  if "config" not in row:
    return ["its recipe was not recorded"]
  return config_lib.differences(config_lib.from_json(RunConfig, row["config"]), cfg,
                                ignore=EDITS)


def read_rows(root: str) -> dict[str, dict[str, Any]]:
  """The finished rows under `root`: variant name -> its table3_row.json."""
  rows = {}
  for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
    path = os.path.join(root, name, ROW_FILE)
    if os.path.isfile(path):
      with open(path, encoding="utf-8") as f:
        row = json.load(f)
      rows[row["variant"]] = row
  return rows


# --- The table ----------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
  return "pending" if value is None else f"{value:.1f}"


def title(cfg: RunConfig) -> str:
  """The table's title, naming the scale and the dataset (and saying when it is not ImageNet)."""
  _, scale = split_preset(cfg.arch)
  names = " / ".join(b + scale for b in BASES)
  where = ("ImageNet 2012" if cfg.dataset == IMAGENET
           else f"{cfg.dataset}, not ImageNet 2012")
  return f"Table 3: {names} at {SCALES[scale]} on {where} (error %)"


def table3(cfg: RunConfig, rows: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
  """The paper's 12 rows at `cfg.arch`'s scale with ours where finished, then other variants.

  Rows trained with another recipe than `cfg` (another schedule, rate, batch...)
  are left out, as pending, and named in the notes: one table never mixes two
  recipes.

  Args:
    cfg: the recipe and data of the table, resolved as the trainer stores it
      (`config.resolve(cfg).config`); its arch gives the scale.
    rows: `read_rows`' result.

  Returns:
    The table as JSON: title, notes, one entry per row (label, variant, ours
    or None while pending, the paper's numbers or None), and "other_recipe":
    {variant: its differences} for the rows left out.

  Raises:
    ValueError: a row trained on another dataset than `cfg.dataset`.
  """
  _, scale = split_preset(cfg.arch)
  for name, r in rows.items():
    if r["dataset"] != cfg.dataset or split_preset(r["arch"])[1] != scale:
      raise ValueError(f"row {name} was trained on {r['dataset']} with --arch={r['arch']}, not "
                       f"{cfg.dataset} at the scale of --arch={cfg.arch}: give each table its "
                       "own --workdir")
  other = {name: d for name, r in rows.items() if (d := recipe_differences(r, cfg))}
  rows = {name: r for name, r in rows.items() if name not in other}
  out, seen = [], set()
  for i, paper_row in enumerate(PAPER_TABLE3, 1):
    name = variant(row_config(cfg, paper_row))
    seen.add(name)
    out.append({"row": i, "label": paper_row.label, "variant": name, "ours": rows.get(name),
                "paper": {"train_top1": paper_row.train_top1, "val_top1": paper_row.val_top1,
                          "val_top5": paper_row.val_top5}})
  for name, r in rows.items():
    if name not in seen:
      out.append({"row": None, "label": "Not in the paper", "variant": name, "ours": r,
                  "paper": None})
  done = [r["ours"] for r in out if r["ours"]]
  seconds = sum(r.get("train_seconds") or 0 for r in done)
  notes = [
      f"Paper: {PAPER_TITLE}",
      "Ours: each variant trained from scratch with the same recipe and schedule; Train "
      "Top-1 is the mean error of the training batches logged in its last epoch (dropout "
      "and augmentation on); Val is the dataset's evaluation split, centre crop (and the "
      "10 crops of Section 3).",
      f"{len(done)} of {len(out)} rows finished; their training took "
      f"{seconds / 60:.1f} min in all.",
  ]
  for name, diff in other.items():
    notes.append(f"{name} was trained with another recipe ({'; '.join(diff[:3])}) and is left "
                 "out: train it again with this table's command and --overwrite.")
  if scale:
    notes.append(f"At this scale the paper's widths are scaled by the preset's own: 2048 / "
                 f"8192 fc units are 1/2 and 2x {BASES[1] + scale}'s, 512,1024,512 maps are "
                 "4/3, 8/3 and 2x its layers 3, 4, 5.")
  return {"title": title(cfg), "dataset": cfg.dataset, "scale": scale or "full",
          "notes": notes, "rows": out, "other_recipe": other}


def markdown(table: Mapping[str, Any]) -> str:
  """`table3`'s result as Markdown: ours beside the paper's."""
  header = ["Error %", "Variant", "Train Top-1", "Val Top-1", "Val Top-5",
            "Val Top-1 (10 crops)", "Val Top-5 (10 crops)", "Parameters",
            "Paper Train Top-1", "Paper Val Top-1", "Paper Val Top-5"]
  lines = []
  for r in table["rows"]:
    ours, paper = r["ours"] or {}, r["paper"] or {}
    centre, ten = ours.get("center", {}), ours.get("ten", {})
    lines.append([r["label"], r["variant"], _pct(ours.get("train_top1")),
                  _pct(centre.get("val_top1")), _pct(centre.get("val_top5")),
                  _pct(ten.get("val_top1")) if ours else "pending",
                  _pct(ten.get("val_top5")) if ours else "pending",
                  f"{ours['params']:,}" if ours else "pending",
                  *(f"{paper[k]:.1f}" if paper else "-"
                    for k in ("train_top1", "val_top1", "val_top5"))])
  body = tables.markdown_table(header, lines, align="ll" + "r" * (len(header) - 2))
  return "\n\n".join([f"# {table['title']}", "\n".join(body), *table["notes"]]) + "\n"


def plot(table: Mapping[str, Any], path: str) -> str:
  """Validation top-1 error per row, ours (centre crop) beside the paper's; a PNG."""
  rows = table["rows"]
  labels = [f"{r['row'] or '+'}. {r['label']}" for r in rows]
  fig = figures.new_figure(11, 0.36 * len(rows) + 1.4)
  y = np.arange(len(rows))[::-1]
  for k, (key, what) in enumerate((("ours", f"ours ({table['dataset']}, centre crop)"),
                                   ("paper", "paper (ImageNet 2012)"))):
    ax = fig.add_subplot(1, 2, k + 1)
    values = [((r[key] or {}).get("center", {}).get("val_top1") if key == "ours"
               else (r[key] or {}).get("val_top1")) for r in rows]
    ax.barh(y, [v if v is not None else 0 for v in values],
            color=["#4c72b0" if r["variant"].startswith("alexnet") else "#dd8452" for r in rows])
    for yi, v in zip(y, values):
      ax.text(v if v is not None else 0, yi, " pending" if v is None else f" {v:.1f}",
              va="center", fontsize=7)
    ax.set_yticks(y)
    ax.set_yticklabels(labels if k == 0 else [], fontsize=7)
    ax.set_xlabel("validation top-1 error %", fontsize=8)
    ax.set_title(what, fontsize=9)
    finite = [v for v in values if v is not None]
    ax.set_xlim(0, 1.25 * max(finite) if finite else 1)
  fig.suptitle(table["title"] + " (blue: AlexNet base, orange: ZFNet base)", fontsize=9)
  return figures.save(fig, path)


def write_table3(root: str, cfg: RunConfig) -> tuple[str, str, str]:
  """Assembles the rows under `root` into `<root>/tables/table3.{md,json}`, its figure and
  the Table 3 section of `<root>/report.html`. `cfg` as `table3` takes it (resolved).

  Returns:
    (Markdown path, JSON path, report path).
  """
  table = table3(cfg, read_rows(root))
  md, js = tables.write_table(root, TABLE, markdown(table), table)
  png = plot(table, page.figure_path(root, "table3.png"))
  done = sum(1 for r in table["rows"] if r["ours"])
  report = page.add_section(
      root, "table3", table["title"],
      text=("Section 5.1: each row is the base model with layers removed or resized, trained "
            "from scratch with the same recipe. The paper finds that removing layers 6,7 or "
            "3,4 alone costs little, removing both (a 4-layer model) costs much (depth "
            "matters), and wider middle conv layers help."),
      figures=[png], tables=[TABLE],
      captions=["Validation top-1 error per row, ours beside the paper's"],
      items={"rows finished": f"{done} of {len(table['rows'])}", "dataset": cfg.dataset})
  return md, js, report

