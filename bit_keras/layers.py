"""The two layers that make a ResNet-v2 a BiT: weight-standardised convolutions
and group normalisation, both written in `keras.ops` for every Keras backend."""

import contextlib
import functools

import keras
from keras import ops

_fusion = {"xla": True, "batch_norm_kernels": True}


@contextlib.contextmanager
def _fusion_set(**flags):
    before = dict(_fusion)
    _fusion.update(flags)
    try:
        yield
    finally:
        _fusion.update(before)


def unfused():
    """Within it, layers traced by TensorFlow build no XLA cluster (see `_shared`).

    The trainers trace runs too short to repay XLA's compilation under it.

    Example:

    >>> import numpy as np
    >>> with unfused():
    ...     tuple(GroupNormalization(groups=2)(np.ones((1, 2, 2, 4), "float32")).shape)
    (1, 2, 2, 4)
    """
    return _fusion_set(xla=False)


def portable():
    """Within it, layers traced by TensorFlow build graphs of common ops alone.

    That is `unfused()` (no XLA cluster), and weight standardisation as
    reductions and element-wise ops rather than a training-mode fused batch
    norm (`_standardize_by_batch_norm`). `hub_export` traces under it, so
    that an exported SavedModel runs wherever TensorFlow does, XLA or not,
    and converts to ONNX, LiteRT and OpenVINO.

    Example:

    >>> import numpy as np
    >>> with portable():
    ...     tuple(StandardizedConv2D(2, 1)(np.ones((1, 2, 2, 4), "float32")).shape)
    (1, 2, 2, 2)
    """
    return _fusion_set(xla=False, batch_norm_kernels=False)


def _shared(function, *tensors, xla=True, **static):
    """`function(*tensors, **static)`, run under TensorFlow as one function shared by every layer.

    Every layer with the same `static` arguments calls the same
    `tf.function`, so a process keeps one trace, one XLA executable and one
    registered gradient per (function, static arguments, input shape), not
    one per layer of every model it ever built: per-layer functions, and
    `ops.custom_gradient` traced inline (TensorFlow registers each such
    gradient globally, holding its graph), kept every model's graphs and
    executables alive after `keras.backend.clear_session()`
    (`benchmarks/bench_memory.py` measures it).

    With `xla`, the function is compiled as one XLA cluster unless traced
    under `unfused()` or `portable()`: TensorFlow's graph executor runs every element-wise op as a
    kernel of its own, one pass over memory each, which XLA fuses, while
    the convolutions around it keep TensorFlow's oneDNN kernels (faster on
    a CPU than XLA's own). `benchmarks/bench_step.py` measures the step with
    and without it (`bit_keras/tf-unfused`). Under JAX and PyTorch the
    function runs inline; inside a step that XLA compiles whole, nothing
    changes.
    """
    if keras.backend.backend() != "tensorflow":
        return function(*tensors, **static)
    return _tensorflow_function(function, xla and _fusion["xla"], **static)(*tensors)


@functools.cache
def _tensorflow_function(function, jit_compile, **static):
    import tensorflow as tf

    # reduce_retracing: one trace serves every batch and image size; what
    # `static` fixes (a channel count, say) stays static in it.
    return tf.function(functools.partial(function, **static), jit_compile=jit_compile, autograph=False, reduce_retracing=True)


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
        # Never an XLA cluster of its own: `fold` computes the kernels the
        # layer ran with, to the bit, however the step was traced.
        standardize = _standardize_by_batch_norm if _batch_norm_standardizes() else _standardize
        return _shared(standardize, ops.cast(self.kernel, "float32"), xla=False, epsilon=self.epsilon)

    def call(self, inputs):
        inputs = ops.cast(inputs, self.compute_dtype)
        kernel = ops.cast(self.standardized_kernel(), self.compute_dtype)
        outputs = self.convolution_op(inputs, kernel)
        if self.use_bias:
            outputs = outputs + ops.cast(self.bias, self.compute_dtype)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def convolution_op(self, inputs, kernel):
        """The convolution; where its windows are the rows of a matrix, a matrix product.

        Two convolutions are: a 1x1 kernel at stride 1, whose windows are the
        input's pixels (the bottleneck's first and last convolutions), and
        one whose output is a single pixel, whose one window is its input's
        corner, padding aside (the last blocks of a BiT on 16-32 px images).
        On a CPU, TensorFlow's (oneDNN's) convolution and its two gradients
        are slower than the same products as a `matmul`: by about a quarter,
        forward and backward, on R50's 1x1 convolutions at 128 px, several
        times on a 1x1 output (docs/performance.md). Both compute the same
        sums, in another order.
        """
        if _pointwise(self, kernel.shape):
            product = ops.matmul(ops.reshape(inputs, (-1, kernel.shape[2])), ops.reshape(kernel, kernel.shape[2:]))
            return ops.reshape(product, (*ops.shape(inputs)[:3], kernel.shape[3]))
        window = _single_output_window(self, inputs.shape, kernel.shape)
        if window is None:
            return super().convolution_op(inputs, kernel)
        (rows, first_row), (columns, first_column) = window
        taps = kernel[first_row : first_row + rows, first_column : first_column + columns]
        pixels = ops.reshape(inputs[:, :rows, :columns, :], (-1, rows * columns * kernel.shape[2]))
        product = ops.matmul(pixels, ops.reshape(taps, (-1, kernel.shape[3])))
        return ops.reshape(product, (-1, 1, 1, kernel.shape[3]))

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


