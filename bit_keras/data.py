"""tf.data input pipelines for BiT: labelled-image sources, few-shot subsets,
the BiT-HyperRule training and evaluation pipelines, mixup, and the upstream
(BiT-S/M pre-training) pipeline.

Every pipeline yields `(images, labels)`: float32 images in [-1, 1] (the range
BiT models expect) and one-hot float32 labels, ready for `model.fit` under the
TensorFlow or the JAX Keras backend. This module is TensorFlow-specific by
design; the models themselves are backend-agnostic.
"""

import concurrent.futures
import dataclasses
import hashlib
import os
import pathlib
import warnings

import numpy as np

from bit_keras import arguments, optional, preprocess

tf = optional.tensorflow("bit_keras.data (tf.data pipelines, from_tfds, from_folder, from_arrays)")

# First bytes of the formats `tf.io.decode_image` reads: JPEG (any APPn,
# including phone-camera MPO), PNG, GIF and BMP.
_IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")
# Threads that read file headers at start-up: I/O bound, so more than cores.
_IO_THREADS = 16

# Keeps the training streams' random numbers apart from other uses of the user's seed.
_STREAM_SALT = 0x5EED


@dataclasses.dataclass
class Source:
    """Raw labelled examples, before any preprocessing.

    Attributes:
        dataset: unbatched `tf.data.Dataset` of `(image, label)`: image a
            uint8 `(height, width, 3)` tensor (sizes may differ between
            examples), label an int64 scalar in `[0, num_classes)`. Its order
            must be the same on every pass (`few_shot` relies on it).
        num_examples: number of examples in `dataset`.
        num_classes: number of classes; sets the one-hot depth.
        class_names: name of each class id, when known.
        by_index: for sources that can be read in any order (`from_arrays`,
            `from_folder`), a function from a dataset of int64 indices to the
            dataset of those examples: training pipelines then draw a full
            permutation every epoch instead of shuffling through a buffer.

    Example:

    >>> import numpy as np
    >>> source = from_arrays(np.zeros((4, 8, 8, 3), "uint8"), [0, 1, 2, 1])
    >>> source.num_examples, source.num_classes
    (4, 3)
    """

    dataset: tf.data.Dataset
    num_examples: int
    num_classes: int
    class_names: list | None = None
    by_index: object = None


def from_tfds(name, split="train", data_dir=None, image_key="image", label_key="label"):
    """A `Source` from a tensorflow-datasets dataset (downloaded if needed).

    Grayscale datasets (e.g. MNIST) are turned into RGB. Files are read in a
    fixed order so that `few_shot` subsets are reproducible.

    Args:
        name: TFDS name, e.g. `"cifar10"`, `"oxford_iiit_pet"`.
        split: TFDS split, slicing allowed (`"train[:90%]"`).
        data_dir: where TFDS keeps its data; its default when None.
        image_key: the feature holding the image.
        label_key: the `ClassLabel` feature holding the label.

    Example:

    >>> import tensorflow_datasets as tfds
    >>> with tfds.testing.mock_data(num_examples=5):
    ...     source = from_tfds("cifar10", split="test")
    >>> source.num_examples, source.num_classes
    (5, 10)
    """
    # Imported here: it is slow to import and only TFDS sources need it.
    import tensorflow_datasets as tfds

    dataset, info = tfds.load(name, split=split, data_dir=data_dir, with_info=True, shuffle_files=False)
    for role, key in (("image_key", image_key), ("label_key", label_key)):
        if key not in info.features:
            raise ValueError(
                f"TFDS dataset {name!r} has no feature {key!r}; its features are "
                f"{sorted(info.features.keys())}. Pass {role}= one of them."
            )
    label_feature = info.features[label_key]
    if getattr(label_feature, "num_classes", None) is None:
        raise ValueError(
            f"Feature {label_key!r} of TFDS dataset {name!r} is not a ClassLabel, so the number "
            f"of classes is unknown. Pass label_key= a ClassLabel feature."
        )
    dataset = dataset.map(
        lambda example: (_to_rgb(example[image_key]), tf.cast(example[label_key], tf.int64)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    try:
        num_examples = info.splits[split].num_examples
    except KeyError:
        # Split sizes are missing under `tfds.testing.mock_data` and for
        # datasets whose metadata was never computed.
        num_examples = _count(dataset)
    return Source(dataset, num_examples, label_feature.num_classes, list(label_feature.names))


def from_arrays(images, labels, num_classes=None):
    """A `Source` from in-memory arrays.

    Args:
        images: `(N, H, W, 3)` RGB or `(N, H, W)` / `(N, H, W, 1)` grayscale
            array, uint8 or any integer or float type with values in
            [0, 255] (floats are rounded).
        labels: `N` integer class ids.
        num_classes: the number of classes; the largest label + 1 when None.

    Example:

    >>> import numpy as np
    >>> gray = np.full((6, 10, 10), 200.0)
    >>> source = from_arrays(gray, [0, 1, 0, 1, 0, 1])
    >>> image, label = next(iter(source.dataset))
    >>> image.shape, image.dtype.name, int(image[0, 0, 2])
    (TensorShape([10, 10, 3]), 'uint8', 200)
    """
    images = _as_uint8_rgb(np.asarray(images))
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(
            f"labels must be one class id per image: got labels of shape {labels.shape} for "
            f"{len(images)} images. Pass a 1-D array of {len(images)} integers."
        )
    if len(labels) == 0:
        raise ValueError("from_arrays got no examples; pass at least one image and label.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(_label_type_error(labels))
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels must lie in [0, num_classes={num_classes}); they span [{labels.min()}, {labels.max()}]. "
            f"Fix the labels or pass a larger num_classes."
        )
    dataset = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int64)))
    images, labels = tf.constant(images), tf.constant(labels.astype(np.int64))

    def by_index(indices):
        return indices.map(lambda i: (tf.gather(images, i), tf.gather(labels, i)))

    return Source(dataset, len(labels), num_classes, by_index=by_index)


