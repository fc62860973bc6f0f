r"""Imports ImageNet-trained weights of a published model into a new run workdir.

  python -m experiments.import_weights --source=pytorchcv:zfnet \
      --file=~/Downloads/zfnet-0395-5c3a8b15.pth --workdir=runs/zfnet_imagenet

Sources (BUILD.md says where to download each file and how to convert it to
.safetensors for a machine without torch):

  pytorchcv:zfnet       Fig. 3's ZFNet (exact preset zfnet_pytorchcv)
  pytorchcv:zfnetb      Table 2 (b)'s wide ZFNet (zfnet_wide_pytorchcv)
  torchvision:alexnet   torchvision's AlexNet (alexnet_torchvision)

--file is a torch state dict (.pth, .pt: needs torch, opened with its
weights-only loader so that the file can run no code), or .safetensors / .npz
of the same tensor names. The workdir gets config.json and a checkpoint at
step 0, and opens like any trained run: the Section 4 binaries (with
--dataset to look at images other than ImageNet's, e.g. folder:<root>), the
transfer binary (--run) and notebooks/explore.ipynb.
"""

from absl import flags

from experiments import cli
from zf_jax.report import page
from zf_jax.runs import imported

flags.DEFINE_enum("source", None, list(imported.SOURCES), "The published model the file holds.",
                  required=True)
flags.DEFINE_string("file", None, "Downloaded weights: .pth / .pt (needs torch), .safetensors or "
                    ".npz.", required=True)
flags.DEFINE_string("workdir", None, "New run workdir to write (must not hold a run).",
                    required=True)
flags.DEFINE_string("dataset", "imagenet2012", "Dataset the run's config names: what the "
                    "Section 4 binaries examine when not given --dataset.")
flags.DEFINE_string("data_dir", None, "tfds data_dir of --dataset (default: tfds' own).")

FLAGS = flags.FLAGS


def main(_):
  wd = imported.import_weights(FLAGS.source, FLAGS.file, FLAGS.workdir, dataset=FLAGS.dataset,
                               data_dir=FLAGS.data_dir)
  cfg, _ = wd.read_config()
  arch, info = wd.arch(), imported.imported_from(wd.path)
  page.add_section(wd.path, "imported", "Imported weights", items={
      "source": f"{info['source']} ({info['published']})",
      "architecture": f"{arch.name} (zf_jax.arch)", "classes": arch.num_classes,
      "file": f"{info['file']} (sha256 {info['sha256'][:16]}...)", "input": (
          f"pixels minus the mean colour {', '.join(map(str, cfg.mean_rgb))}; smaller side "
          f"{cfg.resize_size}, centre crop {arch.image_size}")})
  print(f"imported {FLAGS.source} ({arch.name}, {arch.num_classes} classes) into {wd.path}\n"
        f"look inside: python -m experiments.fig6_filters --workdir={wd.path}\n"
        f"             python -m experiments.fig2_top9 --workdir={wd.path} "
        f"--dataset=folder:<a folder of class folders of images>")


if __name__ == "__main__":
  cli.run(main)
