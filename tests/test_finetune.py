import json
import os

import keras
import numpy as np
import pytest
from conftest import requires_tensorflow
from test_hyperrule import official_lr
from toy_data import colour_task

import bit_keras
from bit_keras import data
from bit_keras.finetune import BiTFineTuner

TINY = bit_keras.Variant((1, 1, 1, 1), width=1)


@pytest.mark.parametrize("base_lr", [None, 0.001])
def test_base_lr_is_the_official_flag(base_lr, capsys):
    """The official README's `--batch 128 --base_lr 0.001` trains at peak 0.001; no base_lr is 0.003 x 128/512."""
    tuner = BiTFineTuner(
        bit_keras.BiT(TINY, num_classes=10), dataset_size=1_000, image_size=(32, 32), batch_size=128, base_lr=base_lr
    )
    steps = np.arange(500)
    got = keras.ops.convert_to_numpy(tuner.learning_rate(keras.ops.convert_to_tensor(steps)))
    official = [official_lr(s, 1_000, base_lr=0.001 if base_lr else 0.003) for s in steps]
    scale = 1.0 if base_lr else 128 / 512
    np.testing.assert_allclose(got, np.multiply(official, scale), rtol=1e-6, atol=1e-12)
    shown = str(tuner.hyperrule)
    assert ("0.001 (base_lr, as given)" if base_lr else "0.00075 (0.003 x 128/512)") in shown


def tuner_for(model=None, **kwargs):
    options = dict(batch_size=16, steps=20, sizes=(40, 32), seed=0)
    options.update(kwargs)
    if model is None:
        keras.utils.set_random_seed(options["seed"])  # the same seed, the same initial weights
        model = bit_keras.BiT(TINY, num_classes=2)
    return BiTFineTuner(model, **options)


def weights_of(model, prefix):
    return [
        keras.ops.convert_to_numpy(w).copy() for layer in model.layers if layer.name.startswith(prefix) for w in layer.weights
    ]


def test_hyperrule_decisions_for_cifar10_sized_data():
    tuner = BiTFineTuner(bit_keras.BiT(TINY, num_classes=10), dataset_size=50_000, image_size=(32, 32))
    assert tuner.resolution == (160, 128)
    assert tuner.total_steps == 10_000
    assert tuner.mixup_alpha == 0.1
    steps = np.arange(10_000)
    got = keras.ops.convert_to_numpy(tuner.learning_rate(keras.ops.convert_to_tensor(steps)))
    np.testing.assert_allclose(got, [official_lr(s, 50_000) for s in steps], rtol=1e-6, atol=1e-12)


def test_head_is_zeroed_unless_kept_and_decisions_need_sizes():
    head = {"kernel": np.full((2048, 2), 0.5, "float32"), "bias": np.array([1.0, -1.0], "float32")}

    def model_with_a_head():
        model = bit_keras.BiT(TINY, num_classes=2)
        model.get_layer("head").set_weights([head["kernel"], head["bias"]])
        return model

    tuner = BiTFineTuner(model_with_a_head())
    for weight in tuner.model.get_layer("head").get_weights():
        assert weight.any() == False  # noqa: E712  (every entry zero)
    kept = BiTFineTuner(model_with_a_head(), zero_head=False).model.get_layer("head").get_weights()
    np.testing.assert_array_equal(kept[0], head["kernel"])
    np.testing.assert_array_equal(kept[1], head["bias"])
    with pytest.raises(ValueError, match="dataset_size= and image_size="):
        _ = tuner.total_steps


@pytest.mark.backends
def test_fine_tunes_a_separable_task_well_above_chance(capsys):
    images, labels = colour_task()
    tuner = tuner_for(base_lr=0.009375, steps=30)
    history = tuner.fit((images, labels))
    printed = capsys.readouterr().out
    assert "BiT-HyperRule" in printed and "64 examples of 12x12 px" in printed
    assert sum(len(v) for k, v in history.history.items() if k == "loss") == 10  # 30 steps in 10 evaluations
    test_images, test_labels = colour_task(seed=1)
    assert tuner.evaluate((test_images, test_labels), verbose=0)["accuracy"] >= 0.9
    predictions = tuner.predict(test_images).argmax(-1)
    assert (predictions == test_labels).mean() >= 0.9


