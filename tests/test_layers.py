import contextlib

import keras
import numpy as np
import pytest
from conftest import requires_tensorflow
from reference import conv2d, group_norm, pad, standardize

from bit_keras import GroupNormalization, StandardizedConv2D
from bit_keras.layers import _pixel_mean_by_product, portable, unfused

pytestmark = pytest.mark.backends


def test_standardized_conv_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 9, 11, 5)).astype("float32")
    conv = StandardizedConv2D(7, 3, strides=2, padding="valid")
    conv.build(x.shape)
    kernel = (rng.standard_normal((3, 3, 5, 7)) * 0.3 + 0.2).astype("float32")
    conv.kernel.assign(kernel)
    expected = conv2d(pad(x, 1), standardize(kernel), stride=2)
    got = keras.ops.convert_to_numpy(conv(pad(x, 1)))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "size,kernel_size,strides,padding",
    [
        (3, 3, 1, "valid"),
        (3, 3, 2, "valid"),
        (4, 3, 2, "valid"),
        (1, 1, 1, "valid"),
        (2, 1, 2, "valid"),
        (5, 4, 2, "valid"),
        (1, 3, 1, "same"),
        (1, 3, 2, "same"),
        (2, 3, 2, "same"),
        (2, 4, 2, "same"),
        (3, 2, 3, "same"),
    ],
    ids=[
        "3x3",
        "3x3-stride2",
        "3x3-stride2-spare-row",
        "1x1",
        "1x1-stride2",
        "4x4-in-5x5",
        "same-3x3-on-1x1",
        "same-3x3-stride2-on-1x1",
        "same-3x3-stride2-on-2x2",
        "same-4x4-stride2-on-2x2",
        "same-2x2-stride3-on-3x3",
    ],
)
def test_a_convolution_with_one_output_pixel_matches_numpy_and_its_gradient(size, kernel_size, strides, padding):
    # Such a convolution is computed as a matrix product over its window (`convolution_op`).
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, size, size, 6)).astype("float32")
    conv = StandardizedConv2D(4, kernel_size, strides=strides, padding=padding)
    conv.build(x.shape)
    kernel = (rng.standard_normal(conv.kernel.shape) * 0.3 + 0.2).astype("float32")
    conv.kernel.assign(kernel)
    got = keras.ops.convert_to_numpy(conv(x))
    assert got.shape == (3, 1, 1, 4)
    # "same" as TensorFlow pads: the lesser half of the padding before the input.
    before, after = (max(kernel_size - size, 0) // 2, (max(kernel_size - size, 0) + 1) // 2) if padding == "same" else (0, 0)
    padded = np.pad(x, ((0, 0), (before, after), (before, after), (0, 0)))
    np.testing.assert_allclose(got, conv2d(padded, standardize(kernel), stride=strides), rtol=1e-4, atol=1e-4)
    upstream = rng.standard_normal(got.shape).astype("float32")
    padded_gradient = np.zeros_like(padded)
    padded_gradient[:, :kernel_size, :kernel_size, :] = np.einsum("no,hwio->nhwi", upstream[:, 0, 0], standardize(kernel))
    input_gradient = padded_gradient[:, before : before + size, before : before + size, :]
    np.testing.assert_allclose(_gradients(conv, x, upstream)[0], input_gradient, rtol=1e-4, atol=1e-4)
    expected = _finite_difference_kernel_gradient(padded, kernel, upstream, stride=strides)
    got = _gradients(conv, x, upstream)[1]
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_a_pointwise_convolution_matches_numpy_and_its_gradient(padding):
    # A 1x1 convolution at stride 1 is a matrix product over the pixels (`convolution_op`).
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 4, 3, 5)).astype("float32")
    conv = StandardizedConv2D(3, 1, padding=padding)
    conv.build(x.shape)
    kernel = (rng.standard_normal(conv.kernel.shape) * 0.3 + 0.2).astype("float32")
    conv.kernel.assign(kernel)
    got = keras.ops.convert_to_numpy(conv(x))
    np.testing.assert_allclose(got, conv2d(x, standardize(kernel)), rtol=1e-4, atol=1e-4)
    upstream = rng.standard_normal(got.shape).astype("float32")
    input_gradient = np.einsum("nhwo,io->nhwi", upstream, standardize(kernel)[0, 0])
    np.testing.assert_allclose(_gradients(conv, x, upstream)[0], input_gradient, rtol=1e-4, atol=1e-4)
    expected = _finite_difference_kernel_gradient(x, kernel, upstream)
    got = _gradients(conv, x, upstream)[1]
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


