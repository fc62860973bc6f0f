"""Helpers shared by the benchmarks: timing, /proc readers, the machine, the PyTorch twin.

Imports neither jax, tensorflow nor torch at module level, so that the driver of
`python -m benchmarks` stays light and each worker imports only what its side needs.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import importlib.util
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time

import numpy as np

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_PEERS_ENV = "ZF_BENCH_NO_PEERS"  # Set to 1: behave as if torch and captum were not installed.
PEER_HINT = 'not installed (pip install -e ".[compare]")'


# --- timing -------------------------------------------------------------------------------

def summary(values) -> dict:
  """{"median", "min", "max", "runs"} of a list of numbers."""
  values = [float(v) for v in values]
  return {"median": statistics.median(values), "min": min(values), "max": max(values),
          "runs": values}


def rate(work: float, seconds: dict) -> dict:
  """{"median", "min", "max"} of work / seconds, for a `summary` of seconds per run."""
  return {"median": work / seconds["median"], "min": work / seconds["max"],
          "max": work / seconds["min"]}


def timed(fn, repeats: int, *, per: int = 1, warm: int = 1) -> dict:
  """Seconds per call of `fn` (which must block until its work is done): `warm` calls first
  (compile), then `repeats` timed runs of `per` calls each; a `summary` of the runs' means."""
  for _ in range(warm):
    fn()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    for _ in range(per):
      fn()
    times.append((time.perf_counter() - t) / per)
  return summary(times)


def measure(work, *, images: int, warm: int, windows: int, min_s: float = 0.0) -> dict:
  """Images/s of `work` (each call worth `images`) over `windows` timed windows, each of at
  least one call and `min_s` seconds, after `warm` calls."""
  for _ in range(warm):
    work()
  rates = []
  for _ in range(windows):
    t, n = time.perf_counter(), 0
    while n < 1 or time.perf_counter() - t < min_s:
      work()
      n += 1
    rates.append(n * images / (time.perf_counter() - t))
  return {"median": statistics.median(rates), "min": min(rates), "max": max(rates), "n": windows}


# --- /proc and the machine ----------------------------------------------------------------

def proc(path: str, key: str, default: str) -> str:
  """The value of the first `key: value` line of a /proc file."""
  try:
    with open(path) as f:
      return next(l for l in f if l.startswith(key)).split(":", 1)[1].strip()
  except (OSError, StopIteration):
    return default


def cpu_seconds():
  """(wall, CPU seconds of all processes, CPU seconds of this one); NaN without /proc/stat."""
  try:
    with open("/proc/stat") as f:
      ticks = [int(x) for x in f.readline().split()[1:9]]  # user .. steal
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # Minus idle, iowait.
  except (OSError, ValueError):
    busy = float("nan")
  return time.monotonic(), busy, sum(os.times()[:2])


def meminfo_gib(key: str) -> float:
  """A /proc/meminfo value in GiB (inf when unknown)."""
  return float(proc("/proc/meminfo", key, "inf kB").split()[0]) / 2**20


