"""Specifications of zf_jax.explore, the exploration notebook's helpers (no trained run needed)."""

import dataclasses

import jax
import numpy as np
import pytest

from zf_jax import arch as arch_lib
from zf_jax import deconv, explore, model
from zf_jax.analyses import source
from zf_jax.report import figures
from zf_jax.runs.config import RunConfig
from zf_jax.runs.workdir import Run

ARCH = arch_lib.get("zfnet_tiny")
CLASSES = tuple(f"class {c}" for c in range(ARCH.num_classes))


@pytest.fixture(scope="module", name="src")
def _src():
  params = model.init(jax.random.key(0), ARCH, scheme="he")
  run = Run(workdir="/nonexistent/run", config=RunConfig(arch=ARCH.name), arch=ARCH,
            params=params, step=7)
  mean = np.full((36, 36, 3), 100.0, np.float32)
  return source.Source(run=run, icfg=None, mean=mean, split="test", class_names=CLASSES)


@pytest.fixture(scope="module", name="images")
def _images():
  return np.random.default_rng(0).normal(0, 64, (2, 32, 32, 3)).astype(np.float32)


def test_trace_summary_lists_every_layer_and_the_switches_of_the_pooled_ones(src, images):
  _, trace = model.apply(src.params, images, ARCH)
  lines = explore.trace_summary(trace).splitlines()
  assert lines[1].split()[0] == "input" and "(2, 32, 32, 3) float32" in lines[1]
  by_layer = {int(line.split()[0]): line for line in lines[2:]}
  assert sorted(by_layer) == list(ARCH.conv_layers)
  for c in ARCH.convs:
    shape = str(tuple(trace.activations[c.layer].shape))
    if c.pool is None:
      assert by_layer[c.layer].endswith("no pooling")
    else:  # The activation's shape, then the switches' (the same) and their window.
      assert by_layer[c.layer].count(shape) == 2
      assert f"{c.pool.window}x{c.pool.window} windows, stride {c.pool.stride}" in by_layer[
          c.layer]


def test_rectification_figure_shows_each_modes_projection_of_the_strongest_map(src, images):
  _, trace = model.apply(src.params, images, ARCH)
  layer, order = 5, (1, 0)
  fig = explore.rectification_figure(src, trace, (layer,), images=order)
  axes = fig.axes
  assert len(axes) == len(order) * (1 + len(explore.MODES))
  for row, i in enumerate(order):
    np.testing.assert_array_equal(axes[row * 4].images[0].get_array(),
                                  source.display(src, images)[i])
    feature = explore.strongest_map(trace, layer, i)
    acts = np.asarray(trace.activations[layer][i])
    assert acts[..., feature].max() == acts.max()
    sel = deconv.strongest(trace, layer, feature)
    for col, mode in enumerate(explore.MODES, 1):
      ax = axes[row * 4 + col]
      assert ax.get_title() == mode
      expected = figures.signed_to_unit(np.asarray(
          deconv.project(src.params, ARCH, trace, layer, sel, mode=mode))[i])
      np.testing.assert_allclose(ax.images[0].get_array(), expected, atol=1e-6)


def test_predictions_figure_titles_true_and_predicted_classes(src, images):
  logits = np.zeros((2, ARCH.num_classes), np.float32)
  logits[0, 3], logits[1, 5] = 5.0, 5.0
  fig = explore.predictions_figure(src, images, np.array([3, 4]), logits)
  titles = [ax.get_title() for ax in fig.axes if ax.images]
  assert titles[0].startswith("true: class 3\npred: class 3 0.") and "wrong" not in titles[0]
  assert titles[1].startswith("true: class 4\npred: class 5 0.") and titles[1].endswith("(wrong)")


def test_filters_figure_has_one_panel_per_source_and_names_the_initialisation(src):
  init = dataclasses.replace(src, run=dataclasses.replace(src.run, step=0))
  fig = explore.filters_figure([init, src])
  assert [ax.get_title() for ax in fig.axes] == ["step 0 (initialisation)", "step 7"]
  n, k = ARCH.convs[0].features, ARCH.convs[0].kernel
  cols = int(np.ceil(np.sqrt(n)))  # Filters upscaled 4x, 2 px gaps.
  assert fig.axes[1].images[0].get_array().shape[:2] == (
      -(-n // cols) * (4 * k + 2) - 2, cols * (4 * k + 2) - 2)


def test_scratch_moves_only_the_workdir_and_png_renders_a_png(src, tmp_path):
  out = explore.scratch(src, str(tmp_path))
  assert out.run.workdir == str(tmp_path) and src.run.workdir == "/nonexistent/run"
  assert out.run.params is src.run.params and out.mean is src.mean
  assert explore.scratch(src).run.workdir != explore.scratch(src).run.workdir
  image = explore.png(figures.image_rows([[np.zeros((4, 4, 3))]], None))
  assert image.data[:8] == b"\x89PNG\r\n\x1a\n"
