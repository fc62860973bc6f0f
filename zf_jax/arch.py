"""Architectures as frozen dataclasses: ZFNet (Fig. 3), AlexNet, Table 2/3 variants.

An `Arch` is hashable, so it can be a static argument of `jax.jit`. Layers
keep the paper's numbering (conv 1..5, fully connected 6 and 7, softmax 8)
even after an ablation removes some of them.

Inside a conv layer the order is conv -> relu -> max pool -> LRN (Fig. 3:
"(i) passed through a rectified linear function, (ii) pooled ... and (iii)
contrast normalized across feature maps"); the presets of published
ImageNet models (`zfnet_pytorchcv`, ...) may put the LRN before the pool.

Choices the paper leaves open, fixed here:

* Padding. Fig. 3 gives the map sizes 224 -> 110 -> 55 -> 26 -> 13 -> 13 ->
  13 -> 6. They follow from these explicit (lo, hi) paddings:
  conv1 7x7/2 pad (1, 1): floor((224 + 2 - 7) / 2) + 1 = 110 (the last padded
  row is never read, as in Caffe's ZF model); pool1 3x3/2 pad (0, 1):
  (110 + 1 - 3) / 2 + 1 = 55 (Caffe's "ceil" pooling); conv2 5x5/2 no pad:
  (55 - 5) / 2 + 1 = 26; pool2 3x3/2 pad (0, 1): 13; conv3-5 3x3/1 pad (1, 1):
  13; pool5 3x3/2 no pad: 6. Pool padding is -inf, so it never wins.
* LRN. The paper gives no constants. We use Krizhevsky et al. (2012)'s:
  n = 5, alpha = 1e-4 (per-sum), beta = 0.75, k = 2. Our `LRNSpec.alpha` is
  divided by `size` (the Caffe / torch convention of the public API), so
  alpha = 5e-4 here reproduces Krizhevsky's 1e-4 exactly.
* AlexNet at 224 px. Krizhevsky's 11x11/4 first layer needs 227 px without
  padding; with the 224 crops of this paper we pad 2 on each side
  (torchvision's convention): floor((224 + 4 - 11) / 4) + 1 = 55, then
  pool 27, conv2 5x5 pad 2, pool 13, conv3-5, pool 6: 6x6x256, like ZFNet.
  Its LRN follows the pool, the same order as ZFNet (the API's layer order).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

Padding = tuple[tuple[int, int], tuple[int, int]]

_TABLE3_REMOVABLE = (3, 4, 5, 6, 7)


def _pad(lo: int, hi: int | None = None) -> Padding:
  hi = lo if hi is None else hi
  return ((lo, hi), (lo, hi))


@dataclasses.dataclass(frozen=True)
class PoolSpec:
  """Max pooling: `window` x `window`, `stride`, -inf padding (lo, hi) per axis."""
  window: int
  stride: int
  padding: Padding = _pad(0)


@dataclasses.dataclass(frozen=True)
class LRNSpec:
  """Local response normalisation across channels (contrast normalisation, Fig. 3).

  b = a / (k + alpha / size * sum(a^2 over `size` neighbouring channels)) ** beta
  """
  size: int = 5
  alpha: float = 5e-4
  beta: float = 0.75
  k: float = 2.0


@dataclasses.dataclass(frozen=True)
class ConvSpec:
  """One conv layer: conv -> relu -> [max pool] -> [LRN], numbered as in the paper.

  `norm_before_pool`: conv -> relu -> LRN -> max pool instead, the order of
  Krizhevsky et al.'s code and of the pytorchcv models whose weights
  `zf_jax.runs.imported` reads (exact presets of those models need it).
  """
  layer: int
  features: int
  kernel: int
  stride: int = 1
  padding: Padding = _pad(0)
  pool: PoolSpec | None = None
  norm: LRNSpec | None = None
  norm_before_pool: bool = False


@dataclasses.dataclass(frozen=True)
class FCSpec:
  """One hidden fully connected layer (relu, dropout in training)."""
  layer: int
  features: int


@dataclasses.dataclass(frozen=True)
class Arch:
  """A whole convnet: conv layers, hidden fully connected layers, C-way softmax."""
  name: str
  image_size: int
  num_classes: int
  dropout: float
  convs: tuple[ConvSpec, ...]
  fcs: tuple[FCSpec, ...]

  def __post_init__(self):
    if not self.convs:
      raise ValueError(f"arch {self.name!r} has no conv layers; at least one is required")
    numbers = [c.layer for c in self.convs] + [f.layer for f in self.fcs]
    if numbers != sorted(set(numbers)):
      raise ValueError(f"arch {self.name!r}: layer numbers {numbers} must be strictly increasing")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"arch {self.name!r}: dropout {self.dropout} must be in [0, 1)")
    if self.num_classes < 1:
      raise ValueError(f"arch {self.name!r}: num_classes {self.num_classes} must be >= 1")
    feature_shapes(self)  # Raises if some map shrinks to nothing.

  @property
  def conv_layers(self) -> tuple[int, ...]:
    return tuple(c.layer for c in self.convs)

  def conv(self, layer: int) -> ConvSpec:
    """The `ConvSpec` of paper layer `layer`."""
    for c in self.convs:
      if c.layer == layer:
        return c
    raise ValueError(f"arch {self.name!r} has no conv layer {layer}; "
                     f"its conv layers are {list(self.conv_layers)}")


def _out_size(size: int, kernel: int, stride: int, pad: tuple[int, int]) -> int:
  return (size + pad[0] + pad[1] - kernel) // stride + 1


def feature_shapes(arch: Arch) -> dict[int, dict[str, tuple[int, int, int]]]:
  """Per conv layer: the (H, W, C) of its conv output ("conv") and after pooling ("out").

  "out" is the shape of `Trace.activations[layer]` for one image.
  """
  size, shapes = arch.image_size, {}
  for c in arch.convs:
    conv = _out_size(size, c.kernel, c.stride, c.padding[0])
    out = conv
    if c.pool is not None:
      out = _out_size(conv, c.pool.window, c.pool.stride, c.pool.padding[0])
    if conv < 1 or out < 1:
      raise ValueError(f"arch {arch.name!r} at image_size {arch.image_size}: layer {c.layer} "
                       f"shrinks a {size}x{size} input to {out}x{out}; use a larger "
                       "image_size or less stride")
    shapes[c.layer] = {"conv": (conv, conv, c.features), "out": (out, out, c.features)}
    size = out
  return shapes


def flat_features(arch: Arch) -> int:
  """Size of the top conv layer's output flattened (9216 = 6 * 6 * 256 for ZFNet)."""
  h, w, c = feature_shapes(arch)[arch.convs[-1].layer]["out"]
  return h * w * c


