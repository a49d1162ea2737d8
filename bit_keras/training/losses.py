"""The trainers' losses: the `loss=` names and BiT's upstream sigmoid cross-entropy."""

import keras

from bit_keras import config


@keras.saving.register_keras_serializable(package="bit_keras")
class SigmoidCrossEntropy(keras.losses.Loss):
    """Sigmoid cross-entropy from logits, summed over the classes: BiT's upstream loss.

    Each class is its own binary problem, so an image may carry several
    labels (ImageNet-21k's do). Summed, not averaged, over the classes, as the
    BiT code sums it: an average over 21,843 classes would shrink the
    gradient, and so the effective learning rate, 21,843-fold.

    >>> import numpy as np
    >>> float(SigmoidCrossEntropy()(np.eye(2, dtype="float32"), np.zeros((2, 2), "float32")))  # 2 x log(2)
    1.3862943649291992
    """

    def __init__(self, name="sigmoid_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        y_true = keras.ops.cast(y_true, y_pred.dtype)
        per_class = keras.ops.binary_crossentropy(y_true, y_pred, from_logits=True)
        return keras.ops.sum(per_class, axis=-1)


def loss_function(loss):
    """The Keras loss of a trainer's `loss=` name: "softmax" (fine-tuning) or "sigmoid" (BiT upstream)."""
    if loss == "softmax":
        return keras.losses.CategoricalCrossentropy(from_logits=True)
    if loss == "sigmoid":
        return SigmoidCrossEntropy()
    raise ValueError(f"loss must be one of {config.LOSSES}, got {loss!r}.")
