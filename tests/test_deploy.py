"""hub_export.export_format: each deployment format, run by its own runtime, against the Keras logits.

The runtimes are called directly here (onnxruntime's InferenceSession, the
LiteRT interpreter, OpenVINO's Core.compile_model, tf.saved_model.load), not
through `hub_export.run_exported`, so a fault in that helper cannot hide one
in the exports. The model has random weights everywhere, head included (a new
head is zeros, which would make every logit comparison pass).
"""

import configparser
import os
import sys

import keras
import numpy as np
import pytest
from conftest import requires_tensorflow
from packaging.requirements import Requirement
from reference import random_state

import bit_keras
import hub_export
from bit_keras import checkpoints, preprocess
from bit_keras import cli as bit_keras_cli
from hub_export import deploy

pytestmark = requires_tensorflow

TINY = bit_keras.Variant(units=(1, 1, 1, 1), width=1)
CLASSES = 5
FILES = {"saved_model": "model", "onnx": "model.onnx", "litert": "model.tflite", "openvino": "model.xml"}
TOLERANCE = 1e-4  # of the largest |logit|, float32


NAMES = ("cat", "dog", "fish", "bird", "frog")


def tiny_model(state):
    model = bit_keras.BiT(TINY, num_classes=CLASSES)
    checkpoints.load_state(model, state)
    model.class_names = NAMES  # as the fine-tuner sets them
    return model


def images(batch, height, width, seed=0, input_range=(0, 1)):
    return np.random.default_rng(seed).uniform(*input_range, (batch, height, width, 3)).astype("float32")


def keras_outputs(model, x, input_range=(0, 1)):
    return np.asarray(model(preprocess.to_model_range(x, input_range), training=False))