def _traced_standardization(conv, upstream):
    """The standardised kernel and its gradient from a traced step, and the op types of the trace."""
    import tensorflow as tf

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            standardized = conv.standardized_kernel()
            loss = tf.reduce_sum(standardized * upstream)
        return standardized, tape.gradient(loss, conv.kernel.value)

    concrete = step.get_concrete_function()
    graph = concrete.graph.as_graph_def()
    ops = {node.op for node in graph.node} | {node.op for f in graph.library.function for node in f.node_def}
    return [v.numpy() for v in concrete()], ops


@requires_tensorflow
def test_weight_standardization_is_a_fused_batch_norm_on_a_cpu_and_element_wise_when_portable():
    rng = np.random.default_rng(7)
    conv = StandardizedConv2D(8, 3, epsilon=1e-10)
    conv.build((1, 5, 5, 6))
    kernel = (rng.standard_normal(conv.kernel.shape) * 0.05 + 0.01).astype("float32")
    conv.kernel.assign(kernel)
    upstream = rng.standard_normal(kernel.shape).astype("float32")
    fused, fused_ops = _traced_standardization(conv, upstream)
    with portable():
        plain, plain_ops = _traced_standardization(conv, upstream)
    assert "FusedBatchNormV3" in fused_ops and "FusedBatchNormGradV3" in fused_ops
    assert not {op for op in plain_ops if op.startswith("FusedBatchNorm")}
    np.testing.assert_allclose(fused[0], standardize(kernel), rtol=1e-5, atol=1e-5)
    for got, expected in zip(fused, plain):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_weight_standardization_epsilon_is_bit():
    # A constant kernel has zero variance: with eps 1e-10 its values become
    # (w - mean) / 1e-5; a 1e-8 epsilon (timm / HF) would give a different scale.
    conv = StandardizedConv2D(1, 1, use_bias=False)
    conv.build((1, 1, 1, 2))
    conv.kernel.assign(np.array([[[[1.0], [1.0 + 2e-5]]]], "float32"))
    w = keras.ops.convert_to_numpy(conv.standardized_kernel())
    np.testing.assert_allclose(np.abs(w).ravel(), np.full(2, 1e-5 / np.sqrt(1e-10 + 1e-10)), rtol=2e-2)
    assert conv.epsilon == 1e-10


@pytest.mark.parametrize("groups,channels", [(32, 64), (4, 8), (1, 3)])
def test_group_norm_matches_numpy(groups, channels):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((3, 5, 6, channels)) * 4 + 2).astype("float32")
    gn = GroupNormalization(groups=groups)
    gn.build(x.shape)
    gamma = rng.standard_normal(channels).astype("float32")
    beta = rng.standard_normal(channels).astype("float32")
    gn.gamma.assign(gamma)
    gn.beta.assign(beta)
    got = keras.ops.convert_to_numpy(gn(x))
    np.testing.assert_allclose(got, group_norm(x, gamma, beta, groups=groups), rtol=1e-4, atol=1e-4)
    assert gn.epsilon == 1e-5


