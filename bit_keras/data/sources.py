"""Labelled-image sources: `Source`, the ways to make one, and few-shot subsets of one.

A `Source` holds raw examples, before any preprocessing: uint8 RGB images
(sizes may differ) and int64 class ids, one example at a time. They come
from tensorflow-datasets (`from_tfds`), arrays (`from_arrays`), a folder of
class sub-folders (`from_folder`) or whatever a trainer's `fit` takes
(`as_source`); `few_shot` keeps k examples of each class, as the official
code draws them, and `digest` tells one source from another.
"""

import concurrent.futures
import dataclasses
import hashlib
import os
import pathlib
import sys
import warnings

import numpy as np

from bit_keras import arguments, optional

tf = optional.tensorflow("bit_keras.data (tf.data pipelines, from_tfds, from_folder, from_arrays)")

# First bytes of the formats `tf.io.decode_image` reads: JPEG (any APPn,
# including phone-camera MPO), PNG, GIF and BMP.
_IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")
# Threads that read file headers at start-up: I/O bound, so more than cores.
_IO_THREADS = 16


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

    def __post_init__(self):
        self.num_classes = arguments.positive_int("num_classes", self.num_classes)
        if self.class_names is not None:
            names = arguments.class_names("class_names", self.class_names, self.num_classes, f"num_classes is {self.num_classes}")
            self.class_names = list(names)


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
    dataset, info = tfds_load(name, split, data_dir)
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


def tfds_load(name, split, data_dir=None):
    """(dataset, info) of `tfds.load`, files in a fixed order; a dataset TFDS must first download is said at once.

    Offline, TFDS retries its download for minutes and then raises the HTTP
    library's error: it is said before which folder TFDS looks in, and after
    what to do.
    """
    # Imported here: it is slow to import and only TFDS sources need it.
    import tensorflow_datasets as tfds

    def load():
        return tfds.load(name, split=split, data_dir=data_dir, with_info=True, shuffle_files=False)

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception:  # TFDS' own errors for unknown names and versions: tfds.load raises them with its advice
        return load()
    if builder.is_prepared():
        return load()
    print(
        f"[data] {name} is not prepared in {builder.data_dir}: TFDS downloads and prepares it first (this needs the network)",
        file=sys.stderr,
        flush=True,
    )
    try:
        return load()
    except OSError as error:  # the HTTP library's connection errors among them
        raise ValueError(
            f"TFDS could not download {name} ({type(error).__name__}: {str(error).splitlines()[0][:200]}), which is not "
            f"prepared in {builder.data_dir}. Prepare it on a machine with the network (tfds.load({name!r})) and copy "
            f"its folder there, or pass data_dir= (--tfds_data_dir) the folder where it is prepared."
        ) from None


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
    images = _as_uint8_rgb(_stacked(images))
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(images):
        like_images = " They look like images: pass (images, labels), not a list of images." if labels.ndim >= 2 else ""
        raise ValueError(
            f"labels must be one class id per image: got labels of shape {labels.shape} for "
            f"{len(images)} images. Pass a 1-D array of {len(images)} integers.{like_images}"
        )
    if len(labels) == 0:
        raise ValueError("from_arrays got no examples; pass at least one image and label.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(_label_type_error(labels))
    num_classes = int(labels.max()) + 1 if num_classes is None else arguments.positive_int("num_classes", num_classes)
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
    verify = arguments.flag("verify", verify, also=("auto",))  # 1 is refused: it passed as True, then verified nothing
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
        image_spec = data.element_spec[0]
        if image_spec.shape.rank == 4:
            raise ValueError(
                f"This tf.data.Dataset is batched (images of shape {image_spec.shape}): the trainers batch it themselves, "
                f"one global batch per update. Pass it unbatched: dataset.unbatch()."
            )
        if dataset_size is None or num_classes is None:
            raise ValueError(
                "A tf.data.Dataset does not say how many examples and classes it has: wrap it as "
                "bit_keras.data.Source(dataset, num_examples, num_classes) (BiTFineTuner also takes dataset_size= and "
                "num_classes=), or use bit_keras.data.from_arrays / from_folder / from_tfds."
            )
        return Source(data, arguments.positive_int("dataset_size", dataset_size), num_classes)
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


def _stacked(images):
    """`images` as one array; images of different sizes cannot be one, and are refused saying what takes them."""
    try:
        return np.asarray(images)
    except ValueError:  # NumPy: "inhomogeneous shape"
        sizes = sorted({np.shape(image) for image in images})
        raise ValueError(
            f"images must be equally sized to make one (N, H, W, 3) array; these come in {len(sizes)} shapes "
            f"({', '.join(map(str, sizes[:3]))}{', ...' if len(sizes) > 3 else ''}). Resize them to one size, or save them "
            f"in one folder per class and use from_folder, which takes images of any size."
        ) from None


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
