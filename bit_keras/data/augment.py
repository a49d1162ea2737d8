"""Augmentation of one image or one batch, every random draw stateless (from a seed).

The Inception-style crop box of the upstream pipeline, the resize, random
crop and flip of the fine-tuning one, the scaling of [0, 255] pixels to the
[-1, 1] that BiT models take, and `mixup` with its Beta(alpha, alpha) draw.
"""

from bit_keras import optional, preprocess

tf = optional.tensorflow("bit_keras.data (tf.data pipelines, from_tfds, from_folder, from_arrays)")


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


def inception_box(image, seed, low_area=0.08, high_area=1.0):
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


def resize_crop_flip(image, label, seed, resize, crop, flip):
    """(image, label): `image` resized to `(resize, resize)`, then randomly cropped to `(crop, crop)` and (with
    `flip`) flipped left-right, both drawn from `seed`, and scaled to [-1, 1]."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image = tf.image.resize(image, (resize, resize))
    if resize != crop:
        image = tf.image.stateless_random_crop(image, (crop, crop, 3), seed=crop_seed)
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    return scale(image), label


def scale(image):
    """[0, 255] -> [-1, 1] float32, the input range of BiT models."""
    return preprocess.to_model_range(tf.cast(image, tf.float32))
