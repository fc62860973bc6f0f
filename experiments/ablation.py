r"""Table 3 (Section 5.1): train architecture variants from scratch and tabulate them.

One variant, with the recipe, data and schedule of any training flagfile:

  python -m experiments.ablation --flagfile=zfnet.flags --remove=3,4 \
      --base=alexnet --workdir=runs/table3

Edits: --remove (any of conv 3, 4, 5 and fc 6, 7), --fc_features=2048|8192,
--conv_features=512,1024,512, and combinations; --base=zfnet|alexnet picks
the model they edit at the scale of --arch (the paper's removal rows are on
Krizhevsky's model, the size rows on both). Every row of the paper's
Table 3, one after another:

  python -m experiments.ablation --flagfile=quickstart.flags --all \
      --workdir=runs/ablation

Each variant trains in its own sub-workdir of --workdir named after it
(e.g. runs/ablation/alexnet_small-remove3,4), a normal training run that
resumes by itself and that every figure binary opens; finished rows are
skipped, so a killed --all resumes where it stopped; a row trained with
another recipe (other --num_steps, rate, batch...) stops the binary with a
line naming what differs, or with --overwrite is trained again (the table
never mixes two recipes). Each row is evaluated
with the centre crop and the 10 crops. After every row, and with
--summarize alone, <workdir>/tables/table3.{md,json}, table3.png and the
report page show our rows beside the paper's, pending rows marked.
--rows=1,2,... runs only those rows of the paper's table (to share them out
between machines: the rows' folders do not collide).
"""

import dataclasses
import os

import jax
from absl import flags

from experiments import cli
from zf_jax.options import numbers
from zf_jax.runs import config, trainer
from zf_jax.section5 import ablation

flags.DEFINE_string("workdir", None, "Folder of the table: one sub-workdir per variant, "
                    "tables/table3.{md,json}, figures/, report.html.", required=True)
flags.DEFINE_enum("base", None, list(ablation.BASES), "The model the edits apply to, at the "
                  "scale of --arch (default: --arch itself).")
flags.DEFINE_bool("all", False, "Train every row of the paper's Table 3 (both bases).")
flags.DEFINE_list("rows", [], "Train these rows (1-12) of the paper's Table 3.")
flags.DEFINE_bool("summarize", False, "Only assemble the table from the finished rows.")
cli.define_overwrite("a row's sub-workdir that holds a run of another recipe")
config.define_flags()

FLAGS = flags.FLAGS


def plan(cfg: config.RunConfig, flag_values=FLAGS) -> list[config.RunConfig]:
  """The configs to train, in order; a one-line ValueError for a request that makes no sense."""
  cfg = dataclasses.replace(cfg, final_eval_crops=("center", "ten"), visualize=False)
  _, scale = ablation.split_preset(cfg.arch)
  rows = numbers("rows", flag_values.rows)
  if not (flag_values.all or rows):
    if flag_values.base:
      cfg = dataclasses.replace(cfg, arch=flag_values.base + scale)
    return [cfg]
  edited = [f"--{f}" for f in ("remove", "fc_features", "conv_features", "base")
            if flag_values[f].present]
  if edited:
    raise ValueError(f"--all and --rows train the paper's rows; drop {', '.join(edited)}")
  total = len(ablation.PAPER_TABLE3)
  bad = [r for r in rows if not 1 <= r <= total]
  if bad:
    raise ValueError(f"--rows: no row {bad[0]} in Table 3; rows are 1-{total}")
  chosen = sorted(set(rows)) if rows else range(1, total + 1)
  return [ablation.row_config(cfg, ablation.PAPER_TABLE3[i - 1]) for i in chosen]


def main(_):
  cfg = config.from_flags()
  root = FLAGS.workdir
  if FLAGS.summarize:
    if FLAGS.all or FLAGS.rows:
      raise ValueError("--summarize only assembles the table; drop --all / --rows")
    # Refuses an --arch that is no base.
    md, _, report = ablation.write_table3(root, config.resolve(cfg).config)
    print(f"table: {md}\nreport: {report}")
    return
  todo = plan(cfg)
  recipe = config.resolve(todo[0]).config  # The rows differ in their edits only.
  for i, row_cfg in enumerate(todo, 1):
    name = ablation.variant(row_cfg)
    wd = os.path.join(root, name)
    done = ablation.read_rows(root).get(name)
    if done is not None and not ablation.recipe_differences(done, recipe):
      print(f"[{i}/{len(todo)}] {name}: finished ({done['center']['val_top1']:.2f}% val "
            "top-1 error), skipped")
      continue
    paper = ablation.paper_row_of(row_cfg)
    where = f"Table 3 row {paper}" if paper else "not a row of the paper's Table 3"
    print(f"[{i}/{len(todo)}] {name} ({where}) -> {wd}", flush=True)
    try:
      summary = trainer.train_and_evaluate(row_cfg, wd, overwrite=FLAGS.overwrite)
    except trainer.NonFiniteLossError as e:
      cli.fail(f"{name}: {e}", status=1)
    if summary["status"] != "complete":
      print(f"stopped in {name} at step {summary['step']}/{summary['total_steps']}; run the "
            "same command to resume")
      return
    if jax.process_index() == 0:
      ablation.write_row(wd)
      md, _, _ = ablation.write_table3(root, recipe)
      print(f"[{i}/{len(todo)}] {name}: row written; table: {md}", flush=True)
  if jax.process_index() == 0:
    md, _, report = ablation.write_table3(root, recipe)
    print(f"table: {md}\nreport: {report}")


if __name__ == "__main__":
  cli.run(main)
