"""`python -m benchmarks`: its --smoke run end to end, in a subprocess as a user runs it.

Without peers (ZF_BENCH_NO_PEERS=1, as in CI, which has no torch): ~1 min on 2 CPU
cores. With torch and captum installed, one more smoke run with the peers.
"""

import glob
import json
import os

import pytest

from conftest import run_module

ROWS_WITH_PEERS = ("train_b8", "deconv_l5", "deconv_l2", "occlusion")
ROWS = ROWS_WITH_PEERS + ("input_fashion", "input_jpeg")
HINT = 'not installed (pip install -e ".[compare]")'
SMOKE_MAPS, SMOKE_IMAGES = 4, 2


def bench(*args, no_peers=False):
  return run_module("benchmarks", *args, env={"ZF_BENCH_NO_PEERS": "1" if no_peers else "0"})


def results(out_dir):
  """(json dict, markdown text) of the one result pair in `out_dir`."""
  paths = glob.glob(os.path.join(out_dir, "*.json"))
  assert len(paths) == 1, paths
  with open(paths[0], encoding="utf-8") as f:
    data = json.load(f)
  with open(paths[0][:-len(".json")] + ".md", encoding="utf-8") as f:
    return data, f.read()


@pytest.fixture(scope="module", name="smoke")
def _smoke(tmp_path_factory, fashion_data_dir):
  """The smoke run without peers: (process, json, markdown, out dir)."""
  out = str(tmp_path_factory.mktemp("bench_smoke"))
  proc = bench("--smoke", f"--out={out}", f"--data_dir={fashion_data_dir}", no_peers=True)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return (proc, *results(out), out)


def test_smoke_runs_every_workload_with_positive_rates(smoke):
  _, data, _, out = smoke
  assert data["smoke"] and data["complete"] and not data["failed"]
  name = os.path.basename(glob.glob(os.path.join(out, "*.json"))[0])
  assert name.endswith("-smoke.json")
  # Nothing else, hidden temporary files included: both were renamed into place.
  assert sorted(os.listdir(out)) == [name, name[:-len(".json")] + ".md"]
  rows = {r["key"]: r for r in data["rows"]}
  assert set(rows) == set(ROWS)
  for key, row in rows.items():
    ours = row["ours"]
    assert ours["status"] == "ok", (key, ours)
    assert ours["rate"]["min"] <= ours["rate"]["median"] <= ours["rate"]["max"], key
    assert ours["rate"]["median"] > 0 and ours["seconds"]["median"] > 0, key
    assert ours["peak_rss_mib"] > 0, key
  assert data["peak"]["measured"]["gflop_s"] > 0 and data["peak"]["estimate"]["gflop_s"] > 0


def test_smoke_describes_the_machine(smoke):
  _, data, md, _ = smoke
  m = data["machine"]
  for key in ("cpu", "cores", "mem_total_gib", "os", "kernel", "python", "jax", "jaxlib",
              "date", "git_commit"):
    assert m[key] not in (None, ""), key
  assert m["cores"] >= 1 and m["torch"] == m["captum"] == "not installed"
  assert "--smoke" in m["command"] and m["command"].startswith("python -m benchmarks")
  assert "## Machine" in md and m["cpu"] in md and m["command"] in md


def test_smoke_table_says_peers_not_installed(smoke):
  proc, data, md, _ = smoke
  header = ("| workload | ours | peer | peer/ours | ours GFLOP/s (% of measured peak) "
            "| ours peak RSS |")
  for text in (md, proc.stdout):
    assert header in text
    table = [l for l in text.splitlines() if l.startswith("| ")][1:]
    assert len(table) == len(ROWS)
    for line in table:
      cells = [c.strip() for c in line.strip("|").split(" | ")]
      if line.startswith("| input pipeline"):
        assert cells[2:4] == ["-", "-"], line
      else:
        assert cells[2] == HINT and cells[3] == "not installed", line
  for row in data["rows"]:
    if row["key"] in ROWS_WITH_PEERS:
      assert row["peer"] == {"status": "not installed", "note": HINT}
      assert row["ratio"] is None


def test_smoke_train_step_rate_and_flops(smoke):
  _, data, md, _ = smoke
  row = next(r for r in data["rows"] if r["key"] == "train_b8")
  ours = row["ours"]
  assert ours["work"] == row["settings"]["batch"] == 8
  assert ours["gflop_per_run"] > 0
  assert ours["rate"]["median"] == pytest.approx(8 / ours["seconds"]["median"], rel=1e-9)
  assert ours["gflop_s"] == pytest.approx(ours["gflop_per_run"] / ours["seconds"]["median"])
  assert ours["steps_per_repeat"] >= 3 and len(ours["seconds"]["runs"]) == 1  # --repeats 1.
  assert ours["xla_temp_mib"] >= 0
  pct = 100 * ours["gflop_s"] / data["peak"]["measured"]["gflop_s"]
  assert f"{ours['gflop_s']:,.1f} ({pct:.0f}%)" in md


