import dataclasses
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from scipy import stats

from bit_keras import data


def _unscale(images):
    """[-1, 1] pipeline output back to [0, 255] pixel values."""
    return np.asarray(images) * 127.5 + 127.5


def _constant_images(values, size=(20, 24)):
    """One image per value, every pixel and channel equal to it: content identifies the example."""
    return np.stack([np.full(size + (3,), v, np.uint8) for v in values])


def _mixed_size_source(num_examples=6, num_classes=3):
    """A source whose images differ in size, as real photo datasets do."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (12 + 4 * i, 30 - 2 * i, 3), dtype=np.uint8) for i in range(num_examples)]
    labels = [i % num_classes for i in range(num_examples)]
    dataset = tf.data.Dataset.from_generator(
        lambda: zip(images, labels),
        output_signature=(tf.TensorSpec((None, None, 3), tf.uint8), tf.TensorSpec((), tf.int64)),
    )
    return data.Source(dataset, num_examples, num_classes)


def _first_batches(dataset, count=2):
    return [tuple(np.asarray(t) for t in batch) for batch in dataset.take(count)]


# --- train / eval pipelines -------------------------------------------------


def test_train_pipeline_shapes_dtypes_range_and_labels_follow_images():
    labels = np.arange(12) % 3
    source = data.from_arrays(_constant_images(labels * 120), labels)
    images, one_hot = next(iter(data.train_pipeline(source, resize=16, crop=12, batch_size=8, seed=0)))
    assert images.shape == (8, 12, 12, 3) and images.dtype == tf.float32
    assert one_hot.shape == (8, 3) and one_hot.dtype == tf.float32
    images, one_hot = images.numpy(), one_hot.numpy()
    assert images.min() >= -1 and images.max() <= 1
    assert images.min() < 0 < images.max()
    np.testing.assert_array_equal(one_hot.sum(axis=1), 1)
    # After shuffling, each image must still carry its own label.
    np.testing.assert_allclose(_unscale(images[:, 0, 0, 0]), one_hot.argmax(axis=1) * 120, atol=1e-3)


def test_train_pipeline_accepts_images_of_different_sizes():
    dataset = data.train_pipeline(_mixed_size_source(), resize=16, crop=8, batch_size=3, seed=0)
    for images, labels in dataset.take(3):
        assert images.shape == (3, 8, 8, 3) and labels.shape == (3, 3)


def test_flip_is_random_per_image():
    # Left half black, right half white: a flipped image starts white.
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, 4:] = 255
    source = data.from_arrays(np.stack([image] * 64), np.zeros(64, int))
    images, _ = next(iter(data.train_pipeline(source, resize=8, crop=8, batch_size=64, seed=1)))
    flipped = int(np.sum(images.numpy()[:, 0, 0, 0] > 0))
    assert 0 < flipped < 64


def test_upstream_flip_is_random_per_image():
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, 4:] = 255
    source = data.from_arrays(np.stack([image] * 64), np.zeros(64, int))
    images, _ = next(iter(data.upstream_pipeline(source, image_size=8, batch_size=64, seed=1, crop_area=(1.0, 1.0))))
    flipped = int(np.sum(np.asarray(images)[:, 0, 0, 0] > 0))
    assert 0 < flipped < 64


@pytest.mark.parametrize("stream", [False, True], ids=["by_index", "buffer"])
def test_every_epoch_is_shuffled(stream):
    labels = np.arange(64) % 2
    source = data.from_arrays(_constant_images(np.arange(64) * 4), labels)
    if stream:  # a source that can only be streamed goes through the shuffle buffer
        source = data.Source(source.dataset, source.num_examples, source.num_classes)
    images, _ = next(iter(data.train_pipeline(source, resize=8, crop=8, batch_size=64, seed=3, flip=False)))
    order = np.round(_unscale(np.asarray(images)[:, 0, 0, 0]) / 4).astype(int)
    assert sorted(order) == list(range(64)) and not np.array_equal(order, np.arange(64))


def test_flip_and_random_crop_can_be_turned_off():
    """Where a mirror image or a shifted crop changes the label (digits), the paper leaves them out."""
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, 4:] = 255
    source = data.from_arrays(np.stack([image] * 64), np.zeros(64, int))
    images, _ = next(iter(data.train_pipeline(source, resize=8, crop=8, batch_size=64, seed=1, flip=False)))
    assert np.all(images.numpy()[:, 0, 0, 0] < 0)  # no image starts white
    # Without random crops, training resizes straight to the crop size, exactly as evaluation does.
    photos = _mixed_size_source()
    train = data.train_pipeline(photos, resize=16, crop=8, batch_size=6, seed=0, flip=False, random_crop=False)
    images, _ = next(iter(train))
    evaluated, _ = next(iter(data.eval_pipeline(photos, crop=8, batch_size=6)))
    for x in images.numpy():
        assert any(np.array_equal(x, e) for e in evaluated.numpy())


def test_crop_position_is_random():
    # Channel 0 holds the row, channel 1 the column: a crop's top-left values
    # give its offset whatever the left-right flip did.
    rows, cols = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    image = np.stack([rows * 10, cols * 10, np.zeros_like(rows)], axis=-1).astype(np.uint8)
    source = data.from_arrays(np.stack([image] * 32), np.zeros(32, int))
    images, _ = next(iter(data.train_pipeline(source, resize=16, crop=8, batch_size=32, seed=2)))
    pixels = np.round(_unscale(images.numpy()) / 10).astype(int)
    offsets = {(crop[..., 0].min(), crop[..., 1].min()) for crop in pixels}
    assert len(offsets) > 1
    for crop in pixels:  # each crop is a contiguous 8x8 window of the image
        assert np.ptp(crop[..., 0]) == 7 and np.ptp(crop[..., 1]) == 7


def test_class_sorted_arrays_larger_than_any_buffer_give_mixed_batches():
    """30,000 class-sorted examples: every batch mixes the classes as the data does (not one or two of them)."""
    labels = np.repeat(np.arange(10), 3_000)
    source = data.from_arrays(np.zeros((30_000, 4, 4, 3), np.uint8), labels)
    pipeline = data.train_pipeline(source, resize=4, crop=4, batch_size=100, seed=0, flip=False)
    counts = np.stack([one_hot.numpy().sum(axis=0) for _, one_hot in pipeline.take(30)])
    assert (counts > 0).sum(axis=1).min() >= 8  # a uniform draw of 100 from 10 classes misses at most two
    _, p_value = stats.chisquare(counts.sum(axis=0))
    assert p_value > 1e-3, counts.sum(axis=0)
    # The next epoch is another permutation, drawn from (seed, epoch) alone.
    first = [np.asarray(y) for _, y in data.train_pipeline(source, resize=4, crop=4, batch_size=30_000, seed=0).take(2)]
    assert not np.array_equal(first[0], first[1])
    again = next(iter(data.train_pipeline(source, resize=4, crop=4, batch_size=30_000, seed=0, start_batch=1)))[1]
    np.testing.assert_array_equal(np.asarray(again), first[1])


def test_train_pipeline_is_reproducible_for_a_seed():
    source = _mixed_size_source()
    kwargs = dict(resize=16, crop=8, batch_size=3, mixup_alpha=0.5)
    first = _first_batches(data.train_pipeline(source, seed=5, **kwargs))
    again = _first_batches(data.train_pipeline(source, seed=5, **kwargs))
    other = _first_batches(data.train_pipeline(source, seed=6, **kwargs))
    for (x1, y1), (x2, y2) in zip(first, again):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not all(np.array_equal(x1, x3) for (x1, _), (x3, _) in zip(first, other))


def test_each_pass_gets_new_augmentations():
    # Without shuffling, two passes over the same examples differ only through
    # crop and flip, which must be redrawn for every epoch.
    source = _mixed_size_source()
    dataset = data.train_pipeline(source, resize=16, crop=8, batch_size=6, shuffle_buffer=1, seed=0, repeat=False)
    (first, _), (second, _) = next(iter(dataset)), next(iter(dataset))
    assert not np.array_equal(first.numpy(), second.numpy())


def test_train_pipeline_with_mixup_mixes_labels():
    labels = np.arange(16) % 4
    source = data.from_arrays(_constant_images(labels * 60), labels)
    dataset = data.train_pipeline(source, resize=8, crop=8, batch_size=8, mixup_alpha=1.0, seed=0)
    _, mixed = next(iter(dataset))
    mixed = mixed.numpy()
    np.testing.assert_allclose(mixed.sum(axis=1), 1, rtol=1e-6)
    assert not np.all(np.isin(mixed, (0.0, 1.0)))


def test_train_pipeline_feeds_model_fit():
    labels = np.arange(8) % 2
    source = data.from_arrays(_constant_images(labels * 200, size=(12, 12)), labels)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    model.compile("sgd", keras.losses.CategoricalCrossentropy(from_logits=True))
    history = model.fit(
        data.train_pipeline(source, resize=10, crop=8, batch_size=4, mixup_alpha=0.1, seed=0),
        steps_per_epoch=2,
        epochs=1,
        shuffle=False,
        verbose=0,
    )
    assert np.isfinite(history.history["loss"][0])


def test_train_pipeline_rejects_bad_sizes():
    source = data.from_arrays(_constant_images([0, 1]), [0, 1])
    with pytest.raises(ValueError, match="must not exceed resize"):
        data.train_pipeline(source, resize=8, crop=12, batch_size=2)
    with pytest.raises(ValueError, match="fewer than one batch"):
        data.train_pipeline(source, resize=8, crop=8, batch_size=4, repeat=False)


def test_eval_pipeline_is_deterministic_resizes_to_crop_and_keeps_remainder():
    source = _mixed_size_source(num_examples=5)
    dataset = data.eval_pipeline(source, crop=10, batch_size=4)
    first, second = list(dataset), list(dataset)
    assert [tuple(x.shape) for x, _ in first] == [(4, 10, 10, 3), (1, 10, 10, 3)]
    for (x1, y1), (x2, y2) in zip(first, second):
        np.testing.assert_array_equal(x1.numpy(), x2.numpy())
        np.testing.assert_array_equal(y1.numpy(), y2.numpy())
    images = np.concatenate([x.numpy() for x, _ in first])
    expected = [tf.image.resize(image, (10, 10)).numpy() for image, _ in source.dataset]
    np.testing.assert_allclose(_unscale(images), expected, atol=1e-3)
    labels = np.concatenate([y.numpy() for _, y in first]).argmax(axis=1)
    np.testing.assert_array_equal(labels, [label for _, label in source.dataset.as_numpy_iterator()])


# --- mixup ------------------------------------------------------------------


def test_mixup_arithmetic():
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (6, 4, 4, 3)).astype(np.float32)
    labels = np.eye(6, dtype=np.float32)
    mixed_images, mixed_labels = (t.numpy() for t in data.mixup(images, labels, alpha=0.4, seed=7))
    np.testing.assert_allclose(mixed_labels.sum(axis=1), 1, rtol=1e-6)
    lam = mixed_labels[0, 0]  # row 0 is lam * class 0 + (1 - lam) * class 5
    assert 0 < lam < 1
    np.testing.assert_allclose(mixed_labels, lam * labels + (1 - lam) * labels[::-1], atol=1e-6)
    np.testing.assert_allclose(mixed_images, lam * images + (1 - lam) * images[::-1], atol=1e-6)


def test_mixup_alpha_zero_leaves_batch_unchanged():
    images = np.random.default_rng(1).uniform(-1, 1, (4, 3, 3, 3)).astype(np.float32)
    labels = np.eye(4, dtype=np.float32)
    mixed_images, mixed_labels = data.mixup(images, labels, alpha=0.0)
    np.testing.assert_array_equal(mixed_images.numpy(), images)
    np.testing.assert_array_equal(mixed_labels.numpy(), labels)


@pytest.mark.parametrize("alpha", [0.1, 2.0])
def test_mixup_lambda_follows_beta(alpha):
    # float64 labels carry lam exactly: Beta(0.1, 0.1) puts ~10% of its mass
    # within float32 rounding of 1.
    labels = np.eye(2, dtype=np.float64)
    images = np.zeros((2, 1, 1, 1), np.float32)
    draw = tf.function(lambda seed: data.mixup(images, labels, alpha, seed=seed)[1][0, 0])
    lams = [float(draw(tf.constant([seed, 3], tf.int64))) for seed in range(400)]
    assert stats.kstest(lams, stats.beta(alpha, alpha).cdf).pvalue > 1e-3


def test_mixup_seed_reproducible_and_rejects_integer_labels():
    images = np.zeros((2, 1, 1, 1), np.float32)
    labels = np.eye(2, dtype=np.float32)
    lam = [float(data.mixup(images, labels, 1.0, seed=s)[1][0, 0]) for s in (3, 3, 4)]
    assert lam[0] == lam[1] != lam[2]
    with pytest.raises(ValueError, match="one-hot"):
        data.mixup(images, np.array([0, 1]), 1.0)


# --- few-shot ---------------------------------------------------------------


def _identified_source(class_counts):
    """Each image's pixel value is its index, so a subset can be named."""
    labels = np.repeat(np.arange(len(class_counts)), class_counts)
    return data.from_arrays(_constant_images(np.arange(len(labels)), size=(4, 4)), labels)


