"""The BiT ResNet-v2 architectures: one builder driven by a table of variants.

A BiT model is a pre-activation ResNet-v2 whose convolutions are weight
standardised and whose batch norms are group norms (32 groups). Its name,
`BiT-{S,M,L}-R{depth}x{width}`, gives the upstream data it was trained on and
its size; the layout follows the official release so that every weight maps
to exactly one key of the official checkpoints.
"""

import dataclasses
import re

import keras
from keras import layers

from bit_keras import arguments
from bit_keras.layers import GroupNormalization, StandardizedConv2D

UNITS_PER_BLOCK = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
WIDTH_FACTORS = (1, 2, 3, 4)
RELEASED_ARCHITECTURES = ("R50x1", "R50x3", "R101x1", "R101x3", "R152x2", "R152x4")

# Upstream data of each family, and the classes of its pre-training head.
UPSTREAM = {
    "BiT-S": ("ILSVRC-2012", 1000),
    "BiT-M": ("ImageNet-21k", 21843),
    "BiT-L": ("JFT-300M", 18291),
}
RELEASED_FAMILIES = ("BiT-S", "BiT-M")  # BiT-L weights were never released.

_NAME = re.compile(r"^(BiT-[SML])-R(\d+)x(\d+)$")
_CUSTOM_NAME = re.compile(r"^(?:(BiT-[SML])-)?R(\d+)-(\d+)-(\d+)-(\d+)x(\d+)$")  # Variant.name of a custom size
WS_EPSILON = 1e-10  # the official code's weight-standardisation epsilon (timm and transformers: 1e-8)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One BiT architecture: units per block, width factor, upstream head.

    Args:
        units: number of residual units in each of the four blocks.
        width: width factor; block b has 64 * width * 2**(b-1) bottleneck
            channels and 4x as many outputs.
        family: "BiT-S", "BiT-M", "BiT-L", or None for a custom configuration.
        upstream_classes: classes of the upstream head, or None.

    Example:

    >>> tiny = Variant(units=(1, 1, 1, 1), width=1)
    >>> tiny.name
    'R1-1-1-1x1'
    """

    units: tuple
    width: int = 1
    family: str = None
    upstream_classes: int = None

    def __post_init__(self):
        try:
            units = tuple(arguments.positive_int("units", u) for u in self.units)
        except (TypeError, ValueError):
            units = ()
        if len(units) != 4:
            raise ValueError(f"units must be four positive integers (one count per block), got {self.units!r}.")
        object.__setattr__(self, "units", units)
        object.__setattr__(self, "width", arguments.positive_int("width", self.width))

    @property
    def architecture(self):
        depth = {v: k for k, v in UNITS_PER_BLOCK.items()}.get(self.units)
        if depth is None:
            return f"R{'-'.join(map(str, self.units))}x{self.width}"
        return f"R{depth}x{self.width}"

    @property
    def name(self):
        return f"{self.family}-{self.architecture}" if self.family else self.architecture

    @property
    def weights_released(self):
        return self.family in RELEASED_FAMILIES and self.architecture in RELEASED_ARCHITECTURES

    @property
    def feature_size(self):
        """Channels of the pre-logits vector: 2048 * width for the four blocks."""
        return 64 * self.width * 2 ** (len(self.units) - 1) * 4


def get_variant(variant):
    """Returns the `Variant` for a name such as "BiT-M-R50x1" or "R1-1-1-1x1", or `variant` itself.

    Custom sizes may carry a family, as checkpoint messages name them:

    >>> get_variant("BiT-M-R1-1-1-1x2").upstream_classes
    21843
    """
    if isinstance(variant, Variant):
        return variant
    custom = _CUSTOM_NAME.match(str(variant))
    if custom:
        family = custom[1]
        *units, width = (int(v) for v in custom.groups()[1:])
        return Variant(tuple(units), width, family, UPSTREAM[family][1] if family else None)
    match = _NAME.match(str(variant))
    if not match or int(match[2]) not in UNITS_PER_BLOCK or int(match[3]) not in WIDTH_FACTORS:
        raise ValueError(
            f"Unknown BiT variant {variant!r}. Use 'BiT-{{S,M,L}}-R{{50,101,152}}x{{1,2,3,4}}' "
            f"(released weights: BiT-S/BiT-M with {', '.join(RELEASED_ARCHITECTURES)}) or "
            f"'[BiT-S-]R{{u1}}-{{u2}}-{{u3}}-{{u4}}x{{width}}' / bit_keras.Variant(units=(...), width=...) for a custom size."
        )
    family, depth, width = match[1], int(match[2]), int(match[3])
    return Variant(UNITS_PER_BLOCK[depth], width, family, UPSTREAM[family][1])


def variants(released_only=True):
    """Names of the named variants, the released ones by default."""
    families = RELEASED_FAMILIES if released_only else tuple(UPSTREAM)
    if released_only:
        architectures = RELEASED_ARCHITECTURES
    else:
        architectures = tuple(f"R{d}x{w}" for d in UNITS_PER_BLOCK for w in WIDTH_FACTORS)
    return [f"{f}-{a}" for f in families for a in architectures]


# ----------------------------------------------------------- the builder's layer names
# The builder names every layer; these say what a name means (its stage, and the
# official checkpoint scope of its weights), so that no other module parses names.
STAGES = ("root", "block1", "block2", "block3", "block4", "pre_head", "head")
ROOT_CONV = "root_conv"
PRE_HEAD_NORM = "pre_head_gn"
FEATURES_LAYER = "pre_head_relu"  # the final feature map, before pooling
HEAD_LAYER = "head"
_STAGE = re.compile(r"^(root|block\d+|pre_head)_|^(head)$|^(?:avg|max)_pool$")
_WEIGHTED_UNIT_LAYER = re.compile(r"^block(\d+)_unit(\d+)_(?:([abc])_(gn|conv)|(proj))$")


def unit_name(block, unit):
    """The name prefix of unit `unit` (1-based) of block `block` (1-based): "block1_unit01"."""
    return f"block{block}_unit{unit:02d}"


def stage_of(layer_name):
    """The stage a builder-named layer belongs to (one of `STAGES`), or None for a name the builder never gives.

    >>> stage_of("block3_unit02_b_conv"), stage_of("root_pool"), stage_of("avg_pool"), stage_of("head")
    ('block3', 'root', 'pre_head', 'head')
    """
    match = _STAGE.match(layer_name)
    if not match:
        return None
    return match[1] or match[2] or "pre_head"


def official_scope(layer_name):
    """(official checkpoint scope, kind) of a builder-named layer with weights, or None.

    `kind` is "conv" (a standardised kernel), "gn" (GroupNorm gamma, beta) or
    "head" (kernel, bias); `checkpoints.mapping` turns the pair into keys.

    >>> official_scope("block1_unit01_proj"), official_scope("pre_head_gn")
    (('resnet/block1/unit01/a/proj', 'conv'), ('resnet', 'gn'))
    """
    if layer_name == ROOT_CONV:
        return "resnet/root_block", "conv"
    if layer_name == PRE_HEAD_NORM:
        return "resnet", "gn"
    if layer_name == HEAD_LAYER:
        return "resnet/head", "head"
    match = _WEIGHTED_UNIT_LAYER.match(layer_name)
    if not match:
        return None
    block, unit, part, kind, projection = match.groups()
    scope = f"resnet/block{int(block)}/unit{int(unit):02d}"
    return (f"{scope}/a/proj", "conv") if projection else (f"{scope}/{part}", kind)


def check_outputs(include_top, pooling, pyramid_outputs):
    """Refuses a combination of the output arguments that has no meaning, naming the fix."""
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}.")
    if pyramid_outputs and (include_top or pooling):
        raise ValueError("pyramid_outputs=True gives the unpooled feature maps: pass include_top=False and pooling=None.")


def _conv(filters, kernel_size, name, strides=1, epsilon=WS_EPSILON, padding="valid"):
    return StandardizedConv2D(filters, kernel_size, strides=strides, padding=padding, epsilon=epsilon, name=name)


def _gn_relu(x, name):
    return GroupNormalization(groups=32, epsilon=1e-5, activation="relu", name=f"{name}_gn")(x)


def _unit(x, mid_channels, strides, name, epsilon):
    out_channels = 4 * mid_channels
    preact = _gn_relu(x, f"{name}_a")
    if strides > 1 or x.shape[-1] != out_channels:
        shortcut = _conv(out_channels, 1, f"{name}_proj", strides, epsilon)(preact)
    else:
        shortcut = x
    y = _conv(mid_channels, 1, f"{name}_a_conv", epsilon=epsilon)(preact)
    y = _gn_relu(y, f"{name}_b")
    if strides == 1:
        # The official zero padding by one is "same" padding at stride 1, which
        # the convolution does itself: no pad forward, no slice of the gradient back.
        y = _conv(mid_channels, 3, f"{name}_b_conv", epsilon=epsilon, padding="same")(y)
    else:
        y = layers.ZeroPadding2D(1, name=f"{name}_b_pad")(y)
        y = _conv(mid_channels, 3, f"{name}_b_conv", strides, epsilon)(y)
    y = _gn_relu(y, f"{name}_c")
    y = _conv(out_channels, 1, f"{name}_c_conv", epsilon=epsilon)(y)
    return layers.Add(name=f"{name}_add")([y, shortcut])


def build_resnet(
    variant,
    num_classes=None,
    include_top=True,
    pooling=None,
    input_shape=(None, None, 3),
    name=None,
    ws_epsilon=WS_EPSILON,
    pyramid_outputs=False,
):
    """Builds the functional BiT ResNet-v2 for a `Variant`, with fresh weights.

    `ws_epsilon` is every convolution's weight-standardisation epsilon.
    `pyramid_outputs=True` (headless, unpooled) outputs a dict of the feature
    maps at strides 4, 8, 16 and 32, {"P2": block 1's, ..., "P5": the final
    normalised one}, as detection and segmentation heads take them.

    Layer names are `root_conv`, `block{b}_unit{u:02d}_{a,b,c}_{gn,conv}` (each
    `gn` with its ReLU), `block{b}_unit01_proj`, `pre_head_gn`, `pre_head_relu` and `head`; `stage_of` and
    `official_scope` say what each name means, and
    `bit_keras.checkpoints.official_weights` maps them to the official keys.
    """
    check_outputs(include_top, pooling, pyramid_outputs)
    width = variant.width
    inputs = keras.Input(shape=input_shape, name="images")
    x = layers.ZeroPadding2D(3, name="root_pad")(inputs)
    x = _conv(64 * width, 7, ROOT_CONV, strides=2, epsilon=ws_epsilon)(x)
    x = layers.ZeroPadding2D(1, name="root_pool_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="valid", name="root_pool")(x)
    pyramid = {}
    for block, units in enumerate(variant.units, start=1):
        mid_channels = 64 * width * 2 ** (block - 1)
        for unit in range(1, units + 1):
            strides = 2 if block > 1 and unit == 1 else 1
            x = _unit(x, mid_channels, strides, unit_name(block, unit), ws_epsilon)
        pyramid[f"P{block + 1}"] = x  # stride 2 ** (block + 1)
    # The head's ReLU is a layer of its own: its output is the feature map `FEATURES_LAYER` names.
    x = GroupNormalization(groups=32, epsilon=1e-5, name=PRE_HEAD_NORM)(x)
    x = layers.Activation("relu", name=FEATURES_LAYER)(x)
    if pyramid_outputs:
        return keras.Model(inputs, {**pyramid, "P5": x}, name=name or variant.name)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        # Logits in the variable dtype (float32 under mixed precision).
        x = layers.Dense(
            num_classes,
            kernel_initializer="zeros",
            name=HEAD_LAYER,
            dtype=keras.config.dtype_policy().variable_dtype,
        )(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)
    return keras.Model(inputs, x, name=name or variant.name)
