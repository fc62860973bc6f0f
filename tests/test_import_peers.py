"""Imported weights compute what the published models compute (zf_jax.runs.imported).

Needs the `compare` extra (torch CPU build, torchvision, pytorchcv, captum; BUILD.md);
skipped without it. Their modules get random weights (random biases too, so that a
bias mix-up shows), are saved as a torch `.pth` state dict and as `.safetensors`,
imported into a workdir with the binary's own function, and opened as any run is.
"""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytest.importorskip("pytorchcv")
captum_attr = pytest.importorskip("captum.attr")
safetensors_torch = pytest.importorskip("safetensors.torch")

# pylint: disable=wrong-import-position
from pytorchcv.models import zfnet as pytorchcv_zfnet  # noqa: E402
from pytorchcv.models.common.conv import ConvBlock  # noqa: E402

from zf_jax import deconv, model  # noqa: E402
from zf_jax.runs import imported  # noqa: E402
from zf_jax.runs.workdir import Workdir  # noqa: E402

SOURCES = ("pytorchcv:zfnet", "pytorchcv:zfnetb", "torchvision:alexnet")
MEAN = np.asarray(imported.IMAGENET_MEAN, np.float32)
STD = np.asarray(imported.IMAGENET_STD, np.float32)


def their_module(name: str):
  torch.manual_seed(0)
  net = {"pytorchcv:zfnet": pytorchcv_zfnet.zfnet, "pytorchcv:zfnetb": pytorchcv_zfnet.zfnetb,
         "torchvision:alexnet": lambda: torchvision.models.alexnet(weights=None)}[name]()
  with torch.no_grad():
    for pname, p in net.named_parameters():
      if pname.endswith("bias"):
        p.uniform_(-0.05, 0.05)
  return net.eval()


def trunk(net, name: str, layer: int):
  """Their network up to conv layer `layer`'s output (after its pool), flattened NCHW."""
  if name == "torchvision:alexnet":
    return torch.nn.Sequential(net.features[:{1: 3, 2: 6, 3: 8, 4: 10, 5: 13}[layer]],
                               torch.nn.Flatten())
  stages = net.features
  parts = {1: [stages.stage1], 2: [stages.stage1, stages.stage2],
           3: [stages.stage1, stages.stage2, stages.stage3.unit1],
           4: [stages.stage1, stages.stage2, stages.stage3.unit1, stages.stage3.unit2],
           5: [stages.stage1, stages.stage2, stages.stage3]}[layer]
  return torch.nn.Sequential(*parts, torch.nn.Flatten())


def lrn_skipped_on_the_way_down(net):
  """Their LRN with the identity as backward: the deconvnet does not use contrast
  normalisation on the way down (ECCV text), Captum would differentiate it."""
  def forward(self, x):
    x = ConvBlock.forward(self, x)
    if self.use_lrn:
      x = x + (torch.nn.functional.local_response_norm(x, size=5, k=2.0) - x).detach()
    return x
  for module in net.modules():
    if hasattr(module, "use_lrn"):
      module.forward = types.MethodType(forward, module)
  return net


@pytest.fixture(scope="module", name="pixels")
def _pixels():
  return np.random.default_rng(0).uniform(0, 255, (2, 224, 224, 3)).astype(np.float32)


def theirs_input(pixels):
  return torch.from_numpy(((pixels / 255 - MEAN) / STD).transpose(0, 3, 1, 2).copy())


def ours_input(pixels):
  return jnp.asarray(pixels - 255 * MEAN)


@pytest.fixture(scope="module", name="imports", params=SOURCES)
def _imports(request, tmp_path_factory):
  name = request.param
  net = their_module(name)
  folder = tmp_path_factory.mktemp(name.replace(":", "_"))
  pth, st = folder / "weights.pth", folder / "weights.safetensors"
  torch.save(net.state_dict(), pth)
  safetensors_torch.save_file(net.state_dict(), str(st))
  wd = imported.import_weights(name, str(pth), str(folder / "run"))
  return name, net, Workdir(wd.path).open(), str(st)


def test_safetensors_and_pth_import_the_same_parameters(imports):
  name, _, run, st = imports
  _, params = imported.to_params(name, imported.read_tensors(st))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(run.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_our_logits_equal_theirs(imports, pixels):
  name, net, run, _ = imports
  assert run.arch.name == imported.source(name).arch and run.step == 0
  ours, _ = jax.jit(model.apply, static_argnames="arch")(run.params, ours_input(pixels),
                                                          arch=run.arch)
  with torch.no_grad():
    theirs = net(theirs_input(pixels)).numpy()
  scale = float(np.abs(theirs).max())
  np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-4, atol=2e-5 * scale)
  assert (np.asarray(ours).argmax(1) == theirs.argmax(1)).all()


@pytest.mark.parametrize("layer", [1, 3, 5])
def test_our_deconvnet_equals_captums_deconvolution_on_their_module(imports, pixels, layer):
  """Captum starts from a unit gradient at the target and differentiates w.r.t. their
  normalised input; we start from the activation and reach pixels minus the mean:
  ours = activation * theirs / (255 std) per channel."""
  name, net, run, _ = imports
  _, trace = model.apply(run.params, ours_input(pixels), run.arch)
  acts = np.asarray(trace.activations[layer])
  n, h, w, c = acts.shape
  flat = acts.reshape(n, -1).argmax(1)
  rows, cols, feats = np.unravel_index(flat, (h, w, c))
  units = (jnp.arange(n), jnp.asarray(rows), jnp.asarray(cols), jnp.asarray(feats))
  ours = np.asarray(deconv.project_units(run.params, run.arch, trace, layer, units))
  module = trunk(lrn_skipped_on_the_way_down(net), name, layer)
  targets = [int(f * h * w + r * w + q) for f, r, q in zip(feats, rows, cols)]
  with torch.no_grad():  # The same unit is their strongest too.
    out = module(theirs_input(pixels)).numpy()
  np.testing.assert_allclose(out[np.arange(n), targets], acts.reshape(n, -1).max(1), rtol=1e-4)
  with pytest.warns(UserWarning):  # Captum announces its ReLU hooks.
    grads = captum_attr.Deconvolution(module).attribute(
        theirs_input(pixels), target=targets).detach().numpy()
  theirs = grads.transpose(0, 2, 3, 1) / (255 * STD) * acts.reshape(n, -1).max(1)[:, None, None,
                                                                                  None]
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * float(np.abs(ours).max()))
