"""Section 4's analyses on full-size ZFNet: ours vs Captum on a PyTorch twin, side by side.

    python -m benchmarks.analysis [--quick] [--maps=64] [--repeats=3] [--json=PATH]

Workloads (full `zfnet`, 224 px, float32, random He-initialised weights; the
work does not depend on the values):
  * fig2: the strongest activation of each of `--maps` layer-5 feature maps in
    each of 9 images, projected to pixels: ours = `deconv.strongest` +
    `deconv.project` (jit, vmapped over maps); Captum = `Deconvolution` on the
    twin cut at layer 5, one call per map on the 9 images, the target being
    each image's strongest location of that map (found by a forward pass).
  * occlusion: one 224-px map, 50 px grey square, stride 8 (22 x 22
    positions): ours = `occlusion.occlusion` (every position in one jitted
    computation, several chunk sizes); Captum = `Occlusion.attribute` with
    its best `perturbations_per_eval`.
The twin is built from the same `Arch` and weights (conv HWIO -> OIHW, NHWC
flattening for fc6, -inf pool padding, an LRN whose backward is the identity
as the deconvnet skips it), and checked to give our logits first. Times are
wall-clock seconds after a warm-up run, median [min .. max] over --repeats;
ratio = Captum's median / ours. Without torch and captum (`pip install -e
".[compare]"`) only our side runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import timed, torch_twin  # torch_twin: also for tests/test_peers.py.
from zf_jax import arch as arch_lib
from zf_jax import deconv, model, occlusion

LAYER = 5
K = 9  # Images per map, as in Fig. 2.


def fmt(t: dict | None) -> str:
  if not t:
    return "-"
  return f"{t['median']:.2f} s [{t['min']:.2f} .. {t['max']:.2f}]"


# --- ours ---------------------------------------------------------------------------------

def ours_fig2(params, arch, images):
  """images (M, K, H, W, 3): map m's projections on its own K images -> (M, K, H, W, 3)."""

  @jax.jit
  def run(params, images):
    def one(imgs, m):
      _, trace = model.apply(params, imgs, arch)
      return deconv.project(params, arch, trace, LAYER, deconv.strongest(trace, LAYER, m))
    return jax.vmap(one)(images, jnp.arange(images.shape[0]))

  return lambda: jax.block_until_ready(run(params, images))


def ours_occlusion(params, arch, image, chunk):
  return lambda: jax.block_until_ready(
      occlusion.occlusion(params, arch, image, 3, patch=50, stride=8, chunk=chunk).prob)


# --- Captum on the PyTorch twin (benchmarks.common.torch_twin) ------------------------------

def captum_fig2(trunk, images_nchw, maps, layer_shape):
  """One Deconvolution call per map on its K images, targets = each image's strongest unit."""
  import torch  # pylint: disable=g-import-not-at-top
  from captum.attr import Deconvolution  # pylint: disable=g-import-not-at-top
  h, w, c = layer_shape
  deconvolution = Deconvolution(trunk)

  def run():
    out = []
    for m in range(maps):
      x = images_nchw[m]
      with torch.no_grad():
        acts = trunk(x).reshape(-1, h, w, c)[..., m].reshape(x.shape[0], -1)
      where = acts.argmax(1)
      target = [int(i) * c + m for i in where]  # Flat NHWC index of (row, col, m).
      out.append(deconvolution.attribute(x, target=target))
    return out

  return run


def captum_occlusion(net, image_nchw, per_eval):
  from captum.attr import Occlusion  # pylint: disable=g-import-not-at-top
  occ = Occlusion(net)
  return lambda: occ.attribute(image_nchw, sliding_window_shapes=(3, 50, 50), strides=(3, 8, 8),
                               target=3, baselines=0.0, perturbations_per_eval=per_eval)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="8 maps, 1 repeat (a smoke run)")
  parser.add_argument("--maps", type=int, default=64, help="layer-5 maps for fig2")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--json", default=None, help="also write the results here")
  args = parser.parse_args()
  maps = 8 if args.quick else args.maps
  repeats = 1 if args.quick else args.repeats

  arch = arch_lib.get("zfnet")
  params = model.init(jax.random.key(0), arch, scheme="he")
  rng = np.random.default_rng(0)
  images = rng.normal(0, 64, (maps, K, 224, 224, 3)).astype(np.float32)
  image = images[0, 0]
  results = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                         "cpus": os.cpu_count(), "jax": jax.__version__,
                         "device": str(jax.devices()[0])},
             "maps": maps, "k": K, "repeats": repeats}
  print(f"zfnet 224 px on {jax.devices()[0].device_kind}, {os.cpu_count()} CPUs; "
        f"fig2: {maps} layer-5 maps x {K} images; occlusion: 50 px, stride 8 (22 x 22)")

  ours = {"fig2": timed(ours_fig2(params, arch, jnp.asarray(images)), repeats)}
  for chunk in (32, 128):
    ours[f"occlusion_chunk{chunk}"] = timed(ours_occlusion(params, arch, jnp.asarray(image),
                                                           chunk), repeats)
  best_ours = min((v for k, v in ours.items() if k.startswith("occlusion")),
                  key=lambda t: t["median"])
  results["ours"] = ours

  peer = {}
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import captum  # pylint: disable=g-import-not-at-top,unused-import  # noqa: F401
  except ImportError:
    print('torch / captum not installed: our side only (pip install -e ".[compare]")')
  else:
    torch.set_num_threads(os.cpu_count())
    net = torch_twin(params, arch)
    logits, _ = model.apply(params, jnp.asarray(images[0, :2]), arch)
    with torch.no_grad():
      theirs = net(torch.from_numpy(images[0, :2].transpose(0, 3, 1, 2).copy())).numpy()
    diff = float(np.max(np.abs(theirs - np.asarray(logits))) / np.max(np.abs(logits)))
    print(f"twin check: max |logit difference| / max |logit| = {diff:.1e}")
    results["twin_relative_difference"] = diff
    trunk = torch_twin(params, arch, upto=LAYER)
    nchw = torch.from_numpy(images.transpose(0, 1, 4, 2, 3).copy())
    layer_shape = arch_lib.feature_shapes(arch)[LAYER]["out"]
    peer["fig2"] = timed(captum_fig2(trunk, nchw, maps, layer_shape), repeats)
    for per_eval in (1, 16, 64):
      peer[f"occlusion_ppe{per_eval}"] = timed(
          captum_occlusion(net, nchw[0, :1], per_eval), repeats)
    results["captum"] = peer
    results["versions"] = {"torch": torch.__version__, "captum": captum.__version__}

  best_peer = min((v for k, v in peer.items() if k.startswith("occlusion")),
                  key=lambda t: t["median"], default=None)
  rows = [("fig2 (layer 5)", ours["fig2"], peer.get("fig2"), f"{maps * K} projections"),
          ("occlusion (best setting)", best_ours, best_peer, "484 positions")]
  print("\n| workload | ours | Captum | Captum / ours | work |\n|---|---|---|---|---|")
  for name, a, b, work in rows:
    ratio = f"{b['median'] / a['median']:.2f}x" if b else "-"
    print(f"| {name} | {fmt(a)} | {fmt(b)} | {ratio} | {work} |")
  print("\nall settings:")
  for side, values in (("ours", ours), ("captum", peer)):
    for name, t in values.items():
      print(f"  {side:6s} {name:22s} {fmt(t)}")
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  main()
