"""Big Transfer (BiT) for Keras 3: ResNet-v2 models, checkpoints, HyperRule fine-tuning, upstream pre-training.

The model, the weight families that need only NumPy (`.npz`, `.safetensors`,
transformers folders, `.keras`), `HyperRule` and `model.fit` on arrays work
under every Keras backend, with or without TensorFlow installed. The
trainers, `data`, `tasks` and `hub_export` are built on tf.data and
tf.distribute: they are imported on first use, and say so when TensorFlow is
missing.
"""

__version__ = "0.1.0"

# First, before anything imports TensorFlow: oneDNN kernels on, start-up log noise filtered out.
from bit_keras import _startup

if _startup.configured_backend() == "tensorflow":
    _startup.import_tensorflow()

from bit_keras import config, distribute, hyperrule, labels, optional, preprocess, training  # noqa: E402 (after the quiet import)
from bit_keras.checkpoints import save_official, save_timm, save_transformers
from bit_keras.folding import fold
from bit_keras.hyperrule import HyperRule
from bit_keras.labels import decode_predictions
from bit_keras.layers import GroupNormalization, StandardizedConv2D
from bit_keras.models import BiT
from bit_keras.resnet import Variant, get_variant, variants

# Built on tf.data: imported when first used, so that the rest needs no TensorFlow.
_NEED_TENSORFLOW = {
    "data": ("bit_keras.data", None),
    "tasks": ("bit_keras.tasks", None),
    "suites": ("bit_keras.suites", None),
    "BiTFineTuner": ("bit_keras.finetune", "BiTFineTuner"),
    "BiTPretrainer": ("bit_keras.pretrain", "BiTPretrainer"),
    "BiTDistiller": ("bit_keras.distill", "BiTDistiller"),
}


def __getattr__(name):
    if name not in _NEED_TENSORFLOW:
        raise AttributeError(f"module 'bit_keras' has no attribute {name!r}")
    import importlib

    module_name, attribute = _NEED_TENSORFLOW[name]
    optional.tensorflow(f"bit_keras.{name}")
    module = importlib.import_module(module_name)
    value = getattr(module, attribute) if attribute else module
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_NEED_TENSORFLOW))


if _startup.configured_backend() == "tensorflow":  # eager where TensorFlow is the backend anyway
    from bit_keras import data, tasks  # noqa: E402, F401
    from bit_keras.distill import BiTDistiller  # noqa: E402
    from bit_keras.finetune import BiTFineTuner  # noqa: E402
    from bit_keras.pretrain import BiTPretrainer  # noqa: E402
