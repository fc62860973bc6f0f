"""zf_jax.chunks: fixed-size chunks cover every item once, and only the padding is new."""

import numpy as np
import pytest

from zf_jax import chunks


@pytest.mark.parametrize("total, fill", [(t, f) for f in (-1, chunks.EDGE)
                                         for t in (0, 1, 6, 7, 12, 13) if t or f != chunks.EDGE])
def test_padded_chunks_cover_every_item_once_and_pad_with_the_fill(total, fill):
  size = 6
  x = np.arange(total, dtype=np.int32) * 10
  pairs = np.stack([x, x + 1], axis=1)  # A second array chunked along with x.
  seen = []
  got = list(chunks.padded_chunks({"x": x, "pairs": pairs}, size, fill=fill))
  assert len(got) == -(-total // size)
  for part, n_valid in got:
    assert part["x"].shape == (size,) and part["pairs"].shape == (size, 2)  # One shape.
    assert part["x"].dtype == x.dtype
    assert 1 <= n_valid <= size
    np.testing.assert_array_equal(part["pairs"][:, 0], part["x"])  # Rows stay aligned.
    seen.extend(part["x"][:n_valid].tolist())
    tail = part["x"][n_valid:]
    expected = part["x"][n_valid - 1] if fill == chunks.EDGE else fill
    assert (tail == expected).all()
  assert seen == x.tolist()  # Every item once, in order.


def test_pad_to_keeps_rows_and_casts_the_fill():
  x = np.array([[True, False]])
  out = chunks.pad_to(x, 3, fill=False)
  assert out.dtype == bool and out.shape == (3, 2)
  np.testing.assert_array_equal(out, [[True, False], [False, False], [False, False]])
  same = np.zeros((3, 2), np.float32)
  assert chunks.pad_to(same, 3) is same
  np.testing.assert_array_equal(chunks.pad_to(np.float32([2.0]), 3, fill=1.0), [2.0, 1.0, 1.0])


def test_pad_to_refuses_what_it_cannot_do():
  with pytest.raises(ValueError, match="longer"):
    chunks.pad_to(np.zeros(4), 3)
  with pytest.raises(ValueError, match="empty"):
    chunks.pad_to(np.zeros(0), 3, fill=chunks.EDGE)
  with pytest.raises(ValueError, match=">= 1"):
    next(chunks.padded_chunks(np.zeros(4), 0))
