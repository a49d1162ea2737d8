"""What a built BiT model is, as every exporter reads it: its variant, its class names, its network to an output.

The TF-Hub exporter (`hub_export.export`) and the deployment exporter
(`hub_export.export_format`) both record these facts and cut the model at the
same place; they live here, with the model, so neither exporter borrows them
from the other.

>>> import bit_keras
>>> model = bit_keras.BiT(bit_keras.Variant((1, 1, 1, 1)), num_classes=3)
>>> variant_name(model), has_head(model), network(model, "feature_vector").output.shape
('R1-1-1-1x1', True, (None, None, None, 2048))
"""

import keras

from bit_keras import arguments, checkpoints, resnet

# The two parts of a model an export serves: the pooled features, or the head's logits; and each one's output name.
FLAVORS = ("feature_vector", "classification")
OUTPUT_NAMES = {"feature_vector": "feature_vector", "classification": "logits"}


def has_head(model):
    """Whether `model` ends with the BiT head (it was built with `include_top=True`)."""
    return any(layer.name == resnet.HEAD_LAYER for layer in model.layers)


def network(model, flavor):
    """The part of `model` the flavour needs: to the logits, or to the final feature map (not yet pooled)."""
    names = {layer.name for layer in model.layers}
    if resnet.FEATURES_LAYER not in names:
        raise ValueError(
            f"Model {model.name!r} has no layer named {resnet.FEATURES_LAYER!r}, so it is not a model built by "
            f"bit_keras.BiT. Export the BiT model itself (not a model wrapping it), or rebuild it with bit_keras.BiT."
        )
    if flavor == "classification":
        if resnet.HEAD_LAYER not in names:
            raise ValueError(
                f"flavor='classification' needs the model's head, but model {model.name!r} has no layer "
                f"{resnet.HEAD_LAYER!r}. Build it with include_top=True, or export flavor='feature_vector'."
            )
        output = model.get_layer(resnet.HEAD_LAYER).output
    else:
        output = model.get_layer(resnet.FEATURES_LAYER).output
    return keras.Model(model.input, output, name=f"{model.name}_{flavor}")


def class_names(model, flavor):
    """{"class_names": [...]} for a classification export of a model that names its classes, else {}.

    `model.class_names` must then be one string per logit: anything else is
    refused by name (`arguments.class_names`), not dropped or mangled.
    """
    names = getattr(model, "class_names", None)
    head = [layer for layer in model.layers if layer.name == resnet.HEAD_LAYER]
    if flavor != "classification" or names is None or not head:
        return {}
    return {"class_names": list(arguments.class_names("model.class_names", names, head[0].units))}


def variant_name(model):
    """ "BiT-M-R50x1" when the model's name says so and its shapes agree, else the architecture."""
    weights = checkpoints.official_weights(model)
    body = {key: v for key, v in weights.items() if key not in (checkpoints.HEAD_KERNEL, checkpoints.HEAD_BIAS)}
    architecture = checkpoints.describe(body)  # without a head it names the architecture only, e.g. "R50x1"
    for family in ("BiT-S", "BiT-M", "BiT-L"):
        if model.name == f"{family}-{architecture}":
            return model.name
    return architecture
