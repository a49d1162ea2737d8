"""`bit_keras.fold`: the folded copy computes the model's logits, and the fine-tuner's inference never goes stale."""

import keras
import numpy as np
import pytest
from conftest import requires_tensorflow
from toy_data import colour_task

import bit_keras
from bit_keras import data, finetune

pytestmark = pytest.mark.backends

TINY = "R1-1-1-1x1"


def randomised(model, seed=0):
    """`model` with every weight random: kernels, GroupNorm's gamma and beta, and the head (zeros when built)."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        shape = tuple(variable.shape)
        if "gamma" in variable.path:
            value = rng.uniform(0.5, 1.5, shape)
        elif len(shape) == 1:
            value = rng.normal(0.0, 0.2, shape)
        else:
            value = rng.normal(0.3, 1.0, shape)  # an offset mean: standardisation has something to remove
        variable.assign(value.astype(keras.backend.standardize_dtype(variable.dtype)))
    return model


def images(n=2, size=32, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype("float32")


def assert_same_logits(got, expected):
    scale = np.abs(expected).max()
    assert scale > 1.0  # not the zero logits of an untrained head
    assert np.abs(got - expected).max() <= 1e-6 * scale, (np.abs(got - expected).max(), scale)


def layer_kinds(model):
    return {layer.name: type(layer).__name__ for layer in model.layers}


def test_folded_logits_equal_the_models_and_the_model_is_untouched():
    model = randomised(bit_keras.BiT(TINY, num_classes=5))
    before = [w.copy() for w in model.get_weights()]
    x = images()
    folded = bit_keras.fold(model)
    assert_same_logits(folded.predict(x, verbose=0), model.predict(x, verbose=0))

    convs = [layer for layer in model.layers if isinstance(layer, bit_keras.StandardizedConv2D)]
    assert len(convs) == 1 + 4 * 4  # the root, and four convolutions in each unit of the first
    for conv in convs:
        twin = folded.get_layer(conv.name)
        assert type(twin) is keras.layers.Conv2D
        assert (twin.strides, twin.padding, twin.kernel_size, twin.filters, twin.use_bias) == (
            conv.strides,
            conv.padding,
            conv.kernel_size,
            conv.filters,
            conv.use_bias,
        )
        assert twin.dtype_policy.name == conv.dtype_policy.name
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(twin.kernel), keras.ops.convert_to_numpy(conv.standardized_kernel())
        )
    kinds, folded_kinds = layer_kinds(model), layer_kinds(folded)
    assert set(kinds) == set(folded_kinds) and folded.name == model.name
    for name, kind in kinds.items():  # the convolutions become plain; everything else, GroupNorm too, stays
        assert folded_kinds[name] == ("Conv2D" if kind == "StandardizedConv2D" else kind)
    # The original keeps its layers and its weights, and shares no variable with the copy.
    assert all(isinstance(model.get_layer(conv.name), bit_keras.StandardizedConv2D) for conv in convs)
    for old, now in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, now)
    assert not {id(v) for v in model.weights} & {id(v) for v in folded.weights}


def test_each_convolution_keeps_its_own_epsilon():
    """The timm / transformers epsilon (1e-8) folds as those models standardise, not with the official 1e-10."""
    model = bit_keras.BiT(TINY, num_classes=3, ws_epsilon=1e-8)
    conv = model.get_layer("root_conv")
    # A kernel whose variance (1e-8) is of the epsilon's size: the two epsilons give kernels 1.4x apart.
    conv.kernel.assign(np.random.default_rng(0).normal(0.0, 1e-4, conv.kernel.shape).astype("float32"))
    folded = bit_keras.fold(model)
    kernel = keras.ops.convert_to_numpy(conv.kernel).astype("float64")
    centred = kernel - kernel.mean(axis=(0, 1, 2))
    variance = (centred**2).mean(axis=(0, 1, 2))
    got = keras.ops.convert_to_numpy(folded.get_layer("root_conv").kernel)
    np.testing.assert_allclose(got, centred / np.sqrt(variance + 1e-8), rtol=1e-4, atol=1e-6)
    assert np.abs(got - centred / np.sqrt(variance + 1e-10)).max() > 0.1


def test_a_model_wrapping_a_bit_folds_the_bit_inside():
    bit = randomised(bit_keras.BiT(TINY, num_classes=5), seed=2)
    inputs = keras.Input((32, 32, 3), name="pixels")
    scaled = keras.layers.Rescaling(1 / 127.5, offset=-1, name="to_model_range")(inputs)
    outputs = keras.layers.Dense(3, name="extra", kernel_initializer="glorot_normal")(bit(scaled))
    wrapper = keras.Model(inputs, outputs, name="wrapper")
    sequential = keras.Sequential([keras.Input((32, 32, 3)), bit, keras.layers.Dense(3, name="extra")], name="sequential")
    pixels = np.random.default_rng(3).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    for model in (wrapper, sequential):
        folded = bit_keras.fold(model)
        assert type(folded) is type(model)
        inner = folded.get_layer(bit.name)
        assert isinstance(inner.get_layer("block4_unit01_c_conv"), keras.layers.Conv2D)
        assert not any(isinstance(layer, bit_keras.StandardizedConv2D) for layer in inner.layers)
        np.testing.assert_array_equal(folded.get_layer("extra").get_weights()[0], model.get_layer("extra").get_weights()[0])
        assert_same_logits(folded.predict(pixels, verbose=0), model.predict(pixels, verbose=0))
    assert isinstance(wrapper.get_layer(bit.name).get_layer("block4_unit01_c_conv"), bit_keras.StandardizedConv2D)


def test_mixed_precision_folds_to_compute_dtype_kernels_and_the_same_logits():
    model = randomised(bit_keras.BiT(TINY, num_classes=5, mixed_precision="mixed_bfloat16"), seed=4)
    folded = bit_keras.fold(model)  # under the global float32 policy: the model's own policy must carry over
    assert folded.dtype_policy.name == "mixed_bfloat16"
    for layer in model.layers[1:]:  # not the input layer, whose config holds the input's dtype, not a policy
        # A convolution holds its kernel in the compute dtype: the cast each call of the model makes, made once.
        expected = "bfloat16" if isinstance(layer, bit_keras.StandardizedConv2D) else layer.dtype_policy.name
        assert folded.get_layer(layer.name).dtype_policy.name == expected
    assert folded.get_layer("root_conv").kernel.dtype == "bfloat16"
    x = images()
    expected = keras.ops.convert_to_numpy(model.predict(x, verbose=0)).astype("float32")
    got = keras.ops.convert_to_numpy(folded.predict(x, verbose=0)).astype("float32")
    # Bit for bit under TensorFlow; XLA (JAX) may keep excess precision where it fuses, differently in the two graphs.
    assert np.abs(got - expected).max() <= 2e-2 * np.abs(expected).max()


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.bit = bit_keras.BiT(TINY, num_classes=2)

    def call(self, inputs):
        return self.bit(inputs)


def test_what_cannot_be_folded_is_refused_by_name():
    for thing in (object(), "BiT-M-R50x1", keras.layers.Dense(2), bit_keras.StandardizedConv2D(4, 3)):
        with pytest.raises(ValueError, match=r"fold\(model\): model must be a keras.Model containing StandardizedConv2D"):
            bit_keras.fold(thing)
    plain = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="conv")], name="plain")
    with pytest.raises(ValueError, match=r"fold\(model\): model must contain StandardizedConv2D layers.*'plain' has none"):
        bit_keras.fold(plain)
    with pytest.raises(ValueError, match=r"fold\(model\): model must be a functional or Sequential keras.Model"):
        bit_keras.fold(_Subclassed())


def test_folding_into_an_earlier_copy_refreshes_it_in_place():
    model = randomised(bit_keras.BiT(TINY, num_classes=5), seed=9)
    folded = bit_keras.fold(model)
    x = images()
    first = folded.predict(x, verbose=0)
    variables = [id(v) for v in folded.weights]
    randomised(model, seed=10)  # every weight changes, GroupNorm's and the head's too
    assert bit_keras.fold(model, into=folded) is folded
    assert [id(v) for v in folded.weights] == variables
    refreshed = folded.predict(x, verbose=0)
    assert np.abs(refreshed - first).max() > 1e-2 * np.abs(first).max()
    assert_same_logits(refreshed, model.predict(x, verbose=0))


def test_folding_into_what_is_not_a_fold_of_the_model_is_refused():
    model = bit_keras.BiT(TINY, num_classes=5)
    others = [
        model,
        bit_keras.fold(bit_keras.BiT(TINY, num_classes=3)),
        bit_keras.fold(bit_keras.BiT("R1-1-1-1x2", num_classes=5)),
    ]
    for other in [*others, "folded"]:
        with pytest.raises(ValueError, match=r"into must be a copy returned by fold\(model\) for this model"):
            bit_keras.fold(model, into=other)


# ------------------------------------------------------------------ the fine-tuner's inference


def tuner(**kwargs):
    keras.utils.set_random_seed(0)
    model = randomised(bit_keras.BiT(TINY, num_classes=2), seed=5)
    options = dict(batch_size=8, steps=20, sizes=(40, 32), seed=0, zero_head=False, dataset_size=64, image_size=(12, 12))
    return bit_keras.BiTFineTuner(model, **{**options, **kwargs})


@pytest.fixture
def folds(monkeypatch):
    """The fine-tuner's calls of `fold`: the model given and the copy returned, in order."""
    calls = []

    def recording(model, into=None):
        folded = bit_keras.fold(model, into=into)
        calls.append((model, folded))
        return folded

    monkeypatch.setattr(finetune, "fold", recording)
    return calls


