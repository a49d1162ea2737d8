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


def pytest_collection_finish(session):
    # A full garbage collection walks every tracked object, and importing TensorFlow, PyTorch, Keras
    # and the test modules leaves about 700,000 that live as long as the process: walking them took
    # about a second per test (`keras.backend.clear_session()` below collects after each). Frozen,
    # they are skipped; what the tests themselves create is still collected.
    gc.freeze()


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")
    keras.backend.clear_session()  # and a garbage collection


@pytest.fixture
def tiny():

    return bit_keras.Variant(units=(1, 1, 1, 1), width=1)