VERIFY_UP_TO = 10000  # files `from_folder(verify="auto")` decodes at start-up: ~5 ms each (docs/performance.md)


def from_folder(path, extensions=(".jpg", ".jpeg", ".png", ".bmp", ".gif"), verify="auto"):
    """A `Source` from a folder with one sub-folder of images per class.

    Class ids follow the sorted sub-folder names. Start-up reads the first
    bytes of each file, in parallel threads: files with another ending, or
    whose first bytes are not those of a JPEG, PNG, BMP or GIF, are skipped
    and named in one warning. With `verify`, it then decodes each of them
    once, as the pipeline will, and skips and names those that fail
    (truncated, corrupt, or a variant TensorFlow cannot read), so that
    `num_examples` is exact. Unverified files that fail are dropped when the
    pipeline reads them, so training never stops on a bad file.
    Grayscale, palette and RGBA images become RGB (alpha is dropped).
    A class folder with no images keeps its class id and gets a warning.

    Args:
        path: the root folder, e.g. `flowers/` holding `daisy/`, `rose/`, ...
        extensions: a file ending or a sequence of them (any case, with or
            without the dot); files with other endings are skipped.
        verify: True decodes every file at start-up; False checks headers
            only (a folder of a million images opens in seconds); "auto"
            verifies folders of up to `VERIFY_UP_TO` images.

    Example:

    >>> import pathlib, tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("cat", "dog"):
    ...     (root / name).mkdir()
    ...     Image.fromarray(np.zeros((8, 8, 3), "uint8")).save(root / name / "a.png")
    >>> source = from_folder(root, extensions=".png")
    >>> source.num_examples, source.class_names
    (2, ['cat', 'dog'])
    """
    root = pathlib.Path(path)
    if not root.is_dir():
        raise ValueError(f"{path} is not a folder. Pass a folder holding one sub-folder of images per class.")
    extensions = _normalized_extensions(extensions)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ValueError(f"{path} has no sub-folders. Put the images of each class in a sub-folder named after it.")
    candidates, labels, skipped = [], [], []
    for class_id, class_dir in enumerate(class_dirs):
        for file in _files_under(class_dir):
            if os.path.splitext(file)[1][1:].lower() in extensions:
                candidates.append(file)
                labels.append(class_id)
            else:
                skipped.append(file)
    with concurrent.futures.ThreadPoolExecutor(max_workers=_IO_THREADS) as pool:
        looks_like_image = list(pool.map(_has_image_signature, candidates, chunksize=256))
    paths = [file for file, ok in zip(candidates, looks_like_image) if ok]
    labels = [label for label, ok in zip(labels, looks_like_image) if ok]
    skipped += [file for file, ok in zip(candidates, looks_like_image) if not ok]
    if skipped:
        warnings.warn(
            f"from_folder skipped {len(skipped)} file(s) under {path} that are not "
            f"{'/'.join('.' + e for e in extensions)} images: {_some(skipped)}",
            stacklevel=2,
        )
    if verify not in (True, False, "auto"):
        raise ValueError(f"verify must be True, False or 'auto', got {verify!r}.")
    if verify is True or (verify == "auto" and len(paths) <= VERIFY_UP_TO):
        with concurrent.futures.ThreadPoolExecutor(max_workers=_IO_THREADS) as pool:
            decodes = list(pool.map(_decodes, paths, chunksize=64))
        undecodable = [file for file, ok in zip(paths, decodes) if not ok]
        paths, labels = [f for f, ok in zip(paths, decodes) if ok], [c for c, ok in zip(labels, decodes) if ok]
        if undecodable:
            warnings.warn(
                f"from_folder skipped {len(undecodable)} file(s) under {path} that have image headers but do not "
                f"decode (truncated, corrupt, or a variant TensorFlow cannot read): {_some(undecodable)}",
                stacklevel=2,
            )
    if not paths:
        raise ValueError(
            f"{path} holds no readable images with endings {tuple('.' + e for e in extensions)}. "
            f"Pass extensions= the endings of your image files, or replace the files named above."
        )
    counts = np.bincount(labels, minlength=len(class_dirs))
    empty = [class_dirs[i].name for i in np.flatnonzero(counts == 0)]
    if empty:
        warnings.warn(
            f"from_folder: {len(empty)} class folder(s) under {path} hold no readable images and will "
            f"have 0 examples (their class ids are kept): {empty}. Add images to them or remove them.",
            stacklevel=2,
        )
    # A fixed permutation: class-sorted order would defeat a shuffle buffer
    # smaller than the dataset, and a fixed one keeps passes identical.
    order = np.random.default_rng(0).permutation(len(paths))
    files, labels = tf.constant(np.array(paths)[order]), tf.constant(np.array(labels, np.int64)[order])

    def decoded(examples):
        # Drops files that fail to decode; the order of the others is unchanged.
        examples = examples.map(lambda file, label: (_decode_image(file), label), num_parallel_calls=tf.data.AUTOTUNE)
        return examples.ignore_errors(log_warning=True)

    def by_index(indices):
        return decoded(indices.map(lambda i: (tf.gather(files, i), tf.gather(labels, i))))

    dataset = decoded(tf.data.Dataset.from_tensor_slices((files, labels)))
    return Source(dataset, len(paths), len(class_dirs), [d.name for d in class_dirs], by_index=by_index)