def run_with_runtime(path, fmt, x):
    """The export at `path`, run on `x` by its own runtime, directly."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["images"]
        return session.run(["logits"], {"images": x})[0]
    if fmt == "litert":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=path)
        runner = interpreter.get_signature_runner("serving_default")
        return runner(images=x)["logits"]
    if fmt == "openvino":
        import openvino

        # Float32: OpenVINO's CPU plugin picks bfloat16 by default where the processor has it.
        compiled = openvino.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return compiled({"images": x})["logits"]
    import tensorflow as tf

    return tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(x))["logits"].numpy()


@pytest.fixture(scope="module")
def state():
    return random_state(TINY.units, TINY.width, CLASSES)


@pytest.fixture(scope="module", params=list(FILES))
def exported(request, state, tmp_path_factory):
    """(format, path, record): the tiny classifier exported once per format, images in [0, 1]."""
    fmt = request.param
    path = str(tmp_path_factory.mktemp(fmt) / FILES[fmt])
    record = hub_export.export_format(tiny_model(state), path, fmt)
    return fmt, path, record


# ------------------------------------------------------------------ each format


def test_runtime_logits_match_keras_at_two_batch_sizes_and_a_non_square_image(state, exported):
    fmt, path, _ = exported
    model = tiny_model(state)
    for batch, height, width in [(1, 48, 64), (3, 48, 64), (2, 64, 64)]:
        x = images(batch, height, width, seed=batch)
        expected = keras_outputs(model, x)
        assert np.abs(expected).max() > 0.1  # a random head: logits that can disagree
        got = run_with_runtime(path, fmt, x)
        assert got.shape == (batch, CLASSES)
        error = np.abs(got - expected).max() / np.abs(expected).max()
        assert error < TOLERANCE, f"{fmt} at {batch}x{height}x{width}: {error:.2e} of the largest logit"


def test_metadata_states_the_input_inside_the_export(exported):
    fmt, path, record = exported
    expected = {
        "format": fmt,
        "input": "images",
        "input_shape": [None, None, None, 3],
        "input_dtype": "float32",
        "input_range": [0.0, 1.0],
        "output": "logits",
        "output_size": CLASSES,
        "flavor": "classification",
        "variant": "R1-1-1-1x1",
        "class_names": list(NAMES),
    }
    assert {key: record[key] for key in expected} == expected
    assert hub_export.read_metadata(path) == record
    if fmt == "onnx":  # where a user's tool finds it: the model's metadata_props
        import onnxruntime

        props = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
        assert props["input_range"] == "[0.0, 1.0]" and props["input_shape"] == "[null, null, null, 3]"
    elif fmt == "openvino":
        import openvino

        ir = openvino.Core().read_model(path)
        assert ir.get_rt_info(["bit_keras", "input_range"]).astype(str) == "[0.0, 1.0]"
        assert record["compile_config"] == {"INFERENCE_PRECISION_HINT": "f32"}
    elif fmt == "saved_model":
        assert os.path.isfile(os.path.join(path, "assets.extra", "bit_keras.json"))


def test_exports_are_whole_and_alone(exported):
    fmt, path, _ = exported
    folder = os.path.dirname(path)
    expected = {
        "saved_model": ["model"],
        "onnx": ["model.onnx"],
        "litert": ["model.tflite"],
        "openvino": ["model.bin", "model.xml"],
    }
    assert sorted(os.listdir(folder)) == expected[fmt]  # no temporary or scratch files left beside it
    if fmt == "onnx":
        import onnx

        proto = onnx.load(path)
        onnx.checker.check_model(proto, full_check=True)  # every op is an ONNX op (no PartitionedCall)
        assert "PartitionedCall" not in {node.op_type for node in proto.graph.node}
        dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
        assert dims == ["batch", "height", "width", 3]


def test_run_exported_uses_each_runtime_in_float32(state, exported):
    fmt, path, _ = exported
    x = images(2, 40, 56, seed=7)
    expected = keras_outputs(tiny_model(state), x)
    error = np.abs(hub_export.run_exported(path, x) - expected).max() / np.abs(expected).max()
    assert error < TOLERANCE


def test_exports_are_folded(state, tmp_path):
    """Every convolution of an export holds its standardised kernel: nothing is standardised per call."""
    import tensorflow as tf

    model = tiny_model(state)
    raw = model.get_layer("root_conv").kernel.numpy()
    assert np.abs(raw.var(axis=(0, 1, 2)) - 1).max() > 0.1  # the random kernels are not standardised already
    hub_export.export_format(model, tmp_path / "model", "saved_model")
    kernels = [v.numpy() for v in tf.saved_model.load(str(tmp_path / "model")).variables if len(v.shape) == 4]
    assert len(kernels) == sum(isinstance(layer, bit_keras.layers.StandardizedConv2D) for layer in model.layers)
    for kernel in kernels:
        np.testing.assert_allclose(kernel.mean(axis=(0, 1, 2)), 0, atol=1e-5)
        np.testing.assert_allclose(kernel.var(axis=(0, 1, 2)), 1, atol=1e-4)


# ------------------------------------------------------------------ options


def test_input_range_image_size_and_feature_vector(state, tmp_path):
    path = str(tmp_path / "pixels.tflite")
    record = hub_export.export_format(
        tiny_model(state), path, "litert", flavor="feature_vector", input_range=(0, 255), image_size=(48, 64)
    )
    assert record["input_shape"] == [None, 48, 64, 3] and record["input_range"] == [0.0, 255.0]
    assert record["output"] == "feature_vector" and record["output_size"] == 2048 and "class_names" not in record

    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    assert list(interpreter.get_input_details()[0]["shape_signature"]) == [-1, 48, 64, 3]
    x = images(2, 48, 64, input_range=(0, 255))
    features = bit_keras.BiT(TINY, include_top=False, pooling="avg")
    checkpoints.load_state(features, {k: v for k, v in state.items() if not k.startswith("resnet/head")})
    expected = keras_outputs(features, x, input_range=(0, 255))
    got = interpreter.get_signature_runner("serving_default")(images=x)["feature_vector"]
    assert np.abs(got - expected).max() / np.abs(expected).max() < TOLERANCE


def test_refuses_bad_arguments(state, tmp_path):
    model = tiny_model(state)
    with pytest.raises(ValueError, match="format must be one of"):
        hub_export.export_format(model, str(tmp_path / "m.pt"), "torchscript")
    with pytest.raises(ValueError, match=r"should end with \.tflite"):
        hub_export.export_format(model, str(tmp_path / "m.onnx"), "litert")
    with pytest.raises(ValueError, match="image_size"):
        hub_export.export_format(model, str(tmp_path / "m.onnx"), "onnx", image_size=(0, 64))
    with pytest.raises(ValueError, match="flavor"):
        hub_export.export_format(model, str(tmp_path / "m.onnx"), "onnx", flavor="logits")
    keras.config.set_dtype_policy("mixed_float16")
    with pytest.raises(ValueError, match="float16.*ONNX export needs a float32 model"):
        hub_export.export_format(bit_keras.BiT(TINY, num_classes=CLASSES), str(tmp_path / "m.onnx"), "onnx")
    with pytest.raises(ValueError, match="float16.*LiteRT export needs a float32 model"):  # its interpreter could not run it
        hub_export.export_format(bit_keras.BiT(TINY, num_classes=CLASSES), str(tmp_path / "m.tflite"), "litert")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_existing_files_are_refused_unless_overwrite(state, tmp_path, fmt):
    path = tmp_path / FILES[fmt]
    kept = tmp_path / ("model.bin" if fmt == "openvino" else FILES[fmt])  # an IR's .bin counts as its own
    kept.write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        hub_export.export_format(tiny_model(state), str(path), fmt)
    assert kept.read_text() == "mine" and len(os.listdir(tmp_path)) == 1


@pytest.mark.parametrize("fmt", list(FILES))
def test_interrupted_export_leaves_only_what_was_there(state, tmp_path, monkeypatch, fmt):
    (tmp_path / "keep.txt").write_text("mine")

    def interrupt(serving, path, kind):  # Keras has written part of the file
        with open(path if kind != "saved_model" else os.path.join(path, "saved_model.pb"), "w") as f:
            f.write("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(deploy, "_keras_export", interrupt)
    with pytest.raises(KeyboardInterrupt):
        hub_export.export_format(tiny_model(state), str(tmp_path / FILES[fmt]), fmt)
    assert os.listdir(tmp_path) == ["keep.txt"]


# ------------------------------------------------------------- missing packages


@pytest.mark.parametrize(
    "module, fmt",
    [("tf2onnx", "onnx"), ("onnx", "onnx"), ("openvino", "openvino")],
)
def test_a_missing_converter_names_the_extra(state, tmp_path, monkeypatch, module, fmt):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "bit-keras\[deploy\]"'):
        hub_export.export_format(tiny_model(state), str(tmp_path / FILES[fmt]), fmt)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "module, file",
    [("onnxruntime", "m.onnx"), ("ai_edge_litert.interpreter", "m.tflite"), ("openvino", "m.xml")],
)
def test_a_missing_runtime_names_the_extra(monkeypatch, tmp_path, module, file):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=r'pip install "bit-keras\[deploy\]"'):
        hub_export.run_exported(str(tmp_path / file), np.zeros((1, 32, 32, 3), "float32"))


def test_the_deploy_extra_is_in_the_test_extra():
    config = configparser.ConfigParser()
    config.read(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.cfg"))

    def extra(name):
        lines = (line.split("#")[0].strip() for line in config["options.extras_require"][name].splitlines())
        return {str(Requirement(line)) for line in lines if line}

    deploy_extra = extra("deploy")
    assert {Requirement(r).name for r in deploy_extra} == {"onnx", "tf2onnx", "onnxruntime", "ai-edge-litert", "openvino"}
    assert deploy_extra <= extra("test")


# ------------------------------------------------------------------ command line


@pytest.fixture(scope="module")
def keras_file(state, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("cli") / "tiny.keras")
    tiny_model(state).save(path)
    return path


@pytest.mark.parametrize("fmt", list(FILES))
def test_cli_writes_each_format(state, keras_file, tmp_path, capsys, fmt):
    out = str(tmp_path / FILES[fmt])
    args = ["export", "--weights", keras_file, "--flavor", "classification", "--format", fmt, "--out", out]
    assert bit_keras_cli.main(args) == 0
    printed = capsys.readouterr().out
    for line in ("[1/3]", "[2/3]", "[3/3]", "-> (1, 5)", "images: float32[batch, height, width, 3], RGB in [0, 1]"):
        assert line in printed, printed
    assert "logits: float32[batch, 5]" in printed
    assert hub_export.read_metadata(out)["format"] == fmt
    x = images(2, 48, 64)
    expected = keras_outputs(tiny_model(state), x)
    assert np.abs(run_with_runtime(out, fmt, x) - expected).max() / np.abs(expected).max() < TOLERANCE
    assert bit_keras_cli.main(args) == 1  # exists already
    assert "overwrite" in capsys.readouterr().err


def test_cli_checks_the_out_suffix_and_image_size(keras_file, tmp_path, capsys):
    base = ["export", "--weights", keras_file, "--flavor", "classification"]
    with pytest.raises(SystemExit):
        bit_keras_cli.main([*base, "--format", "onnx", "--out", str(tmp_path / "m.tflite")])
    assert "--out must end with .onnx" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bit_keras_cli.main([*base, "--image_size", "64,64", "--out", str(tmp_path / "hub")])
    assert "--image_size applies to --format" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bit_keras_cli.main([*base, "--format", "onnx", "--image_size", "64", "--out", str(tmp_path / "m.onnx")])
    assert "--image_size takes two numbers separated by a comma; got '64'" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_a_deployment_saved_model_given_as_weights_is_named_as_such(state, tmp_path):
    hub_export.export_format(tiny_model(state), str(tmp_path / "deployed"), "saved_model")
    with pytest.raises(ValueError, match=r"is a deployment export \(hub_export.export_format.*hub_export.export\(model, path\)"):
        bit_keras.BiT("auto", weights=str(tmp_path / "deployed"))