def _pointwise(conv, kernel_shape):
    """Whether `conv` is a channels-last 1x1 convolution at stride 1: one matrix product over the pixels."""
    return (
        tuple(kernel_shape[:2]) == (1, 1)
        and tuple(conv.strides) == (1, 1)
        and conv.data_format == "channels_last"
        and conv.groups == 1
    )


def _single_output_window(conv, input_shape, kernel_shape):
    """Where a channels-last `conv` with one output pixel reads `input_shape`, or None if it has more.

    Returns, for height and width, (pixels, first tap): the one window takes
    the first `pixels` pixels of the input, each against the kernel's taps
    from `first tap` on. "same" padding (TensorFlow's and JAX's: the lesser
    half before) puts zeros before the input, so the window starts inside
    the kernel and may end before it.
    """
    if conv.padding not in ("valid", "same") or conv.data_format != "channels_last" or conv.groups != 1:
        return None
    if any(rate != 1 for rate in conv.dilation_rate):
        return None
    sizes = input_shape[1:3]
    if any(size is None for size in sizes):
        return None
    window = []
    for size, kernel, stride in zip(sizes, kernel_shape[:2], conv.strides):
        if conv.padding == "valid":
            # The kernel fits, and a stride further would leave the input.
            if not kernel <= size < kernel + stride:
                return None
            window.append((kernel, 0))
        else:
            if size > stride:  # "same" gives ceil(size / stride) pixels
                return None
            before = max(kernel - size, 0) // 2
            window.append((min(size, kernel - before), before))
    return tuple(window)


def _standardize(kernel, epsilon):
    """`(kernel - mean) / sqrt(var + epsilon)` per output channel, with its gradient in closed form.

    Automatic differentiation of the mean and variance builds a dozen passes
    over every kernel per step (broadcasts, negations, a gradient for each
    reduction); the closed form, `r * (g - mean(g) - w * mean(g * w))` with
    `w` the standardised kernel and `r = 1 / sqrt(var + epsilon)`, is two
    reductions and one multiply-add, exact for the population variance.
    """

    @ops.custom_gradient
    def standardize(kernel):
        centered = kernel - ops.mean(kernel, axis=(0, 1, 2), keepdims=True)
        inverse_std = ops.rsqrt(ops.mean(ops.square(centered), axis=(0, 1, 2), keepdims=True) + epsilon)
        standardized = centered * inverse_std

        def gradient(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            upstream_mean = ops.mean(upstream, axis=(0, 1, 2), keepdims=True)
            correlation = ops.mean(upstream * standardized, axis=(0, 1, 2), keepdims=True)
            return inverse_std * (upstream - upstream_mean - standardized * correlation)

        return standardized, gradient

    return standardize(kernel)


def _batch_norm_standardizes():
    """Whether weight standardisation runs as `_standardize_by_batch_norm`: under TensorFlow on a CPU, outside `portable()`."""
    return keras.backend.backend() == "tensorflow" and _fusion["batch_norm_kernels"] and not _tensorflow_sees_a_gpu()


@functools.cache
def _tensorflow_sees_a_gpu():
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))