@pytest.mark.parametrize("mean", [300.0, 10.0])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "plain"])
def test_group_norm_keeps_its_digits_on_activations_with_a_large_mean(mean, fused):
    """Against a float64 reference, as close as Keras' own layer: E[x^2] - E[x]^2 in float32 was 0.08 off at mean 300."""
    errors = {"ours": 0.0, "keras": 0.0}
    for seed in range(3):
        x = (mean + np.random.default_rng(seed).standard_normal((2, 8, 8, 64))).astype("float32")
        reference = group_norm(x.astype(np.float64), np.ones(64), np.zeros(64), groups=32)
        with contextlib.nullcontext() if fused else unfused():
            ours = keras.ops.convert_to_numpy(GroupNormalization(groups=32)(x))
        theirs = keras.ops.convert_to_numpy(keras.layers.GroupNormalization(groups=32, epsilon=1e-5)(x))
        errors["ours"] = max(errors["ours"], np.abs(ours - reference).max())
        errors["keras"] = max(errors["keras"], np.abs(theirs - reference).max())
    # Summation order differs between XLA, TensorFlow and JAX reductions: the same order of error, not the same digits.
    assert errors["ours"] <= 2 * errors["keras"] + 1e-6, errors


def _traced_group_norm(gn, x):
    """Output and gradients (input, gamma, beta) of a traced GroupNorm step, and the op types of each XLA cluster."""
    import tensorflow as tf

    weights = tf.cast(tf.reshape(tf.range(x.size), x.shape) % 7, "float32")

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = gn(x)
            loss = tf.reduce_sum(y * weights)
        return [y, *tape.gradient(loss, [x, gn.gamma, gn.beta])]

    concrete = step.get_concrete_function(tf.TensorSpec(x.shape, tf.float32))
    library = concrete.graph.as_graph_def().library.function
    clusters = [{node.op for node in f.node_def} for f in library if f.attr["_XlaMustCompile"].b]
    return [v.numpy() for v in concrete(tf.constant(x))], clusters


@requires_tensorflow
def test_group_norm_is_one_xla_cluster_under_tensorflow_and_matches_plain_ops():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((2, 6, 5, 64)) * 3 + 1).astype("float32")
    gn = GroupNormalization()
    gn.build(x.shape)
    gn.gamma.assign(rng.standard_normal(64).astype("float32"))
    gn.beta.assign(rng.standard_normal(64).astype("float32"))
    fused, fused_clusters = _traced_group_norm(gn, x)
    with unfused():
        plain, plain_clusters = _traced_group_norm(gn, x)
    assert fused_clusters and not plain_clusters
    for got, expected in zip(fused, plain):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fused[0], group_norm(x, *keras.ops.convert_to_numpy([gn.gamma, gn.beta])), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "plain"])
def test_group_norm_gradients_match_finite_differences(fused):
    # The gradient is written in closed form (`_group_norm`): checked against float64 NumPy, not against itself.
    rng = np.random.default_rng(12)
    x = (rng.standard_normal((2, 3, 4, 8)) * 2 + 3).astype("float32")
    gamma, beta = rng.standard_normal(8).astype("float32"), rng.standard_normal(8).astype("float32")
    upstream = rng.standard_normal(x.shape).astype("float32")
    gn = GroupNormalization(groups=2)
    gn.build(x.shape)
    gn.gamma.assign(gamma)
    gn.beta.assign(beta)
    with contextlib.nullcontext() if fused else unfused():
        got = _gradients(gn, x, upstream)
    arguments = [a.astype(np.float64) for a in (x, gamma, beta)]
    for which, gradient in enumerate(got):

        def loss(argument, which=which):
            shifted = [argument if i == which else a for i, a in enumerate(arguments)]
            return float(np.sum(group_norm(*shifted, groups=2) * upstream))

        expected = _central_differences(loss, arguments[which])
        np.testing.assert_allclose(gradient, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max(), err_msg=f"argument {which}")


def test_group_norm_activation_follows_the_normalisation():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 3, 8)).astype("float32")
    activated, plain = GroupNormalization(groups=2, activation="relu"), GroupNormalization(groups=2)
    for gn in (activated, plain):
        gn.build(x.shape)
        gn.gamma.assign(rng.standard_normal(8).astype("float32"))
        gn.beta.assign(np.full(8, 0.3, "float32"))
    plain.set_weights(activated.get_weights())
    expected = keras.ops.convert_to_numpy(plain(x))
    assert (expected < 0).any()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(activated(x)), np.maximum(expected, 0))


