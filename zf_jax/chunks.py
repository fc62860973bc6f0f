"""Fixed-size chunks: padding the last one so that every chunk has one shape.

A jitted function compiles once per input shape. Work split into chunks (a
dataset in batches, feature maps, maskings, transformation amounts) would
compile twice when the last chunk is shorter, and compiling costs far more
than computing a few padded rows. So the last chunk is padded up to the
common size with rows that change nothing (zeros marked invalid, no-op
maskings, identity transforms, or copies of the last row), and the caller
keeps the first `n_valid` rows of each chunk's result.

Plain numpy: arrays go through unchanged apart from the padding.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

EDGE = "edge"  # `fill` that repeats the last row (as `np.pad`'s mode "edge").


def pad_to(x: Any, size: int, fill: Any = 0) -> Any:
  """`x` padded along its first axis to `size` rows.

  Args:
    x: an array, or a pytree (tuple, dict, ...) of arrays with the same
      first-axis length.
    size: the rows wanted; at least the rows of `x`.
    fill: the value of the added rows (a scalar, cast to each array's dtype),
      or `EDGE`: copies of the array's last row (then `x` must not be empty).

  Returns:
    The same structure of numpy arrays, each `size` rows long: its own rows
    first, then the padding. Arrays already `size` long come back as they are.

  Raises:
    ValueError: an array longer than `size`, or `EDGE` with an empty one.
  """
  edge = isinstance(fill, str) and fill == EDGE

  def one(a):
    a = np.asarray(a)
    n = len(a)
    if n > size:
      raise ValueError(f"cannot pad {n} rows to {size}: already longer")
    if n == size:
      return a
    if edge:
      if n == 0:
        raise ValueError("fill=EDGE repeats the last row: nothing to repeat in an empty array")
      tail = np.repeat(a[-1:], size - n, axis=0)
    else:
      tail = np.full((size - n,) + a.shape[1:], fill, a.dtype)
    return np.concatenate([a, tail])

  return jax.tree.map(one, x)


def padded_chunks(x: Any, size: int, fill: Any = 0) -> Iterator[tuple[Any, int]]:
  """Consecutive `size`-row chunks of `x`, the last one padded by `pad_to`: one shape for all.

  Args:
    x: an array, or a pytree of arrays with the same first-axis length N
      (chunked together: chunk i of every array holds the same rows).
    size: rows per chunk (>= 1).
    fill: as in `pad_to`.

  Yields:
    (chunk, n_valid): chunk i holds rows [i * size, i * size + n_valid) of
    `x` followed by `size - n_valid` padding rows. Every row of `x` lands in
    exactly one chunk, in order; nothing is yielded when N is 0.
  """
  if size < 1:
    raise ValueError(f"chunk size must be >= 1, got {size}")
  leaves = jax.tree.leaves(x)
  total = len(leaves[0]) if leaves else 0
  for start in range(0, total, size):
    part = jax.tree.map(lambda a: a[start:start + size], x)
    yield pad_to(part, size, fill), min(size, total - start)