def as_source(data, num_classes=None, dataset_size=None):
    """A `Source` from what a trainer's `fit` takes: a `Source`, (images, labels) arrays
    with pixels in [0, 255], or an unbatched `tf.data.Dataset` of (image, label) pairs
    (which needs `dataset_size` and `num_classes`).

    Example:

    >>> import numpy as np
    >>> as_source((np.zeros((4, 8, 8, 3), "uint8"), [0, 1, 0, 1])).num_examples
    4
    """
    if isinstance(data, Source):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return from_arrays(np.asarray(data[0]), np.asarray(data[1]), num_classes=num_classes)
    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        if isinstance(spec, dict) and {"image", "label"} <= set(spec):
            data = data.map(lambda example: (example["image"], example["label"]))  # as TFDS yields them
        elif not (isinstance(spec, tuple) and len(spec) == 2):
            raise ValueError(
                f"A tf.data.Dataset for training must yield (image, label) pairs or {{'image', 'label'}} dicts, one "
                f"example at a time (unbatched); this one yields {spec}. Map it to (image, label) first."
            )
        if dataset_size is None or num_classes is None:
            raise ValueError(
                "A tf.data.Dataset does not say how many examples and classes it has: pass dataset_size= and "
                "num_classes= to the trainer, or use bit_keras.data.from_arrays / from_folder / from_tfds."
            )
        return Source(data, int(dataset_size), int(num_classes))
    raise TypeError(
        f"Training data must be a bit_keras.data.Source, (images, labels) arrays or a tf.data.Dataset "
        f"of (image, label) pairs; got {type(data).__name__}."
    )