@requires_tensorflow
def test_group_norm_activation_is_inside_its_xla_cluster():
    # One cluster for the normalisation and the ReLU, forward and backward: no pass of the ReLU's own.
    x = np.random.default_rng(9).standard_normal((2, 4, 4, 64)).astype("float32")
    gn = GroupNormalization(activation="relu")
    gn.build(x.shape)
    (y, *_), clusters = _traced_group_norm(gn, x)
    assert any("Relu" in ops for ops in clusters) and any("ReluGrad" in ops for ops in clusters)
    assert (y >= 0).all() and (y > 0).any()


def test_group_norm_rejects_indivisible_channels():
    with pytest.raises(ValueError, match="divisible by the number of groups"):
        GroupNormalization(groups=32)(np.zeros((1, 2, 2, 48), "float32"))


def test_group_norm_statistics_are_float32_under_mixed_float16():
    # Squares of these values overflow float16 (max 65504): statistics computed
    # in float16 would give inf/nan.
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((2, 8, 8, 64)) * 50 + 400).astype("float16")
    gn = GroupNormalization(dtype="mixed_float16")
    out = gn(x)
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    got = keras.ops.convert_to_numpy(out).astype("float32")
    expected = group_norm(x.astype("float32"), np.ones(64), np.zeros(64))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, atol=1e-2)


def test_pixel_mean_by_product_is_the_mean_over_the_pixels():
    pixels = np.random.default_rng(11).standard_normal((3, 30, 8)).astype("float32") + 2
    got = keras.ops.convert_to_numpy(_pixel_mean_by_product(pixels))
    np.testing.assert_allclose(got, pixels.astype(np.float64).mean(axis=1), rtol=1e-6)


@requires_tensorflow
@pytest.mark.parametrize("policy", ["mixed_bfloat16", "float32"])
def test_group_norm_means_are_products_for_a_bfloat16_input_on_a_cpu(policy):
    # Where XLA:CPU's reductions are slow (`_products_average`), and only there.
    import tensorflow as tf

    rng = np.random.default_rng(10)
    gn = GroupNormalization(dtype=policy)
    gn.build((2, 6, 5, 64))
    gn.gamma.assign(rng.standard_normal(64).astype("float32"))
    gn.beta.assign(rng.standard_normal(64).astype("float32"))
    inputs = tf.cast(rng.standard_normal((2, 6, 5, 64)) * 3 + 1, gn.compute_dtype)
    concrete = tf.function(gn).get_concrete_function(tf.TensorSpec(inputs.shape, inputs.dtype))
    library = concrete.graph.as_graph_def().library.function
    cluster_ops = {node.op for f in library if f.attr["_XlaMustCompile"].b for node in f.node_def}
    assert ("BatchMatMulV2" in cluster_ops) == (policy == "mixed_bfloat16")
    got = concrete(inputs).numpy().astype("float32")
    expected = group_norm(inputs.numpy().astype("float32"), *keras.ops.convert_to_numpy([gn.gamma, gn.beta]))
    # bfloat16 keeps 8 bits: the output's rounding, not the statistics, sets the tolerance.
    tolerance = 1e-2 if policy == "mixed_bfloat16" else 1e-4
    np.testing.assert_allclose(got, expected, rtol=tolerance, atol=tolerance * np.abs(expected).max())


def test_standardized_conv_under_mixed_bfloat16_uses_float32_kernel():
    conv = StandardizedConv2D(4, 1, dtype="mixed_bfloat16")
    x = np.ones((1, 2, 2, 3), "float32")
    out = conv(x)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert keras.backend.standardize_dtype(conv.kernel.dtype) == "float32"
    expected = conv2d(x, standardize(keras.ops.convert_to_numpy(conv.kernel)))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.ops.cast(out, "float32")), expected, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize(
    "layer",
    [
        StandardizedConv2D(6, 3, strides=2, padding="same"),
        GroupNormalization(groups=2, epsilon=1e-4),
        GroupNormalization(groups=2, activation="relu"),
    ],
)
def test_layers_serialize(layer):
    config = layer.get_config()
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(clone) is type(layer)
    assert clone.get_config() == config