def unfolded_predict(tuner, pixels):
    resized = keras.ops.image.resize(pixels.astype("float32"), (32, 32))
    return keras.ops.convert_to_numpy(tuner.model.predict((resized - 127.5) / 127.5, verbose=0))


def test_predict_folds_on_every_call_and_follows_every_weight_update(folds):
    t = tuner()
    pixels, _ = colour_task(6)
    first = t.predict(pixels)
    assert len(folds) == 1 and folds[0][0] is t.model
    # One XLA program for inference under JAX; under TensorFlow the shared GroupNorm clusters (a program per copy
    # would stay in TensorFlow's compilation cache for the life of the process).
    assert folds[0][1].jit_compile == (keras.backend.backend() == "jax")
    assert_same_logits(first, unfolded_predict(t, pixels))
    # A new convolution kernel: a folded model kept from the first call would still hold the old one.
    conv = t.model.get_layer("block1_unit01_b_conv")
    conv.kernel.assign(np.random.default_rng(6).normal(size=conv.kernel.shape).astype("float32"))
    second = t.predict(pixels)
    assert len(folds) == 2 and folds[1][1] is folds[0][1]  # the first call's copy, folded again in place
    assert np.abs(second - first).max() > 1e-2 * np.abs(first).max()
    assert_same_logits(second, unfolded_predict(t, pixels))


