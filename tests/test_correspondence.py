"""Section 4.3 / Table 1: Delta of sign changes, occluders, the parts file and the binary."""

import itertools
import json
import os
import shutil

import jax
import numpy as np
import pytest

from conftest import run_module
from zf_jax import arch as arch_lib
from zf_jax import model
from zf_jax.analyses import correspondence, part_boxes
from zf_jax.report import page, table1

TINY = arch_lib.get("zfnet_tiny")
# Fixed difference vectors with zeros in every row, one row all zero, one repeated.
EPS = np.array([[1.0, -2.0, 0.0, 3.0, 0.0, -1.0],
                [2.0, -1.0, 0.0, -3.0, 1.0, 0.0],
                [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                [-1.0, 2.0, 5.0, 3.0, 0.0, -1.0],
                [0.5, -7.0, 0.0, 1e-3, 0.0, -4.0]], np.float32)


def _delta_by_the_formula(eps):
  """Section 4.3 literally: sum over i != j of the Hamming distance of np.sign vectors."""
  n = len(eps)
  return sum(int(np.sum(np.sign(eps[i]) != np.sign(eps[j])))
             for i in range(n) for j in range(n) if i != j)


@pytest.fixture(scope="module", name="params")
def _params():
  return model.init(jax.random.key(0), TINY, scheme="he")


def _images(n, seed=0):
  rng = np.random.default_rng(seed)
  return rng.uniform(-128, 128, (n, TINY.image_size, TINY.image_size, 3)).astype(np.float32)


def test_delta_equals_the_papers_double_sum_of_hamming_distances_of_signs():
  c = correspondence.hamming_consistency(EPS)
  n, d = EPS.shape
  assert int(c.delta) == _delta_by_the_formula(EPS) == 70
  assert float(c.normalised) == pytest.approx(70 / (n * (n - 1) * d))
  pairs = [np.mean(np.sign(EPS[i]) != np.sign(EPS[j]))
           for i, j in itertools.combinations(range(n), 2)]
  np.testing.assert_allclose(c.pair_fractions, pairs, rtol=1e-6)
  assert float(c.std) == pytest.approx(np.std(pairs), rel=1e-5)
  # The mean of the unordered pair fractions is the normalised Delta (H is symmetric).
  assert float(c.normalised) == pytest.approx(np.mean(pairs))


def test_delta_is_symmetric_and_invariant_to_permuting_images_or_features():
  h = np.asarray(correspondence.sign_hamming(EPS))
  np.testing.assert_array_equal(h, h.T)
  assert not np.any(np.diag(h))
  rng = np.random.default_rng(0)
  base = correspondence.hamming_consistency(EPS)
  for _ in range(3):
    shuffled = EPS[rng.permutation(len(EPS))][:, rng.permutation(EPS.shape[1])]
    c = correspondence.hamming_consistency(shuffled)
    assert int(c.delta) == int(base.delta)
    assert float(c.std) == pytest.approx(float(base.std))


def test_identical_sign_patterns_give_zero_whatever_the_magnitudes():
  pattern = np.array([1.0, -1.0, 0.0, 2.0, 0.0, -3.0], np.float32)
  eps = pattern * np.array([[1.0], [0.1], [7.0], [1e-4]], np.float32)
  c = correspondence.hamming_consistency(eps)
  assert int(c.delta) == 0 and float(c.normalised) == 0.0 and float(c.std) == 0.0
  # One flipped sign in one image: that feature differs in 2 (N - 1) ordered pairs.
  eps[2, 0] = -eps[2, 0]
  assert int(correspondence.hamming_consistency(eps).delta) == 2 * 3 == _delta_by_the_formula(eps)


def test_occluding_a_box_sets_exactly_its_pixels_to_the_fill_value():
  images = _images(3)
  boxes = np.array([[0, 0, 4, 5], [10, 3, 32, 9], [31, 31, 32, 32]])
  masks = correspondence.box_masks(boxes, TINY.image_size)
  for fill in (0.0, -3.5):
    out = np.asarray(correspondence.occlude(images, masks, fill))
    for k, (y0, x0, y1, x1) in enumerate(boxes):
      inside = np.zeros(images.shape[1:3], bool)
      inside[y0:y1, x0:x1] = True
      np.testing.assert_array_equal(masks[k], inside)
      assert np.all(out[k][inside] == fill)
      np.testing.assert_array_equal(out[k][~inside], images[k][~inside])


def test_eps_is_the_feature_difference_computed_directly(params):
  images = _images(3, seed=1)
  rng = np.random.default_rng(2)
  boxes = correspondence.random_boxes(rng, np.full((7, 3, 2), 6), np.array([0, 0, 32, 32]))
  masks = correspondence.box_masks(boxes, TINY.image_size)  # (7, 3, 32, 32)
  # batch_size=9: 2 maskings per pass, the last pass padded; one masking alone: (N, H, W).
  eps = correspondence.feature_differences(params, TINY, images, masks, layers=(5, 7),
                                           batch_size=9)
  single = correspondence.feature_differences(params, TINY, images, masks[4], layers=(5, 7))
  original = model.features(params, images, TINY, (5, 7))
  for k in range(len(masks)):
    occluded = correspondence.occlude(images, masks[k])
    direct = model.features(params, occluded, TINY, (5, 7))
    for l in (5, 7):
      np.testing.assert_allclose(eps[l][k], original[l] - direct[l], rtol=1e-4, atol=1e-4)
  for l, d in ((5, 4 * 4 * 12), (7, 32)):
    assert eps[l].shape == (7, 3, d) and single[l].shape == (3, d)
    np.testing.assert_array_equal(single[l], eps[l][4])


def test_random_boxes_have_the_parts_sizes_lie_in_the_object_and_follow_the_seed():
  sizes = np.array([[[3, 5], [8, 8]]] * 200)
  regions = np.array([[2, 4, 12, 30], [0, 0, 32, 32]])
  boxes = correspondence.random_boxes(np.random.default_rng(7), sizes, regions)
  np.testing.assert_array_equal(boxes[..., 2:] - boxes[..., :2], sizes)
  assert np.all(boxes[..., :2] >= regions[:, :2]) and np.all(boxes[..., 2:] <= regions[:, 2:])
  assert len({tuple(b) for b in boxes[:, 0]}) > 20  # Independent draws, not one location.
  np.testing.assert_array_equal(
      boxes, correspondence.random_boxes(np.random.default_rng(7), sizes, regions))
  with pytest.raises(ValueError, match=r"a 3 x 5 box does not fit in region \[2, 4, 12, 8\]"):
    correspondence.random_boxes(np.random.default_rng(0), sizes[:1],
                                np.array([[2, 4, 12, 8], [0, 0, 32, 32]]))


def _parts_obj():
  return {"image_size": 32, "dataset": "d", "split": "test", "images": [
      {"index": 3, "parts": {"eye": [1, 2, 5, 6], "nose": [10, 10, 14, 14]}},
      {"index": 9, "parts": {"eye": [2, 2, 6, 6], "nose": [11, 10, 15, 14]},
       "object": [0, 0, 20, 20]}]}


@pytest.mark.parametrize("edit, message", [
    (lambda o: o["images"][1]["parts"].update(eye=[2, 2, 6, 33]),
     r"images\[1\]\.parts\['eye'\] = \[2, 2, 6, 33\] is not a box \[y0, x0, y1, x1\] with "
     r"0 <= y0 < y1 <= 32"),
    (lambda o: o["images"][0]["parts"].update(nose=[14, 10, 14, 14]),
     r"images\[0\]\.parts\['nose'\] = \[14, 10, 14, 14\] is not a box"),
    (lambda o: o["images"][1].pop("index"), r"images\[1\] has no 'index'"),
    (lambda o: o["images"][1]["parts"].pop("nose"),
     r"images\[1\] has parts \['eye'\] but images\[0\] has \['eye', 'nose'\]"),
    (lambda o: o["images"][1].update(index=3), r"images\[1\]\.index 3 repeats images\[0\]"),
    (lambda o: o["images"][0].update(object=[0, 0, 0, 5]), r"images\[0\]\.object = "),
    (lambda o: o.update(image_size="32"), r"image_size must be a positive integer"),
    (lambda o: o["images"].pop(), r"images must be a list of at least 2 images"),
    (lambda o: o.update(imagesize=32), r"unknown key 'imagesize'"),
])
def test_parts_file_rejects_a_bad_entry_in_one_line_naming_it(tmp_path, edit, message):
  obj = _parts_obj()
  edit(obj)
  path = tmp_path / "parts.json"
  path.write_text(json.dumps(obj), encoding="utf-8")
  with pytest.raises(ValueError, match=message) as info:
    part_boxes.load_parts(path)
  assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_parts_file_round_trips_and_a_broken_json_is_one_line(tmp_path):
  parts = part_boxes.parse_parts(_parts_obj())
  assert parts.indices == (3, 9) and parts.names == ("eye", "nose")
  np.testing.assert_array_equal(parts.boxes["nose"], [[10, 10, 14, 14], [11, 10, 15, 14]])
  np.testing.assert_array_equal(parts.objects, [[0, 0, 32, 32], [0, 0, 20, 20]])
  again = part_boxes.parse_parts(json.loads(json.dumps(parts.to_json())))
  assert again.indices == parts.indices and again.dataset == "d"
  np.testing.assert_array_equal(again.boxes["eye"], parts.boxes["eye"])
  path = tmp_path / "bad.json"
  path.write_text("{\"image_size\": 32,", encoding="utf-8")
  with pytest.raises(ValueError, match=r"is not valid JSON") as info:
    part_boxes.load_parts(path)
  assert "\n" not in str(info.value)
  with pytest.raises(ValueError, match=r"for split 'test', not 'validation': pass --split=test"):
    part_boxes.check_parts(parts, dataset="d", split="validation", image_size=32)
  with pytest.raises(ValueError, match=r"boxes are for 32 px crops but the model's input is 224"):
    part_boxes.check_parts(parts, dataset="d", split="test", image_size=224)
  part_boxes.check_labels(parts, [7, 7])  # The file names no label: nothing to check.
  labelled = part_boxes.parse_parts({**_parts_obj(), "label": 7})
  with pytest.raises(ValueError, match=r"example 9 has label 2, the parts file says 7"):
    part_boxes.check_labels(labelled, [7, 2])


def test_builtin_parts_are_five_t_shirts_and_other_datasets_need_a_file():
  parts = part_boxes.builtin_parts("fashion_mnist_debian")
  assert len(parts.indices) == 5 and parts.label == 0 and parts.image_size == TINY.image_size
  assert parts.names == ("left sleeve", "right sleeve", "neck")
  # Random boxes of every part's size fit in every image's object box.
  for name in parts.names:
    size = parts.boxes[name][:, 2:] - parts.boxes[name][:, :2]
    correspondence.random_boxes(np.random.default_rng(0), size, parts.objects)
  with pytest.raises(ValueError, match=r"no built-in part boxes for dataset 'imagenet2012'.*"
                                       r"pass --parts=FILE, a JSON object") as info:
    part_boxes.builtin_parts("imagenet2012")
  assert "\n" not in str(info.value)


def test_analyse_and_table1_on_a_tiny_model(params):
  parts = part_boxes.parse_parts(_parts_obj())
  images = _images(2, seed=3)
  result = correspondence.analyse(params, TINY, images, parts, num_random=4, seed=1)
  again = correspondence.analyse(params, TINY, images, parts, num_random=4, seed=1)
  assert result["dims"] == {5: 192, 7: 32} and result["random_boxes"].shape == (4, 2, 4)
  np.testing.assert_array_equal(result["random_boxes"], again["random_boxes"])
  # Draws cycle through the parts' sizes, inside each image's object box.
  sizes = result["random_boxes"][..., 2:] - result["random_boxes"][..., :2]
  np.testing.assert_array_equal(sizes[0], parts.boxes["eye"][:, 2:] - parts.boxes["eye"][:, :2])
  np.testing.assert_array_equal(sizes[1], parts.boxes["nose"][:, 2:] - parts.boxes["nose"][:, :2])
  assert np.all(result["random_boxes"][:, 1, 2:] <= 20)
  # The named rows are Delta of the eps computed directly.
  masks = correspondence.box_masks(parts.boxes["nose"], 32)
  eps = correspondence.feature_differences(params, TINY, images, masks)
  for l in (5, 7):
    assert result["parts"]["nose"][l]["delta"] == _delta_by_the_formula(eps[l])
    assert result["parts"]["nose"][l]["mean"] == pytest.approx(
        _delta_by_the_formula(eps[l]) / (2 * eps[l].shape[1]))
    assert 0 <= result["random"][l]["mean"] <= 1
  markdown, table = table1.render(result, parts, dataset="d", split="test")
  assert "NOT ImageNet" in markdown
  assert "| Right Eye | 0.067 ± 0.007 | 0.069 ± 0.015 |" in markdown
  assert "| Random (4 draws) |" in markdown
  assert [r["occlusion"] for r in table["ours"]] == ["eye", "nose", "Random"]
  assert table["paper"][3] == {"occlusion": "Random", "layers": {
      "5": {"mean": 0.107, "std": 0.017}, "7": {"mean": 0.073, "std": 0.014}}}
  json.dumps(table, allow_nan=False)


def _binary(*args):
  proc = run_module("experiments.table1_correspondence", *args)
  return proc.stdout, proc.stderr, proc.returncode


def test_binary_writes_table1_figure_and_report_section(fashion_run, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(fashion_run[0], workdir)
  stdout, stderr, rc = _binary(f"--workdir={workdir}", "--num_random=6")
  assert rc == 0, stderr
  md_path = os.path.join(workdir, "tables", "table1.md")
  json_path = os.path.join(workdir, "tables", "table1.json")
  png = os.path.join(workdir, "figures", "table1_parts.png")
  assert f"Table 1 written to {md_path} and {json_path}" in stdout
  assert os.path.getsize(png) > 1000
  with open(json_path, encoding="utf-8") as f:
    table = json.load(f)
  assert table["dataset"] == "fashion_mnist_debian" and not table["imagenet"]
  assert table["class"] == "T-shirt/top" and table["indices"] == [6, 10, 42, 43, 44]
  assert [r["occlusion"] for r in table["ours"]] == ["left sleeve", "right sleeve", "neck",
                                                     "Random"]
  for row in table["ours"]:
    for l in ("5", "7"):
      assert 0 <= row["layers"][l]["mean"] <= 1 and row["layers"][l]["std"] >= 0
  (section,) = [s for s in page.sections(workdir) if s["key"] == "table1"]
  assert section["figures"] == ["figures/table1_parts.png"] and section["tables"] == ["table1"]
  with open(os.path.join(workdir, "report.html"), encoding="utf-8") as f:
    assert "Table 1: correspondence" in f.read()


@pytest.mark.parametrize("flag, message", [
    ("--num_random=0", "num_random"),
    ("--layers=5,seven", "--layers takes comma-separated integers, got 5,seven"),
])
def test_binary_bad_flag_is_exit_status_2_and_one_line(tmp_path, flag, message):
  _, stderr, rc = _binary(f"--workdir={tmp_path}", flag)
  assert rc == 2
  assert len(stderr.strip().splitlines()) == 1 and message in stderr