def digest(source, examples=16):
    """A short digest of `source`: its size and its first `examples` examples' pixels and labels.

    Cheap (a few images are read), and enough to tell a resumed run that its
    data is not the data it was started on, even at the same size.

    >>> import numpy as np
    >>> a = from_arrays(np.zeros((4, 8, 8, 3), "uint8"), [0, 1, 0, 1])
    >>> b = from_arrays(np.ones((4, 8, 8, 3), "uint8"), [0, 1, 0, 1])
    >>> digest(a) == digest(a), digest(a) == digest(b)
    (True, False)
    """
    hashed = hashlib.sha256(str(source.num_examples).encode())
    for image, label in source.dataset.take(examples).as_numpy_iterator():
        hashed.update(np.ascontiguousarray(image).tobytes())
        hashed.update(np.int64(label).tobytes())
    return hashed.hexdigest()[:16]


def first_example(source):
    """The first (image, label) of `source`, or a clear error when it yields none.

    Training streams repeat their source forever: an empty one (a folder whose
    files look like images but none decodes) would spin without end.
    """
    for example in source.dataset.take(1):
        return example
    raise ValueError(
        f"The training data yields no example, though {source.num_examples} were counted: none decodes. For a folder, "
        f"its files have image headers but are truncated, corrupt or in a variant TensorFlow cannot read; "
        f"TF_CPP_MIN_LOG_LEVEL=0 shows TensorFlow's message for each. Replace or remove them."
    )


def few_shot(source, examples_per_class, seed=0):
    """A `Source` with `examples_per_class` examples of each class, drawn with `seed`.

    The draw is the official code's (big_transfer's `sample_subset`): for
    each class in turn, `choice(indices of the class, k, replace=False)` from
    NumPy's legacy generator seeded with `seed`, so a seed selects the same
    examples as the official `--examples_per_class_seed`. A class with fewer
    examples contributes all of them, with a warning. The
    subset keeps the source's order and is cached in memory after its first
    pass, so later epochs do not re-read the whole source.

    Args:
        source: the full `Source`; its order must not change between passes.
        examples_per_class: k, the examples to keep per class.
        seed: the same seed draws the same subset.

    Example:

    >>> import numpy as np
    >>> source = from_arrays(np.zeros((30, 8, 8, 3), "uint8"), np.arange(30) % 3)
    >>> few_shot(source, 5, seed=1).num_examples
    15
    """
    if not isinstance(examples_per_class, (int, np.integer)) or examples_per_class < 1:
        raise ValueError(f"examples_per_class must be a positive integer, got {examples_per_class!r}.")
    labels = np.fromiter(source.dataset.map(lambda image, label: label).as_numpy_iterator(), np.int64)
    rng = np.random.RandomState(seed)  # the official draw: np.random.seed(seed), then np.random.choice
    keep = np.zeros(len(labels), bool)
    short = {}
    for class_id in range(source.num_classes):
        members = np.flatnonzero(labels == class_id)
        if len(members) < examples_per_class:
            short[_class_name(source, class_id)] = len(members)
        keep[rng.choice(members, min(examples_per_class, len(members)), replace=False)] = True
    if short:
        warnings.warn(
            f"few_shot: {len(short)} class(es) have fewer than {examples_per_class} examples and were taken whole: {short}.",
            stacklevel=2,
        )
    keep_by_index = tf.constant(keep)

    def kept(index, example):
        return keep_by_index[index]

    def without_index(index, example):
        return example

    dataset = source.dataset.enumerate().filter(kept).map(without_index).cache()
    return Source(dataset, int(keep.sum()), source.num_classes, source.class_names)