def _members(source):
    return sorted((int(image[0, 0, 0]), int(label)) for image, label in source.dataset.as_numpy_iterator())


def test_few_shot_takes_exactly_k_per_class_and_depends_on_seed():
    source = _identified_source([10, 12, 9])
    subset = data.few_shot(source, 4, seed=0)
    members = _members(subset)
    assert subset.num_examples == len(members) == 12
    assert np.bincount([label for _, label in members]).tolist() == [4, 4, 4]
    assert members == _members(data.few_shot(source, 4, seed=0))
    assert members != _members(data.few_shot(source, 4, seed=1))
    assert members == _members(subset)  # a second pass reads the same subset


def test_few_shot_warns_about_short_classes_and_takes_them_whole():
    source = dataclasses.replace(_identified_source([6, 2, 6]), class_names=["ant", "bee", "cat"])
    with pytest.warns(UserWarning, match=r"fewer than 4 examples.*'bee': 2"):
        subset = data.few_shot(source, 4)
    assert np.bincount([label for _, label in _members(subset)]).tolist() == [4, 2, 4]
    assert subset.num_examples == 10 and subset.class_names == ["ant", "bee", "cat"]


# --- sources ----------------------------------------------------------------


def test_from_arrays_grayscale_and_float():
    gray = np.random.default_rng(2).integers(0, 256, (3, 5, 6)).astype(np.float64)
    source = data.from_arrays(gray, [0, 2, 1])
    assert source.num_examples == 3 and source.num_classes == 3
    images = np.stack([image for image, _ in source.dataset.as_numpy_iterator()])
    assert images.shape == (3, 5, 6, 3) and images.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(images[..., channel], gray)


