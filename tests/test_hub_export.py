import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import requires_tensorflow
from reference import random_state

import bit_keras
import hub_export
from bit_keras import checkpoints
from hub_export.__main__ import main as cli

pytestmark = requires_tensorflow

TINY = bit_keras.Variant(units=(1, 1, 1, 1), width=1)
CLASSES = 5


def tiny_model(state, **kwargs):
    model = bit_keras.BiT(TINY, num_classes=CLASSES, **kwargs)
    checkpoints.load_state(model, state)
    return model


def images(size, seed=0, batch=2):
    """Images in [0, 1], as the TF-Hub BiT modules take them."""
    return np.random.default_rng(seed).uniform(0, 1, (batch, size, size, 3)).astype("float32")


@pytest.fixture(scope="module")
def state():
    return random_state(TINY.units, TINY.width, CLASSES)


@pytest.fixture(scope="module")
def classifier_path(state, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("hub") / "classification")
    hub_export.export(tiny_model(state), path, flavor="classification")
    return path


@pytest.fixture(scope="module")
def features_path(state, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("hub") / "feature_vector")
    hub_export.export(tiny_model(state), path)
    return path


def save_plain_module(path, with_call):
    """A SavedModel that is not a BiT: a scale variable, with or without a reusable `__call__`."""
    module = tf.Module()
    module.scale = tf.Variable(2.0, name="scale")
    spec = tf.TensorSpec((None, 4), tf.float32)

    @tf.function(autograph=False)
    def call(x, training=False):
        return x * module.scale + (1.0 if training else 0.0)

    for training in (False, True):
        call.get_concrete_function(spec, training=training)
    if with_call:
        module.__call__ = call
    tf.saved_model.save(module, path, signatures=call.get_concrete_function(spec, training=False))
    return path


# ------------------------------------------------------------------ the module itself


