import json
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
from reference import UNITS, layout, random_state
from reference import forward as reference_forward

import bit_keras
from bit_keras import checkpoints
from bit_keras.resnet import RELEASED_ARCHITECTURES

pytestmark = pytest.mark.backends


# Builds every released BiT-M model in a child process and prints, per architecture, each official
# key with its weight's shape, and the model's parameter count.
BUILD_RELEASED = """
import json, sys
import keras
import bit_keras
from bit_keras.checkpoints import official_weights
layouts = {}
for architecture in sys.argv[1:]:
    model = bit_keras.BiT(f"BiT-M-{architecture}")
    shapes = {key: list(v.shape) for key, v in official_weights(model).items()}
    layouts[architecture] = {"shapes": shapes, "params": model.count_params()}
    del model
    keras.backend.clear_session()
print(json.dumps(layouts))
"""


@pytest.fixture(scope="module")
def released_layouts():
    """What `BUILD_RELEASED` prints, for the architectures this backend checks.

    In a child process: TensorFlow's CPU allocator keeps the memory a process
    freed for the rest of its life, and R152x4 alone is 4.4 GB of weights.
    The layout does not depend on the backend, so under another backend only
    R50x1 is built.
    """
    architectures = RELEASED_ARCHITECTURES if keras.backend.backend() == "tensorflow" else ["R50x1"]
    result = subprocess.run([sys.executable, "-c", BUILD_RELEASED, *architectures], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize("architecture", RELEASED_ARCHITECTURES)
def test_released_variants_match_checkpoint_layout(architecture, released_layouts):
    """Every weight maps to one official key with its shape; the counts are the layout's sums."""
    if architecture not in released_layouts:
        pytest.skip("the layout does not depend on the backend; the large variants are checked under TensorFlow")
    depth, width = (int(v) for v in architecture[1:].split("x"))
    expected = layout(UNITS[depth], width, 21843)
    got = {key: tuple(shape) for key, shape in released_layouts[architecture]["shapes"].items()}
    got["resnet/head/conv2d/kernel"] = (1, 1) + got["resnet/head/conv2d/kernel"]
    assert got == expected
    body = sum(int(np.prod(s)) for k, s in expected.items() if "/head/" not in k)
    assert released_layouts[architecture]["params"] == body + 2048 * width * 21843 + 21843
    if architecture == "R50x1":
        assert body == 23_500_352
    if architecture == "R152x4":
        assert body == 928_340_224


def test_bit_s_head_has_1000_classes_and_new_heads_are_zero(tiny):
    assert bit_keras.BiT("BiT-S-R50x1").output.shape == (None, 1000)
    model = bit_keras.BiT(tiny, num_classes=7)
    head = model.get_layer("head")
    assert not np.any(keras.ops.convert_to_numpy(head.kernel))
    assert not np.any(keras.ops.convert_to_numpy(head.bias))


def test_custom_variant_needs_num_classes(tiny):
    with pytest.raises(ValueError, match="num_classes"):
        bit_keras.BiT(tiny)


@pytest.mark.parametrize("name", ["BiT-X-R50x1", "BiT-M-R34x1", "BiT-M-R50x5", "R50x1"])
def test_unknown_variant_names_are_refused(name):
    with pytest.raises(ValueError, match="Unknown BiT variant"):
        bit_keras.BiT(name)


@pytest.mark.parametrize("variant", [bit_keras.Variant((1, 2, 1, 1), width=2), bit_keras.get_variant("BiT-M-R101x3")])
def test_variant_names_round_trip(variant):
    assert bit_keras.get_variant(variant.name) == variant


def test_bit_l_is_architecture_only():
    variant = bit_keras.get_variant("BiT-L-R152x4")
    assert not variant.weights_released and variant.feature_size == 8192
    assert "BiT-L-R50x1" not in bit_keras.variants() and "BiT-L-R50x1" in bit_keras.variants(released_only=False)


@pytest.mark.parametrize("size", [(32, 32), (33, 47), (64, 80)])
def test_any_input_size(tiny, size):
    model = bit_keras.BiT(tiny, num_classes=3)
    x = np.random.default_rng(0).uniform(-1, 1, (2, *size, 3)).astype("float32")
    assert model.predict(x, verbose=0).shape == (2, 3)


def test_feature_outputs(tiny):
    x = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    feature_map = bit_keras.BiT(tiny, include_top=False)
    assert feature_map(x).shape == (2, 2, 2, 2048)
    pooled = bit_keras.BiT(tiny, include_top=False, pooling="avg")
    assert pooled(x).shape == (2, 2048)
    wide = bit_keras.BiT(bit_keras.Variant((1, 1, 1, 1), width=2), include_top=False, pooling="max")
    assert wide(x).shape == (2, 4096)


def test_keras_round_trip_is_bit_exact(tiny, tmp_path):
    model = bit_keras.BiT(tiny, num_classes=4)
    rng = np.random.default_rng(0)
    for variable in model.weights:
        variable.assign(rng.standard_normal(variable.shape).astype("float32") * 0.1 + (1 if "gamma" in variable.path else 0))
    path = os.path.join(tmp_path, "tiny.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = rng.uniform(-1, 1, (2, 48, 48, 3)).astype("float32")
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    assert type(loaded.get_layer("root_conv")) is bit_keras.StandardizedConv2D


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_policies(tiny, policy):
    keras.config.set_dtype_policy(policy)
    model = bit_keras.BiT(tiny, num_classes=3)
    gn = model.get_layer("block1_unit01_a_gn")
    assert gn.compute_dtype == policy.split("_")[1]
    assert keras.backend.standardize_dtype(gn.gamma.dtype) == "float32"
    x = np.random.default_rng(0).uniform(-1, 1, (2, 40, 40, 3)).astype("float32")
    logits = model(x)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert np.isfinite(keras.ops.convert_to_numpy(logits)).all()


def test_model_fit_on_random_data(tiny):
    model = bit_keras.BiT(tiny, num_classes=2)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (8, 32, 32, 3)).astype("float32")
    y = np.eye(2)[np.arange(8) % 2].astype("float32")
    before = keras.ops.convert_to_numpy(model.get_layer("root_conv").kernel).copy()
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert not np.allclose(before, keras.ops.convert_to_numpy(model.get_layer("root_conv").kernel))


# --- the epsilons the model uses (not the layer defaults) --------------------


def _model_and_reference(state, x):
    """The tiny model loaded with `state`, and its logits next to the NumPy reference's."""
    model = bit_keras.BiT(bit_keras.Variant((1, 1, 1, 1)), num_classes=state["resnet/head/conv2d/bias"].shape[0])
    checkpoints.load_state(model, state, "test state")
    return model.predict(x, verbose=0).astype(np.float64), reference_forward(state, x, (1, 1, 1, 1))


def _assert_reference_parity(logits, expected):
    scale = np.abs(expected).max()
    assert np.abs(logits - expected).max() <= 3e-4 * scale


def test_model_weight_standardization_epsilon_is_1e_10():
    # The last conv of the first unit feeds the residual sum directly. Its
    # kernels get a variance of 1e-10 per output channel: standardised with
    # eps 1e-10 they reach unit scale, with timm's 1e-8 a 7x smaller one.
    state = random_state((1, 1, 1, 1), 1, 5, seed=3)
    key = "resnet/block1/unit01/c/standardized_conv2d/kernel"
    rng = np.random.default_rng(4)
    state[key] = (rng.standard_normal(state[key].shape) * 1e-5).astype(np.float32)
    x = rng.uniform(-1, 1, (2, 48, 48, 3)).astype("float32")
    logits, expected = _model_and_reference(state, x)
    _assert_reference_parity(logits, expected)
    # The same check tells the two epsilons apart on these weights.
    assert np.abs(reference_forward(state, x, (1, 1, 1, 1), ws_eps=1e-8) - expected).max() > 0.05 * np.abs(expected).max()


def test_model_group_norm_epsilon_is_1e_5():
    # Near-constant images: the root conv's outputs have a variance near 5e-5,
    # so the first GroupNorm's epsilon (1e-5, not Keras' 1e-3) sets their scale.
    state = random_state((1, 1, 1, 1), 1, 5, seed=5)
    rng = np.random.default_rng(6)
    x = (rng.uniform(-1, 1, (2, 48, 48, 3)) * 1e-3).astype("float32")
    logits, expected = _model_and_reference(state, x)
    _assert_reference_parity(logits, expected)
    assert np.abs(reference_forward(state, x, (1, 1, 1, 1), gn_eps=1e-3) - expected).max() > 0.05 * np.abs(expected).max()


@pytest.mark.backends
@pytest.mark.parametrize(
    "flags,warns", [({"avx2", "fma"}, True), ({"avx2", "avx512_bf16"}, False), ({"amx_bf16"}, False), (None, False)]
)
def test_mixed_bfloat16_warns_on_a_cpu_that_emulates_it(tiny, monkeypatch, flags, warns):
    from bit_keras import distribute

    monkeypatch.setattr(distribute, "accelerator_visible", lambda: False)
    monkeypatch.setattr(distribute, "cpu_flags", lambda: None if flags is None else frozenset(flags))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bit_keras.BiT(tiny, num_classes=3, mixed_precision="mixed_bfloat16")
        bit_keras.BiT(tiny, num_classes=3)  # float32: never a warning
    messages = [str(w.message) for w in caught if "bfloat16 instructions" in str(w.message)]
    assert len(messages) == (1 if warns else 0), messages
    if warns:
        assert "mixed_precision=None" in messages[0]


def test_cpu_flags_reads_x86_and_arm_cpuinfo(tmp_path):
    from bit_keras.distribute import cpu_flags

    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 fma\n\nprocessor\t: 1\nflags\t: fpu\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert cpu_flags(str(x86)) == {"fpu", "sse2", "avx2", "fma"}
    assert cpu_flags(str(arm)) == {"fp", "asimd", "bf16", "i8mm"}
    assert cpu_flags(str(tmp_path / "missing")) is None


@pytest.mark.backends
def test_mixed_precision_is_one_word_and_leaves_the_global_policy_alone(tiny):
    model = bit_keras.BiT(tiny, num_classes=3, mixed_precision="mixed_bfloat16")
    assert model.get_layer("root_conv").compute_dtype == "bfloat16"
    assert model.get_layer("root_conv").kernel.dtype == "float32"
    assert model.get_layer("head").compute_dtype == "float32"  # logits in float32
    assert keras.config.dtype_policy().name == "float32"
    assert model.predict(np.zeros((1, 32, 32, 3), "float32"), verbose=0).dtype == np.float32
    with pytest.raises(ValueError, match="mixed_precision must be None or one of"):
        bit_keras.BiT(tiny, num_classes=3, mixed_precision="bf16")


@pytest.mark.parametrize("height,width", [(64, 64), (96, 128)])
def test_pyramid_outputs_are_the_stage_maps_at_strides_4_to_32(tmp_path, height, width):
    state = random_state((1, 1, 1, 1), 1, 3, seed=4)
    np.savez(tmp_path / "w.npz", **state)
    pyramid = bit_keras.BiT("R1-1-1-1x1", weights=str(tmp_path / "w.npz"), include_top=False, pyramid_outputs=True)
    images = np.random.default_rng(0).uniform(-1, 1, (2, height, width, 3)).astype("float32")
    maps = {name: keras.ops.convert_to_numpy(value) for name, value in pyramid(images).items()}
    assert sorted(maps) == ["P2", "P3", "P4", "P5"]
    for level, channels in zip((2, 3, 4, 5), (256, 512, 1024, 2048)):
        assert maps[f"P{level}"].shape == (2, height // 2**level, width // 2**level, channels)
    backbone = bit_keras.BiT("R1-1-1-1x1", weights=str(tmp_path / "w.npz"), include_top=False)
    np.testing.assert_array_equal(maps["P5"], keras.ops.convert_to_numpy(backbone(images)))
    with pytest.raises(ValueError, match="pyramid_outputs=True gives the unpooled feature maps"):
        bit_keras.BiT("R1-1-1-1x1", pyramid_outputs=True)
