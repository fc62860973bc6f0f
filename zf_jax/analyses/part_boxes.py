"""The parts file of Section 4.3's correspondence analysis: which images, which part boxes.

The paper masks the same parts (right eye, left eye, nose) in 5 frontal dog
images (Fig. 8). A parts file names such images of a tfds split and the
boxes of their parts, in pixels of the model's input crop (format:
`PARTS_FORMAT`); `builtin_parts` has one for the embedded Fashion-MNIST (5
frontal T-shirts, the two sleeves and the neck in the role of the eyes and
the nose). `zf_jax.analyses.correspondence` measures them.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

# Built-in parts files (in zf_jax/data/), by tfds dataset name.
BUILTIN_PARTS = {"fashion_mnist_debian": "fashion_mnist_debian_parts.json"}

PARTS_FORMAT = ('a JSON object {"image_size": S, "dataset": NAME, "split": NAME, "label": L, '
                '"images": [{"index": I, "parts": {"left_eye": [y0, x0, y1, x1], ...}, '
                '"object": [y0, x0, y1, x1]}, ...]} with boxes in pixels of the model\'s '
                'S x S input crop, rows y0..y1-1 and columns x0..x1-1 (dataset, split, label and '
                'object optional)')

_TOP_KEYS = {"image_size", "images", "dataset", "split", "label", "description"}
_IMAGE_KEYS = {"index", "parts", "object", "note"}


@dataclasses.dataclass(frozen=True, eq=False)
class PartBoxes:
  """The images of a correspondence experiment and the boxes of their parts (Fig. 8).

  indices: the N examples' positions in `split` of `dataset`.
  boxes: part name -> (N, 4) int [y0, x0, y1, x1] in pixels of the model's
    image_size x image_size input crop (rows y0..y1-1, columns x0..x1-1).
  objects: (N, 4) the box random parts are drawn in (default: whole image).
  dataset, split, label: what the file says the images are (None: unchecked).
  """
  indices: tuple[int, ...]
  boxes: dict[str, np.ndarray]
  objects: np.ndarray
  image_size: int
  dataset: str | None = None
  split: str | None = None
  label: int | None = None
  description: str = ""

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(self.boxes)

  def to_json(self) -> dict[str, Any]:
    """The parts-file object (`parse_parts(p.to_json())` gives `p` back)."""
    obj: dict[str, Any] = {"image_size": self.image_size}
    for key in ("dataset", "split", "label", "description"):
      if getattr(self, key) not in (None, ""):
        obj[key] = getattr(self, key)
    obj["images"] = [{"index": i, "parts": {p: b[k].tolist() for p, b in self.boxes.items()},
                      "object": self.objects[k].tolist()} for k, i in enumerate(self.indices)]
    return obj


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _box(value, size: int, where: str) -> np.ndarray:
  ok = (isinstance(value, list) and len(value) == 4 and all(_is_int(v) for v in value)
        and 0 <= value[0] < value[2] <= size and 0 <= value[1] < value[3] <= size)
  if not ok:
    raise ValueError(f"{where} = {json.dumps(value)} is not a box [y0, x0, y1, x1] with "
                     f"0 <= y0 < y1 <= {size} and 0 <= x0 < x1 <= {size}")
  return np.array(value, np.int64)


def parse_parts(obj: Any, where: str = "parts file") -> PartBoxes:
  """Validates a parts-file object (format: `PARTS_FORMAT`) and returns its `PartBoxes`.

  Every image must name the same parts (the same part is masked in every image,
  Section 4.3), at least 2 images (Delta compares pairs), distinct indices.

  Raises:
    ValueError: one line naming the bad entry and what is allowed.
  """
  if not isinstance(obj, dict):
    raise ValueError(f"{where}: expected {PARTS_FORMAT}; got a JSON {type(obj).__name__}")
  unknown = sorted(set(obj) - _TOP_KEYS)
  if unknown:
    raise ValueError(f"{where}: unknown key {unknown[0]!r}; allowed: "
                     f"{', '.join(sorted(_TOP_KEYS))}")
  size = obj.get("image_size")
  if not _is_int(size) or size < 1:
    raise ValueError(f"{where}: image_size must be a positive integer (the model's input "
                     f"crop), got {json.dumps(size)}")
  for key in ("dataset", "split", "description"):
    if key in obj and not isinstance(obj[key], str):
      raise ValueError(f"{where}: {key} must be a string, got {json.dumps(obj[key])}")
  label = obj.get("label")
  if label is not None and (not _is_int(label) or label < 0):
    raise ValueError(f"{where}: label must be a non-negative integer, got {json.dumps(label)}")
  images = obj.get("images")
  if not isinstance(images, list) or len(images) < 2:
    raise ValueError(f"{where}: images must be a list of at least 2 images (Delta compares "
                     f"pairs), got {json.dumps(images)[:80]}")
  indices, objects, boxes, names = [], [], {}, None
  for k, image in enumerate(images):
    at = f"{where}: images[{k}]"
    if not isinstance(image, dict):
      raise ValueError(f"{at} must be an object with 'index' and 'parts', got "
                       f"{json.dumps(image)[:80]}")
    unknown = sorted(set(image) - _IMAGE_KEYS)
    if unknown:
      raise ValueError(f"{at} has unknown key {unknown[0]!r}; allowed: "
                       f"{', '.join(sorted(_IMAGE_KEYS))}")
    if "index" not in image:
      raise ValueError(f"{at} has no 'index' (the example's position in the split)")
    index = image["index"]
    if not _is_int(index) or index < 0:
      raise ValueError(f"{at}.index must be a non-negative integer, got {json.dumps(index)}")
    if index in indices:
      raise ValueError(f"{at}.index {index} repeats images[{indices.index(index)}]; "
                       "each image may appear once")
    parts = image.get("parts")
    if not isinstance(parts, dict) or not parts:
      raise ValueError(f"{at}.parts must be a non-empty object of part name -> "
                       f"[y0, x0, y1, x1], got {json.dumps(parts)[:80]}")
    if names is None:
      names = list(parts)
    elif set(parts) != set(names):
      raise ValueError(f"{at} has parts {sorted(parts)} but images[0] has {sorted(names)}; "
                       "every image needs the same parts")
    for name in names:
      boxes.setdefault(name, []).append(_box(parts[name], size, f"{at}.parts[{name!r}]"))
    objects.append(_box(image["object"], size, f"{at}.object") if "object" in image
                   else np.array([0, 0, size, size], np.int64))
    indices.append(index)
  return PartBoxes(indices=tuple(indices), boxes={n: np.stack(b) for n, b in boxes.items()},
                   objects=np.stack(objects), image_size=size, dataset=obj.get("dataset"),
                   split=obj.get("split"), label=label, description=obj.get("description", ""))


def load_parts(path: str | os.PathLike) -> PartBoxes:
  """Reads and validates a parts file (JSON, see `PARTS_FORMAT`).

  Raises:
    FileNotFoundError: no such file. ValueError: not JSON, or not a valid parts file.
  """
  path = os.fspath(path)
  with open(path, encoding="utf-8") as f:
    text = f.read()
  try:
    obj = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"parts file {path} is not valid JSON: {e}") from None
  return parse_parts(obj, where=f"parts file {path}")


def builtin_parts_path(dataset: str) -> str | None:
  """The path of the parts file shipped for `dataset`, or None."""
  name = BUILTIN_PARTS.get(dataset)
  return str(importlib.resources.files("zf_jax").joinpath("data", name)) if name else None


def builtin_parts(dataset: str) -> PartBoxes:
  """The shipped parts of `dataset` (the embedded Fashion-MNIST's T-shirts).

  Raises:
    ValueError: none is shipped for `dataset`: the caller needs a parts file.
  """
  path = builtin_parts_path(dataset)
  if path is None:
    raise ValueError(f"no built-in part boxes for dataset {dataset!r} (only for "
                     f"{', '.join(BUILTIN_PARTS)}): pass --parts=FILE, {PARTS_FORMAT}")
  return load_parts(path)


def check_parts(parts: PartBoxes, *, dataset: str, split: str, image_size: int) -> None:
  """Checks that `parts` is for this dataset, split and model input size.

  Raises:
    ValueError: the first mismatch, in one line.
  """
  if parts.dataset is not None and parts.dataset != dataset:
    raise ValueError(f"the parts file is for dataset {parts.dataset!r}, not {dataset!r}")
  if parts.split is not None and parts.split != split:
    raise ValueError(f"the parts file is for split {parts.split!r}, not {split!r}: "
                     f"pass --split={parts.split}")
  if parts.image_size != image_size:
    raise ValueError(f"the parts file's boxes are for {parts.image_size} px crops but the "
                     f"model's input is {image_size} px")


def check_labels(parts: PartBoxes, labels: Sequence[int]) -> None:
  """Checks the loaded examples' labels against the file's `label` (if it has one).

  A mismatch means the indices point at other images than the boxes were drawn
  on (another split, or another order of it).

  Raises:
    ValueError: the first example with another label, in one line.
  """
  if parts.label is None:
    return
  for index, label in zip(parts.indices, labels):
    if int(label) != parts.label:
      raise ValueError(f"example {index} has label {int(label)}, the parts file says "
                       f"{parts.label}: is this the split the file was made for?")