def train_pipeline(
    source,
    *,
    resize,
    crop,
    batch_size,
    mixup_alpha=0.0,
    shuffle_buffer=10_000,
    seed=None,
    repeat=True,
    batch_split=1,
    start_batch=0,
    flip=True,
    random_crop=True,
):
    """The BiT-HyperRule fine-tuning input pipeline.

    Each image is resized to `(resize, resize)`, randomly cropped to
    `(crop, crop)`, flipped left-right with probability 1/2 (each image on its
    own), and scaled to [-1, 1]. Where a crop or a mirror image would change
    the label (digits, text, orientation), the paper (section 3.3) leaves
    them out: `flip=False` and `random_crop=False` (which resizes straight to
    `(crop, crop)`, as evaluation does). Batches have exactly `batch_size` examples
    and one-hot labels; with `mixup_alpha > 0` each batch is mixed with itself
    reversed, one lambda per batch. Examples are shuffled before augmentation,
    so the buffer holds raw uint8 images rather than float32 crops.

    The stream is a function of `seed` and the position alone: the example at
    position p of epoch e is drawn, cropped and flipped the same way however
    the stream is consumed. So `start_batch=k` continues exactly after k
    batches (a resumed run sees what an uninterrupted one would), and
    `batch_split=n` yields each batch, already mixed as a whole, as n
    consecutive micro-batches: gradient accumulation or replicas then see
    the same examples and the same mixup as one whole batch.

    Args:
        source: a `Source`.
        resize: side of the square resize (HyperRule: 160 or 448).
        crop: side of the random square crop (HyperRule: 128 or 384).
        batch_size: examples per (global) batch; a last partial one is dropped.
        mixup_alpha: Beta(alpha, alpha) mixup; 0 turns it off.
        shuffle_buffer: examples in the shuffle buffer of sources that can
            only be streamed (`from_tfds`, `few_shot`, a `tf.data.Dataset`);
            `from_arrays` and `from_folder` sources are permuted whole each
            epoch, as a class-sorted source needs.
        seed: integer seed for shuffling and augmentation; None for fresh
            randomness on every run.
        repeat: repeat forever (for step-based schedules) or stop after one
            pass (then every pass is a freshly shuffled, augmented epoch).
        batch_split: yield each batch as this many micro-batches.
        start_batch: batches of the stream to skip (with `repeat`).
        flip: random left-right flips (True, the official behaviour).
        random_crop: random crops of the resized image (True, the official
            behaviour); False resizes to `(crop, crop)` directly.

    Example:

    >>> import numpy as np
    >>> source = from_arrays(np.zeros((8, 20, 24, 3), "uint8"), np.arange(8) % 2)
    >>> images, labels = next(iter(train_pipeline(source, resize=16, crop=12, batch_size=4)))
    >>> images.shape, labels.shape
    (TensorShape([4, 12, 12, 3]), TensorShape([4, 2]))
    """
    _check_positive(resize=resize, crop=crop, batch_size=batch_size)
    if crop > resize:
        raise ValueError(f"crop ({crop}) must not exceed resize ({resize}): the crop is taken from the resized image.")
    if mixup_alpha < 0:
        raise ValueError(f"mixup_alpha must be >= 0 (0 turns mixup off), got {mixup_alpha}.")
    _check_one_batch(source, batch_size, repeat)
    dataset = _example_stream(source, seed, shuffle_buffer, repeat, start_batch * batch_size)
    dataset = dataset.map(
        lambda example, example_seed: (
            *_resize_crop_flip(*example, example_seed, resize if random_crop else crop, crop, flip),
            example_seed,
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return _batches(dataset, source.num_classes, batch_size, mixup_alpha, batch_split)


def eval_pipeline(source, *, crop, batch_size):
    """The BiT evaluation pipeline: resize straight to `(crop, crop)`, scale to [-1, 1].

    Deterministic; the last batch keeps the remainder so every example counts.

    Example:

    >>> import numpy as np
    >>> source = from_arrays(np.zeros((5, 20, 24, 3), "uint8"), [0, 1, 2, 0, 1])
    >>> [tuple(images.shape) for images, _ in eval_pipeline(source, crop=12, batch_size=4)]
    [(4, 12, 12, 3), (1, 12, 12, 3)]
    """
    _check_positive(crop=crop, batch_size=batch_size)
    dataset = source.dataset.map(
        lambda image, label: (_scale(tf.image.resize(image, (crop, crop))), label),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return dataset.batch(batch_size).map(_one_hot(source.num_classes)).prefetch(tf.data.AUTOTUNE)


def mixup(images, labels, alpha, seed=None):
    """Mix a batch with itself reversed: one lambda ~ Beta(alpha, alpha) per batch.

    `lam * x + (1 - lam) * reverse(x)` for the images and the one-hot labels
    alike. Works eagerly and inside `tf.data`.

    Args:
        images: batch of images, float.
        labels: batch of one-hot (float) labels.
        alpha: Beta concentration; 0 returns the batch unchanged.
        seed: None for a fresh lambda on every call; an int or a shape-(2,)
            integer tensor for a stateless draw (the same seed gives the same
            lambda, so a pipeline passes a new seed for every batch).

    Example:

    >>> import numpy as np
    >>> images = np.stack([np.zeros((2, 2, 3)), np.ones((2, 2, 3))]).astype("float32")
    >>> labels = np.eye(2, dtype="float32")
    >>> mixed_images, mixed_labels = mixup(images, labels, alpha=0.2, seed=3)
    >>> bool(np.allclose(mixed_images[0], mixed_labels[0, 1]))
    True
    """
    if alpha < 0:
        raise ValueError(f"mixup alpha must be >= 0 (0 turns mixup off), got {alpha}.")
    images = tf.convert_to_tensor(images)
    labels = tf.convert_to_tensor(labels)
    if alpha == 0:
        return images, labels
    if not labels.dtype.is_floating:
        raise ValueError(
            f"mixup needs one-hot float labels, got {labels.dtype.name} labels. "
            f"Convert them with tf.one_hot(labels, num_classes)."
        )
    lam = _sample_beta(alpha, seed)
    return _mix(images, lam), _mix(labels, lam)


def upstream_pipeline(
    source,
    *,
    image_size=224,
    batch_size,
    seed=None,
    repeat=True,
    shuffle_buffer=10_000,
    batch_split=1,
    start_batch=0,
    crop_area=(0.08, 1.0),
    flip=True,
):
    """The BiT-S/M pre-training pipeline: Inception-style crop, flip, [-1, 1].

    A random crop of 8%-100% of the image area (`crop_area`) with an aspect
    ratio in [3/4, 4/3] in pixels (the standard Inception crop, drawn by
    `tf.image.stateless_sample_distorted_bounding_box` from the example's
    seed: up to 10 attempts, else the whole image) is resized to
    `(image_size, image_size)` by keras-cv's `RandomCropAndResize`, flipped left-right with
    probability 1/2 (unless `flip=False`, for data whose mirror image
    changes the label), and scaled to [-1, 1]. Batches have exactly `batch_size`
    examples and one-hot labels. The stream depends on `seed` and the position
    only, as in `train_pipeline`, whose `batch_split` and `start_batch` it shares.

    Example:

    >>> import numpy as np
    >>> source = from_arrays(np.zeros((4, 40, 30, 3), "uint8"), [0, 1, 2, 3])
    >>> images, labels = next(iter(upstream_pipeline(source, image_size=16, batch_size=2)))
    >>> images.shape, labels.shape
    (TensorShape([2, 16, 16, 3]), TensorShape([2, 4]))
    """
    # Imported here: keras-cv is slow to import and only this recipe uses it.
    import keras_cv

    _check_positive(image_size=image_size, batch_size=batch_size)
    _check_one_batch(source, batch_size, repeat)
    low, high = arguments.crop_area(crop_area)
    # Built once, outside the map function: a layer made inside it would be re-made at every trace.
    crop_and_resize = keras_cv.layers.RandomCropAndResize(
        target_size=(image_size, image_size), crop_area_factor=(low, high), aspect_ratio_factor=(3 / 4, 4 / 3)
    )

    def augment(example, example_seed):
        image, label = example
        box_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(example_seed, 2))
        image = crop_and_resize.augment_image(tf.cast(image, tf.float32), _inception_box(image, box_seed, low, high))
        if flip:
            image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
        return _scale(image), label, example_seed

    dataset = _example_stream(source, seed, shuffle_buffer, repeat, start_batch * batch_size)
    dataset = dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return _batches(dataset, source.num_classes, batch_size, 0.0, batch_split)


def _inception_box(image, seed, low_area=0.08, high_area=1.0):
    """[[y1, x1, y2, x2]], normalised: the standard Inception crop of `image`, drawn from `seed`.

    As `tf.image.stateless_sample_distorted_bounding_box` draws it: a share
    of the area in [low_area, high_area] and an aspect ratio in [3/4, 4/3] in
    pixels, up to 10 attempts, else the whole image.
    """
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.zeros((1, 0, 4)),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(low_area, high_area),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    extent = tf.cast(tf.shape(image)[:2], tf.float32)
    start = tf.cast(begin[:2], tf.float32) / extent
    end = tf.cast(begin[:2] + size[:2], tf.float32) / extent
    return [[start[0], start[1], end[0], end[1]]]


def _to_rgb(image):
    """A `(H, W, 3)` image from a grayscale, RGB or RGBA one (alpha dropped)."""
    channels = image.shape[-1]
    if channels == 1:
        return tf.image.grayscale_to_rgb(image)
    if channels == 4:
        return image[..., :3]
    if channels == 3:
        return image
    raise ValueError(f"Images must have 1, 3 or 4 channels, got shape {image.shape}.")


def _as_uint8_rgb(images):
    """`(N, H, W, 3)` uint8 from RGB or grayscale arrays with values in [0, 255]."""
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (N, H, W, 3) RGB or (N, H, W) grayscale, got shape {images.shape}.")
    if not (np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)):
        raise ValueError(f"images must be integers or floats in [0, 255], got dtype {images.dtype}.")
    if images.dtype != np.uint8 and images.size:
        low, high = images.min(), images.max()
        if not (0 <= low and high <= 255):
            raise ValueError(
                f"images must have values in [0, 255], got [{low}, {high}]. Rescale them, e.g. "
                f"(x + 1) * 127.5 for images in [-1, 1]."
            )
        if np.issubdtype(images.dtype, np.floating) and 0 < high <= 1:
            warnings.warn(
                f"images are floats with maximum {high}: they look like [0, 1] images, but "
                f"from_arrays expects [0, 255]. Multiply them by 255.",
                stacklevel=3,
            )
        images = np.round(images).astype(np.uint8)
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def _label_type_error(labels):
    """What to say about labels that are not integer class ids."""
    message = f"labels must be integer class ids in [0, num_classes), got dtype {labels.dtype}"
    if labels.dtype.kind in "USO":
        return (
            f"{message} (e.g. {labels.flat[0]!r}). Map class names to ids first: "
            f"`class_names, ids = np.unique(labels, return_inverse=True)`, then pass `ids` "
            f"(class i is class_names[i])."
        )
    if labels.dtype.kind == "f" and np.all(np.isfinite(labels)) and np.all(labels == np.round(labels)):
        return f"{message} holding whole numbers. Pass them as integers: `np.asarray(labels, dtype=np.int64)`."
    return f"{message}. Pass one integer class id per image, e.g. 0..num_classes-1."


def _normalized_extensions(extensions):
    """Lower-case endings without the dot, from a string or a sequence of strings."""
    if isinstance(extensions, (str, os.PathLike)):
        extensions = [extensions]
    try:
        extensions = list(extensions)
    except TypeError:
        extensions = [extensions]
    if not extensions or not all(isinstance(e, str) and e.strip(". ") for e in extensions):
        raise ValueError(f"extensions must be a file ending such as '.png' or a sequence of them, got {extensions!r}.")
    return tuple(dict.fromkeys(e.strip().lstrip(".").lower() for e in extensions))


def _files_under(folder):
    """Paths of the non-hidden files under `folder` (recursively), sorted."""
    found = []
    for directory, subdirectories, files in os.walk(folder):
        subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
        found.extend(os.path.join(directory, f) for f in files if not f.startswith("."))
    return sorted(found)


def _has_image_signature(path):
    """Whether the first bytes of `path` are those of an image `tf.io.decode_image` reads."""
    try:
        with open(path, "rb") as file:
            head = file.read(8)
    except OSError:
        return False
    return head.startswith(_IMAGE_SIGNATURES)


def _decode_image(path):
    return tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)