def _standardize_by_batch_norm(kernel, epsilon):
    """`_standardize` as TensorFlow's fused batch normalisation, the output channels as its channels.

    Standardising a kernel is normalising it over (H, W, In) per output
    channel with the population variance: a training-mode batch norm with
    unit scale and no offset, whose registered gradient is `_standardize`'s
    closed form. On a CPU the one op and its gradient took about a third of
    the time of the separate reductions and element-wise ops (a 3x3x512x512
    kernel, forward and backward; docs/performance.md). On a GPU, where a
    step is one XLA program, it is not measured, so `_standardize` stays.
    """
    import tensorflow as tf

    channels = tf.shape(kernel)[-1:]
    rows = tf.reshape(kernel, tf.concat([[1, 1, -1], channels], axis=0))
    empty = tf.zeros((0,), kernel.dtype)
    normalized = tf.raw_ops.FusedBatchNormV3(
        x=rows,
        scale=tf.ones(channels, kernel.dtype),
        offset=tf.zeros(channels, kernel.dtype),
        mean=empty,
        variance=empty,
        epsilon=epsilon,
        is_training=True,
    ).y
    return tf.reshape(normalized, tf.shape(kernel))


@keras.saving.register_keras_serializable(package="bit_keras")
class GroupNormalization(keras.layers.Layer):
    """Group normalisation over channels-last inputs, statistics in float32.

    Channels are split into `groups`; each group of each example is normalised
    by its own mean and variance over space and the group's channels, then
    scaled and shifted per channel by `gamma` and `beta`. Under a mixed
    precision policy the statistics and the normalisation run in float32 and
    only the output is cast to the compute dtype. The variance is that of the
    centred activations (two passes, as Keras' own layer and PyTorch take it),
    so it keeps its digits when the mean is far larger than the spread, where
    E[x^2] - E[x]^2 in float32 would lose them.
    Under TensorFlow the arithmetic runs as one XLA cluster, shared by
    every layer of its channel count, between TensorFlow's own
    convolutions; `unfused()` and `portable()` trace plain ops.

    Args:
        groups: number of channel groups (BiT: 32); must divide the channels.
        epsilon: added to the variance (BiT: 1e-5; note Keras' own layer
            defaults to 1e-3).
        activation: applied to the output, in float32 before the cast to the
            compute dtype, and under TensorFlow inside the same XLA cluster
            (BiT: "relu" before every convolution). None: none.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:

    >>> import numpy as np
    >>> gn = GroupNormalization(groups=2)
    >>> tuple(gn(np.random.rand(2, 4, 4, 8).astype("float32")).shape)
    (2, 4, 4, 8)
    """

    def __init__(self, groups=32, epsilon=1e-5, activation=None, **kwargs):
        kwargs.pop("autocast", None)
        super().__init__(autocast=False, **kwargs)
        self.groups = groups
        self.epsilon = epsilon
        self.activation = keras.activations.get(activation)

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
        gamma = ops.cast(self.gamma, "float32")
        beta = ops.cast(self.beta, "float32")
        static = dict(groups=self.groups, epsilon=self.epsilon, channels=inputs.shape[-1])
        static["pixel_mean"] = _pixel_mean_by_product if _products_average(inputs) else _pixel_mean
        return _shared(_normalize, inputs, gamma, beta, activation=self.activation, dtype=self.compute_dtype, **static)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = {"groups": self.groups, "epsilon": self.epsilon, "activation": keras.activations.serialize(self.activation)}
        return {**super().get_config(), **config}


def _normalize(inputs, gamma, beta, activation, dtype, **static):
    """`GroupNormalization`'s whole call, its casts and activation included.

    Under TensorFlow the input's cast, the statistics, the activation and the
    output's cast are so one XLA cluster, forward and backward; outside it
    each would be a pass over the activations of its own.
    """
    return ops.cast(activation(_group_norm(inputs, gamma, beta, **static)), dtype)