@pytest.mark.backends
def test_the_optimizer_keeps_a_copy_of_the_weights_only_to_accumulate():
    from bit_keras.training import AccumulatingSGD

    weights = [keras.Variable(np.ones((3, 5), "float32")), keras.Variable(np.ones(5, "float32"))]
    for steps, copies in ((1, 1), (4, 2)):  # the momentum; and the accumulated gradient
        optimizer = AccumulatingSGD(0.1, accumulation_steps=steps)
        optimizer.build(weights)
        assert sum(tuple(v.shape) == (3, 5) for v in optimizer.variables) == copies


@pytest.mark.backends
def test_batch_split_gives_the_updates_of_the_whole_batch_with_mixup_on():
    images, labels = colour_task(32)
    finals = []
    for split in (1, 4):
        # dataset_size >= 20k turns mixup on; it must mix the whole batch, not each micro-batch.
        tuner = tuner_for(batch_size=8, batch_split=split, steps=4, base_lr=0.046875, dataset_size=20_000, image_size=(12, 12))
        assert tuner.mixup_alpha > 0
        tuner.fit((images, labels), verbose=0)
        assert int(keras.ops.convert_to_numpy(tuner.model.optimizer.iterations)) == 4  # updates, not micro-steps
        finals.append(tuner.model.get_weights())
    initial = tuner_for().model.get_weights()
    assert max(np.abs(a - b).max() for a, b in zip(finals[0], initial)) > 1e-3  # the updates did something
    for whole, split in zip(*finals):
        np.testing.assert_allclose(split, whole, rtol=1e-4, atol=1e-5)


@requires_tensorflow
def test_keras_decides_xla_for_auto_and_the_same_updates_as_without():
    from bit_keras.training import XLA_MIN_UPDATES

    # On this CPU Keras' "auto" leaves XLA off, for long runs too: a whole-step program per run would stay in
    # TensorFlow's compilation cache for the life of the process.
    for options in ({}, {"strategy": "mirrored"}, {"jit_compile": False}):
        tuner = tuner_for(steps=XLA_MIN_UPDATES, dataset_size=100, image_size=(32, 32), **options)
        tuner._compile()
        assert tuner.model.jit_compile is False, options
    images, labels = colour_task(32)
    finals = []
    for jit_compile in (True, False):
        tuner = tuner_for(batch_size=8, batch_split=2, steps=3, base_lr=0.0046875, jit_compile=jit_compile)
        tuner.fit((images, labels), verbose=0)
        assert tuner.model.jit_compile is jit_compile
        finals.append(tuner.model.get_weights())
    initial = tuner_for().model.get_weights()
    assert max(np.abs(a - b).max() for a, b in zip(finals[0], initial)) > 1e-3  # the updates did something
    for xla, plain in zip(*finals):  # float32 summation orders differ; the updates agree
        np.testing.assert_allclose(xla, plain, rtol=1e-3, atol=2e-5)
    with pytest.raises(ValueError, match="jit_compile"):
        tuner_for(jit_compile="yes")


def _xla_clusters_traced_in(engine, model):
    import tensorflow as tf

    with engine.scope():
        concrete = tf.function(model).get_concrete_function(tf.TensorSpec((2, 32, 32, 3), tf.float32))
    return sum(1 for f in concrete.graph.as_graph_def().library.function if f.attr["_XlaMustCompile"].b)


@requires_tensorflow
def test_short_runs_and_runs_without_xla_trace_groupnorm_unfused():
    from bit_keras.training import XLA_MIN_UPDATES

    for jit_compile, steps, fused in (
        ("auto", XLA_MIN_UPDATES, True),
        ("auto", XLA_MIN_UPDATES - 1, False),
        (False, 10 * XLA_MIN_UPDATES, False),
    ):
        tuner = tuner_for(steps=steps, jit_compile=jit_compile, dataset_size=100, image_size=(32, 32))
        tuner._compile()
        clusters = _xla_clusters_traced_in(tuner.engine, tuner.model)
        assert (clusters > 0) is fused, (jit_compile, steps, clusters)


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 2:
            raise KeyboardInterrupt


def backups(folder):
    return sorted(os.listdir(folder / "backup"))


