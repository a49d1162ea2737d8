"""The one key mapping: official BiT keys <-> model layers, timm keys and transformers keys.

Every weight family is translated to the official layout (HWIO kernels keyed
like `resnet/block1/unit01/a/standardized_conv2d/kernel`) on the way in, and
from it on the way out, through the tables below; nothing else in the package
spells a family's key names.

Example:

>>> state, unknown = to_official("timm", {"stages.0.blocks.1.conv2.weight": np.zeros((64, 32, 3, 3))})
>>> {key: value.shape for key, value in state.items()}
{'resnet/block1/unit02/b/standardized_conv2d/kernel': (3, 3, 32, 64)}
"""

import re

import keras
import numpy as np

from bit_keras.resnet import UPSTREAM, Variant, official_scope

HEAD_KERNEL = "resnet/head/conv2d/kernel"
HEAD_BIAS = "resnet/head/conv2d/bias"
ROOT_KERNEL = "resnet/root_block/standardized_conv2d/kernel"

# --------------------------------------------------------------- the tables
# Rows: (official template, family template, layout). `{b}`/`{u}` are the
# official 1-based block/unit numbers (unit as two digits), `{s}`/`{i}` the
# 0-based stage/block indices of the PyTorch families. Layouts: "conv" is an
# OIHW kernel (HWIO officially), "linear" a (K, C) matrix (a (1, 1, C, K)
# kernel officially), "vector" is the same in both.
_UNIT = "resnet/block{b}/unit{u}"
_PARTS = (("a", 1), ("b", 2), ("c", 3))


def _unit_rows(prefix):
    rows = []
    for part, n in _PARTS:
        rows += [
            (f"{_UNIT}/{part}/group_norm/gamma", f"{prefix}.norm{n}.weight", "vector"),
            (f"{_UNIT}/{part}/group_norm/beta", f"{prefix}.norm{n}.bias", "vector"),
            (f"{_UNIT}/{part}/standardized_conv2d/kernel", f"{prefix}.conv{n}.weight", "conv"),
        ]
    rows.append((f"{_UNIT}/a/proj/standardized_conv2d/kernel", f"{prefix}.downsample.conv.weight", "conv"))
    return rows


TABLES = {
    # timm.models.resnetv2.ResNetV2 (resnetv2_*_bit): stem, stages, norm, head.fc (a 1x1 conv).
    "timm": [
        (ROOT_KERNEL, "stem.conv.weight", "conv"),
        *_unit_rows("stages.{s}.blocks.{i}"),
        ("resnet/group_norm/gamma", "norm.weight", "vector"),
        ("resnet/group_norm/beta", "norm.bias", "vector"),
        (HEAD_KERNEL, "head.fc.weight", "conv"),
        (HEAD_BIAS, "head.fc.bias", "vector"),
    ],
    # transformers BitForImageClassification (BitModel has the same keys without "bit.").
    "transformers": [
        (ROOT_KERNEL, "bit.embedder.convolution.weight", "conv"),
        *_unit_rows("bit.encoder.stages.{s}.layers.{i}"),
        ("resnet/group_norm/gamma", "bit.norm.weight", "vector"),
        ("resnet/group_norm/beta", "bit.norm.bias", "vector"),
        (HEAD_KERNEL, "classifier.1.weight", "linear"),
        (HEAD_BIAS, "classifier.1.bias", "vector"),
    ],
}
FAMILIES = ("official",) + tuple(TABLES)


def _pattern(template):
    regex = re.escape(template)
    for name in "bsui":
        regex = regex.replace(re.escape("{" + name + "}"), rf"(?P<{name}>\d+)")
    return re.compile(f"^{regex}$")


def _fill(template, numbers):
    return template.format(**numbers)


def _numbers(match):
    """Official and 0-based numbers from a match on either side."""
    found = match.groupdict()
    if "b" in found:
        block, unit = int(found["b"]), int(found["u"])
    elif "s" in found:
        block, unit = int(found["s"]) + 1, int(found["i"]) + 1
    else:
        return {}
    return {"b": block, "u": f"{unit:02d}", "s": block - 1, "i": unit - 1}


_COMPILED = {
    family: [(_pattern(official), _pattern(theirs), official, theirs, layout) for official, theirs, layout in rows]
    for family, rows in TABLES.items()
}


def _to_hwio(value, layout):
    value = np.asarray(value)
    if layout == "conv" and value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    if layout == "linear" and value.ndim == 2:
        return value.T[None, None]
    return value


def _from_hwio(value, layout):
    value = np.asarray(value)
    if layout == "conv" and value.ndim == 4:
        return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
    if layout == "linear" and value.ndim == 4:
        return np.ascontiguousarray(value[0, 0].T)
    return value


def to_official(family, state):
    """Translates a `family` state dict to official keys and HWIO layout.

    Returns (official state, names that map to nothing); the unmapped tensors
    are kept under their own names so validation reports them as unexpected.
    """
    if family == "official":
        return dict(state), []
    rows = _COMPILED[family]
    out, unknown = {}, []
    for key, value in state.items():
        for _, theirs, official, _, layout in rows:
            match = theirs.match(key)
            if match:
                out[_fill(official, _numbers(match))] = _to_hwio(value, layout)
                break
        else:
            unknown.append(key)
            out[key] = np.asarray(value)
    return out, unknown


def from_official(family, state):
    """Translates an official state to `family`'s key names and layouts.

    Example:

    >>> sorted(from_official("timm", {HEAD_BIAS: np.zeros(3)}))
    ['head.fc.bias']
    """
    if family == "official":
        return dict(state)
    rows = _COMPILED[family]
    out = {}
    for key, value in state.items():
        for official, _, _, theirs, layout in rows:
            match = official.match(key)
            if match:
                out[_fill(theirs, _numbers(match))] = _from_hwio(value, layout)
                break
        else:
            raise ValueError(f"The official key {key!r} has no {family} name; it is not part of a BiT model.")
    return out


