"""Specifications of zf_jax.data.input_pipeline (Section 3 preprocessing, hosts, resume).

No download: datasets are tfds' mock data, or a tiny in-memory dataset served
through `tfds.testing.mock_data(as_dataset_fn=...)` that honours split slicing
(so per-host shards are real) and lets a test plant gray or corrupt images.
"""

import contextlib
import io
import types

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from zf_jax.data import input_pipeline as ip

SMALL = dict(resize_size=12, image_size=8)  # Same code paths as 256/224, far cheaper.


def png(array: np.ndarray) -> bytes:
  return tf.io.encode_png(array).numpy()


def random_image(rng, height, width, channels=3) -> np.ndarray:
  return rng.integers(0, 256, (height, width, channels), dtype=np.uint8)


@contextlib.contextmanager
def fake_tfds(splits: dict[str, list[tuple[bytes, int]]]):
  """Serves `splits` ({name: [(encoded image, label)]}) as `imagenet2012`, slicing included."""

  def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
    del self, read_config, shuffle_files
    instruction = tfds.core.ReadInstruction.from_spec(split) if isinstance(split, str) else split
    infos = {k: types.SimpleNamespace(num_examples=len(v), shard_lengths=[len(v)])
             for k, v in splits.items()}
    (absolute,) = instruction.to_absolute(infos)
    examples = splits[absolute.splitname][absolute.from_ or 0:absolute.to]
    ds = tf.data.Dataset.from_tensor_slices({
        "image": tf.constant([image for image, _ in examples], tf.string),
        "label": tf.constant([label for _, label in examples], tf.int64),
        "file_name": tf.constant([f"{i}.png" for i in range(len(examples))]),
    })
    assert decoders is not None, "the pipeline decodes images itself"
    return ds

  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    yield


@pytest.fixture(name="ids")
def _ids():
  """train: 10 images with labels 0..9; validation: 11 images with labels 100..110."""
  rng = np.random.default_rng(0)
  train = [(png(random_image(rng, 5 + i, 9 - i % 3)), i) for i in range(10)]
  validation = [(png(random_image(rng, 7, 6 + i)), 100 + i) for i in range(11)]
  with fake_tfds({"train": train, "validation": validation}):
    yield {"train": train, "validation": validation}


def base_image(encoded: bytes, resize_size: int) -> np.ndarray:
  return ip.resize_center(ip.decode_rgb(tf.constant(encoded)), resize_size).numpy()


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_one_line(excinfo):
  message = str(excinfo.value)
  assert message and "\n" not in message, message


def test_ten_crops_are_the_corner_centre_and_mirrored_crops():
  x = np.arange(7 * 9 * 2).reshape(7, 9, 2)
  corners_and_centre = [x[0:4, 0:4], x[0:4, 5:9], x[3:7, 0:4], x[3:7, 5:9], x[1:5, 2:6]]
  expected = np.stack(corners_and_centre + [c[:, ::-1] for c in corners_and_centre])
  np.testing.assert_array_equal(ip.ten_crops(x, 4), expected)
  np.testing.assert_array_equal(ip.ten_crops(tf.constant(x), 4).numpy(), expected)
  np.testing.assert_array_equal(ip.ten_crops(np.stack([x, x + 1]), 4)[1], expected + 1)


def test_resize_center_keeps_the_central_square_and_resizes_small_images_up():
  wide = np.full((20, 30, 3), 255, np.uint8)
  wide[:, 5:25] = 0  # Only the borders that the centre crop removes are bright.
  out = ip.resize_center(tf.constant(wide), 256).numpy()
  assert out.shape == (256, 256, 3) and out.dtype == np.float32
  np.testing.assert_allclose(out, 0.0, atol=1e-4)
  np.testing.assert_allclose(ip.resize_center(tf.constant(wide.transpose(1, 0, 2)), 256), 0.0,
                             atol=1e-4)
  np.testing.assert_allclose(ip.resize_center(tf.fill([5, 3, 3], np.uint8(100)), 16), 100.0,
                             atol=1e-3)