def test_predict_after_an_optimizer_step_sees_the_step(folds, capsys):
    t = tuner(steps=1, base_lr=0.1)
    pixels, labels = colour_task(8)
    before = t.predict(pixels)
    t.fit((pixels, labels), verbose=0)
    after = t.predict(pixels)
    assert len(folds) == 2 and folds[1][1] is not folds[0][1]  # `fit` compiled the model: a new copy, compiled alike
    assert np.abs(after - before).max() > 1e-4 * np.abs(before).max()
    assert_same_logits(after, unfolded_predict(t, pixels))


def test_evaluate_reports_what_the_unfolded_model_reports(folds):
    t = tuner()
    pixels, labels = colour_task(24, seed=7)
    got = t.evaluate((pixels, labels), verbose=0)
    assert len(folds) == 1
    pipeline = data.eval_pipeline(data.as_source((pixels, labels), 2), crop=32, batch_size=t.engine.micro_batch)
    with t.engine.scope():
        expected = t.model.evaluate(pipeline, return_dict=True, verbose=0)
    assert set(got) == set(expected) == {"loss", "accuracy"}
    assert expected["loss"] > 0.1  # random weights: a loss far from zero, to compare digit by digit
    assert abs(got["loss"] - expected["loss"]) <= 1e-5 * expected["loss"]
    assert got["accuracy"] == expected["accuracy"]
    # The next evaluate folds again, from the weights as they are then.
    t.model.get_layer("head").kernel.assign(np.zeros((2048, 2), "float32"))
    zero_head = t.evaluate((pixels, labels), verbose=0)
    assert len(folds) == 2
    bias = keras.ops.convert_to_numpy(t.model.get_layer("head").bias)
    expected_loss = -np.log(np.exp(bias) / np.exp(bias).sum())  # every example gets the bias as its logits
    np.testing.assert_allclose(zero_head["loss"], expected_loss[labels].mean(), rtol=1e-5)


@requires_tensorflow
def test_predict_and_evaluate_fold_under_the_strategy_and_the_mixed_policy(folds):
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    t = bit_keras.BiTFineTuner(
        TINY,
        weights=None,
        num_classes=2,
        strategy=strategy,
        mixed_precision="mixed_bfloat16",
        batch_size=8,
        steps=20,
        sizes=(40, 32),
        dataset_size=64,
        image_size=(12, 12),
    )
    t.model.set_weights(randomised(bit_keras.BiT(TINY, num_classes=2), seed=8).get_weights())
    pixels, labels = colour_task(8)
    logits = t.predict(pixels)
    with t.engine.scope():
        expected = unfolded_predict(t, pixels)
    # The copy runs as one XLA program, whose fusions round bfloat16 differently: about a bfloat16 step (2^-8 to 2^-7).
    assert np.abs(logits - expected).max() <= 1e-2 * np.abs(expected).max()
    assert set(t.evaluate((pixels, labels), verbose=0)) == {"loss", "accuracy"}
    assert len(folds) == 2
    for _, folded in folds:
        assert strategy.extended.variable_created_in_scope(folded.get_layer("root_conv").kernel.value)
        assert folded.get_layer("root_conv").compute_dtype == "bfloat16"


def test_the_copy_is_for_inference_only_and_keeps_the_class_names():
    model = randomised(bit_keras.BiT(TINY, num_classes=2))
    model.class_names = ("cat", "dog")
    folded = bit_keras.fold(model)
    assert folded.trainable is False and folded.trainable_weights == []
    assert folded.class_names == ("cat", "dog")
    model.class_names = ("puma", "wolf")
    assert bit_keras.fold(model, into=folded).class_names == ("puma", "wolf")
