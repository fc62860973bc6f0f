"""Section 5.2's de-duplication (zf_jax.section5.dedup and experiments/dedup.py).

* `normalize`: an image correlates 1 with itself and with any a * x + b of it
  (a > 0), -1 with its negative, 0 with a flat image (no nan);
* the streamed search finds planted copies (resized, JPEG re-encoded; one
  image copied twice into one chunk, more than k) and nothing else, the same
  pairs and correlations as the brute-force reference, whatever the chunk
  size, k and the sizes of the batches it is fed;
* the footnote's counts (images in common, most in one class), and which
  targets get the paper's row;
* the binary end to end on the tiny tfds dataset: a target split made of the
  validation images (no copy in train) and the first 8 train images (each
  its own copy) gives exactly those 8, its files read back as the training
  flag reads them; bad requests end with one line and write nothing.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
  sys.path.insert(0, TESTS_DIR)

import tiny_dataset  # noqa: E402  (registers zf_tiny_images)
from conftest import REPO, child_env  # noqa: E402

from zf_jax.section5 import dedup, dedup_state  # noqa: E402

SIZE = 32


def _thumb(image: Image.Image) -> np.ndarray:
  """As input_pipeline.thumbnails: the whole image squashed (antialiased), mean of RGB."""
  return np.asarray(image.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR),
                    np.float32).mean(-1)


def _smooth_images(n: int, seed: int) -> list[Image.Image]:
  """Natural-ish RGB images of 48-96 px: 1/f-spectrum Gaussian fields (not white noise, which
  no resize preserves)."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    h, w = rng.integers(48, 97, size=2)
    f = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :])
    f[0, 0] = np.inf
    spec = (rng.normal(size=(3, h, w)) + 1j * rng.normal(size=(3, h, w))) / f
    x = np.real(np.fft.ifft2(spec)).transpose(1, 2, 0)
    x = 0.7 * x[..., :1] + 0.3 * x  # Correlated channels, as in photos.
    x = (x - x.min()) / (x.max() - x.min()) * 220 + 20
    out.append(Image.fromarray(x.astype(np.uint8)))
  return out


def _copy(image: Image.Image, scale: float, quality: int = 75) -> Image.Image:
  """`image` resized by `scale` and JPEG re-encoded."""
  w, h = image.size
  resized = image.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
  buf = io.BytesIO()
  resized.save(buf, "JPEG", quality=quality)
  return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _batches(ids, thumbs, sizes):
  """(ids, thumbs) cut into batches of the given sizes, cycled."""
  start, i = 0, 0
  while start < len(ids):
    stop = start + sizes[i % len(sizes)]
    yield list(ids[start:stop]), thumbs[start:stop]
    start, i = stop, i + 1


# --- normalize ---------------------------------------------------------------------------------


def test_normalize_makes_dot_products_normalised_correlations():
  rng = np.random.default_rng(0)
  x = np.asarray(_thumb(_smooth_images(1, 1)[0]))
  flat = np.full_like(x, 137.0)
  batch = np.stack([x, 0.3 * x + 40, 3 * x - 100, 255 - x, flat, np.zeros_like(x),
                    rng.normal(size=x.shape).astype(np.float32)])
  n = dedup.normalize(batch)
  assert n.shape == (7, SIZE * SIZE) and n.dtype == np.float32
  assert np.isfinite(n).all()
  corr = n @ n[0]
  np.testing.assert_allclose(corr[:4], [1, 1, 1, -1], atol=1e-5)
  assert corr[4] == 0 and corr[5] == 0  # Flat images: the zero vector, never a match.
  assert not n[4].any() and not n[5].any()
  np.testing.assert_allclose(np.linalg.norm(n[[0, 1, 2, 3, 6]], axis=1), 1, atol=1e-5)
  np.testing.assert_allclose(corr[6], np.corrcoef(x.ravel(), batch[6].ravel())[0, 1], atol=1e-5)
  with pytest.raises(ValueError, match="at least 2 pixels"):
    dedup.normalize(np.zeros((3, 1, 1)))


# --- The search --------------------------------------------------------------------------------