def _decodes(path):
    try:
        _decode_image(path)
    except tf.errors.OpError:
        return False
    return True


def _some(files, shown=5):
    return ", ".join(sorted(map(str, files))[:shown]) + (", ..." if len(files) > shown else "")


def _count(dataset):
    cardinality = int(dataset.cardinality())
    if cardinality >= 0:
        return cardinality
    return int(dataset.reduce(np.int64(0), lambda count, example: count + 1))


def _class_name(source, class_id):
    return source.class_names[class_id] if source.class_names else class_id


def _check_positive(**sizes):
    for name, value in sizes.items():
        arguments.positive_int(name, value)


def _check_one_batch(source, batch_size, repeat):
    if not repeat and source.num_examples < batch_size:
        raise ValueError(
            f"The source has {source.num_examples} examples, fewer than one batch of {batch_size}; "
            f"without repeat the pipeline, which drops partial batches, would be empty. "
            f"Lower batch_size or pass repeat=True."
        )


def _example_stream(source, seed, shuffle_buffer, repeat, start):
    """(example, example_seed) from `start` on: epoch e shuffled and augmented by (seed, e, position) alone."""
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % 2**31)
    base = tf.constant([seed, _STREAM_SALT], tf.int64)
    if repeat:
        first_epoch, offset = divmod(int(start), source.num_examples)
        epochs = tf.data.Dataset.range(first_epoch, 2**62)
    elif start:
        raise ValueError("start_batch needs repeat=True: a single pass has no later position to start from.")
    else:
        # A finite pipeline is iterated once per Keras epoch: each pass draws a new epoch.
        epochs, offset = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1), 0

    def epoch(index):
        epoch_seed = tf.random.experimental.stateless_fold_in(base, index)
        if source.by_index is not None:
            order = tf.random.experimental.stateless_shuffle(tf.range(source.num_examples, dtype=tf.int64), seed=epoch_seed)
            examples = source.by_index(tf.data.Dataset.from_tensor_slices(order))
        else:
            examples = _shuffled(source.dataset, shuffle_buffer, epoch_seed[0])
        return examples.enumerate().map(
            lambda position, example: (example, tf.random.experimental.stateless_fold_in(epoch_seed, position))
        )

    return epochs.flat_map(epoch).skip(offset)


