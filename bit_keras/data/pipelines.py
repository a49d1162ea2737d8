"""The input pipelines from a `Source` to batches: fine-tuning, evaluation and upstream pre-training.

`train_pipeline` (BiT-HyperRule fine-tuning), `eval_pipeline` and
`upstream_pipeline` (BiT-S/M pre-training), and the seeded example stream
and the batching the training ones share: the example at each position of
the stream is drawn and augmented from the seed and that position alone.
"""

import numpy as np

from bit_keras import arguments, optional
from bit_keras.data.augment import inception_box, mixup, resize_crop_flip, scale

tf = optional.tensorflow("bit_keras.data (tf.data pipelines, from_tfds, from_folder, from_arrays)")

# Keeps the training streams' random numbers apart from other uses of the user's seed.
_STREAM_SALT = 0x5EED


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
    >>> from bit_keras.data import from_arrays
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
            *resize_crop_flip(*example, example_seed, resize if random_crop else crop, crop, flip),
            example_seed,
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return _batches(dataset, source.num_classes, batch_size, mixup_alpha, batch_split)


def eval_pipeline(source, *, crop, batch_size, teacher_view=None):
    """The BiT evaluation pipeline: resize straight to `(crop, crop)`, scale to [-1, 1].

    Deterministic; the last batch keeps the remainder so every example counts.
    `teacher_view=size` makes the images a pair, the second resized to
    `(size, size)`, as `upstream_pipeline` gives them.

    Example:

    >>> import numpy as np
    >>> from bit_keras.data import from_arrays
    >>> source = from_arrays(np.zeros((5, 20, 24, 3), "uint8"), [0, 1, 2, 0, 1])
    >>> [tuple(images.shape) for images, _ in eval_pipeline(source, crop=12, batch_size=4)]
    [(4, 12, 12, 3), (1, 12, 12, 3)]
    """
    _check_positive(crop=crop, batch_size=batch_size)
    if teacher_view is not None:
        _check_positive(teacher_view=teacher_view)

    def prepare(image, label):
        if teacher_view:
            return (_resized(image, crop), _resized(image, teacher_view)), label
        return _resized(image, crop), label

    dataset = source.dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size).map(_one_hot(source.num_classes)).prefetch(tf.data.AUTOTUNE)


def _resized(image, size):
    return scale(tf.image.resize(image, (size, size)))


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
    mixup_alpha=0.0,
    teacher_view=None,
):
    """The BiT-S/M pre-training pipeline: Inception-style crop, flip, [-1, 1]; also distillation's.

    A random crop of 8%-100% of the image area (`crop_area`) with an aspect
    ratio in [3/4, 4/3] in pixels (the standard Inception crop, drawn by
    `tf.image.stateless_sample_distorted_bounding_box` from the example's
    seed: up to 10 attempts, else the whole image) is resized to
    `(image_size, image_size)` by keras-cv's `RandomCropAndResize`, flipped left-right with
    probability 1/2 (unless `flip=False`, for data whose mirror image
    changes the label), and scaled to [-1, 1]. Batches have exactly `batch_size`
    examples and one-hot labels. The stream depends on `seed` and the position
    only, as in `train_pipeline`, whose `batch_split`, `start_batch` and
    `mixup_alpha` it shares (the upstream recipe has no mixup).

    `teacher_view=size` (distillation's fixed-teacher baseline) makes the
    images a pair: (the augmented and mixed images, the same examples resized
    straight to `(size, size)`, neither cropped, flipped nor mixed).

    Example:

    >>> import numpy as np
    >>> from bit_keras.data import from_arrays
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
        image = crop_and_resize.augment_image(tf.cast(image, tf.float32), inception_box(image, box_seed, low, high))
        if flip:
            image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
        if teacher_view:
            return (scale(image), _resized(example[0], teacher_view)), label, example_seed
        return scale(image), label, example_seed

    if teacher_view is not None:
        _check_positive(teacher_view=teacher_view)
    dataset = _example_stream(source, seed, shuffle_buffer, repeat, start_batch * batch_size)
    dataset = dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return _batches(dataset, source.num_classes, batch_size, mixup_alpha, batch_split)


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
            seed = tf.random.experimental.stateless_fold_in(seeds[0], 1)
            if isinstance(images, tuple):  # (augmented, un-augmented view): only the augmented one is mixed
                mixed, labels = mixup(images[0], labels, mixup_alpha, seed=seed)
                return (mixed, images[1]), labels
            images, labels = mixup(images, labels, mixup_alpha, seed=seed)
        return images, labels

    dataset = dataset.batch(batch_size, drop_remainder=True).map(finish)
    if batch_split > 1:
        dataset = dataset.unbatch().batch(batch_size // batch_split, drop_remainder=True)
    # Every worker reads the whole stream and keeps its share of each batch, so the
    # global batch (and its mixup) is the same on any number of hosts.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


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