def _gradients(layer, x, upstream):
    """d sum(layer(x) * upstream) / d (x, *the layer's trainable weights), by the backend's own differentiation."""
    backend = keras.backend.backend()
    weights = [v.value for v in layer.trainable_variables]
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x) * upstream)
        return [g.numpy() for g in tape.gradient(loss, [x, *weights])]
    if backend == "jax":
        import jax

        def loss(inputs, *trainable):
            outputs, _ = layer.stateless_call(list(trainable), [v.value for v in layer.non_trainable_variables], inputs)
            return (outputs * upstream).sum()

        return [np.asarray(g) for g in jax.grad(loss, argnums=tuple(range(1 + len(weights))))(x, *weights)]
    pytest.fail(f"no gradient helper for the {backend} backend")


def _central_differences(loss, point):
    """d loss / d point by central differences, in float64."""
    step = 1e-6
    gradient = np.zeros(point.shape)
    for index in np.ndindex(point.shape):
        shifted = point.astype(np.float64)
        shifted[index] += step
        up = loss(shifted)
        shifted[index] -= 2 * step
        gradient[index] = (up - loss(shifted)) / (2 * step)
    return gradient


def _finite_difference_kernel_gradient(x, kernel, upstream, epsilon=1e-10, stride=1):
    """d sum(conv2d(x, standardize(kernel)) * upstream) / d kernel by central differences, in float64 NumPy."""
    return _central_differences(
        lambda w: float(np.sum(conv2d(x.astype(np.float64), standardize(w, epsilon), stride=stride) * upstream)), kernel
    )


@pytest.mark.parametrize("epsilon", [1e-10, 1e-2])
def test_weight_standardization_gradient_matches_finite_differences(epsilon):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 5, 5, 2)).astype("float32")
    conv = StandardizedConv2D(3, 3, epsilon=epsilon)
    conv.build(x.shape)
    kernel = (rng.standard_normal((3, 3, 2, 3)) * 0.5 + 0.3).astype("float32")
    conv.kernel.assign(kernel)
    upstream = rng.standard_normal((2, 3, 3, 3)).astype("float32")
    got = _gradients(conv, x, upstream)[1]
    expected = _finite_difference_kernel_gradient(x, kernel, upstream, epsilon)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


def _traces_a_cycle_leaves(variant, optimizer):
    """(gradients registered, functions traced) that one more model built, predicted, fitted one step and dropped."""
    import gc

    from tensorflow.python.eager import context
    from tensorflow.python.framework import ops as tf_ops

    import bit_keras

    def counts():
        registered = sum(name.startswith("CustomGradient") for name in tf_ops._gradient_registry.list())
        return registered, len(context.context().list_function_names())

    x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    y = np.eye(3, dtype="float32")[[0, 2]]
    readings = []
    for _ in range(2):
        model = bit_keras.BiT(variant, weights=None, num_classes=3, input_shape=(32, 32, 3))
        model.predict(x, verbose=0)
        model.compile(optimizer=optimizer(), loss="categorical_crossentropy")
        model.fit(x, y, verbose=0)
        del model
        keras.backend.clear_session()
        gc.collect()
        readings.append(counts())
    return [after - before for before, after in zip(*readings)]


@requires_tensorflow
def test_a_second_model_of_the_same_shapes_traces_nothing_new_and_registers_no_gradient(tiny):
    # TensorFlow keeps every registered custom gradient, and the traced step it holds, for the life of the
    # process; layers sharing one function per shape, and the trainers' optimizer skipping the one-replica
    # all-reduce, leave nothing behind a model that is gone.
    from bit_keras.training import AccumulatingSGD

    assert _traces_a_cycle_leaves(tiny, lambda: AccumulatingSGD(0.01)) == [0, 0]
    # Keras' own SGD registers one (its all-reduce), as it does for any Keras model; the layers add none.
    assert _traces_a_cycle_leaves(tiny, lambda: keras.optimizers.SGD(0.01)) == [1, 0]
