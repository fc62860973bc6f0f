"""Fig. 5's transformations and invariance curves (zf_jax.analyses.invariance) and its binary."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
import scipy.ndimage

from conftest import run_module
from zf_jax import arch as arch_lib
from zf_jax import model
from zf_jax.analyses import invariance
from zf_jax.report import page, tables

R, S = 37, 32  # zfnet_tiny's resize and crop sizes: an odd margin, 2 px above and 3 below.
OFF = (R - S) // 2


@pytest.fixture(name="image")
def _image():
  return np.random.default_rng(0).normal(0, 50, (R, R, 3)).astype(np.float32)


@pytest.fixture(scope="module", name="tiny")
def _tiny():
  arch = arch_lib.get("zfnet_tiny")
  return arch, model.init(jax.random.key(0), arch, scheme="he")


def _crop(x):
  return x[OFF:OFF + S, OFF:OFF + S]


@pytest.mark.parametrize("kind", invariance.KINDS)
def test_identity_amount_returns_the_evaluation_centre_crop_exactly(image, kind):
  out = np.asarray(invariance.transform(image, kind, invariance.IDENTITY[kind], S))
  np.testing.assert_array_equal(out, _crop(image))


@pytest.mark.parametrize("pixels", [-7, -2, 1, 3, 6])
def test_whole_pixel_translation_shifts_rows_bringing_in_the_margin_then_zeros(image, pixels):
  shifted = np.zeros_like(image)  # np.roll with zero fill, over the whole resized image.
  if pixels >= 0:
    shifted[pixels:] = image[:R - pixels]
  else:
    shifted[:pixels] = image[-pixels:]
  out = np.asarray(invariance.translate(image, pixels, S))
  np.testing.assert_array_equal(out, _crop(shifted))


def test_half_pixel_translation_averages_neighbouring_rows(image):
  out = np.asarray(invariance.translate(image, 0.5, S))
  rows = np.arange(OFF, OFF + S)
  np.testing.assert_allclose(out, 0.5 * (image[rows, OFF:OFF + S] + image[rows - 1, OFF:OFF + S]),
                             rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("quarter", [1, 2, 3])
def test_quarter_turns_equal_rot90_of_the_crop(image, quarter):
  out = np.asarray(invariance.rotate(image, 90 * quarter, S))
  np.testing.assert_array_equal(out, np.rot90(_crop(image), quarter))


@pytest.mark.parametrize("degrees", [360, -360, 720])
def test_whole_turns_are_the_identity(image, degrees):
  np.testing.assert_array_equal(np.asarray(invariance.rotate(image, degrees, S)), _crop(image))


def test_scale_by_two_keeps_the_centre_and_doubles_distances_from_it():
  # A linear ramp f(y, x) = 3y - 2x: zooming by 2 about c gives f(c + (p - c) / 2).
  y, x = np.mgrid[0:R, 0:R].astype(np.float32)
  image = np.stack([3 * y - 2 * x] * 3, -1)
  c = OFF + (S - 1) / 2
  p = np.arange(OFF, OFF + S, dtype=np.float32)
  qy, qx = np.meshgrid(c + (p - c) / 2, c + (p - c) / 2, indexing="ij")
  out = np.asarray(invariance.scale(image, 2.0, S))
  np.testing.assert_allclose(out, np.stack([3 * qy - 2 * qx] * 3, -1), atol=1e-4)


@pytest.mark.parametrize("kind,amount", [("translate", -4.3), ("scale", 0.7), ("scale", 1.37),
                                         ("rotate", 33.0), ("rotate", 251.0)])
def test_transforms_match_scipy_bilinear_resampling(image, kind, amount):
  """Reference: scipy.ndimage (grid-constant: bilinear towards 0 beyond the border)."""
  c = OFF + (S - 1) / 2
  p = np.arange(OFF, OFF + S, dtype=np.float64) - c
  dy, dx = np.meshgrid(p, p, indexing="ij")
  if kind == "translate":
    qy, qx = dy - amount, dx
  elif kind == "scale":
    qy, qx = dy / amount, dx / amount
  else:  # Counter-clockwise as displayed: the output samples the input turned back.
    t = np.deg2rad(amount)
    qy, qx = np.cos(t) * dy + np.sin(t) * dx, -np.sin(t) * dy + np.cos(t) * dx
  want = np.stack([scipy.ndimage.map_coordinates(image[..., ch], [qy + c, qx + c], order=1,
                                                 mode="grid-constant", cval=0.0)
                   for ch in range(3)], -1)
  out = np.asarray(invariance.transform(image, kind, amount, S))
  np.testing.assert_allclose(out, want, atol=1e-3)


def test_rotation_is_counter_clockwise_as_displayed():
  image = np.zeros((R, R, 3), np.float32)
  image[OFF + 4, OFF + S // 2] = 1.0  # Near the top edge, in the middle column (as displayed).
  out = np.asarray(invariance.rotate(image, 90, S))[..., 0]
  row, col = np.unravel_index(np.argmax(out), out.shape)
  assert col < S // 4 and S // 4 < row < 3 * S // 4  # Now on the left edge.


@pytest.mark.parametrize("kind", invariance.KINDS)
def test_batched_transform_equals_a_loop_over_amounts(image, kind):
  amounts = invariance.default_amounts(kind, S, 5)
  batched = np.asarray(invariance.transform_amounts(image, kind, amounts, S))
  for k, amount in enumerate(amounts):
    np.testing.assert_allclose(batched[k], np.asarray(invariance.transform(image, kind, amount, S)),
                               atol=1e-5)


def test_default_amounts_follow_the_paper_axes():
  np.testing.assert_allclose(invariance.default_amounts("translate", 224, 5), [-60, -30, 0, 30, 60])
  np.testing.assert_allclose(invariance.default_amounts("translate", 32, 3), [-9, 0, 9])
  np.testing.assert_allclose(invariance.default_amounts("scale", 224, 5), [1, 1.2, 1.4, 1.6, 1.8])
  np.testing.assert_allclose(invariance.default_amounts("rotate", 32, 5), [0, 90, 180, 270, 360])


def test_curves_are_norms_of_feature_differences_and_true_class_probabilities(tiny):
  arch, params = tiny
  images = np.random.default_rng(1).normal(0, 50, (2, R, R, 3)).astype(np.float32)
  labels = np.array([3, 7])
  amounts = np.array([0.0, 25.0, 90.0, 200.0, 360.0], np.float32)
  curves = invariance.invariance_curves(params, arch, images, labels, kind="rotate",
                                        amounts=amounts, layers=(1, 7), batch_size=3)
  assert curves["prob"].shape == (2, 5) and curves["distance"][1].shape == (2, 5)
  for i in range(2):
    crops = np.asarray(invariance.transform_amounts(images[i], "rotate", amounts, S))
    original = _crop(images[i])[None]
    f = {l: np.asarray(v) for l, v in model.features(params, crops, arch, (1, 7, 8)).items()}
    f0 = {l: np.asarray(v) for l, v in model.features(params, original, arch, (1, 7, 8)).items()}
    for l in (1, 7):
      want = np.linalg.norm(f[l].astype(np.float64) - f0[l], axis=-1)
      np.testing.assert_allclose(curves["distance"][l][i], want, rtol=1e-4,
                                 atol=1e-5 * np.linalg.norm(f0[l]))
      np.testing.assert_allclose(curves["norm"][l][i], np.linalg.norm(f0[l]), rtol=1e-5)
    prob = np.asarray(jax.nn.softmax(f[8], axis=-1))[:, labels[i]]
    np.testing.assert_allclose(curves["prob"][i], prob, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(curves["prob_original"][i],
                               np.asarray(jax.nn.softmax(f0[8], axis=-1))[0, labels[i]], rtol=1e-4)
  # Rotations by 0 and 360 degrees are the untransformed image: no distance at all.
  for l in (1, 7):
    np.testing.assert_array_equal(curves["distance"][l][:, [0, 4]], 0.0)
  np.testing.assert_allclose(curves["prob"][:, 0], curves["prob_original"], rtol=1e-6)
  # Another chunking of the amounts gives the same curves.
  whole = invariance.invariance_curves(params, arch, images, labels, kind="rotate",
                                       amounts=amounts, layers=(1, 7), batch_size=64)
  for l in (1, 7):
    np.testing.assert_allclose(whole["distance"][l], curves["distance"][l], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(whole["prob"], curves["prob"], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("call,match", [
    (lambda: invariance.transform(np.zeros((R, R, 3)), "shear", 1.0, S),
     "unknown transformation 'shear'; choose one of translate, scale, rotate"),
    (lambda: invariance.default_amounts("zoom", S), "unknown transformation 'zoom'"),
    (lambda: invariance.default_amounts("scale", S, 1), "at least 2 amounts"),
])
def test_bad_requests_raise_one_line_value_errors(call, match):
  with pytest.raises(ValueError, match=match) as e:
    call()
  assert "\n" not in str(e.value)


def test_curves_reject_bad_kind_scale_and_image_shape_in_one_line(tiny):
  arch, params = tiny
  images, labels = np.zeros((1, R, R, 3), np.float32), np.array([0])
  for kwargs, match in [({"kind": "shear"}, "unknown transformation 'shear'"),
                        ({"kind": "scale", "amounts": [1.0, 0.0]}, "scale factors must be"),
                        ({"kind": "rotate", "layers": (1, 9)}, "has no layer 9")]:
    with pytest.raises(ValueError, match=match) as e:
      invariance.invariance_curves(params, arch, images, labels, **kwargs)
    assert "\n" not in str(e.value)
  with pytest.raises(ValueError, match=r"R >= 32"):
    invariance.invariance_curves(params, arch, images[:, :30, :30], labels, kind="rotate")


def _binary(*args):
  return run_module("experiments.fig5_invariance", *args, timeout=300)


def test_binary_writes_figure_table_and_report_section(fashion_run, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(fashion_run[0], workdir)  # The fixture's workdir is shared: write a copy.
  proc = _binary(f"--workdir={workdir}", "--num_images=3", "--num_amounts=5")
  assert proc.returncode == 0, proc.stderr
  png = page.figure_path(workdir, "fig5_invariance.png")
  table_dir = os.path.join(workdir, tables.TABLES_DIR)
  assert png in proc.stdout and os.path.getsize(png) > 10_000
  with open(os.path.join(table_dir, "fig5_invariance.json"), encoding="utf-8") as f:
    table = json.load(f)
  assert len(table["images"]) == 3 and len({im["label"] for im in table["images"]}) == 3
  assert set(table["kinds"]) == set(invariance.KINDS)
  for kind, c in table["kinds"].items():
    np.testing.assert_allclose(c["amounts"], invariance.default_amounts(kind, S, 5), rtol=1e-6)
    for values in (*c["distance"].values(), c["prob"]):
      assert np.asarray(values).shape == (3, 5)
    probs = np.asarray(c["prob"])
    assert np.all((probs >= 0) & (probs <= 1))
  # Untransformed images (translation 0, scale 1, rotation 0 and 360) change no feature.
  for kind, k in (("translate", 2), ("scale", 0), ("rotate", 0), ("rotate", 4)):
    for layer in ("1", "7"):
      assert np.asarray(table["kinds"][kind]["distance"][layer])[:, k] == pytest.approx(0, abs=1e-3)
  assert os.path.exists(os.path.join(table_dir, "fig5_invariance.md"))
  section = next(s for s in page.sections(workdir) if s["key"] == "fig5")
  assert section["figures"] == ["figures/fig5_invariance.png"]
  assert section["tables"] == ["fig5_invariance"]
  with open(os.path.join(workdir, page.REPORT_FILE), encoding="utf-8") as f:
    assert "Fig. 5: feature invariance" in f.read()


@pytest.mark.parametrize("flag,message", [("--kinds=translate,shear", "'shear'"),
                                          ("--num_amounts=1", "num_amounts")])
def test_binary_rejects_bad_flags_with_one_line(tmp_path, flag, message):
  proc = _binary(f"--workdir={tmp_path}", flag)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], proc.stderr
