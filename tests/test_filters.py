"""The layer-1 filter structure measure (zf_jax.analyses.filters), against direct computations."""

import numpy as np
import pytest

from zf_jax.analyses import filters


def _smooth(rng, n):
  """(5, 5, 3, n) filters that vary slowly: random ramps plus a little noise."""
  y, x = np.mgrid[0:5, 0:5]
  a, b = rng.normal(size=(2, n))
  w = a * x[..., None] + b * y[..., None] + 0.1 * rng.normal(size=(5, 5, n))
  return np.repeat(w[:, :, None, :], 3, axis=2)


def test_each_filter_is_the_pearson_correlation_of_its_neighbouring_taps():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(5, 5, 3, 4))
  got = filters.neighbour_correlation(w)
  for f in range(4):
    m = w[..., f].mean(-1)
    a = np.concatenate([m[:, :-1].ravel(), m[:-1, :].ravel()])
    b = np.concatenate([m[:, 1:].ravel(), m[1:, :].ravel()])
    assert got[f] == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-12)


def test_random_filters_score_near_zero_and_smooth_ones_near_one():
  rng = np.random.default_rng(1)
  assert abs(filters.median_neighbour_correlation(rng.normal(size=(5, 5, 3, 256)))) < 0.1
  assert filters.median_neighbour_correlation(_smooth(rng, 64)) > 0.8


def test_channels_are_averaged_first_and_a_flat_filter_scores_zero():
  rng = np.random.default_rng(2)
  w = _smooth(rng, 3)
  w[:, :, 1] = -w[:, :, 0]  # Channels 0 and 1 cancel; channel 2 holds the smooth filter.
  np.testing.assert_allclose(filters.neighbour_correlation(w),
                             filters.neighbour_correlation(w[:, :, 2:]), atol=1e-12)
  assert filters.neighbour_correlation(np.ones((3, 3, 1, 1)))[0] == 0.0


def test_weights_that_are_not_conv_filters_are_a_one_line_error():
  with pytest.raises(ValueError, match=r"kernels of at least 2x2, got shape \(1, 1, 3, 8\)"):
    filters.neighbour_correlation(np.zeros((1, 1, 3, 8)))
  with pytest.raises(ValueError, match=r"got shape \(5, 5\)"):
    filters.neighbour_correlation(np.zeros((5, 5)))


def _gratings(rng, n, size):
  """Mean-subtracted grey images of 4 classes: sine gratings at 0, 45, 90, 135 degrees."""
  y, x = np.mgrid[0:size, 0:size]
  label = rng.integers(0, 4, n)
  theta, phase = label * np.pi / 4, rng.uniform(0, 2 * np.pi, n)
  img = 100 * np.sin(2 * np.pi / 8 * (np.cos(theta)[:, None, None] * x
                                      + np.sin(theta)[:, None, None] * y) + phase[:, None, None])
  img += rng.normal(0, 20, img.shape)
  return {"image": np.repeat(img[..., None], 3, -1).astype(np.float32),
          "label": label.astype(np.int32)}


def test_the_check_passes_the_quickstart_recipes_conv1_and_fails_one_that_did_not_learn():
  """Trained on smooth images with quickstart.flags' recipe, layer 1 becomes structured;
  the same net with its conv1 frozen keeps the noise it started with, and fails."""
  import dataclasses

  import jax
  from absl import flags

  from experiments import cli
  from zf_jax import arch as arch_lib, train
  from zf_jax.runs import config

  fv = flags.FlagValues()
  config.define_flags(flag_values=fv)
  fv(cli.resolve_flagfiles(["prog", "--flagfile=quickstart.flags"]))
  recipe = dataclasses.replace(config.from_flags(flag_values=fv).train, batch_size=16,
                               lr_schedule="constant")
  arch = dataclasses.replace(arch_lib.get("zfnet_tiny"), num_classes=4)
  state = train.create_train_state(jax.random.key(0), arch, recipe)
  # A conv1 that did not learn (frozen, or a rate too small to move it) keeps its init.
  scores = {"frozen": filters.median_neighbour_correlation(state.params["conv1"]["w"])}
  step = train.make_train_step(arch, recipe)
  rng = np.random.default_rng(0)
  for _ in range(60):
    state, _ = step(state, _gratings(rng, 16, arch.image_size))
  scores["quickstart"] = filters.median_neighbour_correlation(state.params["conv1"]["w"])
  assert scores["quickstart"] >= filters.LEARNED, scores
  assert scores["frozen"] < filters.LEARNED, scores
  assert filters.verdict(scores["frozen"]).startswith("noise")
  assert filters.verdict(scores["quickstart"]).startswith("structured")
