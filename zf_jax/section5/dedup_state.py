"""The state of a de-duplication search, saved so that a killed pass resumes (Section 5.2).

`zf_jax.section5.dedup.search` calls its `save` with a `SearchState` at chunk
boundaries; `save_state` / `load_state` keep it in one .npz, and
`resume_state` gives it back only to a search of the same request
(`request_key`: the request and the target images themselves).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zipfile
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from zf_jax.files import atomic_path

if TYPE_CHECKING:
  from zf_jax.section5.dedup import Request


@dataclasses.dataclass(frozen=True)
class SearchState:
  """A search after its first `num_source` source thumbnails: all it needs to go on.

  num_source: source thumbnails searched.
  position: where the source stream goes on from: the third item of the last
    batch searched plus one (e.g. records read, unreadable ones included), or
    `num_source` when the batches have no third item.
  best_corr, best_index: (M, k) the running top-k of every target.
  found: (n, 3) float64 rows (source index, target index, correlation): every
    pair at or above the threshold so far.
  ids: source index -> id, for the indices in `best_index` and `found` (the
    others are not needed again).
  """

  num_source: int
  position: int
  best_corr: np.ndarray
  best_index: np.ndarray
  found: np.ndarray
  ids: dict[int, str]


def save_state(path: str, state: SearchState, key: str) -> None:
  """Writes `state` and the `key` of its request to `path` (.npz), atomically."""
  index = np.array(sorted(state.ids), np.int64)
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      np.savez(f, key=np.array(key), num_source=state.num_source, position=state.position,
               best_corr=state.best_corr, best_index=state.best_index, found=state.found,
               id_index=index, id_value=np.array([state.ids[i] for i in index.tolist()], str))


def load_state(path: str) -> tuple[SearchState, str]:
  """(state, key) as `save_state` wrote them."""
  with np.load(path, allow_pickle=False) as z:
    state = SearchState(
        num_source=int(z["num_source"]), position=int(z["position"]),
        best_corr=z["best_corr"], best_index=z["best_index"], found=z["found"],
        ids=dict(zip(z["id_index"].tolist(), z["id_value"].tolist())))
    return state, str(z["key"])


def request_key(req: Request, data_dir: str | None, target_ids: Sequence[str],
                target_thumbs: np.ndarray) -> dict[str, Any]:
  """What a search's result depends on: the request and the target images themselves."""
  digest = hashlib.sha1(np.ascontiguousarray(target_thumbs, np.float32).tobytes())
  digest.update("\n".join(map(str, target_ids)).encode())
  return {"source": ":".join(req.source), "target": ":".join(req.target),
          "data_dir": os.path.abspath(os.path.expanduser(data_dir)) if data_dir else None,
          "threshold": req.threshold, "size": req.size, "chunk_size": req.chunk_size,
          "k": req.k, "target_images": digest.hexdigest()}


def resume_state(path: str, key: Mapping[str, Any], *, overwrite: bool = False,
                 say: Callable[[str], None] = print) -> SearchState | None:
  """The state saved at `path` by a search of the same `key`, or None to start afresh.

  A state that cannot be read is said and started over (it holds no result,
  only progress). A state of another key is not reused: with `overwrite` the
  search starts over (and replaces it), else a one-line ValueError names what
  differs.
  """
  if not os.path.exists(path):
    return None
  try:
    state, stored = load_state(path)
    stored = json.loads(stored)
  except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
    say(f"cannot read the saved search {path} ({type(e).__name__}); starting over")
    return None
  diff = [("the target images" if k == "target_images" else f"{k} {stored.get(k)} -> {v}")
          for k, v in key.items() if stored.get(k) != v]
  if not diff:
    return state
  if overwrite:
    say(f"starting over: {path} was the search of another request ({'; '.join(diff)})")
    return None
  raise ValueError(f"{os.path.dirname(path)} holds the search of another request "
                   f"({'; '.join(diff)}): pass --overwrite to start it again there, or choose "
                   "another --workdir")