def test_resumes_after_an_interrupted_fit_and_ends_as_an_uninterrupted_run(tmp_path):
    images, labels = colour_task(32)
    uninterrupted = tuner_for(steps=10)
    uninterrupted.fit((images, labels), verbose=0)
    tuner = tuner_for(checkpoint_dir=str(tmp_path), steps=10)
    with pytest.raises(KeyboardInterrupt):
        tuner.fit((images, labels), callbacks=[_Interrupt()], verbose=0)
    assert backups(tmp_path) == ["step-000000002", "step-000000003"]  # the newest two of three
    resumed = tuner_for(checkpoint_dir=str(tmp_path), steps=10)
    history = resumed.fit((images, labels), verbose=0)
    assert len(history.history["loss"]) == 7  # epochs 4..10 of 10
    assert int(keras.ops.convert_to_numpy(resumed.model.optimizer.iterations)) == 10
    for got, expected in zip(resumed.model.get_weights(), uninterrupted.model.get_weights()):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert os.path.exists(tmp_path / "best.keras")
    with pytest.warns(UserWarning, match="finished run"):
        assert tuner_for(checkpoint_dir=str(tmp_path), steps=10).fit((images, labels), verbose=0).history == {}


def test_a_restarted_run_equals_a_fresh_tuners_run_and_keeps_the_compiled_step(tmp_path):
    images, labels = colour_task(32)
    tuner = tuner_for(steps=6, seed=0)
    start = tuner.model.get_weights()
    fresh = tuner_for(bit_keras.BiT(TINY, num_classes=2), steps=6, seed=3)
    fresh.model.set_weights(start)
    fresh.fit((images[:16], labels[:16]), verbose=0)
    tuner.fit((images, labels), verbose=0)  # another run first: other data and size, other seed
    step = tuner.model.train_function
    tuner.restart(start, seed=3)
    assert int(keras.ops.convert_to_numpy(tuner.model.optimizer.iterations)) == 0
    tuner.fit((images[:16], labels[:16]), verbose=0)
    assert tuner.dataset_size == 16 and tuner.seed == 3
    assert tuner.model.train_function is step  # not traced again
    for got, expected in zip(tuner.model.get_weights(), fresh.model.get_weights()):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        tuner_for(checkpoint_dir=str(tmp_path)).restart(start)


def test_a_new_schedule_compiles_again():
    images, labels = colour_task(32)
    tuner = tuner_for(seed=0)  # steps=20 for any size: the schedule stays, the compiled step is kept
    tuner.fit((images, labels), verbose=0)
    start = tuner.model.get_weights()
    tuner.steps = 8
    tuner.restart(start, seed=0)
    tuner.fit((images, labels), verbose=0)
    assert int(keras.ops.convert_to_numpy(tuner.model.optimizer.iterations)) == 8
    assert tuner.model.optimizer._learning_rate.get_config()["total_steps"] == 8  # the new schedule, compiled


def test_a_backup_of_other_arguments_or_a_damaged_one_is_refused_by_name(tmp_path):
    images, labels = colour_task(32)
    tuner_for(checkpoint_dir=str(tmp_path), steps=4).fit((images, labels), verbose=0)
    newest = tmp_path / "backup" / backups(tmp_path)[-1]
    with pytest.raises(ValueError, match="total_steps=4 there, 6 now"):
        tuner_for(checkpoint_dir=str(tmp_path), steps=6).fit((images, labels), verbose=0)
    with pytest.raises(ValueError, match="seed=0, this run has seed=1"):
        tuner_for(checkpoint_dir=str(tmp_path), steps=4, seed=1).fit((images, labels), verbose=0)
    weights = newest / "state.weights.h5"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match=f"backup {newest} is damaged: its weights do not load.*Delete {newest}"):
        tuner_for(checkpoint_dir=str(tmp_path), steps=4).fit((images, labels), verbose=0)
    weights.unlink()
    with pytest.raises(ValueError, match="has no state.weights.h5"):
        tuner_for(checkpoint_dir=str(tmp_path), steps=4).fit((images, labels), verbose=0)
    (newest / "state.json").write_text("{garbled")
    with pytest.raises(ValueError, match="state.json is missing or garbled"):
        tuner_for(checkpoint_dir=str(tmp_path), steps=4).fit((images, labels), verbose=0)


