"""`bit_keras.BiT`: the public constructor, with weights from any source."""

import contextlib
import numbers
import warnings

import keras

from bit_keras import arguments, checkpoints, distribute, resnet
from bit_keras.config import MIXED_PRECISION
from bit_keras.resnet import WS_EPSILON, build_resnet, get_variant

# /proc/cpuinfo flags of CPUs with bfloat16 arithmetic: x86 AVX-512 BF16 and AMX, Arm's BF16 extension.
BFLOAT16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def BiT(
    variant,
    weights=None,
    num_classes=None,
    include_top=True,
    pooling=None,
    input_shape=(None, None, 3),
    name=None,
    ws_epsilon=WS_EPSILON,
    strategy=None,
    mixed_precision=None,
    pyramid_outputs=False,
):
    """A BiT ResNet-v2 as a functional `keras.Model` that outputs logits.

    Inputs are RGB images scaled to [-1, 1], i.e. `(pixels - 127.5) / 127.5`.

    Args:
        variant: a name such as "BiT-M-R50x1" (BiT-S/M/L x R50/101/152 x 1-4),
            "R1-1-1-1x1" for a custom size, a `bit_keras.Variant`, or None /
            "auto" to read the architecture from `weights`.
        weights: None (fresh weights), a path to an official `.npz`/`.h5`
            checkpoint, a timm state dict (`.safetensors`, `.pth`/`.bin`), a
            transformers Bit folder, a `.keras` or `.weights.h5` file saved
            from a bit_keras model, a SavedModel folder (hub_export, TF Hub,
            Kaggle), or a release name: "BiT-M-R50x1" (the official bucket),
            "timm/resnetv2_50x1_bit.goog_in21k" or "google/bit-50" (Hugging
            Face Hub), "kaggle:google/bit/tensorFlow2/m-r50x1" (Kaggle Models).
        num_classes: None keeps the checkpoint's head (or the variant's
            upstream head: 1000 for BiT-S, 21843 for BiT-M); a different
            positive count gives a new head initialised to zeros, as BiT
            fine-tuning does.
        include_top: False drops the head and returns the final feature map.
        pooling: with `include_top=False`, "avg" or "max" pools the feature
            map to the 2048*width pre-logits vector.
        input_shape: (height, width, 3); any size works with the default.
        name: model name; the variant's by default.
        ws_epsilon: the weight-standardisation epsilon of every convolution:
            the official 1e-10 by default; 1e-8 reproduces timm and
            transformers (the difference is about 3e-5 of the largest logit).
        strategy: make every variable under this strategy: a name such as
            "mirrored" or "tpu", or an instance (see
            `bit_keras.distribute.resolve_strategy`); None uses the current scope.
        pyramid_outputs: with `include_top=False`, outputs a dict of the
            feature maps at strides 4, 8, 16 and 32 ("P2" to "P5", the names
            keras-hub backbones use) for detection and segmentation heads.
        mixed_precision: "mixed_bfloat16" or "mixed_float16" to compute in
            half precision (variables, GroupNorm statistics, weight
            standardisation and logits stay float32); None uses Keras' global
            dtype policy. The global policy is left as it was. On a CPU with
            no bfloat16 instructions (and no accelerator) "mixed_bfloat16"
            warns: it is emulated there, and training is many times slower.

    The returned model records where its weights came from:
    `model.weights_family` ("official", "timm", "transformers", "keras" or
    None for fresh weights) and `model.weights_source`. Nothing is warned
    when the family's own epsilon differs from `ws_epsilon`. It also has
    `model.class_names`, one name per output, where the weights say them
    (a transformers folder's id2label; the ImageNet names for a release name
    with a 1000 / 21843-class head, see `bit_keras.labels`), else None;
    `bit_keras.decode_predictions` turns logits into names.

    Example:

    >>> import numpy as np, bit_keras
    >>> model = bit_keras.BiT(bit_keras.Variant(units=(1, 1, 1, 1)), num_classes=10)
    >>> model.predict(np.zeros((2, 64, 64, 3), "float32"), verbose=0).shape
    (2, 10)
    """
    num_classes = _check_num_classes(num_classes)
    include_top = arguments.flag("include_top", include_top)
    pyramid_outputs = arguments.flag("pyramid_outputs", pyramid_outputs)
    resnet.check_outputs(include_top, pooling, pyramid_outputs)
    ws_epsilon = arguments.positive_float("ws_epsilon", ws_epsilon)
    input_shape = _check_input_shape(input_shape)
    auto = variant is None or (isinstance(variant, str) and variant.lower() == "auto")
    if auto and weights is None:
        raise ValueError("variant='auto' reads the architecture from weights=, but no weights were given. Name a variant.")
    spec = None if auto else get_variant(variant)
    record = checkpoints.read_weights(weights, spec)
    state = record.state if record else None
    if auto:
        spec = checkpoints.infer_variant(state)
        if spec is None:
            raise ValueError(
                f"{record.source} does not look like a BiT model ({checkpoints.describe(state)}); "
                f"its variant cannot be inferred. Pass the variant."
            )
    checkpoint_classes = state[checkpoints.HEAD_BIAS].shape[0] if state and checkpoints.HEAD_BIAS in state else None
    classes = None
    if include_top:
        classes = num_classes or checkpoint_classes or spec.upstream_classes
        if not classes:
            raise ValueError(f"{spec.name} has no upstream head; pass num_classes= for a classifier, or include_top=False.")
    with _dtype_policy(mixed_precision), distribute.scope(None if strategy is None else distribute.resolve_strategy(strategy)):
        if keras.config.dtype_policy().name == "mixed_bfloat16":  # after the strategy has connected any TPU
            _warn_if_bfloat16_is_emulated()
        model = build_resnet(
            spec, classes, include_top, pooling, input_shape, name, ws_epsilon=ws_epsilon, pyramid_outputs=pyramid_outputs
        )
    keep_head = state is not None and include_top and classes == checkpoint_classes
    if state is not None:
        checkpoints.load_state(model, state, record.source, skip_head=not keep_head)
    model.weights_family = record.family if record else None
    model.weights_source = record.source if record else None
    names = record.class_names if keep_head else None
    model.class_names = tuple(names) if names is not None and len(names) == classes else None
    return model