def receptive_field(arch: Arch, layer: int, *, pooled: bool = True) -> tuple[int, int, int]:
  """Receptive field of one unit of conv layer `layer` in input pixels.

  Returns (size, stride, offset): unit (i, j) of the layer's output (after its
  pool when `pooled`, else straight after the conv) sees input rows
  [i * stride - offset, i * stride - offset + size) and likewise for columns
  (before clipping to the image). Used to cut the image patches beside the
  deconvnet projections (Fig. 2).
  """
  size, jump, offset = 1, 1, 0
  for c in arch.convs:
    ops = [(c.kernel, c.stride, c.padding[0][0])]
    if c.pool is not None and (pooled or c.layer != layer):
      ops.append((c.pool.window, c.pool.stride, c.pool.padding[0][0]))
    for kernel, stride, pad_lo in ops:
      size += (kernel - 1) * jump
      offset += pad_lo * jump
      jump *= stride
    if c.layer == layer:
      return size, jump, offset
  raise ValueError(f"arch {arch.name!r} has no conv layer {layer}; "
                   f"its conv layers are {list(arch.conv_layers)}")


def num_params(arch: Arch) -> int:
  """Number of parameters (weights and biases) of `model.init(rng, arch)`."""
  total, cin = 0, 3
  for c in arch.convs:
    total += c.kernel * c.kernel * cin * c.features + c.features
    cin = c.features
  fin = flat_features(arch)
  for f in arch.fcs:
    total += fin * f.features + f.features
    fin = f.features
  return total + fin * arch.num_classes + arch.num_classes


