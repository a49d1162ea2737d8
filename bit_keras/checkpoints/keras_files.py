"""This package's own files: `.keras` models and Keras 3 `.weights.h5` files saved from a bit_keras model."""

import os
import zipfile

import keras

from bit_keras.checkpoints.mapping import model_state
from bit_keras.resnet import build_resnet


def read_keras(path):
    """The official-layout weights of a `.keras` file saved from a bit_keras model."""
    return model_state(load_keras(path))


def load_keras(path):
    """The model of a `.keras` file, uncompiled; a ValueError naming the file when it is truncated or foreign.

    The layers the file names (bit_keras>StandardizedConv2D, ...) are registered by `bit_keras.layers`,
    which this module imports through `resnet`.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such .keras file.")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not a complete .keras file (not a readable zip archive); it may be truncated. Save it again."
        )
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:
        raise ValueError(
            f"{path} could not be loaded as a Keras model ({type(error).__name__}: {str(error).splitlines()[0][:300]}). "
            f"It may be truncated or saved by another package; bit_keras models need `import bit_keras` first "
            f"(it registers bit_keras>StandardizedConv2D and bit_keras>GroupNormalization)."
        ) from None


def read_keras_weights(path, spec):
    """Reads a Keras 3 `.weights.h5` file saved from a bit_keras model of `spec`.

    Such files name weights by layer class and order, not layer name, so they
    load into a model of the same architecture, whose head size is read off
    the file's only Dense layer.
    """
    import h5py

    if spec is None:
        raise ValueError(f"{path} is a .weights.h5 file, which does not record its architecture; pass the variant, not 'auto'.")
    try:
        with h5py.File(path, "r") as f:
            if "layers" not in f:
                raise ValueError(f"{path} is not a Keras 3 .weights.h5 file (no 'layers' group).")
            head = f["layers"].get("dense")
            classes = head["vars"]["1"].shape[0] if head is not None else None
    except OSError as error:
        raise ValueError(f"{path} is not a readable .weights.h5 file ({error}); it may be truncated. Save it again.") from None
    template = build_resnet(spec, classes, include_top=classes is not None)
    try:
        template.load_weights(path)
    except (ValueError, OSError, KeyError) as error:
        raise ValueError(f"{path} does not fit {spec.name}: {error}. Pass the variant it was saved from.") from None
    return model_state(template)
