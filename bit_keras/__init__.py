"""Big Transfer (BiT) for Keras 3: ResNet-v2 models, checkpoints, HyperRule fine-tuning, upstream pre-training."""

__version__ = "0.1.0"

# First, before anything imports TensorFlow: oneDNN kernels on, start-up log noise filtered out.
from bit_keras import _startup

_startup.import_tensorflow()

from bit_keras import data, distribute, hyperrule, training  # noqa: E402 (after the quiet import)
from bit_keras.checkpoints import save_official, save_timm, save_transformers
from bit_keras.finetune import BiTFineTuner
from bit_keras.hyperrule import HyperRule
from bit_keras.layers import GroupNormalization, StandardizedConv2D
from bit_keras.models import BiT
from bit_keras.pretrain import BiTPretrainer
from bit_keras.resnet import Variant, get_variant, variants
