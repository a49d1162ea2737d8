"""`load`: a reusable SavedModel (TF-Hub format) as a Keras 3 layer that fine-tunes.

Keras 3 cannot hold `hub.KerasLayer` (a tf_keras layer). `HubModuleLayer`
is its Keras 3 counterpart, built on `keras.layers.TFSMLayer`: it calls the
module's `__call__`, passes `training` through, and exposes the module's
variables as the layer's weights.
"""

import inspect
import os

import keras

from hub_export._backend import require_tensorflow


@keras.saving.register_keras_serializable(package="hub_export")
class HubModuleLayer(keras.layers.TFSMLayer):
    """The `__call__` of a reusable SavedModel as a Keras 3 layer.

    The layer's weights are the module's own variables (not copies), so
    fitting a model that holds the layer updates the module. `training`
    reaches the module as the Python bool the reusable SavedModel API expects:
    True only when the layer is trainable and called for training, as with
    `hub.KerasLayer`, so a frozen module always runs in inference mode.

    Args:
        filepath: a SavedModel folder with a `__call__` function, such as one
            written by `hub_export.export` or downloaded from TF Hub.
        trainable: whether fitting updates the module's variables.
        name: layer name.
        dtype: the layer's dtype policy. "float32" by default: modules take
            float32 images and choose their own precision, so a mixed
            precision model must not cast the inputs down first.

    Example:

    >>> import bit_keras, hub_export, keras, os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny")
    >>> _ = hub_export.export(bit_keras.BiT(bit_keras.Variant((1, 1, 1, 1)), num_classes=3), path)
    >>> images = keras.Input((None, None, 3))  # in [0, 1], as for the TF-Hub BiT modules
    >>> features = HubModuleLayer(path, trainable=True)(images)
    >>> model = keras.Model(images, keras.layers.Dense(5)(features))
    >>> model.output.shape
    (None, 5)
    """

    def __init__(self, filepath, trainable=False, name=None, dtype="float32"):
        require_tensorflow("hub_export.load")
        import tensorflow as tf  # after the check: hub_export itself imports without TensorFlow

        filepath = os.fspath(filepath)
        try:
            super().__init__(filepath, call_endpoint="__call__", trainable=trainable, name=name, dtype=dtype)
        except (IndexError, tf.errors.OpError) as error:  # IndexError: the variables' data file ends early
            raise ValueError(
                f"{filepath} is not a complete SavedModel: its variables cannot be read ({str(error).splitlines()[0][:200]}); "
                f"variables/variables.data may be truncated. Export or download it again."
            ) from None
        except ValueError as error:
            if "'__call__'" not in str(error):
                raise
            raise ValueError(
                f"{filepath} has no __call__ function, so it is not a reusable (TF-Hub format) SavedModel. "
                f"Export it with hub_export.export; for inference only, keras.layers.TFSMLayer(path, "
                f"call_endpoint='serve') wraps a model.export() artifact."
            ) from None
        self._passes_training = "training" in inspect.signature(self.call_endpoint_fn).parameters

    def call(self, inputs, training=False):
        if not self._passes_training:
            return self.call_endpoint_fn(inputs)
        return self.call_endpoint_fn(inputs, training=bool(training) and self.trainable)

    def get_config(self):
        config = super().get_config()
        # The endpoints are fixed by this class, not arguments of it.
        del config["call_endpoint"], config["call_training_endpoint"]
        return config


def load(path, trainable=False, name=None):
    """A reusable SavedModel at `path` as a Keras 3 layer; see `HubModuleLayer`.

    For a module written by `hub_export.export` (or a TF-Hub BiT module), feed
    images in the module's input range, [0, 1] by default
    (`hub_export.read_metadata(path)["input_range"]`).

    Example:

    >>> import bit_keras, hub_export, keras, os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny")
    >>> _ = hub_export.export(bit_keras.BiT(bit_keras.Variant((1, 1, 1, 1)), num_classes=3), path)
    >>> model = keras.Sequential([keras.Input((64, 64, 3)), hub_export.load(path, trainable=True), keras.layers.Dense(5)])
    >>> model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    """
    return HubModuleLayer(path, trainable=trainable, name=name)
