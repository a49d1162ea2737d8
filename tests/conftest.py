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
    yield
    keras.config.set_dtype_policy("float32")
    keras.backend.clear_session()
    gc.collect()


@pytest.fixture
def tiny():

    return bit_keras.Variant(units=(1, 1, 1, 1), width=1)