@pytest.fixture(scope="module", name="planted")
def _planted():
  """40 targets; 55 sources: 50 distinct images, copies of targets 3, 17 and 28, and two
  copies of target 5 side by side (in one chunk of 8), shuffled around them."""
  targets = _smooth_images(40, seed=10)
  others = _smooth_images(50, seed=20)
  copies = [("copy-3", 3, _copy(targets[3], 1.7)), ("copy-17", 17, _copy(targets[17], 0.6)),
            ("copy-28", 28, _copy(targets[28], 1.3, quality=60)),
            ("copy-5a", 5, _copy(targets[5], 2.0)), ("copy-5b", 5, _copy(targets[5], 0.7))]
  sources = [(f"other-{i}", None, im) for i, im in enumerate(others)]
  order = np.random.default_rng(1).permutation(len(sources))
  sources = [sources[i] for i in order]
  for pos, item in zip((4, 21, 50), copies[:3]):
    sources.insert(pos, item)
  sources[33:33] = copies[3:]  # Positions 33, 34: the same chunk of 8 (32..39).
  source_ids = [s[0] for s in sources]
  return {"target_ids": [f"t{i}" for i in range(40)],
          "target_thumbs": np.stack([_thumb(t) for t in targets]),
          "source_ids": source_ids, "source_thumbs": np.stack([_thumb(s[2]) for s in sources]),
          "expected": {(name, f"t{t}") for name, t, _ in copies}}


@pytest.mark.parametrize("chunk_size,k,batch_sizes,fallbacks", [
    (8, 1, [5, 11, 3], [8, 8, 8, 7]), (8, 2, [55], [8]), (16, 4, [55], [])],
    ids=["chunk8-k1", "chunk8-k2", "chunk16-k4"])
