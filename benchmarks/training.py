"""Which limits training on this machine, the input pipeline or the train step?

    python -m benchmarks.training [--quick] [--data_dir=DIR] [--json=PATH]

Measures for both presets, after warm-up, images/s as median [min .. max]:
  * input: host batches of `input_pipeline.make_train_iterator` (given a zero mean
    image, so no mean pass is timed), over windows of >= 1 s. zfnet_small reads
    the embedded fashion_mnist_debian (32 px crops of the 36 px resize, batch
    128, crops "random" and "ten"); zfnet reads zf_bench_jpeg: 512 random-content
    ~500x375 JPEGs of ~100 kB like ImageNet's, 1000 classes, that this module
    writes into a temporary tfds data_dir (224 px of 256, crops "ten"). Then
    tf.data alone up to each stage of the per-image map: read, decode, resize.
  * step: the jit-compiled `train.make_train_step` (float32, default device,
    device-resident random batch), and GFLOP/s: the FLOPs of one step from XLA's
    `cost_analysis()` over the median step time.
  * end-to-end: the pipeline feeding the step in one process as the trainer does
    (the next batch is read while the step runs): what training gets when input
    and compute share the CPU cores.
Each section ends with the cores other processes kept busy meanwhile (/proc/stat):
they skew the numbers; rerun when it says ~0. --quick: zfnet at batch 16 only and
shorter windows (~2 min on 2 EPYC cores); the full run (~7 min there) adds zfnet
at the paper's batch 128 (~7.5 GiB; skipped with < 10 GiB available), which the
bottleneck lines then use. --data_dir: where fashion_mnist_debian is or goes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
from absl import logging  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from benchmarks.common import cpu_seconds, measure, meminfo_gib, proc  # noqa: E402
from zf_jax import arch as arch_lib, train  # noqa: E402
from zf_jax.data import input_pipeline as ip
from zf_jax.data.datasets import EMBEDDED_DATASET  # noqa: E402

JPEG_DATASET, JPEG_COUNT, JPEG_CLASSES = "zf_bench_jpeg", 512, 1000
_KNOWN = JPEG_DATASET in tfds.list_builders(with_community_datasets=False)  # Imported twice?


class ZfBenchJpeg(tfds.core.GeneratorBasedBuilder, skip_registration=_KNOWN):
  """ImageNet-like JPEGs: smooth random colour fields plus noise, 500x375 or 375x500."""

  name = JPEG_DATASET
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, description="zf_jax benchmark JPEGs",
                                 features=tfds.features.FeaturesDict({
                                     "image": tfds.features.Image(shape=(None, None, 3)),
                                     "label": tfds.features.ClassLabel(num_classes=JPEG_CLASSES)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    rng = np.random.default_rng(0)
    for i in range(JPEG_COUNT):
      w, h = (500, 375) if i % 5 else (375, 500)
      field = PIL.Image.fromarray(rng.integers(0, 256, (12, 12, 3), np.uint8)).resize(
          (w, h), PIL.Image.BICUBIC)
      pixels = np.asarray(field, np.float32) + rng.normal(0, 20, (h, w, 3))
      buf = io.BytesIO()
      PIL.Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
      buf.seek(0)  # Already-encoded bytes: tfds stores them as they are.
      yield i, {"image": buf, "label": int(rng.integers(JPEG_CLASSES))}


def prepare(name: str, data_dir: str | None):
  """The tfds builder of dataset `name` in `data_dir`, prepared (tfds' progress lines hidden)."""
  with contextlib.redirect_stdout(io.StringIO()):  # tfds' "Downloading and preparing" lines.
    builder = tfds.builder(name, data_dir=data_dir)
    builder.download_and_prepare()
  return builder


def _train_batches(icfg):
  mean = np.zeros((icfg.resize_size, icfg.resize_size, 3), np.float32)
  return ip.make_train_iterator(icfg, process_index=0, process_count=1, mean=mean)


def input_rate(icfg, timing) -> dict:
  """Images/s of `make_train_iterator(icfg)` host batches (`measure` with `timing`)."""
  it = _train_batches(icfg)  # Its tf.data threads stop when it is dropped, on return.
  return measure(lambda: next(it), images=icfg.global_batch_size, **timing)


def _resize_plain(encoded, size):
  """`input_pipeline.resize_center` without the antialiasing filter (plain bilinear)."""
  image = ip.decode_rgb(encoded)
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  side = tf.minimum(h, w)
  square = image[(h - side) // 2:(h + side) // 2, (w - side) // 2:(w + side) // 2]
  return tf.reshape(tf.image.resize(square, [size, size]), [size, size, 3])


def stage_rates(icfg, timing):
  """Images/s of tf.data pipelines that stop after a stage of the per-image map (no shuffle,
  mean, crop or `Batches` re-alignment), each batched and read as numpy like the real one."""
  records = ip._read(ip._builder(icfg), icfg.train_split)  # pylint: disable=protected-access
  size = icfg.resize_size
  stages = {"read records": lambda ex: tf.strings.length(ex["image"]),
            "+ decode": lambda ex: tf.shape(ip.decode_rgb(ex["image"]))[0],
            f"+ resize to {size}": lambda ex: ip.resize_center(ip.decode_rgb(ex["image"]), size),
            f"+ resize to {size}, no antialias": lambda ex: _resize_plain(ex["image"], size)}
  out = {}
  for name, fn in stages.items():
    ds = records.repeat().map(fn, num_parallel_calls=tf.data.AUTOTUNE)
    it = ds.batch(icfg.global_batch_size).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()
    out[name] = measure(lambda it=it: next(it), images=icfg.global_batch_size, **timing)
  return out


def step_rate(arch_name, batch, timing):
  """Images/s and GFLOP/s of the compiled train step; also returns the step and its state."""
  arch = arch_lib.get(arch_name)
  config = train.TrainConfig(batch_size=batch, init_scheme="he")
  holder = {"state": train.create_train_state(jax.random.key(0), arch, config)}
  rng = np.random.default_rng(0)
  data = jax.device_put({"image": rng.normal(0, 50, (batch, arch.image_size, arch.image_size, 3))
                         .astype(np.float32),
                         "label": rng.integers(0, arch.num_classes, batch).astype(np.int32)})
  t = time.perf_counter()
  compiled = train.make_train_step(arch, config).lower(holder["state"], data).compile()
  compile_s = time.perf_counter() - t

  def work():
    holder["state"], _ = compiled(holder["state"], data)

  stats = measure(work, images=batch, sync=lambda: jax.block_until_ready(holder["state"]),
                  **timing)
  cost = compiled.cost_analysis()  # jax 0.10: a dict; older versions: a list of dicts.
  flops = float((cost[0] if isinstance(cost, (list, tuple)) else cost).get("flops", np.nan))
  return {"arch": arch_name, "batch": batch, "compile_s": compile_s, "img_s": stats,
          "gflop_per_step": flops / 1e9,
          "gflop_s": flops / 1e9 * stats["median"] / batch}, compiled, holder


def end_to_end(icfg, compiled, holder, timing):
  """Images/s of the step fed by make_train_iterator (the next batch is read while a step runs)."""
  batches = _train_batches(icfg)

  def work():
    holder["state"], _ = compiled(holder["state"], jax.device_put(next(batches)))

  return measure(work, images=icfg.global_batch_size,
                 sync=lambda: jax.block_until_ready(holder["state"]), **timing)


def _n(x: float) -> str:
  return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _fmt(s) -> str:
  return f"{_n(s['median']):>7s}  [{_n(s['min'])} .. {_n(s['max'])}]"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="short run (~2 min on 2 cores)")
  parser.add_argument("--data_dir", default=None, help="tfds data_dir of fashion_mnist_debian")
  parser.add_argument("--json", default=None, help="also write the results to this file")
  args = parser.parse_args(argv)
  q, t_start = args.quick, time.perf_counter()
  logging.set_verbosity(logging.WARNING)
  tfds.disable_progress_bar()
  m = {"cpu": proc("/proc/cpuinfo", "model name", platform.processor() or "?"),
       "cores": os.cpu_count(), "load_1min": os.getloadavg()[0], "jax": jax.__version__,
       "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()]}
  print(f"machine: {m['cpu']}, {m['cores']} cores, load {m['load_1min']:.2f} (1 min); jax "
        f"{m['jax']} ({m['backend']}: {', '.join(m['devices'])}), tensorflow {tf.__version__}")
  avail_gib = meminfo_gib("MemAvailable")
  tmp = tempfile.TemporaryDirectory(prefix="zf_bench_")
  prepare(EMBEDDED_DATASET, args.data_dir)
  jpeg = prepare(JPEG_DATASET, tmp.name)
  print(f"datasets ready after {time.perf_counter() - t_start:.0f} s ({JPEG_COUNT} JPEGs of "
        f"{int(jpeg.info.dataset_size) / JPEG_COUNT / 1e3:.0f} kB on average in {tmp.name})")
  presets = [  # arch, dataset, data_dir, size, resize, step batches, crops (the last batch and
      # the first crops are the training ones)
      ("zfnet_small", EMBEDDED_DATASET, args.data_dir, 32, 36, (128,), ("random", "ten")),
      ("zfnet", JPEG_DATASET, tmp.name, 224, 256,
       (16,) if q or avail_gib < 10 else (16, 128), ("ten",))]
  results = {"machine": m, "quick": q, "input": [], "stages": [], "step": [], "end_to_end": [],
             "others_cores": {}}
  last = [cpu_seconds()]

  def section_end(key):
    (t0, all0, own0), (t, all1, own) = last[0], cpu_seconds()
    last[0] = (t, all1, own)
    results["others_cores"][key] = busy = max(0.0, (all1 - all0 - own + own0) / (t - t0))
    print(f"  (other processes kept {busy:.2f} of {m['cores']} cores busy meanwhile)")

  print("\ninput pipeline: make_train_iterator host batches, img/s median [min .. max]")
  for name, ds, ddir, size, resize, batches, crops in presets:
    batch = batches[-1]
    timing = dict(warm=max(2, 512 // batch), windows=3 if q else 5, min_s=0.5 if q else 1.0)
    for crop in crops:
      icfg = ip.InputConfig(dataset=ds, data_dir=ddir, image_size=size, resize_size=resize,
                            global_batch_size=batch, train_crops=crop)
      r = input_rate(icfg, timing)
      results["input"].append({"arch": name, "dataset": ds, "crops": crop, "batch": batch,
                               "size": size, "resize": resize, "img_s": r})
      print(f"  {ds:21s} {size:3d} px of {resize:3d}, crops {crop:6s} batch {batch:3d}: {_fmt(r)}")
    for stage, r in stage_rates(icfg, timing).items():
      results["stages"].append({"dataset": ds, "stage": stage, "img_s": r})
      print(f"    stage only: {stage}".ljust(63) + _fmt(r))
  section_end("input")
  print("\ntrain step (jit, float32, random batch on the device), then end-to-end (the "
        "pipeline\nfeeding that step, training crops); img/s median [min .. max]")
  for name, ds, ddir, size, resize, batches, crops in presets:
    for batch in batches:
      steps = 5 if name == "zfnet" else 10 if q else 20
      r, compiled, holder = step_rate(name, batch, dict(warm=1 if name == "zfnet" else 3,
                                                        windows=steps))
      results["step"].append(r)
      print(f"  {name:11s} {size:3d} px batch {batch:3d}: {_fmt(r['img_s'])} img/s, "
            f"{batch / r['img_s']['median']:.3f} s/step, {r['gflop_per_step']:,.1f} GFLOP/step,"
            f" {r['gflop_s']:,.1f} GFLOP/s (compile {r['compile_s']:.0f} s)")
    icfg = ip.InputConfig(dataset=ds, data_dir=ddir, image_size=size, resize_size=resize,
                          global_batch_size=batch, train_crops=crops[0])
    r = end_to_end(icfg, compiled, holder, dict(warm=2, windows=3,
                                                per=1 if name == "zfnet" else 3 if q else 5))
    results["end_to_end"].append({"arch": name, "crops": crops[0], "batch": batch, "img_s": r})
    print(f"  {name:11s} end-to-end   batch {batch:3d}: {_fmt(r)}")
  section_end("step")
  print("\nbottleneck (training crops and batch):")
  for name, *_ in presets:
    inp = next(x for x in results["input"] if x["arch"] == name)["img_s"]["median"]
    st = [x for x in results["step"] if x["arch"] == name][-1]["img_s"]["median"]
    both = next(x for x in results["end_to_end"] if x["arch"] == name)["img_s"]["median"]
    which, ratio = ("compute (train step)", inp / st) if st < inp else ("input pipeline", st / inp)
    print(f"  {name:11s}: input {_n(inp)} img/s vs step {_n(st)} img/s -> {which} limits, "
          f"the other is {ratio:.1f}x faster;\n{'':15s}end-to-end {_n(both)} img/s = "
          f"{100 * both / min(inp, st):.0f}% of the slower one alone")
  results["total_s"] = time.perf_counter() - t_start
  print(f"\ntotal {results['total_s']:.0f} s")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)
  tmp.cleanup()


if __name__ == "__main__":
  main()