def test_best_model_is_the_best_of_the_whole_run_across_a_resume(tmp_path):
    images, labels = colour_task(32)
    tuner = tuner_for(checkpoint_dir=str(tmp_path), steps=10, base_lr=0.009375)
    with pytest.raises(KeyboardInterrupt):
        tuner.fit((images, labels), validation_data=(images, labels), callbacks=[_Interrupt()], verbose=0)
    first = tuner.model.history.history["val_accuracy"]
    resumed = tuner_for(checkpoint_dir=str(tmp_path), steps=10, base_lr=0.009375)
    second = resumed.fit((images, labels), validation_data=(images, labels), verbose=0).history["val_accuracy"]
    with open(tmp_path / "backup" / backups(tmp_path)[-1] / "state.json") as f:
        assert json.load(f)["best"] == max(first[:3] + second)
    best = keras.saving.load_model(tmp_path / "best.keras", compile=False)
    assert best.output.shape == (None, 2)
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".keras") and name != "best.keras"]


class _PoisonWeights(keras.callbacks.Callback):
    """Turns the head to NaN after the second epoch's backup has been written."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            bias = self.model.get_layer("head").bias
            bias.assign(keras.ops.full(bias.shape, float("nan")))


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_backup(tmp_path):
    images, labels = colour_task(32)
    tuner = tuner_for(checkpoint_dir=str(tmp_path), steps=10)
    with pytest.raises(FloatingPointError, match="loss became nan .* last good backup is kept"):
        tuner.fit((images, labels), callbacks=[_PoisonWeights()])
    assert backups(tmp_path)[-1] == "step-000000002"  # written before the weights went bad
    resumed = tuner_for(checkpoint_dir=str(tmp_path), steps=10)
    history = resumed.fit((images, labels), verbose=0)
    assert len(history.history["loss"]) == 8 and np.isfinite(history.history["loss"]).all()


def stage_of(layer_name):
    return "root" if layer_name.startswith("root") else layer_name.split("_")[0]


@pytest.mark.parametrize("freeze", ["head_only", "block2", "block4"])
def test_freeze_from_a_chosen_depth(freeze):
    images, labels = colour_task(32)
    tuner = tuner_for(freeze=freeze, steps=4, base_lr=0.009375)
    frozen_stages = {
        "head_only": None,
        "block2": {"root", "block1", "block2"},
        "block4": {"root", "block1", "block2", "block3", "block4"},
    }[freeze]
    for layer in tuner.model.layers:
        if not layer.weights:
            continue
        if freeze == "head_only":
            expected = layer.name == "head"
        else:  # the stage and all before it are frozen; later stages, pre_head_gn and the head train
            expected = stage_of(layer.name) not in frozen_stages
        assert layer.trainable == expected, layer.name
    before = {layer.name: [w.copy() for w in layer.get_weights()] for layer in tuner.model.layers if layer.weights}
    tuner.fit((images, labels), verbose=0)
    for layer in tuner.model.layers:
        if layer.name in before:
            changed = any(not np.array_equal(a, b) for a, b in zip(before[layer.name], layer.get_weights()))
            if not layer.trainable:
                assert not changed, layer.name
    assert any(not np.array_equal(a, b) for a, b in zip(before["head"], tuner.model.get_layer("head").get_weights()))


def test_freeze_is_a_setting_of_each_run_not_a_one_way_change():
    images, labels = colour_task(32)
    first = tuner_for(freeze="block4", steps=2, base_lr=0.009375)
    first.fit((images, labels), verbose=0)
    start = first.model.get_weights()

    def changed_stages(tuner):
        before = {layer.name: layer.get_weights() for layer in tuner.model.layers if layer.weights}
        tuner.fit((images, labels), verbose=0)
        return {
            stage_of(layer.name)
            for layer in tuner.model.layers
            if layer.weights and any(not np.array_equal(a, b) for a, b in zip(before[layer.name], layer.get_weights()))
        }

    second = BiTFineTuner(first.model, batch_size=16, steps=2, sizes=(40, 32), seed=0, base_lr=0.009375)  # freeze=None
    assert all(layer.trainable for layer in second.model.layers)
    assert {"root", "block1", "block4"} <= changed_stages(second)
    second.freeze = "block2"
    second.restart(start, seed=0)
    changed = changed_stages(second)
    assert not changed & {"root", "block1", "block2"} and "block3" in changed
    second.freeze = None
    second.restart(start, seed=0)
    assert "root" in changed_stages(second)
    with pytest.raises(ValueError, match="freeze must be"):
        second.freeze = "block5"


def test_a_resume_refuses_every_changed_argument(tmp_path):
    """Each field of the recipe and run settings that changes what a run computes is in the fingerprint."""
    from bit_keras import config

    images, labels = colour_task(16)
    settings = dict(checkpoint_dir=str(tmp_path), batch_size=16, steps=2, sizes=(40, 32), backup_every=1, seed=0)

    def tuner(**changes):
        return BiTFineTuner(TINY, weights=None, num_classes=2, **{**settings, **changes})

    tuner().fit((images, labels), verbose=0)
    changes = {
        "base_lr": 0.01,
        "rule": "official",
        "steps": 4,
        "sizes": (36, 32),
        "flip": False,
        "random_crop": False,
        "freeze": "block1",
        "zero_head": False,
        "batch_size": 8,
        "batch_split": 2,
        "mixed_precision": "mixed_float16",
    }
    assert set(changes) == set(config.fingerprint(config.FineTuneRecipe(), config.RunConfig()))
    for name, value in changes.items():
        with pytest.raises(ValueError, match=rf"another run: .*\b{name}="):
            tuner(**{name: value}).fit((images, labels), verbose=0)
    other_images = images[::-1].copy()  # the same count, other pixels
    with pytest.raises(ValueError, match=r"another run: .*\bdata="):
        tuner().fit((other_images, labels), verbose=0)
    with pytest.warns(UserWarning, match="holds a finished run"):  # the same arguments: nothing to resume
        tuner().fit((images, labels), verbose=0)


def test_bad_arguments_are_refused():
    model = bit_keras.BiT(TINY, num_classes=2)
    with pytest.raises(ValueError, match="num_classes=3"):
        BiTFineTuner(model, num_classes=3)
    with pytest.raises(ValueError, match="batch_size=512 must divide into batch_split=3"):
        BiTFineTuner(model, batch_split=3)
    with pytest.raises(ValueError, match="batch_split must be a positive integer, got 2.0"):
        BiTFineTuner(model, batch_split=2.0)
    for bad in (0, -4, 8.0, "16"):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            BiTFineTuner(model, batch_size=bad)
    for bad in (0, -0.1, float("nan"), "0.003"):
        with pytest.raises(ValueError, match="base_lr must be a positive"):
            BiTFineTuner(model, base_lr=bad)
    with pytest.raises(ValueError, match="dataset_size must be a positive integer"):
        BiTFineTuner(model, dataset_size=32.0)
    assert BiTFineTuner(model, dataset_size=np.int64(32), image_size=(8, 8)).total_steps == 500
    with pytest.raises(ValueError, match="freeze must be"):
        BiTFineTuner(model, freeze="block9")
    with pytest.raises(ValueError, match="include_top=True"):
        BiTFineTuner(bit_keras.BiT(TINY, include_top=False))
    images, labels = colour_task(8)
    with pytest.raises(ValueError, match="3 classes"):
        tuner_for().fit(data.from_arrays(images, labels, num_classes=3))


def test_labels_beyond_the_head_and_pixels_outside_0_255_are_refused():
    import tensorflow as tf

    images, labels = colour_task(16)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels + 1))  # labels 1 and 2 for a 2-class head
    tuner = tuner_for(dataset_size=16, num_classes=2, steps=2)
    with pytest.raises(Exception, match=r"labels must be class ids in \[0, 2\)"):
        tuner.fit(dataset, verbose=0)
    with pytest.raises(ValueError, match=r"pixels in \[0, 255\]; these images reach -1"):
        tuner.predict(images / 127.5 - 1)
    with pytest.warns(UserWarning, match=r"at most 0\.97.*: if they are in \[0, 1\], pass images \* 255"):
        tuner.predict(images / 255.0)


def test_variant_name_with_weights_file_and_mixed_precision(tmp_path):
    path = str(tmp_path / "tiny.npz")
    bit_keras.save_official(bit_keras.BiT(TINY, num_classes=2), path)
    tuner = BiTFineTuner(
        TINY, weights=path, num_classes=2, mixed_precision="mixed_bfloat16", batch_size=8, steps=2, sizes=(40, 32)
    )
    assert tuner.model.get_layer("root_conv").compute_dtype == "bfloat16"
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    images, labels = colour_task(16)
    history = tuner.fit((images, labels), verbose=0)
    assert np.isfinite(history.history["loss"]).all()


@requires_tensorflow
def test_under_a_mirrored_strategy():
    import tensorflow as tf

    images, labels = colour_task(16)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    tuner = tuner_for(strategy=strategy, steps=2, batch_size=8)
    assert strategy.extended.variable_created_in_scope(tuner.model.get_layer("root_conv").kernel.value)
    history = tuner.fit((images, labels), verbose=0)
    assert np.isfinite(history.history["loss"]).all()


@pytest.mark.backends
def test_hyperrule_pieces_in_user_model_fit(tmp_path):
    """The README's piece-by-piece path: rule, pipeline and LR schedule in plain model.fit."""
    images, labels = colour_task(32)
    rule = bit_keras.HyperRule(dataset_size=32, image_size=(12, 12), steps=6, sizes=(40, 32))
    pipeline = data.train_pipeline(data.from_arrays(images, labels), resize=rule.resize, crop=rule.crop, batch_size=8, seed=0)
    model = bit_keras.BiT(TINY, num_classes=2)
    model.compile(
        optimizer=keras.optimizers.SGD(rule.learning_rate(), momentum=0.9),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
    )
    model.fit(pipeline, steps_per_epoch=3, epochs=2, verbose=0)
    assert int(model.optimizer.iterations) == 6
    model.save(tmp_path / "user.keras")
    restored = keras.saving.load_model(tmp_path / "user.keras")
    assert isinstance(restored.optimizer._learning_rate, bit_keras.hyperrule.HyperRuleLearningRate)
    assert restored.optimizer._learning_rate.get_config() == rule.learning_rate().get_config()