def test_from_arrays_errors_say_what_to_fix():
    images = np.zeros((2, 4, 4, 3), np.float32)
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        data.from_arrays(images - 1, [0, 1])
    with pytest.raises(ValueError, match="one class id per image"):
        data.from_arrays(images, [0, 1, 2])
    with pytest.raises(ValueError, match="larger num_classes"):
        data.from_arrays(images, [0, 3], num_classes=2)
    with pytest.warns(UserWarning, match="Multiply them by 255"):
        data.from_arrays(images + 0.5, [0, 1])
    with pytest.raises(ValueError, match=r"integer class ids.*np.unique\(labels, return_inverse=True\)") as error:
        data.from_arrays(images, np.array(["cat", "dog"]))
    assert "astype(int)" not in str(error.value)
    with pytest.raises(ValueError, match="whole numbers"):
        data.from_arrays(images, [0.0, 1.0])


def test_from_folder_skips_bad_files_and_converts_to_rgb(tmp_path):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (10, 12), dtype=np.uint8)
    rgba = rng.integers(0, 256, (10, 12, 4), dtype=np.uint8)
    for name in ("zebra", "ant"):
        (tmp_path / name).mkdir()
    Image.fromarray(rgb).save(tmp_path / "ant" / "rgb.png")
    Image.fromarray(gray).save(tmp_path / "ant" / "gray.PNG")
    Image.fromarray(rgba).save(tmp_path / "zebra" / "rgba.png")
    Image.fromarray(rgb).save(tmp_path / "zebra" / "photo.jpg")
    (tmp_path / "zebra" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(200))
    (tmp_path / "zebra" / "truncated.jpg").write_bytes((tmp_path / "zebra" / "photo.jpg").read_bytes()[:300])
    (tmp_path / "ant" / "notes.txt").write_text("not an image")

    (tmp_path / "ant" / "fake.jpg").write_text("text under an image name")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = data.from_folder(tmp_path, verify=False)
    messages = [str(w.message) for w in caught if "from_folder" in str(w.message)]
    # Unverified, start-up reads only headers: the wrong ending and the non-image
    # are named there; the corrupt and the truncated file are dropped when read.
    assert len(messages) == 1
    assert "skipped 2 file(s)" in messages[0] and str(tmp_path) in messages[0]
    assert "notes.txt" in messages[0] and "fake.jpg" in messages[0]

    assert source.class_names == ["ant", "zebra"] and source.num_classes == 2
    assert source.num_examples == 6  # files that passed the start-up check
    examples = list(source.dataset.as_numpy_iterator())
    assert len(examples) == 4 and all(image.shape == (10, 12, 3) and image.dtype == np.uint8 for image, _ in examples)
    assert sorted(int(label) for _, label in examples) == [0, 0, 1, 1]
    labels_of = lambda expected: [int(label) for image, label in examples if np.array_equal(image, expected)]
    assert labels_of(np.repeat(gray[..., None], 3, axis=-1)) == [0]  # ant/gray.PNG
    assert labels_of(rgba[..., :3]) == [1]  # zebra/rgba.png
    assert len(list(source.dataset.as_numpy_iterator())) == 4  # every pass drops the same files

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        verified = data.from_folder(tmp_path)  # a small folder: every file decoded once at start-up
    undecodable = [str(w.message) for w in caught if "do not decode" in str(w.message)]
    assert len(undecodable) == 1 and "skipped 2 file(s)" in undecodable[0]
    assert "corrupt.png" in undecodable[0] and "truncated.jpg" in undecodable[0]
    assert verified.num_examples == 4 == len(list(verified.dataset.as_numpy_iterator()))


