import json
import os

import keras
import numpy as np
import pytest
from conftest import requires_tensorflow
from test_hyperrule import official_lr

import bit_keras
from bit_keras import data
from bit_keras.finetune import BiTFineTuner

TINY = bit_keras.Variant((1, 1, 1, 1), width=1)


def colour_task(n=64, size=12, seed=0):
    """Two classes a tiny model separates quickly: reddish versus bluish noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.integers(0, 120, (n, size, size, 3))
    images[labels == 0, ..., 0] += 130
    images[labels == 1, ..., 2] += 130
    return images.astype("uint8"), labels


def tuner_for(model=None, **kwargs):
    options = dict(batch_size=16, steps=20, sizes=(40, 32), seed=0)
    options.update(kwargs)
    return BiTFineTuner(model or bit_keras.BiT(TINY, num_classes=2), **options)


def weights_of(model, prefix):
    return [keras.ops.convert_to_numpy(w).copy() for layer in model.layers if layer.name.startswith(prefix) for w in layer.weights]


def test_hyperrule_decisions_for_cifar10_sized_data():
    tuner = BiTFineTuner(bit_keras.BiT(TINY, num_classes=10), dataset_size=50_000, image_size=(32, 32))
    assert tuner.resolution == (160, 128)
    assert tuner.total_steps == 10_000
    assert tuner.mixup_alpha == 0.1
    steps = np.arange(10_000)
    got = keras.ops.convert_to_numpy(tuner.learning_rate(keras.ops.convert_to_tensor(steps)))
    np.testing.assert_allclose(got, [official_lr(s, 50_000) for s in steps], rtol=1e-6, atol=1e-12)


def test_head_is_zeroed_and_decisions_need_sizes():
    model = bit_keras.BiT(TINY, num_classes=2)
    model.get_layer("head").bias.assign([1.0, -1.0])
    tuner = BiTFineTuner(model)
    assert not np.any(keras.ops.convert_to_numpy(model.get_layer("head").bias))
    with pytest.raises(ValueError, match="dataset_size= and image_size="):
        tuner.total_steps


@pytest.mark.backends
def test_fine_tunes_a_separable_task_well_above_chance(capsys):
    images, labels = colour_task()
    tuner = tuner_for(base_lr=0.3, steps=30)
    history = tuner.fit((images, labels))
    printed = capsys.readouterr().out
    assert "BiT-HyperRule" in printed and "64 examples of 12x12 px" in printed
    assert sum(len(v) for k, v in history.history.items() if k == "loss") == 10  # 30 steps in 10 evaluations
    test_images, test_labels = colour_task(seed=1)
    assert tuner.evaluate((test_images, test_labels), verbose=0)["accuracy"] >= 0.9
    predictions = tuner.predict(test_images).argmax(-1)
    assert (predictions == test_labels).mean() >= 0.9


@pytest.mark.backends
def test_batch_split_gives_the_same_update_as_the_whole_batch():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (8, 32, 32, 3)).astype("float32")
    y = np.eye(2)[rng.integers(0, 2, 8)].astype("float32")
    reference = bit_keras.BiT(TINY, num_classes=2)
    for variable in reference.get_layer("head").weights:
        variable.assign(rng.standard_normal(variable.shape).astype("float32") * 0.1)
    finals = []
    for split in (1, 4):
        model = keras.models.clone_model(reference)
        model.set_weights(reference.get_weights())
        tuner = BiTFineTuner(model, dataset_size=1_000, image_size=(32, 32), batch_size=8, batch_split=split, steps=5, base_lr=3.0)
        model.get_layer("head").set_weights(reference.get_layer("head").get_weights())  # undo the zeroing
        tuner._compile()
        model.fit(x, y, batch_size=8 // split, epochs=3, shuffle=False, verbose=0)
        assert int(model.optimizer.iterations) == 3
        finals.append(model.get_weights())
    moved = [np.abs(a - b).max() for a, b in zip(finals[0], reference.get_weights())]
    assert max(moved) > 1e-3  # the steps did something
    for whole, split in zip(*finals):
        np.testing.assert_allclose(split, whole, rtol=1e-4, atol=1e-5)


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 2:
            raise KeyboardInterrupt


def test_resumes_after_an_interrupted_fit(tmp_path):
    images, labels = colour_task(32)
    tuner = tuner_for(checkpoint_dir=str(tmp_path), steps=10)
    with pytest.raises(KeyboardInterrupt):
        tuner.fit((images, labels), callbacks=[_Interrupt()])
    with open(tmp_path / "backup" / "training_metadata.json") as f:
        assert json.load(f)["epoch"] == 3  # three epochs completed
    resumed = tuner_for(checkpoint_dir=str(tmp_path), steps=10)
    history = resumed.fit((images, labels))
    assert len(history.history["loss"]) == 7  # epochs 3..9 of 10
    assert int(resumed.model.optimizer.iterations) == 10
    assert os.path.exists(tmp_path / "best.keras")


def test_best_model_is_kept_with_validation(tmp_path):
    images, labels = colour_task(32)
    tuner = tuner_for(checkpoint_dir=str(tmp_path), steps=10, base_lr=0.3)
    tuner.fit((images, labels), validation_data=(images, labels))
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
    with open(tmp_path / "backup" / "training_metadata.json") as f:
        assert json.load(f)["epoch"] == 2  # written before the weights went bad
    resumed = tuner_for(checkpoint_dir=str(tmp_path), steps=10)
    history = resumed.fit((images, labels), verbose=0)
    assert len(history.history["loss"]) == 8 and np.isfinite(history.history["loss"]).all()


@pytest.mark.parametrize("freeze,frozen,trained", [("head_only", "block4", "head"), ("block2", "block2", "block3")])
def test_freeze_from_a_chosen_depth(freeze, frozen, trained):
    images, labels = colour_task(32)
    tuner = tuner_for(freeze=freeze, steps=4, base_lr=0.3)
    before_frozen, before_trained = weights_of(tuner.model, frozen), weights_of(tuner.model, trained)
    tuner.fit((images, labels), verbose=0)
    for a, b in zip(before_frozen, weights_of(tuner.model, frozen)):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(before_trained, weights_of(tuner.model, trained)))


def test_bad_arguments_are_refused():
    model = bit_keras.BiT(TINY, num_classes=2)
    with pytest.raises(ValueError, match="num_classes=3"):
        BiTFineTuner(model, num_classes=3)
    with pytest.raises(ValueError, match="positive divisor"):
        BiTFineTuner(model, batch_split=3)
    with pytest.raises(ValueError, match="freeze must be"):
        BiTFineTuner(model, freeze="block9")
    with pytest.raises(ValueError, match="include_top=True"):
        BiTFineTuner(bit_keras.BiT(TINY, include_top=False))
    images, labels = colour_task(8)
    with pytest.raises(ValueError, match="3 classes"):
        tuner_for().fit(data.from_arrays(images, labels, num_classes=3))


def test_variant_name_with_weights_file_and_mixed_precision(tmp_path):
    path = str(tmp_path / "tiny.npz")
    bit_keras.save_official(bit_keras.BiT(TINY, num_classes=2), path)
    tuner = BiTFineTuner(TINY, weights=path, num_classes=2, mixed_precision="mixed_bfloat16", batch_size=8, steps=2, sizes=(40, 32))
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


def test_a_variant_without_released_weights_warns():
    with pytest.warns(UserWarning, match="no released weights"):
        tuner = BiTFineTuner("BiT-L-R50x1", num_classes=2)
    assert tuner.model.output.shape == (None, 2)