TINY_RELEASE = "BiT-M-R1-1-1-1x1"


def serve_tiny_release(cache, monkeypatch):
    """A tiny variant's release, served from the download cache as the bucket's file would be."""
    from reference import random_state

    from bit_keras.checkpoints import releases

    state = random_state((1, 1, 1, 1), 1, 5, seed=11)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(cache / f"{TINY_RELEASE}.npz", **state)
    monkeypatch.setitem(releases.RELEASES, TINY_RELEASE, releases.Release(TINY_RELEASE, "R1-1-1-1x1", 5, f"{TINY_RELEASE}.npz"))
    monkeypatch.setenv("BIT_KERAS_CACHE", str(cache))
    return state


@pytest.mark.parametrize("as_object", [True, False], ids=["Variant", "name"])
def test_release_weights_load_for_a_variant_object_or_name(tmp_path, monkeypatch, as_object):
    state = serve_tiny_release(tmp_path / "cache", monkeypatch)
    variant = bit_keras.get_variant(TINY_RELEASE) if as_object else TINY_RELEASE
    tuner = BiTFineTuner(variant, num_classes=2)
    assert tuner.model.weights_source.startswith(f"{TINY_RELEASE} ({tmp_path / 'cache'}")
    loaded = bit_keras.checkpoints.model_state(tuner.model)
    for key in (bit_keras.checkpoints.ROOT_KERNEL, "resnet/block4/unit01/c/group_norm/gamma"):
        np.testing.assert_array_equal(loaded[key], state[key])
    np.testing.assert_array_equal(loaded[bit_keras.checkpoints.HEAD_KERNEL], 0)  # a new, zero head of 2 classes