@pytest.mark.parametrize("extensions", [".png", "PNG", [".png"], ("png", ".PNG")])
def test_from_folder_extensions_as_string_or_sequence(tmp_path, extensions):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / name / "x.png")
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / name / "y.jpg")
    with pytest.warns(UserWarning, match="skipped 2 file"):
        source = data.from_folder(tmp_path, extensions=extensions)
    assert source.num_examples == 2


@pytest.mark.parametrize("extensions", [[], "", [".png", 3], 5])
def test_from_folder_refuses_bad_extensions(tmp_path, extensions):
    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError, match="extensions must be a file ending"):
        data.from_folder(tmp_path, extensions=extensions)


def test_from_folder_warns_about_empty_class_folders(tmp_path):
    for name in ("ant", "bee", "cat"):
        (tmp_path / name).mkdir()
    for name in ("ant", "cat"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / name / "x.png")
    (tmp_path / "bee" / "notes.txt").write_text("no images here")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = data.from_folder(tmp_path)
    empty = [str(w.message) for w in caught if "hold no readable images" in str(w.message)]
    assert len(empty) == 1 and "'bee'" in empty[0] and "ant" not in empty[0]
    assert source.class_names == ["ant", "bee", "cat"] and source.num_classes == 3
    assert sorted(int(label) for _, label in source.dataset.as_numpy_iterator()) == [0, 2]


