"""ImageNet-trained weights of published models, imported into a run's workdir.

Training ZFNet on ImageNet takes days; pytorchcv and torchvision publish
ImageNet-trained weights of the paper's model and its baseline:

  pytorchcv:zfnet        Fig. 3's ZFNet
  pytorchcv:zfnetb       the wide variant of Table 2 (b): 512, 1024, 512 maps in layers 3-5
  torchvision:alexnet    the single-GPU AlexNet (64-192-384-256-256 maps, no LRN)

`import_weights` reads such a file (a torch `.pth` state dict, opened with
torch's weights-only loader so that it can run no code, or a `.safetensors`
or `.npz` of the same named tensors, which need no torch) and writes a
workdir that everything reading runs opens unchanged: config.json (an exact
preset of the model, `zf_jax.arch`, and ImageNet's mean colour) and a
checkpoint at step 0. Section 4's binaries, the transfer binaries
(Section 5.2) and the notebook then look inside the real network.

The conversion is exact, not approximate:

* Filters: OIHW -> HWIO; fully connected (out, in) -> (in, out).
* Layer 6 reads the top conv maps flattened in NCHW order there, NHWC here:
  its rows are permuted.
* Input: they feed (pixel / 255 - mean) / std per channel; we feed
  pixel - 255 mean (the run's `mean_rgb`, Section 3's mean subtraction with a
  constant mean). Dividing conv1's filters by 255 std per input channel makes
  the two the same function; zero padding is the mean colour in both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping

import jax
import numpy as np

from zf_jax import arch as arch_lib
from zf_jax import model, train
from zf_jax.runs import workdir as workdir_lib
from zf_jax.runs.config import RunConfig

# torchvision's and pytorchcv's ImageNet normalisation (ToTensor, then Normalize).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FORMATS = (".pth", ".pt", ".safetensors", ".npz")


@dataclasses.dataclass(frozen=True)
class Source:
  """A published model: our exact preset and its tensor names, per paper layer."""
  name: str
  arch: str
  keys: Mapping[str, str]  # {"conv1": prefix of "<prefix>.weight" / "<prefix>.bias", ...}
  url: str  # Where the weights are published (users download them themselves).

  def tensor_names(self) -> list[str]:
    return [f"{prefix}.{kind}" for prefix in self.keys.values() for kind in ("weight", "bias")]


def _pytorchcv_keys() -> dict[str, str]:
  keys = {"conv1": "features.stage1.unit1.conv", "conv2": "features.stage2.unit1.conv"}
  keys.update({f"conv{l}": f"features.stage3.unit{l - 2}.conv" for l in (3, 4, 5)})
  keys.update({"fc6": "output.fc1.fc", "fc7": "output.fc2.fc", "fc8": "output.fc3"})
  return keys


# pytorchcv's model store (pytorchcv/models/common/model_store.py): a zip holding the .pth.
_PYTORCHCV_URL = "https://github.com/osmr/imgclsmob/releases/download/"
SOURCES = {
    "pytorchcv:zfnet": Source("pytorchcv:zfnet", "zfnet_pytorchcv", _pytorchcv_keys(),
                              _PYTORCHCV_URL + "v0.0.395/zfnet-1727-d010ddca.pth.zip"),
    "pytorchcv:zfnetb": Source("pytorchcv:zfnetb", "zfnet_wide_pytorchcv", _pytorchcv_keys(),
                               _PYTORCHCV_URL + "v0.0.400/zfnetb-1490-f6bec24e.pth.zip"),
    "torchvision:alexnet": Source(
        "torchvision:alexnet", "alexnet_torchvision",
        {"conv1": "features.0", "conv2": "features.3", "conv3": "features.6",
         "conv4": "features.8", "conv5": "features.10", "fc6": "classifier.1",
         "fc7": "classifier.4", "fc8": "classifier.6"},
        "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
}


def source(name: str) -> Source:
  try:
    return SOURCES[name]
  except KeyError:
    raise ValueError(f"unknown weight source {name!r}; choose one of "
                     f"{', '.join(SOURCES)}") from None


def expected_shapes(src: Source | str, num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
  """{tensor name: shape} of the source's state dict (torch layouts: OIHW, (out, in))."""
  src = source(src) if isinstance(src, str) else src
  arch = arch_lib.with_classes(arch_lib.get(src.arch), num_classes)
  ours = jax.eval_shape(lambda: model.init(jax.random.key(0), arch))  # HWIO, (in, out)
  out = {}
  for layer, prefix in src.keys.items():
    w = ours[layer]["w"].shape
    out[f"{prefix}.weight"] = (w[3], w[2], w[0], w[1]) if len(w) == 4 else (w[1], w[0])
    out[f"{prefix}.bias"] = ours[layer]["b"].shape
  return out