def cores() -> int:
  """CPU cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def version(package: str) -> str:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return "not installed"


def peers_missing() -> list[str]:
  """The peer packages (torch, captum) that cannot be imported; all of them under
  ZF_BENCH_NO_PEERS=1."""
  if os.environ.get(NO_PEERS_ENV, "") not in ("", "0"):
    return ["torch", "captum"]
  return [p for p in ("torch", "captum") if importlib.util.find_spec(p) is None]


def git_commit() -> str:
  try:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_DIR, text=True,
                         capture_output=True, timeout=10, check=True)
    return out.stdout.strip() or "unknown"
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def machine() -> dict:
  """What the results depend on, without importing jax or torch."""
  missing = peers_missing()
  return {
      "cpu": proc("/proc/cpuinfo", "model name", platform.processor() or "unknown"),
      "cores": cores(), "mem_total_gib": round(meminfo_gib("MemTotal"), 1),
      "os": platform.platform(), "kernel": platform.release(),
      "python": platform.python_version(), "jax": version("jax"), "jaxlib": version("jaxlib"),
      "torch": "not installed" if "torch" in missing else version("torch"),
      "captum": "not installed" if "captum" in missing else version("captum"),
      "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
      "git_commit": git_commit(),
      "command": "python -m benchmarks " + shlex.join(sys.argv[1:]),
      "load_1min": os.getloadavg()[0]}


def peak_estimate() -> dict:
  """An estimate of the CPU's float32 peak: cores x clock x FLOPs per cycle per core.

  32 FLOPs/cycle with avx512f or avx2 + fma (taken as two 256-bit FMA pipes: 2 x 8 lanes x 2),
  16 with avx alone, 8 otherwise. An estimate: turbo clocks, AVX-512 pipes and SMT siblings
  counted as cores all move the real figure.
  """
  flags = set(proc("/proc/cpuinfo", "flags", "").split())
  mhz = float(proc("/proc/cpuinfo", "cpu MHz", "nan"))
  if "avx512f" in flags or {"avx2", "fma"} <= flags:
    per_cycle, why = 32, "avx512f" if "avx512f" in flags else "avx2+fma"
  elif "avx" in flags:
    per_cycle, why = 16, "avx"
  else:
    per_cycle, why = 8, "no avx"
  return {"cores": cores(), "mhz": mhz, "flops_per_cycle": per_cycle, "flags": why,
          "gflop_s": cores() * mhz * per_cycle / 1e3}


def slug(cpu_model: str, n_cores: int, backend: str = "cpu") -> str:
  """E.g. cpu-2-cores-amd-epyc: lowercase, dashes."""
  model = re.sub(r"\((r|tm)\)|\bcpu\b|\bprocessor\b|@.*$", " ", cpu_model.lower())
  text = f"{backend}-{n_cores}-cores-{model}" if backend == "cpu" else f"{backend}-{model}"
  return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


# --- the PyTorch twin ---------------------------------------------------------------------

def torch_twin(params, arch, upto: int | None = None, *, lrn_backward: str = "identity",
               dropout: float = 0.0):
  """The same network in PyTorch (NCHW), up to conv layer `upto` (flattened output) or whole.

  Conv HWIO -> OIHW, NHWC flattening for fc6, -inf pool padding. `lrn_backward`:
  "identity" (an LRN whose backward passes the gradient through unchanged, as the
  deconvnet skips it) or "autograd" (`nn.LocalResponseNorm`, its true gradient, for
  training). `dropout`: rate of the dropout after fc6 and fc7's relu (active in train mode).
  Returned in eval mode.
  """
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  if lrn_backward not in ("identity", "autograd"):
    raise ValueError(f"lrn_backward must be 'identity' or 'autograd', got {lrn_backward!r}")

  class IdentityBackwardLRN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):  # pylint: disable=arguments-differ
      return nn.functional.local_response_norm(x, size, alpha, beta, k)

    @staticmethod
    def backward(ctx, grad):  # pylint: disable=arguments-differ
      return grad, None, None, None, None

  class LRN(nn.Module):
    def __init__(self, spec):
      super().__init__()
      self.spec = spec

    def forward(self, x):
      s = self.spec
      return IdentityBackwardLRN.apply(x, s.size, s.alpha, s.beta, s.k)

  class FlattenNHWC(nn.Module):
    def forward(self, x):
      return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)

  mods, cin = [], 3
  for c in arch.convs:
    (t, b), (l, r) = c.padding
    conv = nn.Conv2d(cin, c.features, c.kernel, c.stride)
    conv.weight.data = torch.from_numpy(np.asarray(params[f"conv{c.layer}"]["w"]).transpose(
        3, 2, 0, 1).copy())
    conv.bias.data = torch.from_numpy(np.asarray(params[f"conv{c.layer}"]["b"]).copy())
    mods += [nn.ZeroPad2d((l, r, t, b)), conv, nn.ReLU()]
    lrn = None
    if c.norm is not None:
      n = c.norm
      lrn = (LRN(n) if lrn_backward == "identity"
             else nn.LocalResponseNorm(n.size, n.alpha, n.beta, n.k))
    if lrn is not None and c.norm_before_pool:
      mods.append(lrn)
    if c.pool is not None:
      (pt, pb), (pl, pr) = c.pool.padding
      mods += [nn.ConstantPad2d((pl, pr, pt, pb), float("-inf")),
               nn.MaxPool2d(c.pool.window, c.pool.stride)]
    if upto is not None and c.layer == upto:
      mods.append(FlattenNHWC())
      return nn.Sequential(*mods).eval()
    if lrn is not None and not c.norm_before_pool:
      mods.append(lrn)
    cin = c.features
  mods.append(FlattenNHWC())
  for name in [f"fc{f.layer}" for f in arch.fcs] + ["fc8"]:
    w = np.asarray(params[name]["w"])
    lin = nn.Linear(*w.shape)
    lin.weight.data = torch.from_numpy(w.T.copy())
    lin.bias.data = torch.from_numpy(np.asarray(params[name]["b"]).copy())
    if name == "fc8":
      mods.append(lin)
    else:
      mods += [lin, nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
  return nn.Sequential(*mods).eval()
