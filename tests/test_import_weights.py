"""Importing published ImageNet weights (zf_jax.runs.imported, experiments.import_weights).

Without torch: files with the published models' exact tensor names and shapes
(written out below from their source code) import, open as a run, and mean
what their modules compute. tests/test_import_peers.py checks the same
against the modules themselves when the `compare` extra is installed.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.conftest import run_module
from zf_jax import layers, model
from zf_jax.report import multi
from zf_jax.runs import imported
from zf_jax.runs.workdir import Workdir

# pytorchcv/models/alexnet.py configured by zfnet.py ("a"): state_dict() names and shapes.
PYTORCHCV_ZFNET = {
    "features.stage1.unit1.conv.weight": (96, 3, 7, 7),
    "features.stage1.unit1.conv.bias": (96,),
    "features.stage2.unit1.conv.weight": (256, 96, 5, 5),
    "features.stage2.unit1.conv.bias": (256,),
    "features.stage3.unit1.conv.weight": (384, 256, 3, 3),
    "features.stage3.unit1.conv.bias": (384,),
    "features.stage3.unit2.conv.weight": (384, 384, 3, 3),
    "features.stage3.unit2.conv.bias": (384,),
    "features.stage3.unit3.conv.weight": (256, 384, 3, 3),
    "features.stage3.unit3.conv.bias": (256,),
    "output.fc1.fc.weight": (4096, 9216),
    "output.fc1.fc.bias": (4096,),
    "output.fc2.fc.weight": (4096, 4096),
    "output.fc2.fc.bias": (4096,),
    "output.fc3.weight": (1000, 4096),
    "output.fc3.bias": (1000,),
}
# torchvision/models/alexnet.py.
TORCHVISION_ALEXNET = {
    "features.0.weight": (64, 3, 11, 11), "features.0.bias": (64,),
    "features.3.weight": (192, 64, 5, 5), "features.3.bias": (192,),
    "features.6.weight": (384, 192, 3, 3), "features.6.bias": (384,),
    "features.8.weight": (256, 384, 3, 3), "features.8.bias": (256,),
    "features.10.weight": (256, 256, 3, 3), "features.10.bias": (256,),
    "classifier.1.weight": (4096, 9216), "classifier.1.bias": (4096,),
    "classifier.4.weight": (4096, 4096), "classifier.4.bias": (4096,),
    "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,),
}


def test_expected_names_and_shapes_are_the_published_ones():
  assert imported.expected_shapes("pytorchcv:zfnet") == PYTORCHCV_ZFNET
  assert imported.expected_shapes("torchvision:alexnet") == TORCHVISION_ALEXNET
  wide = dict(PYTORCHCV_ZFNET)
  wide.update({"features.stage3.unit1.conv.weight": (512, 256, 3, 3),
               "features.stage3.unit1.conv.bias": (512,),
               "features.stage3.unit2.conv.weight": (1024, 512, 3, 3),
               "features.stage3.unit2.conv.bias": (1024,),
               "features.stage3.unit3.conv.weight": (512, 1024, 3, 3),
               "features.stage3.unit3.conv.bias": (512,),
               "output.fc1.fc.weight": (4096, 6 * 6 * 512)})
  assert imported.expected_shapes("pytorchcv:zfnetb") == wide
  assert sum(np.prod(s) for s in wide.values()) == 107_627_624  # pytorchcv's own count.


@pytest.fixture(scope="module", name="zfnet_file")
def _zfnet_file(tmp_path_factory):
  """A .safetensors with pytorchcv zfnet's exact names and shapes, random values."""
  rng = np.random.default_rng(0)
  tensors = {k: rng.normal(0, 0.02, s).astype(np.float32) for k, s in PYTORCHCV_ZFNET.items()}
  path = tmp_path_factory.mktemp("weights") / "zfnet.safetensors"
  save_file(tensors, str(path))
  return str(path), tensors