def _group_norm(inputs, gamma, beta, groups, epsilon, channels, pixel_mean):
    """`_normalized` in float32, with its gradient in closed form.

    With `g = upstream * gamma` and `n` the normalised input, the input's
    gradient is `r * (g - mean(g) - n * mean(g * n))`, means over each
    group's pixels and channels and `r = 1 / sqrt(var + epsilon)`. It needs
    two per-channel means over the pixels, of the upstream gradient and of
    its product with the centred input, from which the gamma and beta
    gradients follow too, and one element-wise pass; automatic
    differentiation built about eleven passes over the activations. The
    gradient reads the input as it came (bfloat16 under mixed precision),
    not a float32 copy kept from the forward pass. `bit_keras/tf-gn-autodiff`
    in `benchmarks/bench_step.py` undoes it: bfloat16 training of R50x1 at
    128 px was 1.03x and 1.10x with it in two runs, its peak memory a tenth
    lower; float32 the same. Under JAX, where XLA differentiates the whole
    step, it was the same within the runs' spread (0.98x and 1.01x on a CPU,
    `bit_keras/jax-gn-autodiff`), so every backend has the one gradient.
    """

    @ops.custom_gradient
    def group_norm(inputs, gamma, beta):
        normalized, mean, inverse_std = _normalized(inputs, gamma, beta, groups, epsilon, channels, pixel_mean)

        def gradient(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            pixels = _pixels(upstream, channels)
            centered = _pixels(inputs, channels) - mean
            upstream_mean = pixel_mean(pixels)
            correlation = pixel_mean(pixels * centered) * ops.reshape(inverse_std, (-1, channels))
            count = ops.cast(ops.shape(pixels)[1], "float32")
            row = ops.reshape(gamma, (1, channels))
            input_gradient = inverse_std * (
                pixels * row
                - _group_mean(upstream_mean * row, groups)
                - centered * inverse_std * _group_mean(correlation * row, groups)
            )
            return (
                ops.cast(ops.reshape(input_gradient, ops.shape(inputs)), inputs.dtype),
                ops.sum(correlation, axis=0) * count,
                ops.sum(upstream_mean, axis=0) * count,
            )

        return normalized, gradient

    return group_norm(inputs, gamma, beta)


def _normalized(inputs, gamma, beta, groups, epsilon, channels, pixel_mean):
    """Group normalisation in float32, with each group's mean and 1 / sqrt(var + epsilon) as (batch, 1, channels)."""
    # Every reduction runs first over the pixels of each channel, which lie
    # `channels` apart in channels-last memory so that one pass reads whole
    # vectors of channels, and only then over each group's channels, a tiny
    # (batch, channels) array; reducing over pixels and a group's channels at
    # once read the activations group by group, about a tenth slower a step
    # (the measurement is in docs/performance.md). Under XLA (see `_shared`)
    # the centring, both reductions and the scale and shift fuse into passes
    # over the activations. `pixel_mean` is `_pixel_mean` or, where
    # `_products_average`, `_pixel_mean_by_product`.
    pixels = _pixels(inputs, channels)
    mean = _group_mean(pixel_mean(pixels), groups)
    centered = pixels - mean
    inverse_std = ops.rsqrt(_group_mean(pixel_mean(ops.square(centered)), groups) + epsilon)
    scale = ops.reshape(gamma, (1, 1, channels)) * inverse_std
    normalized = centered * scale + ops.reshape(beta, (1, 1, channels))
    return ops.reshape(normalized, ops.shape(inputs)), mean, inverse_std


def _pixels(tensor, channels):
    """(batch, height, width, channels) -> (batch, pixels, channels) in float32."""
    return ops.reshape(ops.cast(tensor, "float32"), (ops.shape(tensor)[0], -1, channels))


def _pixel_mean(pixels):
    """(batch, pixels, channels) -> (batch, channels): each channel's mean over the pixels."""
    return ops.mean(pixels, axis=1)


def _pixel_mean_by_product(pixels):
    """`_pixel_mean` as a batched matrix product: a row of 1 / pixels times the pixels."""
    batch, count = ops.shape(pixels)[0], ops.shape(pixels)[1]
    weights = ops.ones((batch, 1, count), pixels.dtype) / ops.cast(count, pixels.dtype)
    return ops.reshape(ops.matmul(weights, pixels), (batch, pixels.shape[-1]))


def _products_average(inputs):
    """Whether GroupNorm's means are `_pixel_mean_by_product`: a bfloat16 or float16 input in an XLA cluster on a CPU.

    There XLA fuses the conversion to float32 into a plain reduction, which
    then misses XLA:CPU's fast reductions; a product has no such conversion
    in it. `bit_keras/tf-gn-reductions` in `benchmarks/bench_step.py`
    undoes it: bfloat16 inference of R50x1 at 128 px was 1.05x with
    products, training 0.98x (inside the run's spread); for a float32 input products gained
    nothing at inference and lost in training (docs/performance.md).
    """
    if keras.backend.standardize_dtype(inputs.dtype) == "float32" or keras.backend.backend() != "tensorflow":
        return False
    return _fusion["xla"] and not _tensorflow_sees_a_gpu()


def _group_mean(per_channel, groups):
    """(batch, channels) -> (batch, 1, channels): each channel's entry becomes the mean of its group's."""
    batch, channels = ops.shape(per_channel)[0], per_channel.shape[-1]
    grouped = ops.mean(ops.reshape(per_channel, (-1, groups, channels // groups)), axis=2, keepdims=True)
    return ops.reshape(ops.broadcast_to(grouped, (batch, groups, channels // groups)), (-1, 1, channels))
