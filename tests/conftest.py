import gc
import os
import sys

try:  # torchvision (through timm) crashes when imported after TensorFlow; torch first is fine
    import torch  # noqa: F401
    import torchvision  # noqa: F401
except ImportError:  # a declared test dependency: tests/test_families.py fails on its own import
    pass

import keras
import pytest

import bit_keras  # noqa: F401  (before Keras imports TensorFlow: the library's TensorFlow settings apply)

sys.path.insert(0, os.path.dirname(__file__))

BACKEND = keras.backend.backend()

# Scripts that tests run in their own processes, not test modules (they parse arguments when imported).
collect_ignore = ["fit_worker.py"]

requires_tensorflow = pytest.mark.skipif(BACKEND != "tensorflow", reason="needs the TensorFlow backend")


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    keras.config.set_dtype_policy("float32")
    registered = _custom_gradients()
    yield
    keras.config.set_dtype_policy("float32")
    keras.backend.clear_session()
    _forget_custom_gradients(_custom_gradients() - registered)
    gc.collect()


def _custom_gradients():
    if BACKEND != "tensorflow":
        return set()
    from tensorflow.python.framework import ops

    return {name for name in ops._gradient_registry.list() if name.startswith("CustomGradient-")}


def _forget_custom_gradients(names):
    """Drops the custom gradients that a finished test's traces registered, and the layers' shared functions.

    TensorFlow registers every `tf.custom_gradient` traced in a graph in a
    global table, for the life of the process, holding the traced graph and
    the weights captured in it: Keras' own optimizers register one per
    traced training step (their all-reduce). A test's models are gone once
    it ends, and no gradient of theirs is asked for again; the layers'
    shared functions, whose traces may have registered some of these, are
    traced anew by the next test.
    """
    if not names:
        return
    from tensorflow.python.framework import ops

    from bit_keras import layers

    layers._tensorflow_function.cache_clear()
    for name in names:
        ops._gradient_registry._registry.pop(name, None)


@pytest.fixture
def tiny():

    return bit_keras.Variant(units=(1, 1, 1, 1), width=1)
