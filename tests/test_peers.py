"""Parity with the tools a researcher would otherwise pick: Captum on a PyTorch twin.

Skipped unless torch and captum are installed (`pip install -e ".[compare]"`).
The twin (benchmarks.common.torch_twin) is built from the same Arch and weights.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")

from benchmarks.common import torch_twin  # noqa: E402  pylint: disable=wrong-import-position
from zf_jax import arch as arch_lib  # noqa: E402  pylint: disable=wrong-import-position
from zf_jax import deconv, model, occlusion  # noqa: E402  pylint: disable=wrong-import-position

ARCH = arch_lib.get("zfnet_tiny")


@pytest.fixture(scope="module", name="setup")
def _setup():
  params = model.init(jax.random.key(0), ARCH, scheme="he")
  images = np.random.default_rng(0).normal(0, 64, (3, 32, 32, 3)).astype(np.float32)
  return params, images


def nchw(x):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def test_twin_computes_our_logits(setup):
  params, images = setup
  logits, _ = model.apply(params, jnp.asarray(images), ARCH)
  with torch.no_grad():
    theirs = torch_twin(params, ARCH)(nchw(images)).numpy()
  np.testing.assert_allclose(theirs, logits, rtol=1e-4, atol=1e-4 * float(np.abs(logits).max()))


@pytest.mark.parametrize("layer,feature", [(5, 2), (2, 7)])
def test_captum_deconvolution_is_our_deconvnet_up_to_the_activation_value(setup, layer, feature):
  """Captum starts from a unit gradient at the target, we from the activation itself (Fig. 2)."""
  params, images = setup
  _, trace = model.apply(params, jnp.asarray(images), ARCH)
  selection = deconv.strongest(trace, layer, feature)
  ours = np.asarray(deconv.project(params, ARCH, trace, layer, selection))
  flat = np.asarray(selection).reshape(3, -1)
  trunk = torch_twin(params, ARCH, upto=layer)
  with pytest.warns(UserWarning):  # Captum announces its ReLU hooks.
    theirs = captum_attr.Deconvolution(trunk).attribute(
        nchw(images), target=[int(i) for i in flat.argmax(1)]).detach().numpy()
  theirs = theirs.transpose(0, 2, 3, 1) * flat.max(1)[:, None, None, None]
  np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-5 * float(np.abs(ours).max()))


def test_captum_occlusion_is_the_average_of_our_probability_drops(setup):
  """Captum's per-pixel attribution = mean, over the squares covering the pixel, of p0 - p."""
  params, images = setup
  patch, stride, label = 8, 4, 3
  maps = occlusion.occlusion(params, ARCH, images[0], label, patch=patch, stride=stride)
  net = torch.nn.Sequential(torch_twin(params, ARCH), torch.nn.Softmax(dim=1))
  theirs = captum_attr.Occlusion(net).attribute(
      nchw(images[:1]), sliding_window_shapes=(3, patch, patch), strides=(3, stride, stride),
      target=label, baselines=0.0).detach().numpy()[0].transpose(1, 2, 0)
  drop = np.asarray(maps.unoccluded_prob - maps.prob)
  total, count = np.zeros((32, 32)), np.zeros((32, 32))
  for i in range(drop.shape[0]):
    for j in range(drop.shape[1]):
      y0, x0, y1, x1 = maps.box(i, j)
      total[y0:y1, x0:x1] += drop[i, j]
      count[y0:y1, x0:x1] += 1
  want = np.where(count > 0, total / np.maximum(count, 1), 0.0)
  for c in range(3):
    np.testing.assert_allclose(theirs[..., c], want, rtol=1e-3, atol=1e-6)
