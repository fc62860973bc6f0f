r"""One report page for several workdirs: their tables, figures and configurations.

  python -m experiments.report --workdirs=runs/quickstart,runs/ablation,runs/transfer \
      --out=runs/report

Writes <out>/report.html and <out>/report_files/ (a copy of every figure and
table it shows, one folder per workdir): every table (Tables 1-7, Fig. 9,
with the paper's numbers beside ours as each workdir's table files carry
them) and figure of each workdir in the paper's order, with each run's
configuration (the options that differ from the defaults) and final
accuracy, and the versions of Python, JAX, Flax, ... and zf_jax's git commit.
A workdir is a training run (config.json) or an experiment folder (the
ablation's, the transfer's: report/sections/, tables/). Relative links only:
<out> can be moved or zipped. Rerunning replaces both.
"""

import time

from absl import flags

from experiments import cli
from zf_jax.report import multi

flags.DEFINE_list("workdirs", None, "Workdirs to report, comma-separated: training runs "
                  "(config.json) or experiment folders (report/sections/, tables/).",
                  required=True)
flags.DEFINE_string("out", None, "Folder for report.html and report_files/ (created).",
                    required=True)

FLAGS = flags.FLAGS


def main(_):
  t0 = time.time()
  path = multi.write(FLAGS.workdirs, FLAGS.out)
  print(f"report: {path} ({len(FLAGS.workdirs)} workdirs, {time.time() - t0:.1f} s)")


if __name__ == "__main__":
  cli.run(main)
