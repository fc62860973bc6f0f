"""Specifications of zf_jax.analyses.topk (Fig. 2): streaming top-k equals brute force;
projections and patches are the right ones."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zf_jax import arch as arch_lib
from zf_jax import deconv, model
from zf_jax.analyses import topk

ARCH = arch_lib.get("zfnet_tiny")
LAYERS = (1, 2, 5)


@pytest.fixture(scope="module", name="params")
def _params():
  return model.init(jax.random.key(0), ARCH, scheme="he")


@pytest.fixture(scope="module", name="images")
def _images():
  rng = np.random.default_rng(0)
  images = rng.normal(0, 64, (37, 32, 32, 3)).astype(np.float32)
  images[20] = images[3]  # An exact tie between two examples.
  return images


def brute_force(params, images, layer, k):
  """Per map: all (value, example, row, col) of per-image maxima, sorted by (-value, example)."""
  acts = np.asarray(model.apply(params, jnp.asarray(images), ARCH)[1].activations[layer])
  n, h, w, c = acts.shape
  flat = acts.reshape(n, h * w, c)
  where = flat.argmax(1)  # First maximum in row-major order.
  best = flat.max(1)
  out = {f: np.zeros((c, k), np.int64 if f != "value" else np.float32)
         for f in ("value", "index", "row", "col")}
  for m in range(c):
    order = sorted(range(n), key=lambda i: (-best[i, m], i))[:k]
    out["value"][m] = best[order, m]
    out["index"][m] = order
    out["row"][m] = where[order, m] // w
    out["col"][m] = where[order, m] % w
  return out


def stream(images, sizes, pad_to=None):
  """Batches of the given sizes, each padded with invalid rows up to `pad_to`."""
  start = 0
  for size in sizes:
    part = images[start:start + size]
    index = np.arange(start, start + size)
    valid = np.ones(size, bool)
    if pad_to:
      extra = pad_to - size
      part = np.concatenate([part, np.full((extra,) + part.shape[1:], 1e4, np.float32)])
      index = np.concatenate([index, np.full(extra, 999)])
      valid = np.concatenate([valid, np.zeros(extra, bool)])
    yield {"image": part, "index": index, "valid": valid}
    start += size


@pytest.mark.parametrize("sizes,pad_to", [((37,), None), ((8, 8, 8, 8, 5), 8), ((3, 30, 4), 30)])
def test_streaming_topk_equals_brute_force(params, images, sizes, pad_to):
  state = topk.over_batches(params, ARCH, stream(images, sizes, pad_to), LAYERS, k=9)
  for layer in LAYERS:
    want = brute_force(params, images, layer, 9)
    np.testing.assert_allclose(state.value[layer], want["value"], rtol=1e-5)
    for field in ("index", "row", "col"):
      np.testing.assert_array_equal(getattr(state, field)[layer], want[field], err_msg=field)


def test_padding_rows_never_enter_even_when_strongest(params, images):
  # The padded rows hold huge pixels (strongest activations) and must still be ignored.
  state = topk.over_batches(params, ARCH, stream(images[:5], (2, 3), pad_to=6), (1,), k=9)
  index = state.index[1]
  assert set(index[:, :5].ravel()) <= set(range(5))
  assert (index[:, 5:] == -1).all() and np.isneginf(state.value[1][:, 5:]).all()


def test_bad_layers_and_k_are_one_line_errors():
  with pytest.raises(ValueError, match=r"conv layers of 'zfnet_tiny' \(\[1, 2, 3, 4, 5\]\), "
                                       r"got \[6\]"):
    topk.init(ARCH, (6,))
  with pytest.raises(ValueError, match="k must be >= 1, got 0"):
    topk.init(ARCH, (1,), k=0)


def test_projections_start_from_each_kept_activation_with_its_own_switches(params, images):
  state = topk.over_batches(params, ARCH, stream(images, (37,)), (2,), k=3)
  maps = [0, 5, 7]
  chosen = images[state.index[2][maps]]  # (3 maps, 3 entries, H, W, 3)
  proj = topk.project_top(params, ARCH, state, 2, maps, chosen, chunk=2)
  assert proj.shape == (3, 3, 32, 32, 3)
  for a, m in enumerate(maps):
    for j in range(3):
      # The same projection, made directly: one image, its strongest activation of map m.
      _, trace = model.apply(params, jnp.asarray(chosen[a, j:j + 1]), ARCH)
      selection = deconv.strongest(trace, 2, m)
      assert float(selection.max()) == pytest.approx(float(state.value[2][m, j]), rel=1e-5)
      want = deconv.project(params, ARCH, trace, 2, selection)
      np.testing.assert_allclose(proj[a, j], np.asarray(want[0]), rtol=1e-4, atol=1e-5)


def test_patches_cut_the_receptive_field_and_fill_outside_the_image():
  size, stride, offset = arch_lib.receptive_field(ARCH, 2)
  image = np.arange(32 * 32 * 3, dtype=np.float32).reshape(32, 32, 3)
  rows, cols = np.array([0, 4, 7]), np.array([0, 3, 7])
  got = topk.patches(ARCH, 2, np.stack([image] * 3), rows, cols, fill=-1.0)
  assert got.shape == (3, size, size, 3)
  for p, r, c in zip(got, rows, cols):
    y0, x0 = r * stride - offset, c * stride - offset
    for dy in range(size):
      for dx in range(size):
        y, x = y0 + dy, x0 + dx
        want = image[y, x] if 0 <= y < 32 and 0 <= x < 32 else np.full(3, -1.0)
        np.testing.assert_array_equal(p[dy, dx], want)
  np.testing.assert_array_equal(topk.patch_boxes(ARCH, 2, rows, cols)[1],
                                [4 * stride - offset, 3 * stride - offset,
                                 4 * stride - offset + size, 3 * stride - offset + size])


def test_layer1_projection_lies_inside_the_patch(params, images):
  state = topk.over_batches(params, ARCH, stream(images, (37,)), (1,), k=2)
  maps = [1, 2]
  proj = topk.project_top(params, ARCH, state, 1, maps, images[state.index[1][maps]])
  boxes = topk.patch_boxes(ARCH, 1, state.row[1][maps], state.col[1][maps])
  for a in range(2):
    for j in range(2):
      y0, x0, y1, x1 = boxes[a, j]
      outside = np.abs(proj[a, j]).copy()
      outside[max(y0, 0):y1, max(x0, 0):x1] = 0
      assert np.abs(proj[a, j]).max() > 0 and outside.max() == 0