def test_decode_rgb_makes_gray_three_identical_channels_and_cmyk_rgb():
  gray = np.arange(30, dtype=np.uint8).reshape(5, 6, 1) * 8
  for image in (png(gray), gray, gray[..., 0]):
    rgb = ip.decode_rgb(tf.constant(image)).numpy()
    assert rgb.shape == (5, 6, 3) and rgb.dtype == np.uint8
    for channel in range(3):
      np.testing.assert_array_equal(rgb[..., channel], gray[..., 0])
  rgba = np.concatenate([gray, gray, gray, np.full_like(gray, 7)], axis=-1)
  np.testing.assert_array_equal(ip.decode_rgb(tf.constant(png(rgba))).numpy(), rgba[..., :3])
  image_lib = pytest.importorskip("PIL.Image")
  buffer = io.BytesIO()
  image_lib.new("CMYK", (8, 6), (0, 255, 255, 0)).save(buffer, "JPEG", quality=95)  # Pure red.
  red = ip.decode_rgb(tf.constant(buffer.getvalue())).numpy()
  assert red.shape == (6, 8, 3)
  np.testing.assert_allclose(red[2, 3], [255, 0, 0], atol=8)


def test_corrupt_images_are_skipped_and_counted():
  rng = np.random.default_rng(1)
  jpeg = tf.io.encode_jpeg(random_image(rng, 9, 9)).numpy()
  good = [(png(random_image(rng, 6, 7)), i) for i in range(6)]
  data = list(good)
  data[2] = (b"not an image", 2)
  data[4] = (jpeg[:len(jpeg) // 2], 4)  # Valid header, truncated body.
  cfg = ip.InputConfig(global_batch_size=6, **SMALL)
  zeros = np.zeros((12, 12, 3), np.float32)
  with fake_tfds({"train": data, "validation": data}):
    batches = ip.make_eval_iterator(cfg, process_index=0, process_count=1, mean=zeros)
    (batch,) = list(batches)
    assert batch["mask"].sum() == 4 and batches.num_skipped == 2
    assert sorted(batch["label"][batch["mask"] == 1]) == [0, 1, 3, 5]
    train = ip.make_train_iterator(cfg, process_index=0, process_count=1, mean=zeros)
    for batch in take(train, 2):  # All 6 records every epoch: the holes are refilled.
      assert batch["image"].shape == (6, 8, 8, 3)
      assert set(batch["label"]) == {0, 1, 3, 5}
    assert train.num_skipped == 4


def test_mock_imagenet_train_batch_is_224_mean_subtracted(tmp_path):
  cfg = ip.InputConfig(data_dir=str(tmp_path), global_batch_size=4)
  with tfds.testing.mock_data(num_examples=8):  # Random sizes 5..49: resized up to 256.
    info = ip.dataset_info(cfg)
    assert (info.num_classes, info.num_train, info.steps_per_epoch) == (1000, 8, 2)
    batches = take(ip.make_train_iterator(cfg, process_index=0, process_count=1), 2)
  assert (tmp_path / "zf_jax_mean" / "imagenet2012-train-256.npy").exists()
  for batch in batches:
    assert batch["image"].shape == (4, 224, 224, 3) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32
    assert np.all((0 <= batch["label"]) & (batch["label"] < 1000))
    assert np.abs(batch["image"]).max() <= 255.0
  # Raw pixels average ~127; with the mean image removed the epoch averages ~0.
  assert abs(np.mean([b["image"].mean() for b in batches])) < 10.0


def test_mock_fashion_mnist_gray_images_become_identical_rgb_channels(tmp_path):
  cfg = ip.InputConfig(dataset="fashion_mnist", data_dir=str(tmp_path), global_batch_size=4,
                       resize_size=32, image_size=28)
  with tfds.testing.mock_data(num_examples=4):
    (batch,) = take(ip.make_train_iterator(cfg, process_index=0, process_count=1), 1)
  image = batch["image"]
  assert image.shape == (4, 28, 28, 3)
  np.testing.assert_array_equal(image[..., 0], image[..., 1])
  np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_mean_image_is_the_average_of_resized_images_and_is_cached(ids, tmp_path):
  cfg = ip.InputConfig(data_dir=str(tmp_path), **SMALL)
  expected = np.mean([base_image(image, 12) for image, _ in ids["train"]], axis=0)
  np.testing.assert_allclose(ip.compute_mean_image(cfg), expected, atol=1e-3)
  first3 = np.mean([base_image(image, 12) for image, _ in ids["train"][:3]], axis=0)
  np.testing.assert_allclose(ip.load_or_compute_mean_image(cfg, max_examples=3), first3, atol=1e-3)
  path = ip.mean_image_path(cfg)
  assert path == str(tmp_path / "zf_jax_mean" / "imagenet2012-train-12.npy")
  ip.load_or_compute_mean_image(cfg)
  np.save(path, np.full((12, 12, 3), 7.0, np.float32))
  np.testing.assert_array_equal(ip.load_or_compute_mean_image(cfg), 7.0)  # Reused, not redone.


@pytest.mark.parametrize("crops", ["ten", "random", "center"])
def test_train_crops_are_sub_crops_of_the_mean_subtracted_image(ids, crops):
  mean = np.random.default_rng(2).uniform(0, 255, (12, 12, 3)).astype(np.float32)
  cfg = ip.InputConfig(global_batch_size=5, train_crops=crops, **SMALL)
  iterator = ip.make_train_iterator(cfg, process_index=0, process_count=1, mean=mean)
  chosen = set()
  for batch in take(iterator, 4):
    for image, label in zip(batch["image"], batch["label"]):
      base = base_image(ids["train"][label][0], 12) - mean
      if crops == "ten":
        candidates = ip.ten_crops(base, 8)
      elif crops == "center":
        candidates = ip.ten_crops(base, 8)[4:5]
      else:
        candidates = np.stack([c for y in range(5) for x in range(5)
                               for c in (base[y:y + 8, x:x + 8], base[y:y + 8, x:x + 8][:, ::-1])])
      match = np.flatnonzero(np.abs(candidates - image).max(axis=(1, 2, 3)) < 1e-3)
      assert match.size, f"example {label} is not one of the allowed crops"
      chosen.add(int(match[0]))
  # The crop is drawn per example, not fixed (except the centre crop).
  assert len(chosen) == 1 if crops == "center" else len(chosen) > 3


def test_same_seed_gives_identical_batches_and_another_seed_differs(ids):
  del ids
  cfg = ip.InputConfig(global_batch_size=4, **SMALL)
  zeros = np.zeros((12, 12, 3), np.float32)
  run = lambda c: take(ip.make_train_iterator(c, process_index=0, process_count=1, mean=zeros), 3)
  first, again = run(cfg), run(cfg)
  other = run(ip.InputConfig(global_batch_size=4, seed=1, **SMALL))
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert any(not np.array_equal(a["image"], c["image"]) for a, c in zip(first, other))


@pytest.mark.parametrize("crops", ["ten", "random"])
def test_start_step_resumes_exactly_across_epoch_boundaries(ids, crops):
  del ids
  cfg = ip.InputConfig(global_batch_size=4, train_crops=crops, **SMALL)  # 2 steps per epoch.
  zeros = np.zeros((12, 12, 3), np.float32)
  make = lambda step: ip.make_train_iterator(cfg, start_step=step, process_index=0,
                                             process_count=1, mean=zeros)
  fresh = take(make(0), 7)
  epoch_labels = [np.concatenate([b["label"] for b in fresh[e:e + 2]]) for e in (0, 2, 4)]
  assert not all(np.array_equal(epoch_labels[0], e) for e in epoch_labels[1:])  # Reshuffled.
  for step in (1, 2, 3, 5):
    for want, got in zip(fresh[step:step + 2], take(make(step), 2)):
      np.testing.assert_array_equal(got["image"], want["image"])
      np.testing.assert_array_equal(got["label"], want["label"])


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_counts_every_example_once_on_every_host(ids, process_count):
  cfg = ip.InputConfig(global_batch_size=4, **SMALL)
  zeros = np.zeros((12, 12, 3), np.float32)
  num_batches = ip.num_eval_batches(cfg, process_count=process_count)
  assert num_batches == {1: 3, 2: 3}[process_count]  # 11 examples: 3x4, or 6 and 5 by 2.
  shards = []
  for process in range(process_count):
    batches = list(ip.make_eval_iterator(cfg, process_index=process, process_count=process_count,
                                         mean=zeros))
    assert len(batches) == num_batches
    assert all(b["image"].shape == (4 // process_count, 8, 8, 3) for b in batches)
    shards.append([int(l) for b in batches for l, m in zip(b["label"], b["mask"]) if m])
  assert sorted(sum(shards, [])) == [label for _, label in ids["validation"]]
  if process_count == 2:
    assert not set(shards[0]) & set(shards[1])


def test_train_hosts_read_disjoint_shards(ids):
  del ids
  cfg = ip.InputConfig(global_batch_size=4, **SMALL)
  zeros = np.zeros((12, 12, 3), np.float32)
  epoch = [np.concatenate([b["label"] for b in take(
      ip.make_train_iterator(cfg, process_index=p, process_count=2, mean=zeros), 2)])
           for p in (0, 1)]
  assert all(len(e) == 4 and len(set(e)) == 4 for e in epoch)
  assert not set(epoch[0]) & set(epoch[1])


def test_eval_ten_crops_stack_in_the_paper_order(ids):
  del ids
  cfg = ip.InputConfig(global_batch_size=4, **SMALL)
  mean = np.random.default_rng(3).uniform(0, 255, (12, 12, 3)).astype(np.float32)
  ten = next(ip.make_eval_iterator(cfg, crops="ten", process_index=0, process_count=1, mean=mean))
  center = next(ip.make_eval_iterator(cfg, process_index=0, process_count=1, mean=mean))
  assert ten["image"].shape == (4, 10, 8, 8, 3)
  np.testing.assert_allclose(ten["image"][:, 4], center["image"], atol=1e-5)
  np.testing.assert_array_equal(ten["image"][:, 5], ten["image"][:, 0, :, ::-1])
  np.testing.assert_array_equal(ten["label"], center["label"])


def test_bad_inputs_raise_one_line_errors(tmp_path):
  with pytest.raises(ValueError, match="train_crops") as excinfo:
    ip.InputConfig(train_crops="five")
  assert_one_line(excinfo)
  cfg = ip.InputConfig(global_batch_size=5, data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="crops") as excinfo:
    ip.make_eval_iterator(cfg, crops="five", process_index=0, process_count=1)
  assert_one_line(excinfo)
  with pytest.raises(ValueError, match="not divisible by process_count=2") as excinfo:
    ip.make_train_iterator(cfg, process_index=0, process_count=2)
  assert_one_line(excinfo)
  with pytest.raises(ValueError, match="unknown tfds dataset") as excinfo:
    ip.dataset_info(ip.InputConfig(dataset="no_such_dataset_zf", data_dir=str(tmp_path)))
  assert_one_line(excinfo)
  with pytest.raises(FileNotFoundError, match="ILSVRC2012_img_train.tar") as excinfo:
    ip.dataset_info(ip.InputConfig(data_dir=str(tmp_path)))  # Real tfds, no manual download.
  assert_one_line(excinfo)
  assert str(tmp_path / "downloads" / "manual") in str(excinfo.value)


# --- Record selection: classes, id lists (Section 5.2's transfer and de-duplication) ---------


def _labels_and_ids(batches) -> tuple[list[int], list[bytes]]:
  labels, ids = [], []
  for b in batches:
    keep = b["mask"] > 0
    labels += b["label"][keep].tolist()
    ids += b["id"][keep].tolist()
  return labels, ids


def test_classes_keep_only_the_chosen_labels_relabelled_in_their_order(ids):
  cfg = ip.InputConfig(global_batch_size=2, classes=(7, 2, 5), **SMALL)
  zeros = np.zeros((12, 12, 3), np.float32)
  info = ip.dataset_info(cfg, process_count=1)
  assert (info.num_classes, info.num_train) == (3, 3)
  assert info.steps_per_epoch == 1  # 3 images, batch 2: the remainder is dropped.
  labels, names = _labels_and_ids(ip.make_eval_iterator(cfg, split="train", mean=zeros,
                                                        with_ids=True, process_count=1))
  # Train labels are 0..9 in order: 2 -> 1, 5 -> 2, 7 -> 0; the other 7 images are gone.
  assert labels == [1, 2, 0]
  assert names == [b"train__2", b"train__5", b"train__7"]
  for batch in ip.make_train_iterator(cfg, mean=zeros, process_count=1):
    assert set(batch["label"].tolist()) <= {0, 1, 2}
    break
  assert ip.split_info(cfg, "train").class_names == tuple(
      tfds.builder("imagenet2012").info.features["label"].names[c] for c in (7, 2, 5))
  with pytest.raises(ValueError, match="imagenet2012 has no class 1000; its labels are 0..999"):
    ip.dataset_info(ip.InputConfig(classes=(3, 1000), **SMALL), process_count=1)


def test_id_lists_select_training_images_only_and_change_the_mean(ids, tmp_path):
  keep, drop = tmp_path / "keep.txt", tmp_path / "drop.txt"
  keep.write_text("# a fold\ntrain__1\n\ntrain__4\ntrain__8\nvalidation__0\n")
  drop.write_text("train__4\n")
  zeros = np.zeros((12, 12, 3), np.float32)
  base = dict(global_batch_size=1, data_dir=str(tmp_path), **SMALL)
  cfg = ip.InputConfig(include_ids=str(keep), exclude_ids=str(drop), **base)
  assert ip.read_ids(str(keep)) == ["train__1", "train__4", "train__8", "validation__0"]
  info = ip.dataset_info(cfg, process_count=1)
  assert (info.num_train, info.num_eval) == (2, 11)  # Validation is not a training split.
  train = ip.make_train_iterator(cfg, mean=zeros, process_count=1)
  seen = {int(next(train)["label"][0]) for _ in range(6)}
  assert seen == {1, 8}
  # The mean image is that of the selected images, cached under its own name.
  plain = ip.InputConfig(**base)
  assert ip.mean_image_path(cfg) != ip.mean_image_path(plain)
  selected = ip.compute_mean_image(cfg)
  images = {label: ip.resize_center(ip.decode_rgb(tf.constant(image)), 12).numpy()
            for image, label in ids["train"]}
  np.testing.assert_allclose(selected, (images[1] + images[8]) / 2, atol=1e-3)
  with pytest.raises(FileNotFoundError, match="cannot read the id file .*missing.txt"):
    ip.dataset_info(ip.InputConfig(exclude_ids=str(tmp_path / "missing.txt"), **SMALL),
                    process_count=1)


def test_selected_records_split_unevenly_over_hosts_are_each_read_once(ids, tmp_path):
  keep = tmp_path / "keep.txt"
  keep.write_text("\n".join(f"train__{i}" for i in (0, 1, 2, 3, 9)))  # Host 1 holds only 9.
  cfg = ip.InputConfig(global_batch_size=2, include_ids=str(keep), **SMALL)
  info = ip.dataset_info(cfg, process_count=2)
  assert info.steps_per_epoch == 1  # Host 1 has one image: one step of 1 per host per epoch.
  zeros = np.zeros((12, 12, 3), np.float32)
  firsts = [next(ip.make_train_iterator(cfg, mean=zeros, process_index=p, process_count=2))
            for p in range(2)]
  assert firsts[1]["label"].tolist() == [9]
  evcfg = ip.InputConfig(global_batch_size=4, classes=tuple(range(100, 111)) + (0,), **SMALL)
  # Validation holds classes 100..110: host 0 reads 6 of them, host 1 reads 5.
  got = []
  for p in range(2):
    got += _labels_and_ids(ip.make_eval_iterator(evcfg, mean=zeros, with_ids=True,
                                                 process_index=p, process_count=2))[0]
  assert sorted(got) == list(range(11))


def test_an_image_folder_is_a_dataset_with_relative_ids(tmp_path):
  rng = np.random.default_rng(3)
  for name in ("zebra", "ant"):
    (tmp_path / "all" / name).mkdir(parents=True)
    for i in range(3):
      (tmp_path / "all" / name / f"{i}.png").write_bytes(png(random_image(rng, 9 + i, 14)))
  cfg = ip.InputConfig(dataset=f"folder:{tmp_path}", global_batch_size=2, eval_split="all",
                       **SMALL)
  info = ip.split_info(cfg)
  assert (info.split, info.num_examples, info.class_names) == ("all", 6, ("ant", "zebra"))
  zeros = np.zeros((12, 12, 3), np.float32)
  got = []
  for p in range(2):
    labels, names = _labels_and_ids(ip.make_eval_iterator(cfg, mean=zeros, with_ids=True,
                                                          process_index=p, process_count=2))
    got += list(zip(names, labels))
  assert sorted(got) == [(f"all/{n}/{i}.png".encode(), c)
                         for c, n in enumerate(("ant", "zebra")) for i in range(3)]
  thumbs = list(ip.thumbnails(cfg, "all", size=4, batch_size=4))
  assert sorted(i for t in thumbs for i in t["id"]) == sorted(n.decode() for n, _ in got)
  assert thumbs[0]["thumb"].shape == (4, 4, 4)
  with pytest.raises(FileNotFoundError, match="image folder .*nowhere does not exist"):
    ip.split_info(ip.InputConfig(dataset=f"folder:{tmp_path / 'nowhere'}", **SMALL))


def fake_voc(examples: list[tuple[bytes, list[int], list[int]]]):
  """Serves (encoded image, labels, labels_no_difficult) as every split of `voc/2012`.

  (tfds' random mock data cannot make voc's nested `objects` sequences.)
  """
  def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
    del self, split, decoders, read_config, shuffle_files

    def gen():
      for image, labels, easy in examples:
        yield {"image": image, "labels": np.array(labels, np.int64),
               "labels_no_difficult": np.array(easy, np.int64)}

    return tf.data.Dataset.from_generator(gen, output_signature={
        "image": tf.TensorSpec([], tf.string), "labels": tf.TensorSpec([None], tf.int64),
        "labels_no_difficult": tf.TensorSpec([None], tf.int64)})

  return tfds.testing.mock_data(as_dataset_fn=as_dataset)


def test_multi_label_voc_targets_mark_present_difficult_and_absent_classes():
  rng = np.random.default_rng(5)
  rows = [([3, 3, 7], [3]), ([0], [0]), ([], []), ([19, 2], [2, 19])]  # Objects' classes.
  examples = [(png(random_image(rng, 10, 13)), every, easy) for every, easy in rows]
  cfg = ip.InputConfig(dataset="voc/2012", global_batch_size=4, **SMALL)
  with fake_voc(examples):
    info = ip.dataset_info(cfg, process_count=1)
    (batch,) = list(ip.make_eval_iterator(cfg, mean=np.zeros((12, 12, 3), np.float32),
                                          process_count=1))
  assert info.multi_label and info.num_classes == 20
  want = np.zeros((4, 20), np.int32)
  want[0, 3], want[0, 7] = 1, -1  # Class 7 appears only as a difficult object: ignored.
  want[1, 0] = want[3, 2] = want[3, 19] = 1
  np.testing.assert_array_equal(batch["label"], want)
  assert batch["mask"].tolist() == [1, 1, 1, 1]