def test_module_equals_keras_model_at_two_sizes(state, classifier_path, features_path):
    model = tiny_model(state)
    pooled = tiny_model(state, include_top=False, pooling="avg")
    classifier, extractor = tf.saved_model.load(classifier_path), tf.saved_model.load(features_path)
    for size in (32, 48):
        x = images(size, seed=size)
        # As the module was traced: `portable()` standardises kernels with element-wise ops, where the model
        # runs a fused batch norm on a CPU, about 1e-5 of the largest logit away (test_layers checks the two).
        with bit_keras.layers.portable():
            logits, features = model(x * 2 - 1), pooled(x * 2 - 1)
        np.testing.assert_allclose(classifier(x, training=False), logits, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(extractor(x, training=False), features, rtol=1e-5, atol=1e-5)
        # GroupNorm keeps no batch statistics: training mode computes the same function.
        np.testing.assert_allclose(classifier(x, training=True), logits, rtol=1e-5, atol=1e-5)


def test_module_graph_has_no_xla_cluster(classifier_path):
    # The model fuses GroupNorm into XLA clusters; the module must run wherever TensorFlow does.
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(classifier_path, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    graph = saved.meta_graphs[0].graph_def
    assert len(graph.library.function) > 0
    assert not [f.signature.name for f in graph.library.function if f.attr["_XlaMustCompile"].b]
    nodes = [*graph.node, *(n for f in graph.library.function for n in f.node_def)]
    assert not [n.name for n in nodes if n.attr["_XlaMustCompile"].b]
    # Nor a training-mode fused batch norm, which the model standardises its kernels with on a CPU.
    assert not [n.name for n in nodes if n.op.startswith("FusedBatchNorm")]


def test_output_sizes(classifier_path, features_path):
    x = images(32)
    assert tf.saved_model.load(features_path)(x).shape == (2, 2048 * TINY.width)
    assert tf.saved_model.load(classifier_path)(x).shape == (2, CLASSES)
    assert hub_export.read_metadata(features_path)["output_size"] == 2048 * TINY.width
    assert hub_export.read_metadata(classifier_path)["output_size"] == CLASSES


def test_reusable_savedmodel_api(state, classifier_path):
    module = tf.saved_model.load(classifier_path)
    assert len(module.__call__.concrete_functions) == 2  # training=False and training=True
    assert list(module.regularization_losses) == []
    names = {v.name.removesuffix(":0") for v in module.variables}
    expected = set(state)
    assert names == expected
    assert {v.name for v in module.trainable_variables} == {v.name for v in module.variables}


def test_metadata_and_input_range(state, tmp_path):
    path = str(tmp_path / "pixels")
    record = hub_export.export(tiny_model(state), path, input_range=(0, 255))
    assert hub_export.read_metadata(path) == record
    assert record["input_range"] == [0, 255] and record["flavor"] == "feature_vector"
    assert record["variant"] == "R1-1-1-1x1" and record["bit_keras_version"] == bit_keras.__version__
    x = images(32)
    expected = tiny_model(state, include_top=False, pooling="avg")(x * 2 - 1)
    np.testing.assert_allclose(tf.saved_model.load(path)(x * 255).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_serving_default_under_mixed_bfloat16(tmp_path):
    keras.config.set_dtype_policy("mixed_bfloat16")
    model = bit_keras.BiT(TINY, include_top=False)
    assert model.output.dtype == "bfloat16"  # the module must cast, not the model
    path = str(tmp_path / "bf16")
    hub_export.export(model, path)
    serving = tf.saved_model.load(path).signatures["serving_default"]
    assert serving.structured_input_signature == (
        (),
        {"images": tf.TensorSpec((None, None, None, 3), tf.float32, name="images")},
    )
    outputs = serving(images=tf.constant(images(32)))
    assert list(outputs) == ["feature_vector"]
    assert outputs["feature_vector"].dtype == tf.float32 and outputs["feature_vector"].shape == (2, 2048)


# ----------------------------------------------------------------------- fine-tuning


def _values(variables):
    return [np.array(v) for v in variables]


def _changed(before, after):
    return sum(not np.array_equal(b, a) for b, a in zip(before, after))


def test_hub_keras_layer_fine_tunes_in_tf_keras(features_path):
    """The model code of the published BiT TF2 colab, with our module in place of tfhub.dev/google/bit/m-r50x1/1."""
    import tensorflow_hub as hub
    import tf_keras

    class MyBiTModel(tf_keras.Model):
        def __init__(self, num_classes, module):
            super().__init__()
            self.head = tf_keras.layers.Dense(num_classes, kernel_initializer="zeros")
            self.bit_model = module

        def call(self, images):
            return self.head(self.bit_model(images))

    module = hub.KerasLayer(features_path, trainable=True)
    model = MyBiTModel(num_classes=3, module=module)
    model.compile(
        optimizer=tf_keras.optimizers.SGD(learning_rate=0.1, momentum=0.9),
        loss=tf_keras.losses.CategoricalCrossentropy(from_logits=True),
    )
    model(images(32))
    before = _values(module.trainable_weights)
    assert len(before) == len(module.weights) > 0
    # Two steps: the zero head passes no gradient to the module in the first.
    model.fit(images(32, batch=8), np.eye(3)[np.arange(8) % 3], batch_size=4, epochs=1, verbose=0)
    assert _changed(before, _values(module.trainable_weights)) > len(before) // 2


def test_load_fine_tunes_in_keras3(features_path):
    layer = hub_export.load(features_path, trainable=True)
    model = keras.Sequential([keras.Input((32, 32, 3)), layer, keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = _values(layer.trainable_weights)
    assert len(before) == len(layer.weights) > 0
    model.fit(images(32, batch=8), np.arange(8) % 3, batch_size=4, epochs=1, verbose=0)
    assert _changed(before, _values(layer.trainable_weights)) > len(before) // 2
    # What the module computes changed too: the layer's weights are the module's variables.
    assert not np.allclose(layer(images(32)), tf.saved_model.load(features_path)(images(32)))


def test_load_frozen_keeps_module_variables(features_path):
    layer = hub_export.load(features_path, trainable=False)
    model = keras.Sequential([keras.Input((32, 32, 3)), layer, keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert layer.trainable_weights == [] and len(layer.non_trainable_weights) > 0
    before, head_before = _values(layer.weights), _values(model.layers[-1].weights)
    model.fit(images(32, batch=8), np.arange(8) % 3, batch_size=4, epochs=1, verbose=0)
    assert _changed(before, _values(layer.weights)) == 0
    assert _changed(head_before, _values(model.layers[-1].weights)) > 0


def test_load_passes_training_to_the_module(tmp_path):
    path = save_plain_module(str(tmp_path / "plain"), with_call=True)
    x = np.zeros((1, 4), "float32")
    trainable = hub_export.load(path, trainable=True)
    np.testing.assert_allclose(trainable(x, training=True), 1.0)
    np.testing.assert_allclose(trainable(x, training=False), 0.0)
    # A frozen module runs in inference mode, as with hub.KerasLayer.
    np.testing.assert_allclose(hub_export.load(path, trainable=False)(x, training=True), 0.0)


def test_load_refuses_a_savedmodel_without_call(tmp_path):
    path = save_plain_module(str(tmp_path / "signature_only"), with_call=False)
    with pytest.raises(ValueError, match="no __call__ function"):
        hub_export.load(path)


# ------------------------------------------------------------- back to a bit_keras model


def test_bit_takes_weights_from_an_export(state, classifier_path, features_path):
    x = images(40) * 2 - 1
    restored = bit_keras.BiT(TINY, weights=classifier_path)
    np.testing.assert_array_equal(restored(x), tiny_model(state)(x))
    from_features = bit_keras.BiT(TINY, weights=features_path, num_classes=3)
    restored_state = checkpoints.model_state(from_features)
    for key in state:
        if "/head/" not in key:
            np.testing.assert_array_equal(restored_state[key], state[key])
    assert not np.any(restored_state[checkpoints.HEAD_KERNEL])


def test_read_saved_model_matches_official_names_anywhere(state, tmp_path):
    """A module laid out like a published TF-Hub one: official names under a prefix, a Dense head."""
    module = tf.Module()
    module.weights = [
        tf.Variable(value[0, 0] if key == checkpoints.HEAD_KERNEL else value, name=f"bit_m/{key}") for key, value in state.items()
    ]
    path = str(tmp_path / "published")
    tf.saved_model.save(module, path)
    read = checkpoints.read_saved_model(path)
    assert sorted(read) == sorted(state)
    for key, value in state.items():
        np.testing.assert_array_equal(read[key], value)


def test_read_saved_model_refuses_what_is_not_bit(tmp_path):
    path = save_plain_module(str(tmp_path / "plain"), with_call=True)
    with pytest.raises(ValueError, match="holds no BiT weights"):
        checkpoints.read_saved_model(path)
    with pytest.raises(ValueError, match="holds no BiT weights"):
        bit_keras.BiT(TINY, weights=path, num_classes=2)


# ------------------------------------------------------------------ writing safely


def test_refuses_bad_arguments(state, tmp_path):
    model = tiny_model(state)
    path = str(tmp_path / "m")
    with pytest.raises(ValueError, match="flavor must be one of"):
        hub_export.export(model, path, flavor="logits")
    with pytest.raises(ValueError, match="low < high"):
        hub_export.export(model, path, input_range=(1, 0))
    with pytest.raises(ValueError, match="include_top=True"):
        hub_export.export(bit_keras.BiT(TINY, include_top=False), path, flavor="classification")
    plain = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="not a model built by bit_keras.BiT"):
        hub_export.export(plain, path)
    assert os.listdir(tmp_path) == []


def test_existing_path_is_refused_unless_overwrite(state, tmp_path):
    path = tmp_path / "out"
    path.mkdir()
    (path / "keep.txt").write_text("mine")
    model = tiny_model(state)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        hub_export.export(model, str(path))
    assert (path / "keep.txt").read_text() == "mine"
    hub_export.export(model, str(path), overwrite=True)
    assert sorted(os.listdir(path)) == ["assets", "assets.extra", "fingerprint.pb", "saved_model.pb", "variables"]
    assert os.listdir(tmp_path) == ["out"]


@pytest.mark.parametrize("existing", [False, True])
def test_interrupted_export_leaves_nothing_half_written(state, tmp_path, monkeypatch, existing):
    path = tmp_path / "out"
    if existing:
        path.mkdir()
        (path / "keep.txt").write_text("mine")
    written = []

    def interrupt(folder, record):  # the SavedModel is already in the temporary folder
        written.extend(os.listdir(folder))
        raise KeyboardInterrupt

    monkeypatch.setattr(hub_export.exporter, "write_metadata", interrupt)
    with pytest.raises(KeyboardInterrupt):
        hub_export.export(tiny_model(state), str(path), overwrite=True)
    assert "saved_model.pb" in written
    if existing:
        assert os.listdir(path) == ["keep.txt"]
        assert os.listdir(tmp_path) == ["out"]
    else:
        assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("operation", ["export", "load"])
def test_other_backends_are_refused_with_the_fix(state, features_path, tmp_path, monkeypatch, operation):
    model = tiny_model(state)
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(RuntimeError, match="needs the TensorFlow backend.*KERAS_BACKEND=tensorflow"):
        if operation == "export":
            hub_export.export(model, str(tmp_path / "jax"))
        else:
            hub_export.load(features_path)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------- command line


def test_cli_exports_a_checkpoint(state, tmp_path, capsys):
    weights = str(tmp_path / "tiny.npz")
    bit_keras.save_official(tiny_model(state), weights)
    out = str(tmp_path / "exported")
    args = ["--variant", "R1-1-1-1x1", "--weights", weights, "--flavor", "classification", "--out", out]
    assert cli(args) == 0
    printed = capsys.readouterr().out
    for line in ("[1/3]", "[2/3]", "[3/3]", "-> (1, 5)", "serving_default(images", "logits: float32[batch, 5]"):
        assert line in printed
    assert "input range   [0, 1]" in printed and "R1-1-1-1x1 (classification)" in printed
    parameters = sum(v.size for v in state.values())
    assert f"parameters    {parameters:,}" in printed and "size on disk" in printed
    assert hub_export.read_metadata(out)["variant"] == "R1-1-1-1x1"
    assert cli(args) == 1  # exists already
    assert "pass --overwrite" in capsys.readouterr().err


def test_cli_exports_a_keras_file(state, tmp_path, capsys):
    keras_file = str(tmp_path / "tiny.keras")
    tiny_model(state).save(keras_file)
    out = str(tmp_path / "exported")
    assert cli(["--weights", keras_file, "--out", out, "--input_range", "0,255"]) == 0
    printed = capsys.readouterr().out
    assert "input range   [0, 255]" in printed and "feature_vector: float32[batch, 2048]" in printed
    assert hub_export.read_metadata(out)["flavor"] == "feature_vector"


def test_cli_reads_the_variant_from_the_weights_with_variant_auto(state, tmp_path, capsys):
    weights = str(tmp_path / "tiny.npz")
    bit_keras.save_official(tiny_model(state), weights)
    out = str(tmp_path / "exported")
    assert cli(["--variant", "auto", "--weights", weights, "--flavor", "classification", "--out", out]) == 0
    assert "logits: float32[batch, 5]" in capsys.readouterr().out
    assert hub_export.read_metadata(out)["variant"] == "R1-1-1-1x1"


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_cli_names_a_keras_file_it_cannot_read(state, tmp_path, capsys, damage):
    keras_file = tmp_path / "tiny.keras"
    tiny_model(state).save(keras_file)
    if damage == "truncated":
        keras_file.write_bytes(keras_file.read_bytes()[:1000])
    else:
        keras_file.unlink()
    assert cli(["--weights", str(keras_file), "--out", str(tmp_path / "exported")]) == 1
    message = {"truncated": "is not a complete .keras file", "missing": "no such .keras file"}[damage]
    error = capsys.readouterr().err
    assert str(keras_file) in error and message in error, error


def test_cli_needs_a_variant_for_a_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli(["--weights", "BiT-M-R50x1.npz", "--out", str(tmp_path / "x")])
    assert "--variant is required" in capsys.readouterr().err


# ------------------------------------------------------------- hardening (issue 13)


@pytest.mark.parametrize("optimizer", ["tf_keras", "tf_keras_legacy", "keras"])
def test_bit_reads_a_module_saved_with_its_optimizer(state, classifier_path, tmp_path, optimizer):
    """The TF-Hub colab workflow: hold the module and an optimizer, fine-tune a step, tf.saved_model.save."""
    import tf_keras

    make = {
        "tf_keras": lambda: tf_keras.optimizers.SGD(0.01, momentum=0.9),
        "tf_keras_legacy": lambda: tf_keras.optimizers.legacy.SGD(0.01, momentum=0.9),
        "keras": lambda: keras.optimizers.SGD(0.01, momentum=0.9),
    }[optimizer]
    module = tf.saved_model.load(classifier_path)
    holder = tf.Module()
    holder.hub, holder.optimizer = module, make()
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(module(images(32), training=True) ** 2)
    grads = tape.gradient(loss, module.trainable_variables)
    holder.optimizer.apply_gradients(zip(grads, module.trainable_variables))
    path = str(tmp_path / "tuned")
    tf.saved_model.save(holder, path)
    restored = checkpoints.model_state(bit_keras.BiT(TINY, weights=path))
    tuned = {v.name.split(":")[0]: v.numpy() for v in module.variables}
    changed = 0
    for key, value in restored.items():
        expected = tuned[key][None, None] if key == checkpoints.HEAD_KERNEL and tuned[key].ndim == 2 else tuned[key]
        np.testing.assert_array_equal(value, expected)
        changed += not np.array_equal(value, state[key])
    assert changed > 0  # the fine-tuned weights, not the exported ones


def test_export_refuses_unbounded_ranges_and_nan_weights(state, tmp_path):
    model = tiny_model(state)
    for bad in ((0, float("inf")), (float("nan"), 1), (-float("inf"), 0)):
        with pytest.raises(ValueError, match="two finite numbers"):
            hub_export.export(model, str(tmp_path / "m"), input_range=bad)
    model.get_layer("block1_unit01_b_conv").kernel.assign(np.full((3, 3, 64, 64), np.nan, "float32"))
    with pytest.raises(ValueError, match=r"'resnet/block1/unit01/b/standardized_conv2d/kernel' holds .* NaN/Inf"):
        hub_export.export(model, str(tmp_path / "m"))
    assert os.listdir(tmp_path) == []


def test_export_honours_the_umask(state, tmp_path):
    old = os.umask(0o022)
    try:
        hub_export.export(tiny_model(state), str(tmp_path / "m"))
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "m").st_mode & 0o777 == 0o755


def test_cli_reports_an_unwritable_out_in_one_line(state, tmp_path, capsys):
    weights = str(tmp_path / "tiny.npz")
    bit_keras.save_official(tiny_model(state), weights)
    assert cli(["--variant", "R1-1-1-1x1", "--weights", weights, "--out", "/proc/x"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "/proc/x" in err and len(err.splitlines()) == 1
    assert "Traceback" not in err