@contextlib.contextmanager
def _dtype_policy(name):
    if name is None:
        yield
        return
    if name not in MIXED_PRECISION:
        raise ValueError(f"mixed_precision must be None or one of {MIXED_PRECISION}, got {name!r}.")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _warn_if_bfloat16_is_emulated():
    """Warns when the model would run bfloat16 on a CPU that has no bfloat16 instructions.

    Every bfloat16 operation is emulated there; `benchmarks/bench_step.py
    --precision bf16` measures the cost against float32.
    """
    if distribute.accelerator_visible():
        return
    flags = distribute.cpu_flags()
    if flags is None or flags & BFLOAT16_CPU_FLAGS:
        return
    warnings.warn(
        "mixed_bfloat16 on a CPU without bfloat16 instructions (no avx512_bf16, amx_bf16 or bf16 among its "
        "/proc/cpuinfo flags): every bfloat16 operation is emulated, and training runs many times slower than "
        "in float32. Leave mixed_precision=None here; use mixed_bfloat16 on TPUs, recent GPUs and CPUs that have it.",
        stacklevel=3,
    )


def _check_num_classes(num_classes):
    if num_classes is None:
        return None
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(
            f"num_classes must be a positive integer (the classes of a new head) or None to keep the "
            f"checkpoint's head, got {num_classes!r}. Pass e.g. num_classes=10."
        )
    return int(num_classes)


def _check_input_shape(input_shape):
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = ()
    if len(shape) != 3 or shape[-1] != 3:
        raise ValueError(
            f"input_shape must be (height, width, 3): BiT takes RGB images with 3 channels, got {input_shape!r}. "
            f"Pass e.g. input_shape=(None, None, 3) or (224, 224, 3); convert grayscale images to RGB first."
        )
    return shape