def guess_family(keys):
    """'timm', 'transformers' or 'official' from a state dict's key names, or None."""
    keys = list(keys)
    for family in ("official",) + tuple(TABLES):
        if family == "official":
            if any(key.startswith("resnet/") for key in keys):
                return family
            continue
        patterns = [theirs for _, theirs, _, _, _ in _COMPILED[family]]
        candidates = keys if family != "transformers" else [_with_bit_prefix(key) for key in keys]
        if any(p.match(key) for key in candidates for p in patterns[:1]):  # the stem names the family
            return family
    return None


def _with_bit_prefix(key):
    """BitModel files name the body without the "bit." of BitForImageClassification."""
    return key if key.startswith(("bit.", "classifier.")) else f"bit.{key}"


def transformers_keys(state):
    """A transformers state with every body key under "bit.", as BitForImageClassification has it."""
    return {_with_bit_prefix(key): value for key, value in state.items()}


# ------------------------------------------------------ the model's own layers

_CANONICAL = re.compile(
    r"^(root_block/standardized_conv2d/kernel"
    r"|block\d+/unit\d+/[abc]/(?:group_norm/(?:gamma|beta)|(?:proj/)?standardized_conv2d/kernel)"
    r"|group_norm/(?:gamma|beta)"
    r"|head/(?:\w+/)?(?:kernel|bias))$"
)


_KEYS_OF_KIND = {"conv": ("standardized_conv2d/kernel",), "gn": ("group_norm/gamma", "group_norm/beta")}


def layer_keys(layer_name):
    """Official keys of a layer's weights, in the layer's weight order, or None.

    >>> layer_keys("block2_unit01_b_gn")
    ['resnet/block2/unit01/b/group_norm/gamma', 'resnet/block2/unit01/b/group_norm/beta']
    """
    scope = official_scope(layer_name)
    if scope is None:
        return None
    scope, kind = scope
    if kind == "head":
        return [HEAD_KERNEL, HEAD_BIAS]
    return [f"{scope}/{suffix}" for suffix in _KEYS_OF_KIND[kind]]


def _iter_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _iter_layers(layer)
        else:
            yield layer


def official_weights(model):
    """Maps each official checkpoint key to the `keras.Variable` holding it.

    Example:

    >>> import bit_keras
    >>> model = bit_keras.BiT(bit_keras.Variant((1, 1, 1, 1)), num_classes=2)
    >>> sorted(official_weights(model))[0]
    'resnet/block1/unit01/a/group_norm/beta'
    """
    mapping = {}
    for layer in _iter_layers(model):
        keys = layer_keys(layer.name)
        if keys is None:
            continue
        if len(keys) != len(layer.weights):
            raise ValueError(f"Layer {layer.name!r} has {len(layer.weights)} weights, expected {len(keys)}: {keys}.")
        for key, variable in zip(keys, layer.weights):
            if key in mapping:
                raise ValueError(f"Two layers map to the official key {key!r}; is a BiT model nested twice?")
            mapping[key] = variable
    return mapping


def model_state(model):
    """The model's weights as a dict of NumPy arrays in the official layout."""
    state = {}
    for key, variable in official_weights(model).items():
        value = keras.ops.convert_to_numpy(variable)
        state[key] = value.reshape((1, 1) + value.shape) if key == HEAD_KERNEL else value
    return state


def canonical_key(h5_path):
    """The official key for a dataset path of the TF2 `.h5` release, or None."""
    parts = h5_path.replace(":0", "").strip("/").split("/")
    for start in range(len(parts)):
        suffix = "/".join(parts[start:])
        if _CANONICAL.match(suffix):
            if suffix.startswith("head/"):
                return HEAD_BIAS if suffix.endswith("bias") else HEAD_KERNEL
            return f"resnet/{suffix}"
    return None


# ------------------------------------------------------ what a state looks like


def infer_variant(state):
    """The `Variant` an official-layout state was saved from, or None if it is not a BiT layout.

    The family (BiT-S / BiT-M) is named when the head has its upstream classes.

    Example:

    >>> import bit_keras
    >>> state = model_state(bit_keras.BiT(bit_keras.Variant((1, 1, 1, 1)), num_classes=1000))
    >>> infer_variant(state).name
    'BiT-S-R1-1-1-1x1'
    """
    root = state.get(ROOT_KERNEL)
    if root is None or np.ndim(root) != 4 or root.shape[-1] % 64:
        return None
    units = [0, 0, 0, 0]
    for key in state:
        match = re.match(r"resnet/block(\d)/unit(\d+)/", key)
        if match and 1 <= int(match[1]) <= 4:
            units[int(match[1]) - 1] = max(units[int(match[1]) - 1], int(match[2]))
    if min(units) < 1:
        return None
    classes = int(state[HEAD_BIAS].shape[0]) if HEAD_BIAS in state else None
    family = next((f for f, (_, k) in UPSTREAM.items() if k == classes), None)
    return Variant(tuple(units), root.shape[-1] // 64, family, classes if family else None)


def describe(state):
    """Names the architecture a checkpoint looks like, e.g. 'BiT-M-R50x1 (21843 classes)'.

    The name is one `bit_keras.BiT` accepts as its variant.
    """
    variant = infer_variant(state)
    if variant is None:
        root = state.get(ROOT_KERNEL)
        return f"an unrecognised layout (root kernel {None if root is None else tuple(np.shape(root))})"
    classes = state[HEAD_BIAS].shape[0] if HEAD_BIAS in state else None
    return f"{variant.name} ({classes} classes)" if classes else variant.name