@pytest.fixture(scope="module", name="zfnet_run")
def _zfnet_run(zfnet_file, tmp_path_factory):
  path, _ = zfnet_file
  workdir = tmp_path_factory.mktemp("imported") / "zfnet"
  out = run_module("experiments.import_weights", "--source=pytorchcv:zfnet", f"--file={path}",
                   f"--workdir={workdir}")
  assert out.returncode == 0, out.stderr[-3000:]
  return str(workdir), out


def test_the_binary_writes_a_run_every_reader_opens(zfnet_file, zfnet_run):
  path, tensors = zfnet_file
  workdir, out = zfnet_run
  assert "imported pytorchcv:zfnet" in out.stdout
  run = Workdir(workdir).open()
  assert run.arch.name == "zfnet_pytorchcv" and run.arch.num_classes == 1000 and run.step == 0
  assert run.config.mean_rgb == (123.675, 116.28, 103.53)
  _, params = imported.to_params("pytorchcv:zfnet", tensors)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(run.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The run's preprocessing subtracts ImageNet's mean colour, reading no dataset.
  mean = run.input_config()
  assert mean.mean_rgb == run.config.mean_rgb
  assert "Imported weights" in open(f"{workdir}/report.html", encoding="utf-8").read()
  page = open(multi.write([workdir], f"{workdir}_report"), encoding="utf-8").read()
  assert "imported weights (pytorchcv:zfnet)" in page and "not evaluated here" in page
  with pytest.raises(ValueError, match="is not empty; import into a new folder"):
    imported.import_weights("pytorchcv:zfnet", path, workdir)
  assert Workdir(workdir).steps() == [0]


def test_layer_1_folds_their_input_normalisation(zfnet_file):
  """Their conv1 on (pixel / 255 - mean) / std (NCHW, OIHW, computed here by lax directly)
  equals ours on pixel - 255 mean: the folded filters are the same function."""
  _, tensors = zfnet_file
  _, params = imported.to_params("pytorchcv:zfnet", tensors)
  pixels = np.random.default_rng(1).uniform(0, 255, (2, 224, 224, 3)).astype(np.float32)
  mean, std = np.asarray(imported.IMAGENET_MEAN), np.asarray(imported.IMAGENET_STD)
  theirs_in = ((pixels / 255 - mean) / std).astype(np.float32).transpose(0, 3, 1, 2)
  w, b = tensors["features.stage1.unit1.conv.weight"], tensors["features.stage1.unit1.conv.bias"]
  theirs = jax.lax.conv_general_dilated(theirs_in, w, (2, 2), ((1, 1), (1, 1)),
                                        dimension_numbers=("NCHW", "OIHW", "NCHW"))
  theirs = np.asarray(theirs).transpose(0, 2, 3, 1) + b
  ours = layers.conv2d(jnp.asarray(pixels - 255 * mean.astype(np.float32)),
                       params["conv1"]["w"], params["conv1"]["b"], 2, ((1, 1), (1, 1)))
  np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-4,
                             atol=1e-4 * float(np.abs(theirs).max()))


def test_layer_6_reads_their_channel_major_flattening(zfnet_file):
  """Their fc1 column c * 36 + h * 6 + w (NCHW flattening) is our fc6 row (h * 6 + w) * 256 + c."""
  _, tensors = zfnet_file
  _, params = imported.to_params("pytorchcv:zfnet", tensors)
  theirs, ours = tensors["output.fc1.fc.weight"], np.asarray(params["fc6"]["w"])
  rng = np.random.default_rng(2)
  for h, w, c, o in zip(*(rng.integers(0, n, 50) for n in (6, 6, 256, 4096))):
    assert ours[(h * 6 + w) * 256 + c, o] == theirs[o, c * 36 + h * 6 + w]
  features = np.asarray(jax.random.normal(jax.random.key(0), (1, 6, 6, 256)))
  np.testing.assert_allclose(
      np.asarray(model.fully_connected(params, jnp.asarray(features), _arch()).hidden[6]),
      np.maximum(features.transpose(0, 3, 1, 2).reshape(1, -1) @ theirs.T
                 + tensors["output.fc1.fc.bias"], 0), rtol=1e-4, atol=1e-4)