def test_from_folder_reads_a_large_folder_by_headers(tmp_path, monkeypatch):
    # Start-up must not decode images: only the first bytes of each file are read.
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(50):
            Image.fromarray(np.full((6, 6, 3), i, np.uint8)).save(tmp_path / name / f"{i}.jpg")
    decoded = []

    def decode(path):
        if tf.executing_eagerly():  # tracing the pipeline's map function is not decoding
            decoded.append(path)
        return tf.zeros((1, 1, 3), tf.uint8)

    monkeypatch.setattr(data.sources, "_decode_image", decode)
    source = data.from_folder(tmp_path, verify=False)
    assert source.num_examples == 100 and decoded == []
    monkeypatch.setattr(data.sources, "VERIFY_UP_TO", 99)  # "auto" verifies only folders up to this size
    assert data.from_folder(tmp_path).num_examples == 100 and decoded == []
    assert len(list(source.dataset)) == 100


def test_from_folder_without_class_folders_raises(tmp_path):
    with pytest.raises(ValueError, match="one sub-folder of images per class|no sub-folders"):
        data.from_folder(tmp_path)


def test_from_tfds_under_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=9):
        source = data.from_tfds("cifar10", split="train")
        gray = data.from_tfds("mnist", split="test")
        with pytest.raises(ValueError, match="Pass image_key="):
            data.from_tfds("cifar10", image_key="picture")
    assert source.num_examples == 9 and source.num_classes == 10 and len(source.class_names) == 10
    image, label = next(iter(source.dataset))
    assert image.shape == (32, 32, 3) and image.dtype == tf.uint8 and label.dtype == tf.int64
    assert gray.num_examples == 9 and next(iter(gray.dataset))[0].shape == (28, 28, 3)
    images, labels = next(iter(data.eval_pipeline(source, crop=16, batch_size=9)))
    assert images.shape == (9, 16, 16, 3) and labels.shape == (9, 10)


