"""`bit_keras.BiT`: the public constructor, with weights from any source."""

import os

import keras

from bit_keras import checkpoints
from bit_keras.resnet import build_resnet, get_variant


def BiT(
    variant,
    weights=None,
    num_classes=None,
    include_top=True,
    pooling=None,
    input_shape=(None, None, 3),
    name=None,
):
    """A BiT ResNet-v2 as a functional `keras.Model` that outputs logits.

    Inputs are RGB images scaled to [-1, 1], i.e. `(pixels - 127.5) / 127.5`.

    Args:
        variant: a name such as "BiT-M-R50x1" (BiT-S/M/L x R50/101/152 x 1-4), or
            a `bit_keras.Variant` for a custom size.
        weights: None (fresh weights), a path to an official `.npz`/`.h5`
            checkpoint, a `.keras` or `.weights.h5` file saved from a bit_keras
            model, an exported SavedModel folder, or a release name such as
            "BiT-M-R50x1" (downloaded once, see `checkpoints.cache_dir`).
        num_classes: None keeps the checkpoint's head (or the variant's
            upstream head: 1000 for BiT-S, 21843 for BiT-M); a different count
            gives a new head initialised to zeros, as BiT fine-tuning does.
        include_top: False drops the head and returns the final feature map.
        pooling: with `include_top=False`, "avg" or "max" pools the feature
            map to the 2048*width pre-logits vector.
        input_shape: (height, width, 3); any size works with the default.
        name: model name; the variant's by default.

    Example:

    >>> import numpy as np, bit_keras
    >>> model = bit_keras.BiT(bit_keras.Variant(units=(1, 1, 1, 1)), num_classes=10)
    >>> model.predict(np.zeros((2, 64, 64, 3), "float32"), verbose=0).shape
    (2, 10)
    """
    spec = get_variant(variant)
    state, source = _read_weights(weights, spec)
    checkpoint_classes = state[checkpoints.HEAD_BIAS].shape[0] if state and checkpoints.HEAD_BIAS in state else None
    classes = None
    if include_top:
        classes = num_classes or checkpoint_classes or spec.upstream_classes
        if not classes:
            raise ValueError(f"{spec.name} has no upstream head; pass num_classes= for a classifier, or include_top=False.")
    model = build_resnet(spec, classes, include_top, pooling, input_shape, name)
    if state is not None:
        keep_head = include_top and classes == checkpoint_classes
        checkpoints.load_state(model, state, source, skip_head=not keep_head)
    return model


def _read_weights(weights, spec):
    """Official-layout state and a description of where it came from."""
    if weights is None:
        return None, None
    path = os.fspath(weights)
    if os.path.isdir(path):
        return checkpoints.read_saved_model(path), path
    if os.path.isfile(path):
        if path.endswith(".keras"):
            return checkpoints.model_state(keras.saving.load_model(path, compile=False)), path
        if path.endswith(".weights.h5"):
            return _read_keras_weights(path, spec), path
        return checkpoints.read_checkpoint(path), path
    if checkpoints.find_release(path) is not None:
        local = checkpoints.download(path)
        return checkpoints.read_checkpoint(local), f"{path} ({local})"
    raise ValueError(
        f"weights={weights!r} is neither an existing file or folder nor a known release name. "
        f"Pass a path to a .npz/.h5/.keras/.weights.h5 file, a SavedModel folder, or a name such as 'BiT-M-R50x1'."
    )


def _read_keras_weights(path, spec):
    """Reads a Keras 3 `.weights.h5` file saved from a bit_keras model of `spec`.

    Such files name weights by layer class and order, not layer name, so they
    load into a model of the same architecture, whose head size is read off
    the file's only Dense layer.
    """
    import h5py

    with h5py.File(path, "r") as f:
        if "layers" not in f:
            raise ValueError(f"{path} is not a Keras 3 .weights.h5 file (no 'layers' group).")
        head = f["layers"].get("dense")
        classes = head["vars"]["1"].shape[0] if head is not None else None
    template = build_resnet(spec, classes, include_top=classes is not None)
    try:
        template.load_weights(path)
    except ValueError as error:
        raise ValueError(f"{path} does not fit {spec.name}: {error}. Pass the variant it was saved from.") from None
    return checkpoints.model_state(template)