_LRN = LRNSpec()
_POOL_PAD = PoolSpec(window=3, stride=2, padding=_pad(0, 1))
_POOL = PoolSpec(window=3, stride=2)


def _five_conv(name: str, image_size: int, num_classes: int, features: Sequence[int], fc: int,
               *, layer1: tuple[int, int, int], layer2: tuple[int, int, int],
               pool12: PoolSpec, pool5: PoolSpec | None) -> Arch:
  """Fig. 3's layout, which every preset shares: five conv layers, max pool and LRN after
  layers 1 and 2, max pool after 5, two hidden fc layers of `fc` units.

  layer1, layer2: (kernel, stride, padding) of the first two layers; layers 3-5 are
  3x3/1 with padding 1.
  """
  f1, f2, f3, f4, f5 = features
  (k1, s1, p1), (k2, s2, p2) = layer1, layer2
  return Arch(
      name=name, image_size=image_size, num_classes=num_classes, dropout=0.5,
      convs=(
          ConvSpec(1, f1, kernel=k1, stride=s1, padding=_pad(p1), pool=pool12, norm=_LRN),
          ConvSpec(2, f2, kernel=k2, stride=s2, padding=_pad(p2), pool=pool12, norm=_LRN),
          ConvSpec(3, f3, kernel=3, stride=1, padding=_pad(1)),
          ConvSpec(4, f4, kernel=3, stride=1, padding=_pad(1)),
          ConvSpec(5, f5, kernel=3, stride=1, padding=_pad(1), pool=pool5),
      ),
      fcs=(FCSpec(6, fc), FCSpec(7, fc)),
  )


def _zfnet(name="zfnet", conv_features=(96, 256, 384, 384, 256), fc=4096) -> Arch:
  """Fig. 3: 7x7/2 first-layer filters, 5x5/2 in layer 2 (maps 110, 55, 26, 13, 6)."""
  return _five_conv(name, 224, 1000, conv_features, fc, layer1=(7, 2, 1), layer2=(5, 2, 0),
                    pool12=_POOL_PAD, pool5=_POOL)


def _alexnet() -> Arch:
  """Krizhevsky et al. (2012) with dense connections: 11x11/4 first-layer filters."""
  return _five_conv("alexnet", 224, 1000, (96, 256, 384, 384, 256), 4096,
                    layer1=(11, 4, 2), layer2=(5, 1, 2), pool12=_POOL, pool5=_POOL)


def _small(name="zfnet_small", features=(32, 64, 96, 96, 64), fc=256, size=28) -> Arch:
  """ZFNet's structure for 28x28 Fashion-MNIST on a CPU, at the images' own size.

  Five conv layers, pools after 1, 2 and 5, LRN after 1 and 2, two hidden fc
  layers, as in Fig. 3; 5x5/1 first-layer filters because a 28 px image has
  no pixels to spare for ZFNet's 7x7/2. Maps: 28 -> 14 -> 7 -> 7 -> 7 -> 3.
  """
  return _five_conv(name, size, 10, features, fc, layer1=(5, 1, 2), layer2=(5, 1, 2),
                    pool12=_POOL_PAD, pool5=_POOL_PAD)


def _alexnet_small(name="alexnet_small", features=(32, 64, 96, 96, 64), fc=256,
                   size=28) -> Arch:
  """`zfnet_small`'s counterpart with Krizhevsky's first layers, the base of Table 3's
  small-scale removal rows.

  Fig. 3 changed AlexNet's first layer from 11x11/4 to 7x7/2 filters and made
  layer 2 strided instead; at 28 px the same contrast is 7x7/2 first-layer
  filters (pad 3) and a stride-1 layer 2 here, against `zfnet_small`'s 5x5/1
  in both. Maps: 28 -> 14 -> 7 (pool) -> 7 -> 3 (pool) -> 3 -> 3 -> 3. The
  top map is already 3x3 after layer 2's pool, so there is no pool after
  layer 5: the fc layers see 3x3x64, as in `zfnet_small`.
  """
  return _five_conv(name, size, 10, features, fc, layer1=(7, 2, 3), layer2=(5, 1, 2),
                    pool12=_POOL_PAD, pool5=None)