def _arch():
  from zf_jax import arch as arch_lib  # pylint: disable=g-import-not-at-top
  return arch_lib.get("zfnet_pytorchcv")


def test_export_is_the_inverse_of_import(zfnet_file):
  _, tensors = zfnet_file
  back = imported.from_params("pytorchcv:zfnet", imported.to_params("pytorchcv:zfnet",
                                                                    tensors)[1])
  assert set(back) == set(tensors)
  for k, v in tensors.items():
    np.testing.assert_allclose(back[k], v, rtol=1e-6, atol=1e-8)


def test_npz_holds_the_same_tensors(zfnet_file, tmp_path):
  _, tensors = zfnet_file
  small = {k: v for k, v in tensors.items() if "stage1" in k}
  np.savez(tmp_path / "w.npz", **small)
  read = imported.read_tensors(str(tmp_path / "w.npz"))
  assert set(read) == set(small)
  for k, v in small.items():
    np.testing.assert_array_equal(read[k], v)


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.pop("output.fc2.fc.bias"), "lack tensor 'output.fc2.fc.bias'"),
    (lambda t: t.update({"output.fc4.weight": np.zeros(3, np.float32)}),
     "unexpected tensor 'output.fc4.weight'"),
    (lambda t: t.update({"features.stage2.unit1.conv.weight": np.zeros((256, 96, 3, 3),
                                                                       np.float32)}),
     r"'features.stage2.unit1.conv.weight' has shape \(256, 96, 3, 3\); pytorchcv:zfnet needs "
     r"\(256, 96, 5, 5\)"),
])
def test_a_missing_extra_or_misshaped_tensor_is_named_in_one_line(zfnet_file, edit, message):
  _, tensors = zfnet_file
  tensors = dict(tensors)
  edit(tensors)
  with pytest.raises(ValueError, match=message) as e:
    imported.to_params("pytorchcv:zfnet", tensors)
  assert "\n" not in str(e.value)


def test_another_number_of_classes_is_read_from_the_last_layer(zfnet_file):
  _, tensors = zfnet_file
  tensors = dict(tensors)
  tensors["output.fc3.weight"] = tensors["output.fc3.weight"][:10]
  tensors["output.fc3.bias"] = tensors["output.fc3.bias"][:10]
  arch, params = imported.to_params("pytorchcv:zfnet", tensors)
  assert arch.num_classes == 10 and params["fc8"]["w"].shape == (4096, 10)


def test_bad_files_are_one_line_errors(zfnet_file, tmp_path):
  (tmp_path / "w.bin").write_bytes(b"x")
  (tmp_path / "w.safetensors").write_bytes(b"not a safetensors file")
  (tmp_path / "w.pth").write_bytes(b"not a torch file")
  cases = [("none.safetensors", FileNotFoundError, "no weights file"),
           ("w.bin", ValueError, "allowed: .pth, .pt, .safetensors, .npz"),
           ("w.safetensors", ValueError, "cannot read weights file"),
           # Without torch: "needs torch"; with it: torch cannot read it.
           ("w.pth", ValueError, "w.pth")]
  for name, error, message in cases:
    with pytest.raises(error, match=message) as e:
      imported.read_tensors(str(tmp_path / name))
    assert "\n" not in str(e.value)
  path, _ = zfnet_file
  out = run_module("experiments.import_weights", "--source=torchvision:alexnet",
                   f"--file={path}", f"--workdir={tmp_path}/run")
  assert out.returncode == 2 and "lack tensor 'features.0.weight'" in out.stderr, out.stderr
  assert len(out.stderr.strip().splitlines()) == 1, out.stderr
  assert not (tmp_path / "run").exists()  # Nothing written for a wrong file.