# --- upstream ---------------------------------------------------------------


def test_upstream_pipeline_shape_and_range():
    dataset = data.upstream_pipeline(_mixed_size_source(), image_size=32, batch_size=4, seed=0)
    images, labels = next(iter(dataset))
    assert images.shape == (4, 32, 32, 3) and images.dtype == tf.float32
    assert labels.shape == (4, 3) and labels.dtype == tf.float32
    images = images.numpy()
    assert images.min() >= -1 and images.max() <= 1 and images.min() < 0 < images.max()


# --- the stream the training engine relies on --------------------------------


def _batches_of(dataset, count):
    return [tuple(t.numpy() for t in batch) for batch in dataset.take(count)]


@pytest.mark.parametrize("pipeline", ["train", "upstream"])
def test_start_batch_continues_the_stream_exactly_across_epochs(pipeline):
    source = data.from_arrays(np.random.default_rng(0).integers(0, 255, (10, 20, 24, 3)), np.arange(10) % 3)
    if pipeline == "train":
        make = lambda start: data.train_pipeline(
            source, resize=16, crop=12, batch_size=4, mixup_alpha=0.5, seed=7, start_batch=start
        )
    else:
        make = lambda start: data.upstream_pipeline(source, image_size=12, batch_size=4, seed=7, start_batch=start)
    whole = _batches_of(make(0), 8)  # 32 examples: more than three epochs of 10
    for start in (1, 3, 5):
        for (images, labels), (expected_images, expected_labels) in zip(_batches_of(make(start), 8 - start), whole[start:]):
            np.testing.assert_array_equal(images, expected_images)
            np.testing.assert_array_equal(labels, expected_labels)
    assert not np.array_equal(whole[0][0], whole[3][0])