def test_release_weights_for_a_variant_without_a_release_is_an_error():
    with pytest.raises(ValueError, match=r"BiT-L-R50x1 has no released weights \(released: BiT-S-R50x1, .*weights=None"):
        BiTFineTuner("BiT-L-R50x1", num_classes=2)
    with pytest.raises(ValueError, match="R1-1-1-1x1 has no released weights"):
        BiTFineTuner(TINY, num_classes=2)
    assert BiTFineTuner(TINY, num_classes=2, weights=None).model.output.shape == (None, 2)


# --------------------------------------------- what users rely on, each caught when it breaks


def test_predict_scales_pixels_to_minus_one_one_as_training_does():
    tuner = tuner_for()
    tuner.dataset_size, tuner.image_size = 16, (12, 12)
    images = np.random.default_rng(0).integers(0, 256, (3, 12, 12, 3)).astype("uint8")
    resized = keras.ops.convert_to_numpy(keras.ops.image.resize(images.astype("float32"), (32, 32)))
    expected = tuner.model.predict((resized - 127.5) / 127.5, verbose=0)
    np.testing.assert_allclose(tuner.predict(images), expected, rtol=1e-5, atol=1e-5)


def test_fine_tuning_applies_no_weight_decay():
    """BiT fine-tunes without weight decay: a zero gradient leaves a weight where momentum puts it."""
    images, labels = colour_task(16)
    tuner = tuner_for(steps=1)
    tuner.fit((images, labels), verbose=0)
    optimizer, variable = tuner.model.optimizer, tuner.model.get_layer("root_conv").kernel
    assert optimizer.get_config()["weight_decay"] == 0.0  # the compiled optimizer's setting
    optimizer.reset()
    before = keras.ops.convert_to_numpy(variable).copy()
    optimizer.apply([keras.ops.zeros_like(variable)], [variable])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), before)
    # The first update's learning rate (about 1e-4) hides a decay of 1e-4 below float32's precision;
    # at learning rate 1 it would move every weight by 1e-4 of itself.
    optimizer.reset()
    optimizer.update_step(keras.ops.zeros_like(variable), variable, 1.0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), before)


