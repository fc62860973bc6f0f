"""Specifications of zf_jax.occlusion (Fig. 7)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zf_jax import deconv, model
from zf_jax.analyses import source
from zf_jax import arch as arch_lib
from zf_jax import occlusion as occ

ARCH = arch_lib.get("zfnet_tiny")


@pytest.fixture(scope="module", name="params")
def _params():
  return model.init(jax.random.key(1), ARCH, scheme="he")


@pytest.fixture(scope="module", name="image")
def _image():
  return np.random.default_rng(0).normal(0, 64, (32, 32, 3)).astype(np.float32)


def loop_reference(params, image, label, patch, stride, fill, arch=ARCH):
  """One forward pass per position, straight from the definition of Fig. 7 (b), (d), (e)."""
  top = arch.convs[-1].layer
  _, trace = model.apply(params, jnp.asarray(image[None]), arch)
  acts = np.asarray(trace.activations[top][0])
  feature = np.unravel_index(acts.argmax(), acts.shape)[-1]
  positions = range(0, 32 - patch + 1, stride)
  n = len(positions)
  prob, cls, act = np.zeros((n, n)), np.zeros((n, n), int), np.zeros((n, n))
  for i, y in enumerate(positions):
    for j, x in enumerate(positions):
      occluded = image.copy()
      occluded[y:y + patch, x:x + patch, :] = np.broadcast_to(fill, image.shape)[
          y:y + patch, x:x + patch, :]
      logits, t = model.apply(params, jnp.asarray(occluded[None]), arch)
      prob[i, j] = float(jax.nn.softmax(logits)[0, label])
      cls[i, j] = int(jnp.argmax(logits[0]))
      act[i, j] = float(t.activations[top][0, ..., feature].sum())
  return feature, prob, cls, act


@pytest.mark.parametrize("patch,stride,fill,chunk", [(8, 3, 0.0, 7), (5, 9, 12.5, 64),
                                                      (32, 1, 0.0, 1)])
def test_batched_maps_equal_a_loop_over_positions(params, image, patch, stride, fill, chunk):
  maps = occ.occlusion(params, ARCH, image, 4, patch=patch, stride=stride, fill=fill, chunk=chunk)
  feature, prob, cls, act = loop_reference(params, image, 4, patch, stride, fill)
  n = occ.grid_size(32, patch, stride)
  assert maps.prob.shape == maps.top_class.shape == maps.activity.shape == (n, n)
  assert int(maps.feature) == feature
  np.testing.assert_allclose(maps.prob, prob, rtol=1e-4, atol=1e-7)
  np.testing.assert_array_equal(maps.top_class, cls)
  np.testing.assert_allclose(maps.activity, act, rtol=1e-4, atol=1e-4)


def test_layers_whose_lrn_comes_before_the_pool_too(params, image):
  """The order of the imported pytorchcv models (`ConvSpec.norm_before_pool`)."""
  arch = dataclasses.replace(ARCH, convs=tuple(
      dataclasses.replace(c, norm_before_pool=True) for c in ARCH.convs))
  maps = occ.occlusion(params, arch, image, 4, patch=8, stride=3, chunk=16)
  feature, prob, cls, act = loop_reference(params, image, 4, 8, 3, 0.0, arch)
  assert int(maps.feature) == feature
  np.testing.assert_allclose(maps.prob, prob, rtol=1e-4, atol=1e-7)
  np.testing.assert_array_equal(maps.top_class, cls)
  np.testing.assert_allclose(maps.activity, act, rtol=1e-4, atol=1e-4)


def test_positions_cover_the_image_up_to_the_border():
  # 32 px, patch 8, stride 3: corners 0, 3, ..., 24; the last square ends at 32, the border.
  assert occ.grid_size(32, 8, 3) == 9 and 8 * 3 + 8 == 32
  # Stride 5: corners 0..20; 25 would put the square past the border.
  assert occ.grid_size(32, 8, 5) == 5
  assert occ.grid_size(224, 50, 8) == 22  # The benchmark's 224-px map.
  assert occ.grid_size(32, 32, 4) == 1


def test_the_occluder_covers_exactly_its_box(params, image):
  maps = occ.occlusion(params, ARCH, image, 0, patch=8, stride=3)
  y0, x0, y1, x1 = maps.box(8, 2)
  assert (y0, x0, y1, x1) == (24, 6, 32, 14)
  out = np.asarray(occ.occlude(jnp.asarray(image), y0, x0, 8, fill=7.0))
  inside = np.zeros(image.shape, bool)
  inside[y0:y1, x0:x1] = True
  assert (out[inside] == 7.0).all()
  np.testing.assert_array_equal(out[~inside], image[~inside])


def test_unoccluded_values_and_feature_projection(params, image):
  maps = occ.occlusion(params, ARCH, image, 2, patch=4, stride=4)
  logits, trace = model.apply(params, jnp.asarray(image[None]), ARCH)
  assert float(maps.unoccluded_prob) == pytest.approx(float(jax.nn.softmax(logits)[0, 2]), 1e-5)
  top = ARCH.convs[-1].layer
  acts = trace.activations[top][0]
  assert float(maps.unoccluded_activity) == pytest.approx(
      float(acts[..., int(maps.feature)].sum()), rel=1e-5)
  assert float(acts[..., int(maps.feature)].max()) == pytest.approx(float(acts.max()))
  want = deconv.project(params, ARCH, trace, top, deconv.strongest(trace, top, maps.feature))[0]
  np.testing.assert_allclose(occ.feature_projection(params, ARCH, image, maps.feature), want,
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs,message", [
    (dict(patch=0, stride=1), r"patch must be in \[1, 32\] \(the image size\), got 0"),
    (dict(patch=33, stride=1), r"patch must be in \[1, 32\] \(the image size\), got 33"),
    (dict(patch=4, stride=0), "stride must be >= 1, got 0"),
    (dict(patch=4, stride=2, label=10), r"label 10 is not a class of arch 'zfnet_tiny' \(0..9\)"),
    (dict(patch=4, stride=2, image=np.zeros((28, 28, 3))),
     r"image of shape \(28, 28, 3\) does not fit arch 'zfnet_tiny': expected \(32, 32, 3\)"),
])
def test_bad_requests_are_one_line_errors(params, image, kwargs, message):
  kwargs = {"label": 1, "image": image, **kwargs}
  with pytest.raises(ValueError, match=message) as e:
    occ.occlusion(params, ARCH, kwargs.pop("image"), kwargs.pop("label"), **kwargs)
  assert "\n" not in str(e.value)


def test_occluding_the_garment_costs_more_than_occluding_the_background(fashion_run):
  """Fig. 7's claim, checkable: the classifier relies on the object, not its surroundings.

  Fashion-MNIST's background is black, so the neutral occluder is a black
  square (per-pixel fill -mean); the paper's grey would add a bright square
  to the black background, a feature of its own. On 40 test images of a model
  trained on Fashion-MNIST, the 10 px square where it covers the most garment
  pixels lowers the true class's probability more, on average and on most
  images, than where it covers the fewest (the most background).
  """
  workdir, _ = fashion_run
  src = source.open_source(workdir)
  data = source.load_examples(src, range(40))
  black = -src.mean_crop()
  pixels = source.display(src, data["image"]).mean(-1)  # 0..255, garments bright on black.
  on_object, on_background = [], []
  for image, label, px in zip(data["image"], data["label"], pixels):
    maps = occ.occlusion(src.params, src.arch, image, int(label), patch=10, stride=2, fill=black)
    n = maps.prob.shape[0]
    cover = np.zeros((n, n))
    for i in range(n):
      for j in range(n):
        y0, x0, y1, x1 = maps.box(i, j)
        cover[i, j] = np.mean(px[y0:y1, x0:x1] > 40)
    drop = np.asarray(maps.unoccluded_prob - maps.prob)
    on_object.append(drop.flat[cover.argmax()])
    on_background.append(drop.flat[cover.argmin()])
  on_object, on_background = np.array(on_object), np.array(on_background)
  assert on_object.mean() > on_background.mean() + 0.05, (on_object.mean(), on_background.mean())
  assert (on_object > on_background).mean() > 0.6, (on_object > on_background).mean()


def test_a_per_pixel_fill_occludes_with_those_values(params, image):
  fill = np.random.default_rng(3).normal(0, 9, (32, 32, 3)).astype(np.float32)
  out = np.asarray(occ.occlude(jnp.asarray(image), 4, 6, 5, jnp.asarray(fill)))
  np.testing.assert_array_equal(out[4:9, 6:11], fill[4:9, 6:11])
  maps = occ.occlusion(params, ARCH, image, 1, patch=5, stride=9, fill=fill)
  _, prob, _, _ = loop_reference(params, image, 1, 5, 9, fill)
  np.testing.assert_allclose(maps.prob, prob, rtol=1e-4, atol=1e-7)
  with pytest.raises(ValueError, match=r"fill of shape \(4, 4\) does not broadcast to the "
                                       r"image's \(32, 32, 3\)"):
    occ.occlusion(params, ARCH, image, 1, patch=5, stride=9, fill=np.zeros((4, 4)))