def test_batch_split_yields_the_whole_mixed_batch_in_pieces():
    source = data.from_arrays(np.random.default_rng(1).integers(0, 255, (24, 16, 16, 3)), np.arange(24) % 4)
    kwargs = dict(resize=16, crop=12, batch_size=8, mixup_alpha=1.0, seed=3)
    whole = _batches_of(data.train_pipeline(source, **kwargs), 3)
    pieces = _batches_of(data.train_pipeline(source, batch_split=4, **kwargs), 12)
    for index, (images, labels) in enumerate(whole):
        np.testing.assert_array_equal(np.concatenate([p[0] for p in pieces[4 * index : 4 * index + 4]]), images)
        np.testing.assert_array_equal(np.concatenate([p[1] for p in pieces[4 * index : 4 * index + 4]]), labels)
        # One lambda for the whole batch: the rows mixing two classes all hold the same pair (lam, 1 - lam).
        mixed = labels[(labels > 0).sum(axis=1) == 2]
        assert len(mixed) and np.allclose(np.sort(mixed, axis=1)[:, -2:], np.sort(mixed, axis=1)[0, -2:])
    with pytest.raises(ValueError, match="batch_split must be a positive integer dividing batch_size=8"):
        data.train_pipeline(source, batch_split=3, **kwargs)


def test_labels_outside_the_classes_stop_the_pipeline_with_a_clear_error():
    source = data.Source(tf.data.Dataset.from_tensor_slices((np.zeros((4, 8, 8, 3), "uint8"), np.array([0, 1, 2, 5]))), 4, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"labels must be class ids in \[0, 3\)"):
        _batches_of(data.train_pipeline(source, resize=8, crop=8, batch_size=4, seed=0), 1)


def test_upstream_crop_area_bounds_the_crop():
    # A white square in the middle of black: whole-image crops (area 1) always hold all of it.
    image = np.zeros((1, 40, 40, 3), "uint8")
    image[0, 15:25, 15:25] = 255
    source = data.from_arrays(image, [0], num_classes=1)
    whole = _batches_of(data.upstream_pipeline(source, image_size=20, batch_size=1, seed=0, crop_area=(1.0, 1.0)), 6)
    small = _batches_of(data.upstream_pipeline(source, image_size=20, batch_size=1, seed=0, crop_area=(0.05, 0.06)), 6)
    white_share = lambda batches: [float((images > 0.5).mean()) for images, _ in batches]
    assert all(abs(share - 1 / 16) < 0.03 for share in white_share(whole))
    assert np.std(white_share(small)) > 0.05  # a small crop is mostly white or mostly black
    with pytest.raises(ValueError, match="crop_area must satisfy 0 < low <= high <= 1"):
        data.upstream_pipeline(source, image_size=20, batch_size=1, crop_area=(0.5, 1.5))


@pytest.mark.parametrize("shape", [(30, 90, 3), (120, 40, 3), (64, 64, 3)])
def test_inception_box_is_drawn_in_pixels(shape):
    """Aspect ratio 3/4-4/3 of the crop in pixels, whatever the image's shape; area 8-100%."""
    image = tf.zeros(shape, tf.uint8)
    height, width = shape[:2]
    for index in range(200):
        ((y1, x1, y2, x2),) = np.asarray(data.augment.inception_box(image, tf.constant([7, index], tf.int64)))
        box_height, box_width = (y2 - y1) * height, (x2 - x1) * width
        whole = (y1, x1, y2, x2) == (0, 0, 1, 1)
        assert whole or 3 / 4 - 0.05 <= box_width / box_height <= 4 / 3 + 0.05, (box_height, box_width)
        assert whole or 0.08 - 0.02 <= box_height * box_width / (height * width) <= 1.0
        assert 0 <= y1 < y2 <= 1 and 0 <= x1 < x2 <= 1
