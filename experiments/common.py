"""Flags every Section 4 analysis binary shares, and the run + data they name.

  --workdir   the training run to examine (its latest checkpoint, or --step)
  --dataset   tfds dataset to examine it on (default: the run's own)
  --split     split of it (default: validation, else test)
  --data_dir  tfds data_dir (default: the run's)
  --batch_size  images per forward pass

A binary calls `define_flags()` once (they become its own flags, listed by
its --helpshort), then `open_source()`. Figures go to <workdir>/figures/,
tables to <workdir>/tables/, and each binary adds its section to
<workdir>/report.html.
"""

from absl import flags

from zf_jax.analyses import source

# The flags define_flags() defines are key flags of the binary that calls it.
flags.disclaim_key_flags()

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the shared analysis flags (call once, at the binary's top level)."""
  flags.DEFINE_string("workdir", None, "Training run to examine (config.json, checkpoints/); "
                      "figures, tables and report.html are written into it.", required=True)
  flags.DEFINE_integer("step", None, "Checkpoint step to read (default: the latest).")
  flags.DEFINE_string("dataset", None,
                      "tfds dataset to examine the run on (default: the run's).")
  flags.DEFINE_string("split", None, "Split of --dataset (default: validation, else test).")
  flags.DEFINE_string("data_dir", None, "tfds data_dir (default: the run's).")
  flags.DEFINE_integer("batch_size", 64, "Images per forward pass.", lower_bound=1)


def open_source() -> source.Source:
  """The run and split the shared flags name (one-line errors for bad values)."""
  return source.open_source(FLAGS.workdir, step=FLAGS.step, dataset=FLAGS.dataset,
                            split=FLAGS.split, data_dir=FLAGS.data_dir,
                            batch_size=FLAGS.batch_size)