def _shuffled(dataset, shuffle_buffer, seed):
    """`dataset` shuffled by the int64 tensor `seed` alone, whatever the global TensorFlow seed.

    Runs while tf.data traces a function. Without a graph-level seed, TensorFlow
    pairs the op seed with a fixed default; with one it would mix the user's
    global seed in (and fail on a global seed of 0 with a tensor op seed).
    """
    graph = tf.compat.v1.get_default_graph()
    graph_seed, graph.seed = graph.seed, None
    try:
        return dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=False)
    finally:
        graph.seed = graph_seed


def _batches(dataset, num_classes, batch_size, mixup_alpha, batch_split):
    """Global batches of (images, one-hot labels), mixed whole, then split into `batch_split` micro-batches."""
    if not isinstance(batch_split, (int, np.integer)) or batch_split < 1 or batch_size % batch_split:
        raise ValueError(f"batch_split must be a positive integer dividing batch_size={batch_size}, got {batch_split!r}.")

    def finish(images, labels, seeds):
        labels = tf.one_hot(_checked_labels(labels, num_classes), num_classes, dtype=tf.float32)
        if mixup_alpha > 0:  # one lambda per batch, drawn from the seed of its first example
            images, labels = mixup(images, labels, mixup_alpha, seed=tf.random.experimental.stateless_fold_in(seeds[0], 1))
        return images, labels

    dataset = dataset.batch(batch_size, drop_remainder=True).map(finish)
    if batch_split > 1:
        dataset = dataset.unbatch().batch(batch_size // batch_split, drop_remainder=True)
    # Every worker reads the whole stream and keeps its share of each batch, so the
    # global batch (and its mixup) is the same on any number of hosts.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def _resize_crop_flip(image, label, seed, resize, crop, flip):
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image = tf.image.resize(image, (resize, resize))
    if resize != crop:
        image = tf.image.stateless_random_crop(image, (crop, crop, 3), seed=crop_seed)
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    return _scale(image), label


def _scale(image):
    """[0, 255] -> [-1, 1] float32, the input range of BiT models."""
    return preprocess.to_model_range(tf.cast(image, tf.float32))


def _one_hot(num_classes):
    return lambda images, labels: (images, tf.one_hot(_checked_labels(labels, num_classes), num_classes, dtype=tf.float32))


def _checked_labels(labels, num_classes):
    """`labels`, after checking they are class ids in [0, num_classes): tf.one_hot maps others to all-zero rows."""
    message = (
        f"labels must be class ids in [0, {num_classes}): the data has a label outside it. Fix the labels, or give "
        f"the Source (and the model's head) num_classes greater than the largest label."
    )
    with tf.control_dependencies(
        [
            tf.debugging.assert_non_negative(labels, message=message),
            tf.debugging.assert_less(labels, tf.cast(num_classes, labels.dtype), message=message),
        ]
    ):
        return tf.identity(labels)


def _sample_beta(alpha, seed):
    """lam ~ Beta(alpha, alpha) as X / (X + Y) with X, Y ~ Gamma(alpha)."""
    # float64: with a small alpha, float32 gamma draws underflow to 0 often
    # enough to matter; divide_no_nan covers both underflowing at once.
    if seed is None:
        gammas = tf.random.gamma((2,), alpha, dtype=tf.float64)
    else:
        gammas = tf.random.stateless_gamma((2,), seed=_stateless_seed(seed), alpha=alpha, dtype=tf.float64)
    return tf.math.divide_no_nan(gammas[0], gammas[0] + gammas[1])


def _stateless_seed(seed):
    seed = tf.cast(seed, tf.int64)
    return tf.stack([seed, tf.constant(0, tf.int64)]) if seed.shape.rank == 0 else seed


def _mix(batch, lam):
    lam = tf.cast(lam, batch.dtype)
    return lam * batch + (1 - lam) * tf.reverse(batch, axis=[0])
