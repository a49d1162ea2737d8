"""The one check every SavedModel operation shares: the TensorFlow backend."""

import keras


def require_tensorflow(operation):
    """Raises a `RuntimeError` naming the fix when Keras does not run on TensorFlow."""
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise RuntimeError(
            f"{operation} needs the TensorFlow backend of Keras (a SavedModel is a TensorFlow graph), "
            f"but this process runs the {backend!r} backend. Set KERAS_BACKEND=tensorflow before keras "
            f"is first imported, e.g. `KERAS_BACKEND=tensorflow python -m hub_export ...`."
        )