class _EpochWeights(keras.callbacks.Callback):
    """Sets the head's bias to the epoch number before `_KeepBest` sees the epoch end, and fakes its score."""

    def __init__(self, scores):
        super().__init__()
        self.scores = scores

    def on_epoch_end(self, epoch, logs=None):
        self.model.get_layer("head").bias.assign(keras.ops.full((2,), float(epoch)))
        logs["val_accuracy"] = self.scores[epoch]


def test_best_keras_holds_the_best_epoch_not_the_last(tmp_path):
    from bit_keras import training

    model = bit_keras.BiT(TINY, num_classes=2)
    keep = training.backups.KeepBest(str(tmp_path / "best.keras"), "val_accuracy")
    fake = _EpochWeights([0.5, 0.9, 0.7])
    for callback in (fake, keep):
        callback.set_model(model)
    for epoch in range(3):
        logs = {}
        fake.on_epoch_end(epoch, logs)
        keep.on_epoch_end(epoch, logs)
    best = keras.saving.load_model(tmp_path / "best.keras", compile=False)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(best.get_layer("head").bias), [1.0, 1.0])


def test_best_keras_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    from bit_keras import training

    model = bit_keras.BiT(TINY, num_classes=2)
    keep = training.backups.KeepBest(str(tmp_path / "best.keras"), "val_accuracy")
    keep.set_model(model)
    keep.on_epoch_end(0, {"val_accuracy": 0.5})
    previous = (tmp_path / "best.keras").read_bytes()

    def full_disk(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(previous[:100])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(model, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        keep.on_epoch_end(1, {"val_accuracy": 0.9})
    assert (tmp_path / "best.keras").read_bytes() == previous
    assert sorted(os.listdir(tmp_path)) == ["best.keras"]


def test_runs_with_validation_data_of_unknown_size_warn_of_nothing(tmp_path, recwarn):
    from PIL import Image

    images, labels = colour_task(16)
    for i, (image, label) in enumerate(zip(images, labels)):
        (tmp_path / f"class{label}").mkdir(exist_ok=True)
        Image.fromarray(image).save(tmp_path / f"class{label}" / f"{i}.png")
    folder = data.from_folder(tmp_path)  # its tf.data has no known size: Keras finds its end by running out
    tuner = BiTFineTuner(bit_keras.BiT("R1-1-1-1x1", num_classes=2), batch_size=8, steps=2, sizes=(20, 16))
    tuner.fit(folder, validation_data=folder, verbose=0)
    tuner.evaluate(folder, verbose=0)
    distiller = bit_keras.BiTDistiller(tuner.model, "R1-1-1-1x1", student_weights=None, batch_size=8, steps=2, image_size=16)
    distiller.fit(folder, validation_data=folder, verbose=0)
    distiller.evaluate(folder, verbose=0)
    assert not [str(w.message) for w in recwarn if "ran out of data" in str(w.message)]
