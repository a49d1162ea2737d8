"""`export`: a BiT model as a reusable SavedModel, a drop-in for the TF-Hub BiT modules.

The published modules (tfhub.dev/google/bit/m-r50x1/1 and kin) are TF2
reusable SavedModels: `__call__(images, training=False)` traced for both
values of `training`, `variables`, `trainable_variables`,
`regularization_losses`, and a `serving_default` signature. They take float32
RGB images in [0, 1] of any size and return the 2048*width pre-logits vector,
or logits for the classification flavour. `export` writes the same contract
with `keras.export.ExportArchive`.
"""

import os

import keras
import numpy as np
import tensorflow as tf

import bit_keras
from bit_keras import arguments, checkpoints, model_facts, preprocess
from bit_keras.model_facts import FLAVORS, OUTPUT_NAMES
from hub_export._backend import require_tensorflow
from hub_export.metadata import write_metadata

IMAGES = tf.TensorSpec((None, None, None, 3), tf.float32, name="images")


def export(model, path, *, flavor="feature_vector", input_range=(0, 1), overwrite=False):
    """Writes `model` at `path` as a reusable TF-Hub-format SavedModel.

    The module takes float32 RGB images with values in `input_range`, [0, 1]
    by default as the TF-Hub BiT modules do (the Keras model itself takes
    [-1, 1]; the rescale is inside the module), of any height and width. It
    returns the 2048*width feature vector (`flavor="feature_vector"`) or the
    head's logits (`flavor="classification"`), in float32 whatever the dtype
    policy. It loads with `tf.saved_model.load`, `hub.KerasLayer(path,
    trainable=True)`, TF Serving (`serving_default`, input `images`) and
    `hub_export.load` in Keras 3; `bit_keras.BiT(variant, weights=path)`
    reads its weights back.

    The module holds its own copies of the weights, named by the official
    checkpoint keys (`resnet/block1/unit01/a/group_norm/gamma`, ...) as the
    published modules' variables are. All of them are trainable.

    The SavedModel is written to a temporary folder beside `path` and renamed
    when complete, so `path` never holds half a module.

    Args:
        model: a model built by `bit_keras.BiT` (or loaded from its `.keras`
            file). The classification flavour needs its head
            (`include_top=True`).
        path: the SavedModel folder to write.
        flavor: "feature_vector" or "classification".
        input_range: (low, high) of the images the module will be given;
            e.g. (0, 255) for raw pixel values.
        overwrite: replace an existing `path`; otherwise it is refused.

    Returns:
        The metadata recorded in the module (see `hub_export.read_metadata`).

    Example:

    >>> import bit_keras, hub_export, os, tempfile
    >>> import numpy as np, tensorflow as tf
    >>> model = bit_keras.BiT(bit_keras.Variant((1, 1, 1, 1)), num_classes=3)
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny")
    >>> _ = hub_export.export(model, path)
    >>> module = tf.saved_model.load(path)
    >>> module(np.zeros((1, 64, 64, 3), "float32"), training=False).shape
    TensorShape([1, 2048])
    """
    require_tensorflow("hub_export.export")
    if flavor not in FLAVORS:
        raise ValueError(f"flavor must be one of {FLAVORS}, got {flavor!r}.")
    low, high = arguments.input_range(input_range)
    path = os.path.abspath(arguments.path("path", path))
    checkpoints.refuse_existing(path, overwrite)

    # Common ops alone, no XLA cluster or fused batch norm (saving traces too): the module runs wherever TensorFlow does.
    with bit_keras.layers.portable():
        return _export(model, path, flavor, low, high, overwrite)


def _export(model, path, flavor, low, high, overwrite):
    names = model_facts.class_names(model, flavor)  # refused before the work of tracing
    network = model_facts.network(model, flavor)
    variables = _module_variables(network)
    call = _trace_call(network, variables, flavor, low, high)
    archive = _archive(call, variables, OUTPUT_NAMES[flavor])
    record = {
        "bit_keras_version": bit_keras.__version__,
        "variant": model_facts.variant_name(model),
        "flavor": flavor,
        "input_range": [low, high],
        "output": OUTPUT_NAMES[flavor],
        "output_size": int(network.output.shape[-1]),
        "parameters": int(sum(np.prod(v.shape) for v in variables.values())),
        **names,
    }
    with checkpoints.atomic_folder(path, overwrite) as folder:
        archive.write_out(folder, verbose=False)
        write_metadata(folder, record)
    return record


def _module_variables(network):
    """Fresh `tf.Variable`s named by the official keys, holding the network's weights.

    The module gets its own copies rather than the model's variables, whose
    TensorFlow names are bare ("kernel", "gamma"): official names let
    `read_saved_model` (and any tool that knows the BiT layout) find them.
    """
    values = {key: keras.ops.convert_to_numpy(v) for key, v in checkpoints.official_weights(network).items()}
    checkpoints.check_values(values, f"export: model {network.name!r}", action="written")
    return {key: tf.Variable(value, name=key, trainable=True) for key, value in values.items()}


def _trace_call(network, variables, flavor, low, high):
    """`__call__(images, training=False)`, traced for both values of `training`."""
    key_of = {id(v): key for key, v in checkpoints.official_weights(network).items()}
    unnamed = [v.path for v in network.variables if id(v) not in key_of]
    if unnamed:
        raise ValueError(
            f"Model {network.name!r} has weights outside the BiT layout ({', '.join(unnamed[:3])}); "
            f"only bit_keras.BiT models can be exported."
        )
    trainable = [variables[key_of[id(v)]] for v in network.trainable_variables]
    non_trainable = [variables[key_of[id(v)]] for v in network.non_trainable_variables]

    @tf.function(autograph=False)
    def call(images, training=False):
        # The Keras model takes [-1, 1]; the module takes `input_range`.
        x = preprocess.to_model_range(images, (low, high))
        # A stateless call reads the module's variables instead of the model's.
        outputs, _ = network.stateless_call(trainable, non_trainable, x, training=training)
        outputs = tf.cast(outputs, tf.float32)
        if flavor == "feature_vector":
            outputs = tf.reduce_mean(outputs, axis=(1, 2))
        return outputs

    # The reusable SavedModel API passes `training` as a Python bool: one trace each.
    for training in (False, True):
        call.get_concrete_function(IMAGES, training=training)
    return call


def _archive(call, variables, output_name):
    @tf.function(input_signature=[IMAGES], autograph=False)
    def serve(images):
        return {output_name: call(images, training=False)}

    archive = keras.export.ExportArchive()
    # Registered first and by this name, so TF Serving's default is inference mode with a named output.
    archive.add_endpoint("serving_default", serve)
    archive.add_endpoint("__call__", call)
    module_variables = list(variables.values())
    archive.add_variable_collection("variables", module_variables)
    archive.add_variable_collection("trainable_variables", module_variables)
    # Part of the reusable SavedModel API; BiT trains without weight decay, so it is empty.
    archive.add_variable_collection("regularization_losses", [])
    return archive