def _pytorchcv(name: str, conv_features: Sequence[int]) -> Arch:
  """pytorchcv's `zfnet` / `zfnetb` (ImageNet-trained weights exist for both), exactly.

  Their layout (pytorchcv/models/alexnet.py, which zfnet.py configures): the
  paper's filter sizes, strides and paddings, but the LRN right after the
  relu, before the pool, with torch's default alpha 1e-4 (ours: 5e-4) and
  k = 2, and "ceil mode" 3x3/2 pools, which are our (0, 1) -inf paddings for
  the 110 and 26 px maps and no padding for the 13 px one: the same windows.
  Maps 110, 55, 26, 13, 13, 13, 6 as in Fig. 3.
  """
  lrn = LRNSpec(size=5, alpha=1e-4, beta=0.75, k=2.0)
  arch = _zfnet(name, conv_features=conv_features)
  convs = tuple(dataclasses.replace(c, norm=lrn, norm_before_pool=True) if c.norm else c
                for c in arch.convs)
  return dataclasses.replace(arch, convs=convs)


def _alexnet_torchvision() -> Arch:
  """torchvision's `alexnet`, exactly: the single-GPU AlexNet of Krizhevsky's "One weird
  trick" (64-192-384-256-256 maps, 11x11/4 pad 2 first layer, no LRN, floor pools).

  Its adaptive 6x6 average pool is the identity on the 6x6 maps of a 224 px input.
  """
  return Arch(
      name="alexnet_torchvision", image_size=224, num_classes=1000, dropout=0.5,
      convs=(
          ConvSpec(1, 64, kernel=11, stride=4, padding=_pad(2), pool=_POOL),
          ConvSpec(2, 192, kernel=5, stride=1, padding=_pad(2), pool=_POOL),
          ConvSpec(3, 384, kernel=3, stride=1, padding=_pad(1)),
          ConvSpec(4, 256, kernel=3, stride=1, padding=_pad(1)),
          ConvSpec(5, 256, kernel=3, stride=1, padding=_pad(1), pool=_POOL),
      ),
      fcs=(FCSpec(6, 4096), FCSpec(7, 4096)),
  )


_PRESETS = {
    "zfnet": _zfnet,
    "alexnet": _alexnet,
    "zfnet_wide": lambda: _zfnet("zfnet_wide", conv_features=(96, 256, 512, 1024, 512)),
    "zfnet_small": _small,
    "alexnet_small": _alexnet_small,
    # For tests and quick experiments: same structure, a few maps per layer.
    "zfnet_tiny": lambda: _small("zfnet_tiny", features=(8, 12, 16, 16, 12), fc=32, size=32),
    "alexnet_tiny": lambda: _alexnet_small("alexnet_tiny", features=(8, 12, 16, 16, 12),
                                           fc=32, size=32),
    # Exact twins of published ImageNet models, for their weights (experiments.import_weights).
    "zfnet_pytorchcv": lambda: _pytorchcv("zfnet_pytorchcv", (96, 256, 384, 384, 256)),
    "zfnet_wide_pytorchcv": lambda: _pytorchcv("zfnet_wide_pytorchcv", (96, 256, 512, 1024, 512)),
    "alexnet_torchvision": _alexnet_torchvision,
}


def names() -> list[str]:
  """Names accepted by `get`."""
  return list(_PRESETS)


def get(name: str) -> Arch:
  """The preset architecture called `name` (see `names()`)."""
  try:
    return _PRESETS[name]()
  except KeyError:
    raise ValueError(f"unknown arch {name!r}; choose one of {', '.join(_PRESETS)}") from None


def with_classes(arch: Arch, n: int) -> Arch:
  """`arch` with an `n`-way softmax (e.g. 101 / 256 for Caltech, Section 5.2)."""
  if int(n) != n or n < 1:
    raise ValueError(f"number of classes must be a positive integer, got {n!r}")
  return dataclasses.replace(arch, num_classes=int(n))