def read_tensors(path: str) -> dict[str, np.ndarray]:
  """The named tensors of a `.pth`/`.pt` (needs torch), `.safetensors` or `.npz` file.

  A `.pth` is opened with `torch.load(weights_only=True)`: a downloaded file
  must never run code when opened. `.npz` files are read without pickles.

  Raises:
    FileNotFoundError / ValueError: no such file, an unknown format, torch
      missing for a `.pth`, or a file that is not a flat dict of tensors (one line).
  """
  path = os.path.expanduser(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no weights file {path}")
  ext = os.path.splitext(path)[1].lower()
  if ext not in FORMATS:
    raise ValueError(f"weights file {path} has extension {ext or '(none)'!r}; "
                     f"allowed: {', '.join(FORMATS)}")
  if ext in (".pth", ".pt"):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ValueError(f"reading {path} needs torch (pip install torch, CPU build: see "
                       "BUILD.md), or convert it to .safetensors first (BUILD.md says how)"
                       ) from None
  try:
    if ext == ".safetensors":
      from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
      return dict(load_file(path))
    if ext == ".npz":
      with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except  # Each reader has errors of its own.
    raise ValueError(f"cannot read weights file {path}: {type(e).__name__}: "
                     f"{(str(e).splitlines() or [''])[0][:200]}") from None
  if not isinstance(state, Mapping) or not all(hasattr(v, "numpy") for v in state.values()):
    raise ValueError(f"{path} is not a state dict of tensors (a whole pickled model or a "
                     "training checkpoint? save model.state_dict() instead)")
  return {k: v.detach().cpu().float().numpy() for k, v in state.items()}


def check_tensors(src: Source, tensors: Mapping[str, np.ndarray]) -> int:
  """Checks names and shapes against `src`; returns the number of classes of its last layer.

  Raises:
    ValueError: a missing, extra or mis-shaped tensor, named in one line.
  """
  fc8 = f"{src.keys['fc8']}.bias"
  num_classes = int(np.shape(tensors[fc8])[0]) if fc8 in tensors else 1000
  if num_classes < 1:
    raise ValueError(f"tensor {fc8} is empty")
  expected = expected_shapes(src, num_classes)
  for name, shape in expected.items():
    if name not in tensors:
      raise ValueError(f"weights for {src.name} lack tensor {name!r} (shape {shape}); "
                       f"is this a {src.name} file?")
    got = tuple(np.shape(tensors[name]))
    if got != shape:
      raise ValueError(f"tensor {name!r} has shape {got}; {src.name} needs {shape}")
  extra = sorted(set(tensors) - set(expected))
  if extra:
    raise ValueError(f"weights for {src.name} hold unexpected tensor {extra[0]!r}"
                     + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
                     + f"; is this a {src.name} file?")
  return num_classes


def to_params(src: Source | str, tensors: Mapping[str, np.ndarray]) -> tuple[arch_lib.Arch, dict]:
  """(arch, params) of `zf_jax.model` equal to the source's network on `tensors`.

  Our parameters compute on pixel - 255 * IMAGENET_MEAN what theirs compute on
  (pixel / 255 - IMAGENET_MEAN) / IMAGENET_STD (see the module docstring).

  Raises:
    ValueError: a missing, extra or mis-shaped tensor (one line naming it).
  """
  src = source(src) if isinstance(src, str) else src
  num_classes = check_tensors(src, tensors)
  arch = arch_lib.with_classes(arch_lib.get(src.arch), num_classes)
  get = lambda layer, kind: np.asarray(tensors[f"{src.keys[layer]}.{kind}"], np.float32)
  params = {}
  for c in arch.convs:
    w = get(f"conv{c.layer}", "weight").transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if c.layer == arch.convs[0].layer:
      w = w / (255.0 * np.asarray(IMAGENET_STD, np.float32))[None, None, :, None]
    params[f"conv{c.layer}"] = {"w": w, "b": get(f"conv{c.layer}", "bias")}
  h, w_, ch = arch_lib.feature_shapes(arch)[arch.convs[-1].layer]["out"]
  for i, name in enumerate([f"fc{f.layer}" for f in arch.fcs] + ["fc8"]):
    weight = get(name, "weight")
    if i == 0:  # Their columns run over (c, h, w), our rows over (h, w, c).
      weight = weight.reshape(-1, ch, h, w_).transpose(0, 2, 3, 1).reshape(weight.shape[0], -1)
    params[name] = {"w": np.ascontiguousarray(weight.T), "b": get(name, "bias")}
  return arch, params


def from_params(src: Source | str, params: Mapping[str, Mapping[str, np.ndarray]]
                ) -> dict[str, np.ndarray]:
  """The inverse of `to_params`: the source's named tensors of our parameters.

  For exporting a run to torch (e.g. `safetensors.torch.load_file` into their
  module), and for the tests.
  """
  src = source(src) if isinstance(src, str) else src
  arch = arch_lib.with_classes(arch_lib.get(src.arch), int(np.shape(params["fc8"]["b"])[0]))
  out = {}
  for c in arch.convs:
    w = np.asarray(params[f"conv{c.layer}"]["w"], np.float32)
    if c.layer == arch.convs[0].layer:
      w = w * (255.0 * np.asarray(IMAGENET_STD, np.float32))[None, None, :, None]
    out[f"{src.keys[f'conv{c.layer}']}.weight"] = np.ascontiguousarray(w.transpose(3, 2, 0, 1))
    out[f"{src.keys[f'conv{c.layer}']}.bias"] = np.asarray(params[f"conv{c.layer}"]["b"])
  h, w_, ch = arch_lib.feature_shapes(arch)[arch.convs[-1].layer]["out"]
  for i, name in enumerate([f"fc{f.layer}" for f in arch.fcs] + ["fc8"]):
    weight = np.asarray(params[name]["w"], np.float32).T
    if i == 0:
      weight = weight.reshape(-1, h, w_, ch).transpose(0, 3, 1, 2).reshape(weight.shape[0], -1)
    out[f"{src.keys[name]}.weight"] = np.ascontiguousarray(weight)
    out[f"{src.keys[name]}.bias"] = np.asarray(params[name]["b"])
  return out


def run_config(src: Source | str, *, dataset: str = "imagenet2012",
               data_dir: str | None = None) -> RunConfig:
  """The RunConfig an imported workdir records: the exact preset, ImageNet's mean colour,
  Section 3's resize to 256 and centre crop of 224."""
  src = source(src) if isinstance(src, str) else src
  return RunConfig(arch=src.arch, dataset=dataset, data_dir=data_dir,
                   mean_rgb=tuple(round(255.0 * m, 4) for m in IMAGENET_MEAN),
                   resize_size=256, num_steps=0, final_eval_crops=("center",))


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def imported_from(workdir: str) -> dict | None:
  """What `import_weights` recorded in the workdir's config.json (source, file, sha256,
  where the weights are published), or None for a run that was trained."""
  path = workdir_lib.Workdir(workdir).file(workdir_lib.CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f).get("imported")


def import_weights(name: str, path: str, workdir: str, *, dataset: str = "imagenet2012",
                   data_dir: str | None = None) -> workdir_lib.Workdir:
  """Writes `workdir`: config.json and a step-0 checkpoint holding `path`'s weights.

  Args:
    name: one of `SOURCES` ("pytorchcv:zfnet", "pytorchcv:zfnetb", "torchvision:alexnet").
    path: the downloaded weights (.pth needs torch; .safetensors / .npz do not).
    workdir: a new folder (or an empty one): a workdir that already holds a
      run is never overwritten.
    dataset, data_dir: the dataset the run's config names (the Section 4
      binaries examine it by default; they take --dataset to look at another).

  Raises:
    ValueError / FileNotFoundError: bad source, file or workdir, or a missing,
      extra or mis-shaped tensor (one line).
  """
  src = source(name)
  wd = workdir_lib.Workdir(workdir)
  if os.path.isdir(wd.path) and os.listdir(wd.path):
    raise ValueError(f"workdir {wd.path} is not empty; import into a new folder (a run is "
                     "never overwritten)")
  tensors = read_tensors(path)
  arch, params = to_params(src, tensors)
  cfg = run_config(src, dataset=dataset, data_dir=data_dir)
  mesh = workdir_lib.one_device_mesh()
  state = train.create_train_state(jax.random.key(cfg.seed), arch, cfg.train, mesh)
  placed = jax.tree.map(lambda new, old: jax.device_put(new, old.sharding), params, state.params)
  state = state.replace(params=placed)
  wd.write_config(cfg, num_classes=arch.num_classes, steps_per_epoch=0, total_steps=0,
                  imported={"source": src.name, "file": os.path.abspath(path),
                            "sha256": _sha256(path), "published": src.url})
  with wd.checkpointer() as ckpt:
    ckpt.save(0, state, {"step": 0, "epoch": 0.0, "arch": arch.name,
                         "num_classes": arch.num_classes, "imported": src.name})
    ckpt.wait_until_finished()
  return wd
