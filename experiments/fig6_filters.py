r"""Fig. 6: layer-1 filters of one or more runs, side by side (Section 4.1).

  python -m experiments.fig6_filters --workdir=runs/zfnet \
      --compare=runs/zfnet_no_rms,runs/alexnet --layer2_maps=8

Fig. 6 (a)/(b): filters without and with the RMS renormalisation (train a
second run with --rms_radius=0); (b)/(c) and (d)/(e): AlexNet vs ZFNet,
layer-1 filters and layer-2 projections (top 9 over the split, Fig. 2 style)
of each run. Everything goes into --workdir's report.
"""

from absl import flags

from experiments import cli, common
from zf_jax.analyses import source
from zf_jax.report import visualize

common.define_flags()
flags.DEFINE_list("compare", [], "Other run workdirs shown beside --workdir.")
flags.DEFINE_integer("layer2_maps", 0, "Also show layer-2 top-9 projections of this many maps "
                     "of every run (0: filters only).", lower_bound=0)
flags.DEFINE_integer("max_examples", None, "Stream only the first N examples for layer 2.",
                     lower_bound=1)

FLAGS = flags.FLAGS


def main(_):
  workdirs = [FLAGS.workdir] + list(FLAGS.compare)
  if not FLAGS.layer2_maps:
    given = [f"--{n}" for n in ("dataset", "split", "data_dir", "max_examples")
             if FLAGS[n].present]
    if given:
      raise ValueError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to the "
                       "layer-2 projections only: add --layer2_maps=N, or drop it")
  sources = [common.open_source()] + [  # Opened first: a bad flag writes nothing.
      source.open_source(w, dataset=FLAGS.dataset, split=FLAGS.split, data_dir=FLAGS.data_dir,
                         batch_size=FLAGS.batch_size) for w in FLAGS.compare
  ] if FLAGS.layer2_maps else []
  print(visualize.fig6_filters(workdirs, step=FLAGS.step))
  if sources:
    print(visualize.fig6_layer2(sources, FLAGS.layer2_maps, max_examples=FLAGS.max_examples))
  print(f"report: {FLAGS.workdir}/report.html")


if __name__ == "__main__":
  cli.run(main)
