"""The two layers that make a ResNet-v2 a BiT: weight-standardised convolutions
and group normalisation, both written in `keras.ops` for every Keras backend."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="bit_keras")
class StandardizedConv2D(keras.layers.Conv2D):
    """2D convolution whose kernel is standardised on every call.

    The kernel (HWIO) is shifted and scaled per output channel to zero mean and
    unit population variance over (H, W, In): `(w - mean) / sqrt(var + epsilon)`.
    Standardisation is computed in float32 from the float32 kernel, whatever the
    dtype policy; only the convolution itself runs in the compute dtype.

    Args:
        filters: number of output channels.
        kernel_size: int or (height, width).
        epsilon: added to the variance under the square root; BiT uses 1e-10.
        **kwargs: any other `keras.layers.Conv2D` argument. BiT convolutions
            have no bias, so `use_bias` defaults to False.

    Example:

    >>> import numpy as np
    >>> conv = StandardizedConv2D(8, 3, padding="same")
    >>> tuple(conv(np.zeros((1, 16, 16, 3), "float32")).shape)
    (1, 16, 16, 8)
    """

    def __init__(self, filters, kernel_size, epsilon=1e-10, use_bias=False, **kwargs):
        kwargs.pop("autocast", None)
        # Variables stay float32 inside call so the standardisation is exact.
        super().__init__(filters, kernel_size, use_bias=use_bias, autocast=False, **kwargs)
        self.epsilon = epsilon

    def standardized_kernel(self):
        """The kernel after weight standardisation, in float32."""
        kernel = ops.cast(self.kernel, "float32")
        mean = ops.mean(kernel, axis=(0, 1, 2), keepdims=True)
        variance = ops.var(kernel, axis=(0, 1, 2), keepdims=True)
        return (kernel - mean) * ops.rsqrt(variance + self.epsilon)

    def call(self, inputs):
        inputs = ops.cast(inputs, self.compute_dtype)
        kernel = ops.cast(self.standardized_kernel(), self.compute_dtype)
        outputs = self.convolution_op(inputs, kernel)
        if self.use_bias:
            outputs = outputs + ops.cast(self.bias, self.compute_dtype)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="bit_keras")
class GroupNormalization(keras.layers.Layer):
    """Group normalisation over channels-last inputs, statistics in float32.

    Channels are split into `groups`; each group of each example is normalised
    by its own mean and variance over space and the group's channels, then
    scaled and shifted per channel by `gamma` and `beta`. Under a mixed
    precision policy the statistics and the normalisation run in float32 and
    only the output is cast to the compute dtype. The variance is computed in
    one pass, as E[x^2] - E[x]^2 in float32: exact to about 1e-7 of E[x^2],
    ample for activations whose mean is not thousands of times their spread.

    Args:
        groups: number of channel groups (BiT: 32); must divide the channels.
        epsilon: added to the variance (BiT: 1e-5; note Keras' own layer
            defaults to 1e-3).
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:

    >>> import numpy as np
    >>> gn = GroupNormalization(groups=2)
    >>> tuple(gn(np.random.rand(2, 4, 4, 8).astype("float32")).shape)
    (2, 4, 4, 8)
    """

    def __init__(self, groups=32, epsilon=1e-5, **kwargs):
        kwargs.pop("autocast", None)
        super().__init__(autocast=False, **kwargs)
        self.groups = groups
        self.epsilon = epsilon

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None or channels % self.groups:
            raise ValueError(
                f"GroupNormalization({self.groups} groups) got {channels} channels; "
                f"the channel count must be known and divisible by the number of groups. "
                f"Pass groups= a divisor of {channels}."
            )
        self.gamma = self.add_weight(shape=(channels,), initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=(channels,), initializer="zeros", name="beta")

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        channels = x.shape[-1]
        shape = ops.shape(x)
        per_group = channels // self.groups
        grouped = ops.reshape(x, (shape[0], -1, self.groups, per_group))
        # One pass over the activations for both moments, then one fused
        # multiply-add with per-channel scale and shift: a third of the
        # memory traffic of normalise-then-affine, which dominates this layer.
        mean = ops.mean(grouped, axis=(1, 3), keepdims=True)
        mean_of_squares = ops.mean(ops.square(grouped), axis=(1, 3), keepdims=True)
        variance = ops.maximum(mean_of_squares - ops.square(mean), 0.0)
        gamma = ops.reshape(ops.cast(self.gamma, "float32"), (1, 1, self.groups, per_group))
        beta = ops.reshape(ops.cast(self.beta, "float32"), (1, 1, self.groups, per_group))
        scale = gamma * ops.rsqrt(variance + self.epsilon)
        outputs = ops.reshape(grouped * scale + (beta - mean * scale), shape)
        return ops.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "groups": self.groups, "epsilon": self.epsilon}