def test_search_finds_the_planted_copies_and_nothing_else(planted, chunk_size, k, batch_sizes,
                                                          fallbacks, monkeypatch):
  """55 sources in chunks of 8 (or 16), the last one padded. With k <= 2 the two copies of
  target 5 in one chunk fill its top-k: the exact fallback recomputes that chunk (k=1: every
  chunk with a copy) and must find both."""
  assert len(planted["source_ids"]) % chunk_size
  normalized = []  # The targets once, then each chunk the exact fallback recomputes.
  monkeypatch.setattr(dedup, "normalize", lambda x, f=dedup.normalize: normalized.append(
      len(x)) or f(x))
  seen = []
  result = dedup.search(
      _batches(planted["source_ids"], planted["source_thumbs"], batch_sizes),
      planted["target_thumbs"], planted["target_ids"], chunk_size=chunk_size, k=k,
      progress=seen.append)
  assert normalized == [40, *fallbacks]
  got = {(m.source_id, m.target_id) for m in result.matches}
  assert got == planted["expected"]
  assert all(m.correlation >= dedup.DEFAULT_THRESHOLD for m in result.matches)
  reference = dedup.brute_force(planted["source_thumbs"], planted["source_ids"],
                                planted["target_thumbs"], planted["target_ids"])
  assert [(m.source_id, m.target_id) for m in result.matches] == [
      (m.source_id, m.target_id) for m in reference]
  np.testing.assert_allclose([m.correlation for m in result.matches],
                             [m.correlation for m in reference], atol=1e-5)
  assert result.num_source == 55 and seen[-1] == 55 and seen == sorted(seen)
  assert len(seen) == -(-55 // chunk_size)  # One call per chunk.
  # The running top-k: each copied target's nearest sources are its copies, best first.
  nearest = dict(zip(planted["target_ids"], result.nearest_ids))
  assert nearest["t3"][0] == "copy-3" and nearest["t17"][0] == "copy-17"
  assert result.nearest_corr.shape == (40, k)
  assert (np.diff(result.nearest_corr, axis=1) <= 0).all()
  if k > 1:
    assert set(nearest["t5"][:2]) == {"copy-5a", "copy-5b"}
  # Distinct images stay far below the threshold (measured margin, see the module).
  others = [i for i, t in enumerate(planted["target_ids"]) if t not in {"t3", "t5", "t17", "t28"}]
  assert result.nearest_corr[others, 0].max() < 0.9


def test_streamed_search_equals_brute_force_with_many_pairs_above_the_threshold():
  """Low-rank data: many targets have more sources above the threshold in one chunk than k."""
  rng = np.random.default_rng(7)
  basis = rng.normal(size=(4, 64))
  source = (rng.normal(size=(203, 4)) @ basis).reshape(203, 8, 8).astype(np.float32)
  target = (rng.normal(size=(31, 4)) @ basis).reshape(31, 8, 8).astype(np.float32)
  source[17] = 5.0  # A flat image: never a match.
  source_ids, target_ids = [f"s{i}" for i in range(203)], [f"t{i}" for i in range(31)]
  corr = dedup.normalize(target).astype(np.float64) @ dedup.normalize(source).astype(np.float64).T
  # A threshold near 0.8 in a gap between two correlations: none on the edge of float32 rounding.
  values = np.sort(corr.ravel())
  gaps = np.flatnonzero((np.diff(values) > 2e-4) & (values[:-1] > 0.8))
  threshold = float(values[gaps[0]] + values[gaps[0] + 1]) / 2
  assert np.abs(corr - threshold).min() > 1e-4 and threshold < 0.85
  result = dedup.search(_batches(source_ids, source, [50]), target, target_ids,
                        threshold=threshold, chunk_size=32, k=2)
  reference = dedup.brute_force(source, source_ids, target, target_ids, threshold)
  assert len(reference) > 300
  assert [(m.source_id, m.target_id) for m in result.matches] == [
      (m.source_id, m.target_id) for m in reference]
  np.testing.assert_allclose([m.correlation for m in result.matches],
                             [m.correlation for m in reference], atol=1e-5)
  assert "s17" not in {m.source_id for m in result.matches}
  # Sorted: by target, then correlation (highest first).
  keys = [(m.target_id, -m.correlation) for m in result.matches]
  assert keys == sorted(keys)
  # The running top-k is the true top-k.
  np.testing.assert_allclose(result.nearest_corr, -np.sort(-corr, axis=1)[:, :2], atol=1e-5)
  again = dedup.find_duplicates(_batches(source_ids, source, [203]), target, target_ids,
                                threshold=threshold, chunk_size=64, k=1)
  assert [(m.source_id, m.target_id) for m in again] == [
      (m.source_id, m.target_id) for m in reference]


def test_a_search_resumed_from_any_saved_state_returns_the_uninterrupted_result(planted,
                                                                               tmp_path):
  """Saved after every chunk (8 sources, k 1: the exact fallback's chunks too), each state
  read back from its file and resumed over the rest of the stream gives what the
  uninterrupted search gives. Positions skip every 7th record (an unreadable image that the
  stream drops), so the state says where the stream goes on, not how many it searched."""
  ids, thumbs = planted["source_ids"], planted["source_thumbs"]
  positions = [i + i // 6 for i in range(len(ids))]

  def stream(start=0):
    rest = [j for j, p in enumerate(positions) if p >= start]
    for a in range(0, len(rest), 5):
      part = rest[a:a + 5]
      yield [ids[j] for j in part], thumbs[part], np.array([positions[j] for j in part])

  kwargs = {"chunk_size": 8, "k": 1}
  states = []
  whole = dedup.search(stream(), planted["target_thumbs"], planted["target_ids"],
                       save=states.append, save_seconds=0, **kwargs)
  assert [s.num_source for s in states] == [8, 16, 24, 32, 40, 48, 55]
  assert [s.position for s in states] == [positions[n - 1] + 1 for n in (8, 16, 24, 32, 40, 48,
                                                                         55)]
  assert {(m.source_id, m.target_id) for m in whole.matches} == planted["expected"]
  for state in states:
    # Only the ids it still needs: the targets' nearest sources and the matches.
    assert len(state.ids) <= 40 + len(state.found)
    path = str(tmp_path / f"state{state.num_source}.npz")
    dedup_state.save_state(path, state, "the key")
    loaded, key = dedup_state.load_state(path)
    assert key == "the key"
    resumed = dedup.search(stream(loaded.position), planted["target_thumbs"],
                           planted["target_ids"], resume=loaded, **kwargs)
    assert resumed.matches == whole.matches, state.num_source
    assert resumed.nearest_ids == whole.nearest_ids and resumed.num_source == 55
    np.testing.assert_array_equal(resumed.nearest_corr, whole.nearest_corr)
  with pytest.raises(ValueError, match="another search's"):
    dedup.search(stream(), planted["target_thumbs"][:3], planted["target_ids"][:3],
                 resume=states[0], **kwargs)


def test_search_refuses_what_it_cannot_do():
  thumbs = np.zeros((3, 4, 4), np.float32)
  for kwargs, message in [({"threshold": 1.5}, r"threshold must be in \(0, 1\]"),
                          ({"threshold": 0.0}, r"threshold must be in \(0, 1\]"),
                          ({"chunk_size": 2, "k": 3}, "1 <= k <= chunk_size")]:
    with pytest.raises(ValueError, match=message):
      dedup.search(iter([]), thumbs, ["a", "b", "c"], **kwargs)
  with pytest.raises(ValueError, match="use one size"):
    dedup.search(iter([(["x"], np.zeros((1, 5, 5)))]), thumbs, ["a", "b", "c"])
  with pytest.raises(ValueError, match="more than 3 .* pairs correlate >= 0.5"):
    dedup.search(iter([(["x", "y"], np.stack([np.eye(4)] * 2))]), np.stack([np.eye(4)] * 3),
                 ["a", "b", "c"], threshold=0.5, max_pairs=3)
  empty = dedup.search(iter([]), thumbs, ["a", "b", "c"])
  assert empty.matches == [] and empty.num_source == 0


# --- The footnote's counts ---------------------------------------------------------------------


def test_overlap_counts_images_in_common_and_the_most_in_one_class():
  matches = [dedup.Match("s1", "a", 0.99), dedup.Match("s2", "a", 0.97),  # Two copies of a.
             dedup.Match("s3", "b", 0.96), dedup.Match("s3", "c", 0.96),  # One source, 2 targets.
             dedup.Match("s4", "d", 1.0)]
  result = dedup.SearchResult(matches, [[""]] * 5, np.array([[0.99], [0.96], [0.96], [1.0],
                                                             [0.85]], np.float32), 100, 0.95)
  counts = dedup.overlap(result, ["a", "b", "c", "d", "e"], [0, 1, 1, (0, 1), 2],
                         ["cat", "dog", "cow"])
  assert counts["images_in_common"] == 4 and counts["total_target_images"] == 5
  assert counts["max_overlap_per_class"] == 3 and counts["max_overlap_classes"] == ["dog"]
  assert counts["per_class"] == {"dog": 3, "cat": 2}
  assert counts["source_images_removed"] == 4 and counts["pairs"] == 5
  assert counts["nearest_bands"][">=0.8"] == 5 and counts["nearest_bands"][">=0.95"] == 4
  json.dumps(counts, allow_nan=False)


@pytest.mark.parametrize("dataset,key", [
    ("caltech101", "caltech101"), ("caltech101:3.0.2", "caltech101"),
    ("folder:~/data/caltech256", "caltech256"), ("folder:/d/Caltech-256", "caltech256"),
    ("folder:/d/256_ObjectCategories", "caltech256"), ("imagenet2012", None),
    ("folder:/d/caltech101_copy", None), (tiny_dataset.NAME, None)])
def test_the_paper_row_is_for_caltech101_and_a_caltech256_folder_only(dataset, key):
  assert dedup.paper_key(dataset) == key


# --- The binary --------------------------------------------------------------------------------


@pytest.mark.parametrize("spec,parsed", [
    ("imagenet2012:train", ("imagenet2012", "train")),
    ("caltech101:train+test", ("caltech101", "train+test")),
    ("caltech101:train[:50%]", ("caltech101", "train[:50%]")),
    ("folder:/data/c256:all", ("folder:/data/c256", "all")),
    ("folder:/data/c256:all[10:20]", ("folder:/data/c256", "all[10:20]"))])
def test_dataset_split_specs(spec, parsed):
  assert dedup.parse_spec("source", spec) == parsed


BAD_REQUESTS = [
    ({"source": "nonsense"}, "--source=nonsense: give DATASET:SPLIT"),
    ({"target": "caltech101:"}, "--target=caltech101:: give DATASET:SPLIT"),
    ({"target": "folder:/data/c256"}, "an image folder is folder:<root>:<split>"),
    ({"threshold": 1.5}, "--threshold=1.5: a correlation threshold must be in (0, 1]"),
    ({"threshold": 0.0}, "--threshold=0.0: a correlation threshold must be in (0, 1]"),
    ({"size": 1}, "--size=1: thumbnails need at least 2 x 2 pixels"),
    ({"chunk_size": 0}, "--chunk_size=0: must be positive"),
    ({"k": 9, "chunk_size": 8}, "--k=9: must be in 1..--chunk_size (8)"),
]


@pytest.mark.parametrize("overrides,message", BAD_REQUESTS, ids=[
    "no-colon", "no-split", "folder-no-split", "threshold-above-1", "threshold-0", "size-1",
    "chunk-0", "k-above-chunk"])
def test_bad_requests_are_refused_in_one_line(overrides, message):
  kwargs = {"source": "imagenet2012:train", "target": "caltech101:train+test",
            "threshold": 0.95, **overrides}
  with pytest.raises(ValueError) as excinfo:
    dedup.request(**kwargs)
  assert message in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_an_unknown_dataset_is_refused_in_one_line():
  from zf_jax.data import input_pipeline  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError, match="unknown tfds dataset 'nonsense'"):
    input_pipeline.split_info(input_pipeline.InputConfig(dataset="nonsense"), "train")


WRAPPER = """\
import tiny_dataset  # noqa: F401  (registers zf_tiny_images for tfds.builder)
from experiments import cli, dedup
cli.run(dedup.main)
"""


def test_binary_finds_the_train_images_of_a_mixed_split_and_refuses_a_bad_dataset(tmp_path):
  """Target: the 24 validation images (none in train) and train[:8] (each is its own copy)."""
  data_dir = str(tmp_path / "tfds")
  tiny_dataset.prepare(data_dir)
  wrapper = tmp_path / "dedup_tiny.py"
  wrapper.write_text(WRAPPER, encoding="utf-8")
  workdir, bad_workdir = tmp_path / "dedup", tmp_path / "bad"
  name = tiny_dataset.NAME
  common = [f"--data_dir={data_dir}", f"--source={name}:train"]
  children = [subprocess.Popen(  # Both at once: each is mostly start-up.
      [sys.executable, *args], cwd=REPO, env=child_env(), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for args in (
          [str(wrapper), *common, f"--target={name}:validation+train[:8]",
           f"--workdir={workdir}", "--chunk_size=24", "--k=2", "--batch_size=10"],
          [str(wrapper), *common, "--target=nonsense:train", f"--workdir={bad_workdir}"])]
  (out, err), (_, bad_err) = (c.communicate(timeout=300) for c in children)
  assert children[0].returncode == 0, out + err
  assert children[1].returncode == 2, bad_err
  assert bad_err.strip().count("\n") == 0 and "unknown tfds dataset 'nonsense'" in bad_err
  assert not bad_workdir.exists()
  assert f"source {name}:train: 64/64 images (100%)" in out, out
  assert "8 of 32 target images found in the source" in out, out

  with open(workdir / "duplicates.json", encoding="utf-8") as f:
    report = json.load(f)
  train_prefix = f"{name}-train."
  matches = report["matches"]
  assert len(matches) == 8
  assert all(m["source_id"] == m["target_id"] and m["target_id"].startswith(train_prefix)
             and m["correlation"] > 0.9999 for m in matches), matches
  assert len({m["target_id"] for m in matches}) == 8
  assert {m["target_class"] for m in matches} <= {str(c) for c in range(4)}
  counts = report["counts"]
  per_class = {}
  for m in matches:
    per_class[m["target_class"]] = per_class.get(m["target_class"], 0) + 1
  assert counts["images_in_common"] == 8 and counts["total_target_images"] == 32
  assert counts["max_overlap_per_class"] == max(per_class.values())
  assert counts["per_class"] == dict(sorted(per_class.items(), key=lambda kv: (-kv[1], kv[0])))
  assert counts["source_images_searched"] == 64 and counts["source_images_removed"] == 8
  assert report["paper"] is None and report["threshold"] == dedup.DEFAULT_THRESHOLD
  # The validation images' nearest train images are far below the threshold (noise images).
  assert report["near_misses"] and all(
      m["correlation"] < 0.5 and not m["target_id"].startswith(train_prefix)
      for m in report["near_misses"])

  # exclude_ids.txt: a comment line, then the 8 ids, as the training flag reads it.
  from zf_jax.data import input_pipeline  # pylint: disable=import-outside-toplevel
  lines = (workdir / "exclude_ids.txt").read_text(encoding="utf-8").splitlines()
  assert lines[0].startswith("# ") and len(lines) == 9
  assert input_pipeline.read_ids(str(workdir / "exclude_ids.txt")) == sorted(
      m["source_id"] for m in matches)

  md = (workdir / "tables" / "dedup.md").read_text(encoding="utf-8")
  assert "| ours | 8 | 32 |" in md and "paper: —" in md, md
  with open(workdir / "tables" / "dedup.json", encoding="utf-8") as f:
    table = json.load(f)
  assert table["ours"]["images_in_common"] == 8 and table["paper"] is None
  assert table["target"] == f"{name}:validation+train[:8]"


KILLED_WRAPPER = """\
import os, signal
import tiny_dataset  # noqa: F401  (registers zf_tiny_images for tfds.builder)
from experiments import cli, dedup
from zf_jax.data import input_pipeline
dedup.SAVE_SECONDS = 0  # The state after every chunk.
real = input_pipeline.thumbnails
def dying(cfg, split, **kwargs):
  for i, batch in enumerate(real(cfg, split, **kwargs)):
    if split == "train" and i == 5:  # 50 of the 64 sources read: 2 chunks of 24 searched.
      os.kill(os.getpid(), signal.SIGKILL)
    yield batch
input_pipeline.thumbnails = dying
cli.run(dedup.main)
"""


def _tree(folder) -> dict[str, object]:
  """Every file's bytes; the saved search's arrays (a zip's bytes carry its time)."""
  out = {}
  for p in sorted(folder.rglob("*")):
    if p.suffix == ".npz":
      state, key = dedup_state.load_state(str(p))
      out[str(p.relative_to(folder))] = (key, state.num_source, state.position, state.ids,
                                         *(a.tolist() for a in (state.best_corr,
                                                                state.best_index, state.found)))
    elif p.is_file():
      out[str(p.relative_to(folder))] = p.read_bytes()
  return out


def test_a_killed_pass_resumes_to_the_uninterrupted_result_and_another_request_is_refused(
    tmp_path):
  data_dir = str(tmp_path / "tfds")
  tiny_dataset.prepare(data_dir)
  wrapper, killer = tmp_path / "dedup_tiny.py", tmp_path / "dedup_killed.py"
  wrapper.write_text(WRAPPER, encoding="utf-8")
  killer.write_text(KILLED_WRAPPER, encoding="utf-8")
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  name = tiny_dataset.NAME
  common = [f"--data_dir={data_dir}", f"--source={name}:train",
            f"--target={name}:validation+train[:8]", "--chunk_size=24", "--k=2",
            "--batch_size=10"]

  def start(script, workdir, *extra):
    return subprocess.Popen([sys.executable, str(script), *common, f"--workdir={workdir}",
                             *extra], cwd=REPO, env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

  def run(script, workdir, *extra):
    child = start(script, workdir, *extra)
    out, err = child.communicate(timeout=300)
    return child.returncode, out, err

  # Killed, and straight: an uninterrupted pass, started at once (each is mostly start-up).
  children = [start(wrapper, straight), start(killer, killed)]
  (out, err), (_, killed_err) = (c.communicate(timeout=300) for c in children)
  assert children[0].returncode == 0, out + err
  assert children[1].returncode == -9, killed_err
  assert (killed / "dedup_search.npz").is_file() and not (killed / "duplicates.json").exists()
  rc, out, err = run(wrapper, killed)
  assert rc == 0, out + err
  assert "resuming the search after 48 source images" in out, out
  assert f"source {name}:train: 64/64 images (100%)" in out, out
  expected = _tree(straight)
  assert _tree(killed) == expected  # duplicates.json, exclude_ids.txt, tables, the state.
  assert "dedup_search.npz" in expected and "duplicates.json" in expected

  rc, out, err = run(wrapper, killed)  # Complete: reused, the same files written again.
  assert rc == 0 and "the search was complete" in out, out + err
  assert f"source {name}:train" not in out, out  # Nothing read again.
  assert _tree(killed) == expected

  rc, out, err = run(wrapper, killed, "--threshold=0.9")
  assert rc == 2, out + err
  assert err.strip().count("\n") == 0, err
  assert "holds the search of another request (threshold 0.95 -> 0.9)" in err, err
  assert "--overwrite" in err
  assert _tree(killed) == expected