def ablate(arch: Arch, remove: Sequence[int] = (),
           fc_features: int | Mapping[int, int] | None = None,
           conv_features: Sequence[int] | Mapping[int, int] | None = None) -> Arch:
  """The architecture edits of Table 3 (and Table 2 (b)).

  Args:
    arch: the architecture to edit.
    remove: paper layer numbers to remove, any of 3, 4, 5, 6, 7 (e.g. (3, 4),
      (7,), (6, 7), (3, 4, 6, 7)). Layers 1 and 2 carry the input stride and
      cannot be removed. Removing a conv layer that pools moves its pool to
      the conv layer below it (if that one has none), so the fc input keeps
      its size.
    fc_features: new width of the hidden fc layers: an int for all of them
      (Table 3: 2048 or 8192 units) or {layer: width}.
    conv_features: new widths of conv layers 3, 4, 5: a 3-sequence (Table 3:
      512, 1024, 512) or {layer: width}.

  Returns:
    The edited `Arch`, named after the edits.

  Raises:
    ValueError: for a layer that cannot be removed or does not exist, or a
      width that is not a positive integer.
  """
  remove = tuple(sorted({int(l) for l in remove}))
  existing = set(arch.conv_layers) | {f.layer for f in arch.fcs}
  for l in remove:
    if l not in _TABLE3_REMOVABLE:
      raise ValueError(f"cannot remove layer {l}: removable layers are "
                       f"{', '.join(map(str, _TABLE3_REMOVABLE))} (conv 3-5, fc 6-7)")
    if l not in existing:
      raise ValueError(f"cannot remove layer {l}: arch {arch.name!r} has layers "
                       f"{sorted(existing)}")
  convs = list(arch.convs)
  for l in remove:
    i = next((i for i, c in enumerate(convs) if c.layer == l), None)
    if i is None:
      continue
    if convs[i].pool is not None and i > 0 and convs[i - 1].pool is None:
      convs[i - 1] = dataclasses.replace(convs[i - 1], pool=convs[i].pool)
    del convs[i]
  if not convs:
    raise ValueError(f"cannot remove all conv layers of {arch.name!r}")
  fcs = [f for f in arch.fcs if f.layer not in remove]

  def widths(spec, allowed, what, seq_layers):
    if spec is None:
      return {}
    if isinstance(spec, Mapping):
      table = {int(k): v for k, v in spec.items()}
    elif isinstance(spec, int) and what == "fc":
      table = {l: spec for l in allowed}
    elif isinstance(spec, int):
      raise ValueError(f"conv_features needs widths for layers {seq_layers} "
                       f"(e.g. (512, 1024, 512)) or {{layer: width}}, got {spec!r}")
    else:
      spec = tuple(spec)
      if len(spec) != len(seq_layers):
        raise ValueError(f"{what}_features needs {len(seq_layers)} widths for layers "
                         f"{seq_layers}, got {spec!r}")
      table = dict(zip(seq_layers, spec))
    for l, n in table.items():
      if l not in allowed:
        raise ValueError(f"{what}_features: layer {l} is not one of the resizable layers "
                         f"{list(allowed)}")
      if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{what}_features: width {n!r} of layer {l} must be a positive int")
    return table

  fc_table = widths(fc_features, [f.layer for f in fcs], "fc", None)
  conv_table = widths(conv_features, [c.layer for c in convs if c.layer in (3, 4, 5)],
                      "conv", (3, 4, 5))
  convs = [dataclasses.replace(c, features=conv_table.get(c.layer, c.features)) for c in convs]
  fcs = [dataclasses.replace(f, features=fc_table.get(f.layer, f.features)) for f in fcs]

  parts = [arch.name]
  if remove:
    parts.append("remove" + ",".join(map(str, remove)))
  if fc_table:
    parts.append("fc" + ",".join(str(fc_table[l]) for l in sorted(fc_table)))
  if conv_table:
    parts.append("conv" + ",".join(str(conv_table[l]) for l in sorted(conv_table)))
  return dataclasses.replace(arch, name="-".join(parts), convs=tuple(convs), fcs=tuple(fcs))
