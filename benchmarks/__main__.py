"""Every performance workload of zf_jax beside its peer (PyTorch / Captum), in one table.

    python -m benchmarks [--smoke] [--only=train,deconv,occlusion,input] [--out=DIR]
                         [--repeats=3] [--maps=64] [--images=8] [--chunk=64]
                         [--data_dir=DIR] [--no_peers]

Rows (full `zfnet`, 224 px, float32, random He-initialised weights: the work does
not depend on the values):
  * train step, batch 16 and 128 (128 is skipped with < 12 GiB MemAvailable),
    and the embedded default's step (`zfnet_small`, 28 px, batch 128, 3 steps
    per run: what README command 1 trains):
    ours = `train.make_train_step(arch, TrainConfig(batch_size=b, init_scheme="he"))`
    compiled, on a device-resident random batch; peer = the PyTorch twin
    (`benchmarks.common.torch_twin`, same weights) in train mode with
    `nn.LocalResponseNorm` and dropout 0.5 on fc6 / fc7, softmax cross-entropy,
    `SGD(lr=0.01, momentum=0.9)`, then the RMS renormalisation of every conv
    filter to 0.1 under no_grad and the step's top-1 / top-5 metrics: our step,
    part for part. Images/s, and our GFLOP/s: XLA's `cost_analysis()` FLOPs of
    one step over the median step time.
  * deconvnet, layer 5 and layer 2: the strongest activation of each of
    --maps feature maps in each of --images images, projected to pixels;
    projections/s. Ours = one `model.apply`, then `deconv.project_units` on
    the maps x images units, in one jit. Peer = Captum
    `Deconvolution` on the twin cut at that layer, each batch row an image
    with its own target (the flat NHWC index of the strongest unit), --chunk
    rows per call: Captum's fastest use. Both find the units with a forward
    pass inside the timed run.
  * occlusion: one 224-px map, 50 px patch, stride 8 (22 x 22 = 484
    positions): ours = `occlusion.occlusion` with chunk 16, 32 and 64; peer =
    Captum `Occlusion` (baseline 0) with perturbations_per_eval 1, 16 and 64;
    seconds per map of the best setting of each side.
  * input pipeline: images/s of `input_pipeline.make_train_iterator` host
    batches on the embedded fashion_mnist_debian (zfnet_small sizes: 28 px
    random crops of 32, batch 128) and on 512 generated ImageNet-sized JPEGs
    (`benchmarks.datasets.ZfBenchJpeg`: 224 px "ten" crops of 256, batch
    128); no peer.
Timing: each side runs --rounds times (default 2), alternating which goes
first (ours, peer, then peer, ours), each round a warm-up run (compile) then
--repeats timed runs (default 2; the train step at batch 16: 3 steps per run);
a side's cell pools all its runs: median [min .. max]. peer/ours is taken pair
by pair, the peer's median time over ours in the same round, and the median of
those is shown (the rounds' own ratios are in the settings lines): this holds
when the machine's speed drifts between runs, which on shared 2-core machines it
does by up to 1.5x. Occlusion tries every setting in round 1 and each side's
best one after. Above 1, ours is faster. GFLOP/s (train step only: XLA's cost
analysis counts a loop body once, and our deconvnet and occlusion loop over
chunks) are shown as a % of a measured practical peak, a 4096 x 4096 float32
matmul in JAX (median of 3); the estimated peak (cores x clock x 32
FLOP/cycle with AVX2+FMA or AVX-512)
is printed beside it. Peak RSS is `ru_maxrss` of the process that ran that
side alone: each side of each workload runs in its own process
(`benchmarks._worker`), which also keeps PyTorch's OpenMP threads from
spinning while JAX runs; the two input rows share one process (the JPEG row's
RSS is that process's peak). XLA temp is `compiled.memory_analysis()`'s.
After each run the cores other processes kept busy are recorded: rerun when
that is well above 0. PyTorch's OpenMP threads suffer far more than XLA's from
a busy core (with one of 2 cores taken, smoke peer rates varied up to 8x from
run to run while ours held within ~1.5x).

Results: the table on stdout, and `<slug>.json` + `<slug>.md` (machine,
command, table, settings) in --out (default benchmarks/results/), slug e.g.
cpu-2-cores-amd-epyc (with --smoke: cpu-2-cores-amd-epyc-smoke). Files are
written to temporary names and renamed at the end; a run with --only or a
failed workload writes `<slug>.partial.*` instead, so a complete result is
never replaced by a partial one. A failed workload reads "failed: <one line>"
and the command exits 1 after writing the rest.
Without torch / captum (or with ZF_BENCH_NO_PEERS=1) the peer columns say
"not installed" and the run succeeds; --no_peers skips them on purpose.

The full run (2 rounds) took 20 min on this project's 2-core EPYC machine (the peers'
deconvnet and occlusion rows take most of it). --smoke runs the same code on
`zfnet_small` (28 px; train batch 8; 4 maps x 2 images; occlusion patch 8,
stride 4; 28 px crops of 32 and
0.2 s windows for the input, batch 32 on the JPEGs; 1024 matmul; 1 repeat),
writing to a temporary folder unless --out is given: ~45 s without peers, ~90 s
with them, on that machine while another process kept one of its cores busy
(process start-up and compiling take most of it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks import common
from zf_jax.files import atomic_path
from zf_jax.report.tables import markdown_table

WORKLOADS = ("train", "deconv", "occlusion", "input")
PEER_NEEDS = {"train": ("torch",), "deconv": ("torch", "captum"),
              "occlusion": ("torch", "captum")}
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
MIN_GIB_B128 = 12.0
PROG = "python -m benchmarks"


class _Parser(argparse.ArgumentParser):
  """Errors in one line (no usage block), exit status 2."""

  def error(self, message):
    sys.stderr.write(f"{PROG}: error: {message}\n")
    sys.exit(2)


def _only(text: str) -> tuple[str, ...]:
  parts = [p.strip() for p in text.split(",") if p.strip()]
  bad = [p for p in parts if p not in WORKLOADS] or ([] if parts else [text])
  if bad:
    raise argparse.ArgumentTypeError(f"unknown workload {bad[0]!r}; allowed: "
                                     f"{', '.join(WORKLOADS)}")
  return tuple(w for w in WORKLOADS if w in parts)


def _positive(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
  return value


def parse(argv=None):
  parser = _Parser(prog=PROG, description=__doc__.splitlines()[0])
  parser.add_argument("--smoke", action="store_true",
                      help="tiny sizes (zfnet_small), well under a minute; output to a temp dir")
  parser.add_argument("--only", type=_only, default=WORKLOADS,
                      help=f"comma-separated subset of {','.join(WORKLOADS)}")
  parser.add_argument("--out", default=None,
                      help="results folder (default benchmarks/results; --smoke: a temp dir)")
  parser.add_argument("--repeats", type=_positive, default=None, help="timed runs (3; smoke 1)")
  parser.add_argument("--maps", type=_positive, default=None, help="deconv maps (64; smoke 4)")
  parser.add_argument("--images", type=_positive, default=None,
                      help="deconv images (8; smoke 2)")
  parser.add_argument("--chunk", type=_positive, default=64,
                      help="Captum Deconvolution rows per call")
  parser.add_argument("--data_dir", default=None, help="tfds data_dir of fashion_mnist_debian")
  parser.add_argument("--no_peers", action="store_true", help="run our side only")
  parser.add_argument("--rounds", type=_positive, default=None,
                      help="rounds of each workload, the sides alternating (2; smoke 1)")
  args = parser.parse_args(argv)
  smoke = args.smoke
  args.rounds = args.rounds or (1 if smoke else 2)
  args.repeats = args.repeats or (1 if smoke else 2)
  args.maps = args.maps or (4 if smoke else 64)
  args.images = args.images or (2 if smoke else 8)
  return args


# --- the plan -------------------------------------------------------------------------------

def plan(args) -> tuple[list[dict], list[tuple[str, list[str], dict]]]:
  """(rows, jobs): the table's rows and the worker runs (workload, row keys, config)."""
  smoke, reps = args.smoke, args.repeats
  arch = "zfnet_small" if smoke else "zfnet"
  size = 28 if smoke else 224
  rows, jobs = [], []

  def row(key, workload, title, settings, peer=True):
    rows.append({"key": key, "workload": workload, "title": title, "settings": settings,
                 "has_peer": peer, "ours": None, "peer": None, "ratio": None})
    return rows[-1]

  if "train" in args.only:
    avail = common.meminfo_gib("MemAvailable")
    # The full-size steps, and the embedded default's (what the quickstart trains).
    steps = [(arch, 8, "")] if smoke else [
        (arch, 16, ""), (arch, 128, ""), ("zfnet_small", 128, "small_")]
    for name, batch, prefix in steps:
      cfg = {"key": f"train_{prefix}b{batch}", "arch": name, "batch": batch, "repeats": reps,
             "per": 3 if batch <= 16 or prefix else 1}
      title = f"train step, {name} batch {batch}" if prefix else f"train step, batch {batch}"
      r = row(cfg["key"], "train", title, cfg)
      if batch == 128 and not prefix and avail < MIN_GIB_B128:
        note = f"skipped: MemAvailable {avail:.1f} GiB < {MIN_GIB_B128:.0f} GiB"
        r["ours"] = {"status": "skipped", "note": note}
        r["peer"] = {"status": "skipped", "note": note}
        continue
      jobs.append(("train", [cfg["key"]], cfg))
  if "deconv" in args.only:
    for layer in (5, 2):
      cfg = {"key": f"deconv_l{layer}", "arch": arch, "layer": layer, "maps": args.maps,
             "images": args.images, "chunk": args.chunk, "repeats": reps}
      row(cfg["key"], "deconv", f"deconvnet, layer {layer}", cfg)
      jobs.append(("deconv", [cfg["key"]], cfg))
  if "occlusion" in args.only:
    cfg = {"key": "occlusion", "arch": arch, "patch": 8 if smoke else 50,
           "stride": 4 if smoke else 8, "chunks": [16, 32, 64], "per_eval": [1, 16, 64],
           "repeats": reps}
    row("occlusion", "occlusion", f"occlusion, {size} px map", cfg)
    jobs.append(("occlusion", ["occlusion"], cfg))
  if "input" in args.only:
    inputs = [
        {"key": "input_fashion", "dataset": "fashion_mnist_debian", "size": 28, "resize": 32,
         "batch": 128, "crops": "random"},
        {"key": "input_jpeg", "dataset": "zf_bench_jpeg", "size": 28 if smoke else 224,
         "resize": 32 if smoke else 256, "batch": 32 if smoke else 128, "crops": "ten"}]
    for r in inputs:
      r.update(warm=2 if smoke else max(2, 512 // r["batch"]), min_s=0.2 if smoke else 1.0)
      title = ("input pipeline, fashion_mnist_debian" if r["key"] == "input_fashion"
               else "input pipeline, generated JPEGs")
      row(r["key"], "input", title, r, peer=False)
    jobs.append(("input", [r["key"] for r in inputs],
                 {"rows": inputs, "repeats": reps, "data_dir": args.data_dir}))
  return rows, jobs


# --- running the workers --------------------------------------------------------------------

def run_worker(workload: str, side: str, cfg: dict, keys: list[str], scratch: str) -> dict:
  """Runs one side of one workload in its own process: {key: result}, plus "_job" timing."""
  path = os.path.join(scratch, f"{workload}-{side}-{'-'.join(keys)}.json")
  cmd = [sys.executable, "-m", "benchmarks._worker", workload, side,
         "--config", json.dumps(cfg), "--json-out", path]
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
  env["PYTHONPATH"] = os.pathsep.join(p for p in (common.REPO_DIR, env.get("PYTHONPATH")) if p)
  (t0, busy0, own0), child0 = common.cpu_seconds(), _children_cpu()
  proc = subprocess.run(cmd, cwd=common.REPO_DIR, env=env, capture_output=True, text=True,
                        check=False)
  (t1, busy1, own1), child1 = common.cpu_seconds(), _children_cpu()
  wall = t1 - t0
  others = max(0.0, (busy1 - busy0 - (own1 - own0) - (child1 - child0)) / max(wall, 1e-9))
  with open(os.path.join(scratch, os.path.basename(path)[:-5] + ".log"), "w") as f:
    f.write(proc.stdout + proc.stderr)
  try:
    with open(path, encoding="utf-8") as f:
      results = json.load(f)
  except (OSError, ValueError):
    results = {key: {"status": "failed", "error": _crash(proc)} for key in keys}
  if proc.returncode:
    tail = [l for l in proc.stderr.splitlines() if l.strip()][-12:]
    sys.stderr.write(f"--- {workload} {side} exited with {proc.returncode}; its last lines:\n"
                     + "\n".join(tail) + "\n")
  job = {"workload": workload, "side": side, "keys": keys, "returncode": proc.returncode,
         "wall_s": wall, "others_cores": others}
  return {**results, "_job": job}


def _children_cpu() -> float:
  r = resource.getrusage(resource.RUSAGE_CHILDREN)
  return r.ru_utime + r.ru_stime


def _crash(proc) -> str:
  """One line on a worker that left no result."""
  lines = [l.strip() for l in proc.stderr.splitlines() if l.strip()]
  if proc.returncode < 0:
    sig = -proc.returncode
    why = f"killed by signal {sig}" + (" (out of memory?)" if sig == 9 else "")
    return why + (f"; last line: {lines[-1]}" if lines else "")
  return f"worker exited with {proc.returncode}" + (f": {lines[-1]}" if lines else "")


# --- rounds ---------------------------------------------------------------------------------

SETTING_LISTS = {"occlusion": {"ours": "chunks", "peer": "per_eval"}}


def _round_config(cfg: dict, rounds: dict, keys: list[str], side: str, r: int) -> dict:
  """The worker config of round r: after the first round, a side that tries several
  settings (occlusion) runs only the one that was fastest for it in round 1."""
  lists = SETTING_LISTS.get(cfg.get("key", ""), {})
  first = rounds[(keys[0], side)][:1]
  if r == 0 or side not in lists or not first or not _ok(first[0]):
    return cfg
  best = first[0]["best"].rsplit(" ", 1)[-1]
  return {**cfg, lists[side]: [int(best)]}


def merge_rounds(results: list[dict]) -> dict:
  """One side's result over rounds: every timed run pooled (median [min .. max]), the rest
  from the last successful round; the first failure if no round succeeded."""
  ok = [r for r in results if _ok(r)]
  if not ok:
    return results[0]
  merged = dict(ok[-1])
  if len(ok) > 1:
    merged["seconds"] = common.summary([t for r in ok for t in r["seconds"]["runs"]])
    merged["rate"] = common.rate(merged["work"], merged["seconds"])
    if "gflop_per_run" in merged:
      merged["gflop_s"] = merged["gflop_per_run"] / merged["seconds"]["median"]
    if "tried" in ok[0]:
      merged["tried"] = ok[0]["tried"]  # Every setting was tried in round 1.
      merged["best"] = ok[0]["best"]
  merged["rounds"] = len(ok)
  return merged


# --- formatting -----------------------------------------------------------------------------

def num(x: float) -> str:
  return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def side_cell(r: dict | None, workload: str) -> str:
  """One side's table cell (on one line; `markdown_table` escapes its '|')."""
  if r is None:
    return "-"
  status = r.get("status")
  if status == "failed":
    return f"failed: {r.get('error', '')}".replace("\n", " ")
  if status != "ok":
    return r.get("note", status or "-").replace("\n", " ")
  if workload == "occlusion":
    s = r["seconds"]
    return (f"{num(s['median'])} s/map [{num(s['min'])} .. {num(s['max'])}], "
            f"{r.get('best', '')}")
  rate, unit = r["rate"], r["unit"]
  return f"{num(rate['median'])} {unit}/s [{num(rate['min'])} .. {num(rate['max'])}]"


def ratio_cell(row: dict) -> str:
  if row["ratio"] is not None:
    return f"{row['ratio']:.2f}x"
  peer = row["peer"]
  if peer and peer.get("status") == "not installed":
    return "not installed"
  return "-"


def gflops_cell(r: dict | None, peak: float | None) -> str:
  if not r or r.get("status") != "ok" or "gflop_s" not in r:
    return "-"
  pct = f" ({100 * r['gflop_s'] / peak:.0f}%)" if peak else ""
  return f"{r['gflop_s']:,.1f}{pct}"


def rss_cell(r: dict | None) -> str:
  if not _ok(r) or "peak_rss_mib" not in r:
    return "-"
  temp = f", XLA temp {r['xla_temp_mib']:,.0f} MiB" if "xla_temp_mib" in r else ""
  return f"{r['peak_rss_mib']:,.0f} MiB{temp}"


def table(rows: list[dict], peak: float | None) -> str:
  header = ("workload", "ours", "peer", "peer/ours", "ours GFLOP/s (% of measured peak)",
            "ours peak RSS")
  cells = [(row["title"], side_cell(row["ours"], row["workload"]),
            side_cell(row["peer"], row["workload"]), ratio_cell(row),
            gflops_cell(row["ours"], peak), rss_cell(row["ours"])) for row in rows]
  return "\n".join(markdown_table(header, cells, align="l" * len(header)))


def _ok(r):
  return r is not None and r.get("status") == "ok"


def settings_lines(rows: list[dict], peak: dict) -> list[str]:
  """What each row measured and every setting tried."""
  out = []
  est, meas = peak["estimate"], peak.get("measured") or {}
  line = (f"fp32 peak: estimated {est['gflop_s']:,.0f} GFLOP/s ({est['cores']} cores x "
          f"{est['mhz']:,.0f} MHz x {est['flops_per_cycle']} FLOP/cycle, {est['flags']}; an "
          "estimate)")
  if meas.get("status") == "ok":
    line += (f"; measured {meas['gflop_s']:,.1f} GFLOP/s ({meas['n']} x {meas['n']} float32 "
             f"matmul in JAX on {meas['backend']}, median of 3), the % column's reference")
  else:
    line += f"; measured: {meas.get('error', 'not run')}"
  out.append(line)
  for row in rows:
    c, ours, peer = row["settings"], row["ours"], row["peer"]
    w = row["workload"]
    if w == "train":
      s = (f"{row['title']}: {c['arch']} float32, device-resident random batch, {c['per']} "
           f"step(s) per timed run, {c['repeats']} run(s) after a warm-up step; ours: "
           f"train.make_train_step(arch, TrainConfig(batch_size={c['batch']}, "
           "init_scheme='he'))")
      if _ok(ours) and "gflop_per_run" in ours:
        s += f", {ours['gflop_per_run']:,.1f} GFLOP/step (XLA cost_analysis)"
      s += ("; peer: the twin in train mode (nn.LocalResponseNorm, dropout 0.5 on fc6/fc7), "
            "cross-entropy, SGD(lr=0.01, momentum=0.9), conv filter RMS renormalisation to 0.1")
      if _ok(peer):
        s += f", {peer['torch_threads']} torch threads"
    elif w == "deconv":
      s = (f"{row['title']}: {c['arch']}, the strongest activation of {c['maps']} maps in each "
           f"of {c['images']} images = {c['maps'] * c['images']} projections per timed run; "
           f"ours: {ours['path'] if _ok(ours) else 'deconv.project_units'} after "
           "model.apply, one jit")
      if _ok(ours):
        s += f" ({ours['work']} projections)"
      s += (f"; peer: Captum Deconvolution on the twin cut at layer {c['layer']}, a target per "
            f"row, {c['chunk']} rows per call")
      if _ok(peer):
        s += f" ({peer['work']} projections, {peer['torch_threads']} torch threads)"
    elif w == "occlusion":
      s = (f"{row['title']}: {c['arch']}, {c['patch']} px patch, stride {c['stride']}")
      if _ok(ours):
        s += f" ({ours['positions']} positions)"
      for name, r in (("ours (occlusion.occlusion)", ours), ("peer (Captum Occlusion)", peer)):
        if _ok(r):
          tried = ", ".join(f"{k} {num(v['median'])} s" for k, v in r["tried"].items())
          s += f"; {name}: {tried}"
      if _ok(peer):
        s += (f"; twin logits max relative difference {peer['twin_relative_difference']:.1e}, "
              f"{peer['torch_threads']} torch threads")
    else:
      s = (f"{row['title']}: {c['dataset']}, {c['size']} px crops ({c['crops']}) of "
           f"{c['resize']}, batch {c['batch']}, windows >= {c['min_s']} s after {c['warm']} "
           "warm-up batches, zero mean image")
    if row.get("round_ratios"):
      s += "; peer/ours by round: " + ", ".join(f"{x:.2f}x" for x in row["round_ratios"])
    out.append(s)
  return out


def machine_lines(m: dict, peak: dict) -> list[str]:
  meas = peak.get("measured") or {}
  backend = (f" on {meas.get('backend')} ({meas.get('device')}, {meas.get('devices')} "
             "device(s))" if meas.get("status") == "ok" else "")
  return [f"CPU: {m['cpu']}, {m['cores']} cores, MemTotal {m['mem_total_gib']} GiB, "
          f"1-min load {m['load_1min']:.2f} at the start",
          f"OS: {m['os']} (kernel {m['kernel']})",
          f"python {m['python']}, jax {m['jax']} / jaxlib {m['jaxlib']}{backend}, "
          f"torch {m['torch']}, captum {m['captum']}",
          f"date {m['date']}, git commit {m['git_commit']}",
          f"command: {m['command']}"]


def markdown(slug: str, results: dict) -> str:
  m = results["machine"]
  parts = [f"# zf_jax benchmarks: {slug}", "", "## Machine", ""]
  parts += [f"- {l}" for l in machine_lines(m, results["peak"])]
  parts += ["", "## Command", "", "```", m["command"], "```", "",
            f"Total {results['total_s']:.0f} s. peer/ours = the median over rounds of the peer's "
            "median time over ours (above 1: ours is faster).", "", "## Results", "",
            results["table"], "", "## Settings", ""]
  parts += [f"- {l}" for l in results["settings"]]
  if results["failed"]:
    parts += ["", f"Failed: {', '.join(results['failed'])}."]
  return "\n".join(parts) + "\n"


# --- main -----------------------------------------------------------------------------------

def main(argv=None) -> int:
  args = parse(argv)
  t_start = time.perf_counter()
  machine = common.machine()
  missing = common.peers_missing()
  out_dir = args.out or (tempfile.mkdtemp(prefix="zf_bench_smoke_") if args.smoke
                         else DEFAULT_OUT)
  os.makedirs(out_dir, exist_ok=True)
  rows, jobs = plan(args)
  print(f"{PROG}{' (smoke)' if args.smoke else ''}: {len(rows)} rows, "
        f"{', '.join(args.only)}; results to {out_dir}")
  for line in machine_lines(machine, {}):
    print(f"  {line}")
  if missing and not args.no_peers:
    print(f"  peers: {', '.join(missing)} {common.PEER_HINT}")
  job_log = []
  with tempfile.TemporaryDirectory(prefix="zf_bench_workers_") as scratch:
    res = run_worker("peak", "ours", {"n": 1024 if args.smoke else 4096}, ["peak"], scratch)
    job_log.append(res.pop("_job"))
    measured = res["peak"]
    peak = {"estimate": common.peak_estimate(), "measured": measured}
    print("  measured peak: " + (f"{measured['gflop_s']:,.1f} GFLOP/s"
                                  if measured.get("status") == "ok"
                                  else f"failed: {measured.get('error')}"))
    by_key = {r["key"]: r for r in rows}
    rounds = {(r["key"], side): [] for r in rows for side in ("ours", "peer")}
    for workload, keys, cfg in jobs:
      sides = ["ours"]
      if by_key[keys[0]]["has_peer"]:
        absent = [p for p in PEER_NEEDS[workload] if p in missing]
        if args.no_peers:
          note = {"status": "skipped", "note": "skipped (--no_peers)"}
        elif absent:
          note = {"status": "not installed", "note": common.PEER_HINT}
        else:
          note = None
          sides.append("peer")
        if note:
          for k in keys:
            by_key[k]["peer"] = note
      # Rounds alternate the sides (ours, peer, peer, ours, ...) so that a drift of the
      # machine's speed shows in the per-round ratios instead of favouring one side.
      for r in range(args.rounds if len(sides) == 2 else 1):
        for side in sides if r % 2 == 0 else sides[::-1]:
          res = run_worker(workload, side, _round_config(cfg, rounds, keys, side, r), keys,
                           scratch)
          job = res.pop("_job")
          job["round"] = r + 1
          job_log.append(job)
          for k in keys:
            got = res.get(k, {"status": "failed", "error": "no result from worker"})
            rounds[(k, side)].append(got)
            print(f"  {by_key[k]['title']}, {side}, round {r + 1}: {side_cell(got, workload)}")
          print(f"    ({job['wall_s']:.0f} s; other processes kept {job['others_cores']:.2f} "
                f"cores busy)")
      for k in keys:
        for side in sides:
          by_key[k][side] = merge_rounds(rounds[(k, side)])
        if len(sides) == 2:
          by_key[k]["round_ratios"] = [
              p["seconds"]["median"] / o["seconds"]["median"]
              for o, p in zip(rounds[(k, "ours")], rounds[(k, "peer")]) if _ok(o) and _ok(p)]
  for row in rows:
    if row.get("round_ratios"):  # Pair by pair: each round's peer time over ours.
      row["ratio"] = statistics.median(row["round_ratios"])
  failed = [f"{row['key']} ({side})" for row in rows for side in ("ours", "peer")
            if (row[side] or {}).get("status") == "failed"]
  if measured.get("status") != "ok":
    failed.append("peak")
  ref = measured.get("gflop_s") if measured.get("status") == "ok" else None
  text = table(rows, ref)
  settings = settings_lines(rows, peak)
  busiest = max((j["others_cores"] for j in job_log), default=0.0)
  mean_others = (sum(j["others_cores"] * j["wall_s"] for j in job_log)
                 / max(sum(j["wall_s"] for j in job_log), 1e-9))
  settings.append(f"other processes kept {mean_others:.2f} of {machine['cores']} cores busy on "
                  f"average ({busiest:.2f} during the busiest run): rerun if well above 0")
  print("\n" + text + "\n")
  for line in settings:
    print(f"- {line}")
  backend = measured.get("backend", "cpu")
  name = common.slug(machine["cpu"] if backend == "cpu" else measured.get("device", "?"),
                     machine["cores"], backend)
  name += "-smoke" if args.smoke else ""
  complete = not failed and tuple(args.only) == WORKLOADS
  name += "" if complete else ".partial"
  results = {"machine": machine, "command": machine["command"], "smoke": args.smoke,
             "config": {k: v for k, v in vars(args).items()}, "peak": peak, "rows": rows,
             "jobs": job_log, "table": text, "settings": settings, "failed": failed,
             "complete": complete, "total_s": time.perf_counter() - t_start}
  json_path, md_path = (os.path.join(out_dir, name + ext) for ext in (".json", ".md"))
  texts = json.dumps(results, indent=1, default=str), markdown(name, results)
  # Both are written before either is renamed into place: a failed write replaces neither.
  with atomic_path(json_path) as json_tmp, atomic_path(md_path) as md_tmp:
    for tmp, text in zip((json_tmp, md_tmp), texts):
      with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
  print(f"\nwrote {json_path} and {md_path} ({results['total_s']:.0f} s)")
  if not complete:
    why = f"failed: {', '.join(failed)}" if failed else f"--only={','.join(args.only)}"
    print(f"partial run ({why}): complete results, if any, were left as they were",
          file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
