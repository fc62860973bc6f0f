"""Architectures: Fig. 3 shapes and parameter counts by `jax.eval_shape`, Table 3 ablations."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zf_jax import arch as arch_lib
from zf_jax import layers, model


def _param_count(arch):
  shapes = jax.eval_shape(lambda k: model.init(k, arch), jax.random.key(0))
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes))


def _layer_by_layer(arch, batch=2):
  """Conv output and pooled shapes, traced op by op with eval_shape (no compute)."""
  x = jax.ShapeDtypeStruct((batch, arch.image_size, arch.image_size, 3), jnp.float32)
  cin, out = 3, {}
  for c in arch.convs:
    w = jax.ShapeDtypeStruct((c.kernel, c.kernel, cin, c.features), jnp.float32)
    conv = jax.eval_shape(lambda x, w: layers.conv2d(x, w, None, c.stride, c.padding), x, w)
    x = conv
    if c.pool is not None:
      x, _ = jax.eval_shape(
          lambda v: layers.max_pool(v, c.pool.window, c.pool.stride, c.pool.padding), conv)
    out[c.layer] = (conv.shape[1:], x.shape[1:])
    cin = c.features
  return out


def test_zfnet_is_figure_3():
  zf = arch_lib.get("zfnet")
  assert _layer_by_layer(zf) == {
      1: ((110, 110, 96), (55, 55, 96)),
      2: ((26, 26, 256), (13, 13, 256)),
      3: ((13, 13, 384), (13, 13, 384)),
      4: ((13, 13, 384), (13, 13, 384)),
      5: ((13, 13, 256), (6, 6, 256)),
  }
  assert arch_lib.flat_features(zf) == 6 * 6 * 256 == 9216
  assert [(c.kernel, c.stride) for c in zf.convs] == [(7, 2), (5, 2), (3, 1), (3, 1), (3, 1)]
  assert [c.layer for c in zf.convs if c.norm] == [1, 2]
  assert [f.features for f in zf.fcs] == [4096, 4096] and zf.num_classes == 1000
  assert zf.dropout == 0.5


# The presets of published models have the counts their authors give (pytorchcv's zfnet.py
# asserts 62,357,608 and 107,627,624; torchvision's AlexNet has 61,100,840).
@pytest.mark.parametrize("name,count", [("zfnet", 62_357_608), ("alexnet", 62_378_344),
                                        ("zfnet_pytorchcv", 62_357_608),
                                        ("zfnet_wide_pytorchcv", 107_627_624),
                                        ("alexnet_torchvision", 61_100_840)])
def test_parameter_counts(name, count):
  arch = arch_lib.get(name)
  assert _param_count(arch) == count == arch_lib.num_params(arch)


@pytest.mark.parametrize("name", arch_lib.names())
def test_apply_shapes_agree_with_arithmetic(name):
  arch = arch_lib.get(name)
  params = jax.eval_shape(lambda k: model.init(k, arch), jax.random.key(0))
  images = jax.ShapeDtypeStruct((2, arch.image_size, arch.image_size, 3), jnp.float32)
  logits, trace = jax.eval_shape(lambda p, x: model.apply(p, x, arch), params, images)
  assert logits.shape == (2, arch.num_classes)
  by_op = _layer_by_layer(arch)
  shapes = arch_lib.feature_shapes(arch)
  for l in arch.conv_layers:
    assert trace.activations[l].shape == (2, *shapes[l]["out"]) == (2, *by_op[l][1])
    assert shapes[l]["conv"] == by_op[l][0]
  assert set(trace.switches) == {c.layer for c in arch.convs if c.pool}
  assert _param_count(arch) == arch_lib.num_params(arch)


def test_alexnet_and_wide_variant():
  alex = arch_lib.get("alexnet")
  assert (alex.convs[0].kernel, alex.convs[0].stride) == (11, 4)
  assert [c.features for c in alex.convs] == [96, 256, 384, 384, 256]
  assert _layer_by_layer(alex)[1] == ((55, 55, 96), (27, 27, 96))
  assert arch_lib.flat_features(alex) == 9216
  wide = arch_lib.get("zfnet_wide")  # Table 2 (b).
  assert [c.features for c in wide.convs] == [96, 256, 512, 1024, 512]
  assert _layer_by_layer(wide)[5][1] == (6, 6, 512)


def test_small_preset_keeps_the_paper_structure():
  for name in ("zfnet_small", "zfnet_tiny"):
    arch = arch_lib.get(name)
    assert arch.conv_layers == (1, 2, 3, 4, 5)
    assert [c.layer for c in arch.convs if c.pool] == [1, 2, 5]
    assert [c.layer for c in arch.convs if c.norm] == [1, 2]
    assert [f.layer for f in arch.fcs] == [6, 7] and arch.num_classes == 10


def test_arch_is_hashable_and_a_jit_static_argument():
  a, b = arch_lib.get("zfnet_tiny"), arch_lib.get("zfnet_tiny")
  assert a == b and hash(a) == hash(b)
  assert hash(arch_lib.ablate(a, remove=(3, 4))) != hash(a)
  f = jax.jit(lambda x, arch: x * arch.num_classes, static_argnums=1)
  assert f(jnp.ones(()), a) == 10
  with pytest.raises(dataclasses.FrozenInstanceError):
    a.num_classes = 3


# Table 3 rows (top: Krizhevsky et al.'s model; bottom: ours).
@pytest.mark.parametrize("kwargs,convs,fcs", [
    (dict(remove=(3, 4)), (1, 2, 5), ((6, 4096), (7, 4096))),
    (dict(remove=(7,)), (1, 2, 3, 4, 5), ((6, 4096),)),
    (dict(remove=(6, 7)), (1, 2, 3, 4, 5), ()),
    (dict(remove=(3, 4, 6, 7)), (1, 2, 5), ()),
    (dict(fc_features=2048), (1, 2, 3, 4, 5), ((6, 2048), (7, 2048))),
    (dict(fc_features=8192), (1, 2, 3, 4, 5), ((6, 8192), (7, 8192))),
    (dict(conv_features=(512, 1024, 512)), (1, 2, 3, 4, 5), ((6, 4096), (7, 4096))),
    (dict(fc_features=8192, conv_features=(512, 1024, 512)), (1, 2, 3, 4, 5),
     ((6, 8192), (7, 8192))),
])
@pytest.mark.parametrize("base", ["alexnet", "zfnet"])
def test_table3_ablations(base, kwargs, convs, fcs):
  arch = arch_lib.ablate(arch_lib.get(base), **kwargs)
  assert arch.conv_layers == convs
  assert tuple((f.layer, f.features) for f in arch.fcs) == fcs
  assert arch.name.startswith(base + "-")
  if "conv_features" in kwargs:
    assert [c.features for c in arch.convs][2:] == [512, 1024, 512]
  # Still a working model with a 6x6 top map; removed layers have no parameters.
  assert arch_lib.feature_shapes(arch)[5]["out"][:2] == (6, 6)
  params = jax.eval_shape(lambda k: model.init(k, arch), jax.random.key(0))
  assert set(params) == {f"conv{l}" for l in convs} | {f"fc{l}" for l, _ in fcs} | {"fc8"}
  assert _param_count(arch) == arch_lib.num_params(arch)


def test_removing_a_pooling_layer_keeps_its_pool():
  arch = arch_lib.ablate(arch_lib.get("zfnet"), remove=(5,))
  assert arch.conv_layers == (1, 2, 3, 4) and arch.convs[-1].pool is not None
  assert arch_lib.flat_features(arch) == 6 * 6 * 384


@pytest.mark.parametrize("kwargs,match", [
    (dict(remove=(1,)), "removable layers are 3, 4, 5, 6, 7"),
    (dict(remove=(2, 3)), "removable layers are 3, 4, 5, 6, 7"),
    (dict(remove=(9,)), "removable layers are"),
    (dict(conv_features=(512, 1024)), "needs 3 widths"),
    (dict(fc_features=0), "must be a positive int"),
    (dict(fc_features={5: 10}), "not one of the resizable layers"),
    (dict(conv_features=512), "conv_features needs widths"),
])
def test_invalid_ablations_say_what_is_allowed(kwargs, match):
  with pytest.raises(ValueError, match=match):
    arch_lib.ablate(arch_lib.get("zfnet"), **kwargs)


def test_removing_an_absent_layer_or_every_conv_layer_fails():
  no34 = arch_lib.ablate(arch_lib.get("zfnet"), remove=(3, 4))
  with pytest.raises(ValueError, match=r"has layers \[1, 2, 5, 6, 7\]"):
    arch_lib.ablate(no34, remove=(4,))
  with pytest.raises(ValueError, match="no conv layers"):
    dataclasses.replace(no34, convs=())


def test_get_and_with_classes():
  with pytest.raises(ValueError, match="unknown arch 'nope'; choose one of zfnet, alexnet"):
    arch_lib.get("nope")
  assert arch_lib.with_classes(arch_lib.get("zfnet"), 101).num_classes == 101
  with pytest.raises(ValueError, match="positive integer"):
    arch_lib.with_classes(arch_lib.get("zfnet"), 0)
  with pytest.raises(ValueError, match="at image_size 8: layer 2 shrinks a 1x1 input"):
    dataclasses.replace(arch_lib.get("zfnet"), image_size=8)


@pytest.mark.parametrize("name", ["zfnet", "alexnet", "zfnet_small"])
def test_receptive_field_bounds_the_support_of_a_units_gradient(name):
  """Layer 1 and 2 units: the input pixels that reach them, found by autodiff.

  With positive filters on a ramp image every pooling window's switch sits at
  its far corner (rising ramp) or near corner (falling ramp), so the gradient
  of one unit reaches exactly the last / first row of its receptive field.
  """
  arch = arch_lib.get(name)
  convs = tuple(dataclasses.replace(c, norm=None) for c in arch.convs[:2])
  arch = dataclasses.replace(arch, convs=convs, fcs=())  # Keep it cheap and monotone.
  params = jax.tree.map(lambda p: jnp.full_like(p, 0.01), model.init(jax.random.key(0), arch))
  s = arch.image_size
  ramp = jnp.add.outer(jnp.arange(s), jnp.arange(s)).astype(jnp.float32)
  for l in (1, 2):
    size, stride, offset = arch_lib.receptive_field(arch, l)
    h = arch_lib.feature_shapes(arch)[l]["out"][0]
    i = h // 2
    lo, hi = max(i * stride - offset, 0), min(i * stride - offset + size, s) - 1
    unit = lambda x: model.apply(params, x, arch)[1].activations[l][0, i, i, 0]
    for image, bound, reduce in ((ramp, hi, np.max), (2 * s - ramp, lo, np.min)):
      images = jnp.broadcast_to(image[None, :, :, None], (1, s, s, 3))
      grad = np.abs(np.asarray(jax.grad(unit)(images))[0]).sum(-1)
      support = np.argwhere(grad > 0)
      assert support.min() >= lo and support.max() <= hi
      assert reduce(support, 0).tolist() == [bound, bound]