def test_smoke_deconv_and_occlusion_count_their_work(smoke):
  _, data, _, _ = smoke
  rows = {r["key"]: r for r in data["rows"]}
  for key in ("deconv_l5", "deconv_l2"):
    assert rows[key]["ours"]["work"] == SMOKE_MAPS * SMOKE_IMAGES
    assert rows[key]["ours"]["path"] == "deconv.project_units"
  occ = rows["occlusion"]["ours"]
  assert occ["positions"] == ((28 - 8) // 4 + 1) ** 2  # Smoke: 28 px, patch 8, stride 4.
  assert set(occ["tried"]) == {"chunk 16", "chunk 32", "chunk 64"}
  assert occ["seconds"] == occ["tried"][occ["best"]]
  assert occ["seconds"]["median"] == min(t["median"] for t in occ["tried"].values())


def test_bad_only_value_is_a_one_line_error():
  proc = bench("--only=train,foo", no_peers=True)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "'foo'" in lines[0] and "train, deconv, occlusion, input" in lines[0]
  assert "Traceback" not in proc.stderr


def test_smoke_with_peers(tmp_path):
  pytest.importorskip("torch")
  pytest.importorskip("captum")
  proc = bench("--smoke", f"--out={tmp_path}", "--only=train,deconv,occlusion")
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  data, md = results(str(tmp_path))
  assert not data["complete"] and not data["failed"]  # --only: a partial run, named so.
  assert glob.glob(os.path.join(tmp_path, "*-smoke.partial.json"))
  rows = {r["key"]: r for r in data["rows"]}
  assert set(rows) == set(ROWS_WITH_PEERS)
  for key, row in rows.items():
    assert row["peer"]["status"] == "ok", (key, row["peer"])
    assert row["ratio"] == pytest.approx(row["peer"]["seconds"]["median"]
                                         / row["ours"]["seconds"]["median"])
    assert f"{row['ratio']:.2f}x" in md
  for key in ("deconv_l5", "deconv_l2"):
    assert rows[key]["ours"]["work"] == rows[key]["peer"]["work"] == SMOKE_MAPS * SMOKE_IMAGES
  assert rows["occlusion"]["peer"]["twin_relative_difference"] < 1e-4
  assert rows["train_b8"]["peer"]["work"] == 8


def _side(runs, work=10, **extra):
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  seconds = common.summary(runs)
  return {"status": "ok", "work": work, "unit": "img", "seconds": seconds,
          "rate": {"median": work / seconds["median"]}, **extra}


def test_rounds_pool_runs_and_pair_ratios_round_by_round():
  from benchmarks import __main__ as bench_main  # pylint: disable=g-import-not-at-top
  # The machine got 2x slower between the rounds: ours 1 s then 2 s, the peer 3 s then 6 s.
  ours = [_side([1.0, 1.0]), _side([2.0, 2.0])]
  merged = bench_main.merge_rounds(ours)
  assert merged["seconds"]["runs"] == [1.0, 1.0, 2.0, 2.0] and merged["rounds"] == 2
  assert merged["rate"]["median"] == pytest.approx(10 / 1.5)
  assert merged["rate"]["min"] == pytest.approx(5.0) and merged["rate"]["max"] == 10.0
  # A failed round is left out; all failed: the first failure.
  failed = {"status": "failed", "error": "boom"}
  assert bench_main.merge_rounds([failed, ours[0]])["seconds"]["runs"] == [1.0, 1.0]
  assert bench_main.merge_rounds([failed, dict(failed, error="two")]) == failed
  # Occlusion's later rounds run only the setting that was best for that side in round 1.
  first = _side([5.0], best="chunk 32", tried={"chunk 16": {}, "chunk 32": {}})
  cfg = {"key": "occlusion", "chunks": [16, 32, 64], "per_eval": [1, 16, 64]}
  rounds = {("occlusion", "ours"): [first], ("occlusion", "peer"): []}
  assert bench_main._round_config(cfg, rounds, ["occlusion"], "ours", 1)["chunks"] == [32]
  assert bench_main._round_config(cfg, rounds, ["occlusion"], "ours", 0) == cfg
  assert bench_main._round_config(cfg, rounds, ["occlusion"], "peer", 1) == cfg
