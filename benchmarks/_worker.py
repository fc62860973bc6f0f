"""One side of one workload of `python -m benchmarks`, in a process of its own.

    python -m benchmarks._worker WORKLOAD SIDE --config=JSON --json-out=FILE

WORKLOAD is peak, train, deconv, occlusion or input; SIDE is ours (JAX) or peer
(PyTorch / Captum on the twin of `benchmarks.common.torch_twin`). The driver
(`benchmarks/__main__.py`) builds the JSON config. The result file maps row keys
to {"status": "ok", "work": units per timed run, "unit", "seconds": per run,
"rate": work / seconds, "settings", ...} or {"status": "failed", "error": one line};
"peak_rss_mib" is this process's peak resident memory (`ru_maxrss`), so one
workload's side per process gives clean numbers (and keeps PyTorch's OpenMP
threads away from JAX's). Exit status 1 when the work failed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402  pylint: disable=wrong-import-position

from benchmarks import common  # noqa: E402  pylint: disable=wrong-import-position

WORKLOADS = ("peak", "train", "deconv", "occlusion", "input")
SIDES = ("ours", "peer")
MIB = 2**20


def rss_mib() -> float:
  """Peak resident memory of this process so far (Linux: ru_maxrss is in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rated(seconds: dict, work: int, unit: str, **extra) -> dict:
  """A side's result: `seconds` per run of `work` units and the rate work / seconds."""
  return {"status": "ok", "work": work, "unit": unit, "seconds": seconds,
          "rate": common.rate(work, seconds), **extra}


def xla_stats(compiled, seconds: float | None = None) -> dict:
  """FLOPs (XLA's `cost_analysis`) and temp memory (`memory_analysis`) of a compiled function."""
  out = {}
  try:
    cost = compiled.cost_analysis()  # jax 0.10: a dict; older versions: a list of dicts.
    flops = float((cost[0] if isinstance(cost, (list, tuple)) else cost).get("flops", "nan"))
    if flops > 0:
      out["gflop_per_run"] = flops / 1e9
      if seconds:
        out["gflop_s"] = flops / 1e9 / seconds
  except Exception:  # pylint: disable=broad-except  # Not every backend reports costs.
    pass
  try:
    out["xla_temp_mib"] = compiled.memory_analysis().temp_size_in_bytes / MIB
  except Exception:  # pylint: disable=broad-except
    pass
  return out


def random_images(n: int, size: int, seed: int = 0) -> np.ndarray:
  """(n, size, size, 3) float32, spread like mean-subtracted pixels."""
  return np.random.default_rng(seed).normal(0, 64, (n, size, size, 3)).astype(np.float32)


def nchw(images: np.ndarray):
  import torch  # pylint: disable=g-import-not-at-top
  return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def torch_threads() -> int:
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(common.cores())
  return torch.get_num_threads()


def init_params(arch):
  import jax  # pylint: disable=g-import-not-at-top
  from zf_jax import model  # pylint: disable=g-import-not-at-top
  return jax.tree.map(np.asarray, model.init(jax.random.key(0), arch, scheme="he"))


# --- peak: a large matmul -------------------------------------------------------------------

def peak_ours(cfg):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  n = cfg["n"]
  a, b = jax.random.normal(jax.random.key(0), (2, n, n), jnp.float32)
  compiled = jax.jit(jnp.matmul).lower(a, b).compile()
  seconds = common.timed(lambda: compiled(a, b).block_until_ready(), 3)
  dev = jax.devices()[0]
  return {"peak": {"status": "ok", "n": n, "seconds": seconds,
                   "gflop_s": 2 * n**3 / seconds["median"] / 1e9,
                   "backend": jax.default_backend(), "device": dev.device_kind,
                   "devices": len(jax.devices())}}


# --- train step -----------------------------------------------------------------------------

def _train_data(arch, batch):
  rng = np.random.default_rng(0)
  return (rng.normal(0, 50, (batch, arch.image_size, arch.image_size, 3)).astype(np.float32),
          rng.integers(0, arch.num_classes, batch).astype(np.int32))


def train_ours(cfg):
  import jax  # pylint: disable=g-import-not-at-top
  from zf_jax import arch as arch_lib, train  # pylint: disable=g-import-not-at-top
  arch, batch = arch_lib.get(cfg["arch"]), cfg["batch"]
  config = train.TrainConfig(batch_size=batch, init_scheme="he")
  holder = {"state": train.create_train_state(jax.random.key(0), arch, config)}
  images, labels = _train_data(arch, batch)
  data = jax.device_put({"image": images, "label": labels})
  compiled = train.make_train_step(arch, config).lower(holder["state"], data).compile()

  def step():
    holder["state"], metrics = compiled(holder["state"], data)
    jax.block_until_ready((holder["state"], metrics))

  seconds = common.timed(step, cfg["repeats"], per=cfg["per"])
  return {cfg["key"]: rated(seconds, batch, "img", steps_per_repeat=cfg["per"],
                            **xla_stats(compiled, seconds["median"]))}


def train_peer(cfg):
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from torch.nn import functional as F  # pylint: disable=g-import-not-at-top
  from zf_jax import arch as arch_lib, train  # pylint: disable=g-import-not-at-top
  arch, batch = arch_lib.get(cfg["arch"]), cfg["batch"]
  config = train.TrainConfig(batch_size=batch, init_scheme="he")
  # Our step's starting weights (He init, then the RMS renormalisation).
  params = jax.tree.map(np.asarray, train.create_train_state(jax.random.key(0), arch,
                                                             config).params)
  threads = torch_threads()
  net = common.torch_twin(params, arch, lrn_backward="autograd", dropout=config.dropout).train()
  opt = torch.optim.SGD(net.parameters(), lr=config.learning_rate, momentum=config.momentum,
                        weight_decay=config.weight_decay)
  convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
  images, labels = _train_data(arch, batch)
  x, y = nchw(images), torch.from_numpy(labels).long()
  radius, top = config.rms_radius, min(5, arch.num_classes)

  def step():
    opt.zero_grad(set_to_none=True)
    logits = net(x)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    opt.step()
    with torch.no_grad():  # train.clip_filter_rms: per output channel, over kh x kw x cin.
      for conv in convs:
        rms = conv.weight.square().mean(dim=(1, 2, 3), keepdim=True).sqrt()
        conv.weight.mul_(torch.where(rms > radius, radius / rms, torch.ones_like(rms)))
      top1 = (logits.argmax(1) == y).float().mean()  # The metrics our step returns.
      top5 = (logits.topk(top, 1).indices == y[:, None]).any(1).float().mean()
    return loss.item(), top1.item(), top5.item()

  seconds = common.timed(step, cfg["repeats"], per=cfg["per"])
  return {cfg["key"]: rated(seconds, batch, "img", steps_per_repeat=cfg["per"],
                            torch_threads=threads)}


# --- deconvnet projections ------------------------------------------------------------------

def _check_maps(arch, layer, maps):
  from zf_jax.arch import feature_shapes  # pylint: disable=g-import-not-at-top
  shape = feature_shapes(arch)[layer]["out"]
  if maps > shape[-1]:
    raise ValueError(f"--maps={maps} exceeds the {shape[-1]} maps of layer {layer}")
  return shape


def deconv_ours(cfg):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from zf_jax import arch as arch_lib, deconv, model  # pylint: disable=g-import-not-at-top
  arch, layer, maps, n = arch_lib.get(cfg["arch"]), cfg["layer"], cfg["maps"], cfg["images"]
  _check_maps(arch, layer, maps)
  params = model.init(jax.random.key(0), arch, scheme="he")
  images = jnp.asarray(random_images(n, arch.image_size))

  def run(params, images):
    _, trace = model.apply(params, images, arch)
    # Each map's strongest unit per image, first in row-major order on ties (as strongest).
    acts = trace.activations[layer]
    _, _, w, _ = acts.shape
    best = jnp.argmax(jnp.moveaxis(acts[..., :maps], -1, 0).reshape(maps, n, -1), -1)
    best = best.reshape(-1).astype(jnp.int32)  # Row k = (map k // n, image k % n).
    units = (jnp.tile(jnp.arange(n, dtype=jnp.int32), maps), best // w, best % w,
             jnp.repeat(jnp.arange(maps, dtype=jnp.int32), n))
    return deconv.project_units(params, arch, trace, layer, units)

  compiled = jax.jit(run).lower(params, images).compile()
  out = compiled(params, images).block_until_ready()  # Also the warm-up.
  count = int(out.shape[0])
  del out
  seconds = common.timed(lambda: compiled(params, images).block_until_ready(), cfg["repeats"],
                         warm=0)
  # No FLOPs: project_units loops over chunks, and XLA's cost analysis counts a loop body once.
  temp = {k: v for k, v in xla_stats(compiled).items() if k == "xla_temp_mib"}
  return {cfg["key"]: rated(seconds, count, "proj", path="deconv.project_units", **temp)}


def deconv_peer(cfg):
  import torch  # pylint: disable=g-import-not-at-top
  from captum.attr import Deconvolution  # pylint: disable=g-import-not-at-top
  from zf_jax import arch as arch_lib  # pylint: disable=g-import-not-at-top
  arch, layer, maps, n = arch_lib.get(cfg["arch"]), cfg["layer"], cfg["maps"], cfg["images"]
  h, w, c = _check_maps(arch, layer, maps)
  chunk = cfg["chunk"]
  threads = torch_threads()
  trunk = common.torch_twin(init_params(arch), arch, upto=layer)
  x = nchw(random_images(n, arch.image_size))
  deconvolution = Deconvolution(trunk)
  which = torch.arange(n).repeat(maps)  # Row k = (map k // n, image k % n), as ours.
  feature = torch.arange(maps).repeat_interleave(n)

  def run():
    with torch.no_grad():
      acts = trunk(x).reshape(n, h * w, c)[..., :maps]
    best = acts.argmax(1).T.reshape(-1)  # (maps * n,): first maximum, as deconv.strongest.
    target = best * c + feature  # Flat NHWC index of (row, col, map).
    done = 0
    for s in range(0, maps * n, chunk):
      rows = which[s:s + chunk]
      done += deconvolution.attribute(x[rows], target=target[s:s + chunk].tolist()).shape[0]
    return done

  count = run()  # Also the warm-up.
  seconds = common.timed(run, cfg["repeats"], warm=0)
  return {cfg["key"]: rated(seconds, count, "proj", chunk=chunk, torch_threads=threads)}


# --- occlusion ------------------------------------------------------------------------------

def _occlusion_setup(cfg):
  from zf_jax import arch as arch_lib  # pylint: disable=g-import-not-at-top
  from zf_jax.occlusion import grid_size  # pylint: disable=g-import-not-at-top
  arch = arch_lib.get(cfg["arch"])
  image = random_images(1, arch.image_size)[0]
  positions = grid_size(arch.image_size, cfg["patch"], cfg["stride"]) ** 2
  return arch, image, 3 % arch.num_classes, positions


def _best(key, tried, unit_name, **extra):
  """The row of the fastest setting; every setting's seconds under "tried"."""
  name, seconds = min(tried.items(), key=lambda kv: kv[1]["median"])
  return {key: rated(seconds, 1, "map", best=f"{unit_name} {name}",
                     tried={f"{unit_name} {k}": v for k, v in tried.items()}, **extra)}


def occlusion_ours(cfg):
  import jax  # pylint: disable=g-import-not-at-top
  from zf_jax import model, occlusion  # pylint: disable=g-import-not-at-top
  arch, image, label, positions = _occlusion_setup(cfg)
  params = model.init(jax.random.key(0), arch, scheme="he")
  tried, stats = {}, {}
  for chunk in cfg["chunks"]:
    fn = jax.jit(lambda p, im, chunk=chunk: occlusion.occlusion(
        p, arch, im, label, patch=cfg["patch"], stride=cfg["stride"], chunk=chunk))
    compiled = fn.lower(params, image).compile()
    tried[chunk] = common.timed(lambda c=compiled: jax.block_until_ready(c(params, image)),
                                cfg["repeats"])
    stats[chunk] = xla_stats(compiled)
  out = _best(cfg["key"], tried, "chunk", positions=positions)
  best = min(tried, key=lambda k: tried[k]["median"])
  if "xla_temp_mib" in stats[best]:  # No FLOPs: XLA's cost analysis counts a loop body once.
    out[cfg["key"]]["xla_temp_mib"] = stats[best]["xla_temp_mib"]
  return out


def occlusion_peer(cfg):
  import torch  # pylint: disable=g-import-not-at-top
  from captum.attr import Occlusion  # pylint: disable=g-import-not-at-top
  from zf_jax import model  # pylint: disable=g-import-not-at-top
  arch, image, label, positions = _occlusion_setup(cfg)
  params = init_params(arch)
  ours, _ = model.apply(params, image[None], arch)  # Before torch starts its threads.
  threads = torch_threads()
  net = common.torch_twin(params, arch)
  x = nchw(image[None])
  with torch.no_grad():
    theirs = net(x).numpy()
  ours = np.asarray(ours)
  twin_diff = float(np.max(np.abs(theirs - ours)) / max(float(np.max(np.abs(ours))), 1e-30))
  occ = Occlusion(net)
  p, s = cfg["patch"], cfg["stride"]
  tried = {}
  for per_eval in cfg["per_eval"]:
    tried[per_eval] = common.timed(
        lambda pe=per_eval: occ.attribute(x, sliding_window_shapes=(3, p, p), strides=(3, s, s),
                                          target=label, baselines=0.0,
                                          perturbations_per_eval=pe), cfg["repeats"])
  return _best(cfg["key"], tried, "perturbations_per_eval", positions=positions,
               torch_threads=threads, twin_relative_difference=twin_diff)


# --- input pipeline -------------------------------------------------------------------------

def _input_rate(icfg, **timing) -> dict:
  """Images/s of `make_train_iterator(icfg)` host batches (`common.measure` with `timing`),
  given a zero mean image so that no mean pass is timed."""
  from zf_jax.data import input_pipeline as ip  # pylint: disable=g-import-not-at-top
  mean = np.zeros((icfg.resize_size, icfg.resize_size, 3), np.float32)
  it = ip.make_train_iterator(icfg, process_index=0, process_count=1, mean=mean)
  # Its tf.data threads stop when it is dropped, on return.
  return common.measure(lambda: next(it), images=icfg.global_batch_size, **timing)


def input_ours(cfg):
  """Both datasets in this process; each row's RSS is the process peak after that row."""
  import tempfile  # pylint: disable=g-import-not-at-top
  from benchmarks import datasets  # pylint: disable=g-import-not-at-top
  from zf_jax.data import input_pipeline as ip  # pylint: disable=g-import-not-at-top
  out = {}
  with tempfile.TemporaryDirectory(prefix="zf_bench_jpeg_") as tmp:
    for row in cfg["rows"]:
      data_dir = tmp if row["dataset"] == datasets.JPEG_DATASET else cfg["data_dir"]
      try:
        datasets.prepare(row["dataset"], data_dir)
        icfg = ip.InputConfig(dataset=row["dataset"], data_dir=data_dir,
                              image_size=row["size"], resize_size=row["resize"],
                              global_batch_size=row["batch"], train_crops=row["crops"])
        rate = _input_rate(icfg, warm=row["warm"], windows=cfg["repeats"], min_s=row["min_s"])
        seconds = {k: row["batch"] / rate[k] for k in ("median", "min", "max")}
        seconds["min"], seconds["max"] = seconds["max"], seconds["min"]
        out[row["key"]] = rated(seconds, row["batch"], "img", batch_rate=rate)
      except Exception as e:  # pylint: disable=broad-except  # The other row may still run.
        traceback.print_exc()
        out[row["key"]] = failure(e)
      out[row["key"]]["peak_rss_mib"] = rss_mib()
  return out


# ---------------------------------------------------------------------------------------------

RUNNERS = {("peak", "ours"): peak_ours, ("train", "ours"): train_ours,
           ("train", "peer"): train_peer, ("deconv", "ours"): deconv_ours,
           ("deconv", "peer"): deconv_peer, ("occlusion", "ours"): occlusion_ours,
           ("occlusion", "peer"): occlusion_peer, ("input", "ours"): input_ours}


def failure(e: BaseException) -> dict:
  lines = [l.strip() for l in str(e).strip().splitlines() if l.strip()]
  return {"status": "failed", "error": f"{type(e).__name__}: {lines[0] if lines else ''}"}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workload", choices=WORKLOADS)
  parser.add_argument("side", choices=SIDES)
  parser.add_argument("--config", required=True, help="the workload's settings, JSON")
  parser.add_argument("--json-out", required=True, help="where the result goes")
  args = parser.parse_args(argv)
  cfg = json.loads(args.config)
  runner = RUNNERS.get((args.workload, args.side))
  try:
    if runner is None:
      raise ValueError(f"workload {args.workload!r} has no {args.side} side")
    result = runner(cfg)
  except Exception as e:  # pylint: disable=broad-except  # Reported as the row's one line.
    traceback.print_exc()
    result = {cfg.get("key", args.workload): failure(e)}
  for row in result.values():
    row.setdefault("peak_rss_mib", rss_mib())
  with open(args.json_out, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
  return 0 if all(r["status"] == "ok" for r in result.values()) else 1


if __name__ == "__main__":
  sys.exit(main())
