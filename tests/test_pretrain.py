import keras
import numpy as np
import pytest
from test_distribute import assert_same_training, finish, start, weights
from toy_data import colour_task

import bit_keras
from bit_keras import config, pretrain

TINY = bit_keras.Variant((1, 1, 1, 1))


def recipe_lr(step, total, batch_size):
    """The upstream recipe written out: LR 0.03 * batch / 256, linear warm-up, x0.1 at epochs 30, 60, 80 of 90."""
    peak = 0.03 * batch_size / 256
    warmup = min(5000, round(total * 5000 / (90 * 1_281_167 // 4096)))
    if step < warmup:
        return peak * step / warmup
    return peak * 0.1 ** sum(step > round(total * epoch / 90) for epoch in (30, 60, 80))


@pytest.mark.parametrize("base_lr,peak", [(None, 0.03 * 64 / 256), (0.1, 0.1)])
def test_base_lr_is_the_peak_as_given_and_the_recipe_scales_its_own(base_lr, peak):
    schedule = pretrain.upstream_schedule(6_400, batch_size=64, base_lr=base_lr, epochs=9)
    assert schedule.peak_lr == pytest.approx(peak)
    assert ("(base_lr, as given)" if base_lr else "(0.03 x 64/256)") in str(schedule)


def test_learning_rate_and_weight_decay_follow_the_recipe_at_every_step():
    for dataset_size, batch_size, epochs in ((1_281_167, 4096, 90), (50_000, 256, 9), (900, 64, 20)):
        schedule = pretrain.upstream_schedule(dataset_size, batch_size, epochs=epochs)
        steps = np.arange(schedule.total_steps + 1)
        got = keras.ops.convert_to_numpy(schedule.learning_rate()(keras.ops.convert_to_tensor(steps)))
        expected = [recipe_lr(s, schedule.total_steps, batch_size) for s in steps]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-12)
    pretrainer = bit_keras.BiTPretrainer(TINY, num_classes=2, batch_size=8, steps=1, image_size=32, base_lr=0.015625)
    images, labels = colour_task(16)
    pretrainer.fit((images, labels), verbose=0)
    optimizer = pretrainer.model.optimizer
    assert optimizer.l2 == 1e-4 and optimizer.momentum == 0.9
    # One more update with a zero gradient moves a weight by momentum and decay alone.
    variable = pretrainer.model.get_layer("head").bias
    before = keras.ops.convert_to_numpy(variable).copy()
    momentum = keras.ops.convert_to_numpy(optimizer.momentums[optimizer._get_variable_index(variable)]).copy()
    lr = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    optimizer.apply([keras.ops.zeros_like(variable)], [variable])
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(variable), before + 0.9 * momentum - lr * 1e-4 * before, rtol=1e-6, atol=1e-9
    )


def test_a_short_run_learns_and_returns_a_bit_model(tmp_path):
    images, labels = colour_task(64)
    pretrainer = bit_keras.BiTPretrainer(TINY, batch_size=16, steps=20, image_size=32, base_lr=0.0625, seed=0)
    history = pretrainer.fit((images, labels), verbose=0)
    assert pretrainer.model.output.shape == (None, 2)  # the head follows the data
    assert history.history["accuracy"][-1] > 0.8
    bit_keras.save_official(pretrainer.model, tmp_path / "upstream.npz")
    assert bit_keras.BiT(TINY, weights=tmp_path / "upstream.npz").output.shape == (None, 2)


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt


def test_resumes_after_an_interruption_to_the_uninterrupted_weights(tmp_path):
    images, labels = colour_task(32)
    options = dict(num_classes=2, batch_size=8, steps=8, image_size=32, base_lr=0.015625, seed=1, backup_every=2)
    uninterrupted = bit_keras.BiTPretrainer(TINY, **options)
    uninterrupted.fit((images, labels), verbose=0)
    interrupted = bit_keras.BiTPretrainer(TINY, checkpoint_dir=tmp_path, **options)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit((images, labels), callbacks=[_Interrupt()], verbose=0)
    resumed = bit_keras.BiTPretrainer(TINY, checkpoint_dir=tmp_path, **options)
    assert len(resumed.fit((images, labels), verbose=0).history["loss"]) == 2  # epochs 3 and 4 of 4
    for got, expected in zip(resumed.model.get_weights(), uninterrupted.model.get_weights()):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.distribute")
def test_under_a_mirrored_strategy_on_two_cpus_it_matches_one_device(tmp_path):
    one = start(tmp_path / "one.npz", "--trainer", "pretrain")
    two = start(tmp_path / "two.npz", "--trainer", "pretrain", "--strategy", "mirrored", "--cpus", "2")
    finish(one)
    assert "replicas 2" in finish(two)
    assert_same_training(weights(tmp_path / "two.npz"), weights(tmp_path / "one.npz"))


def test_a_resume_refuses_changed_recipe_arguments(tmp_path):
    images, labels = colour_task(16)
    settings = dict(num_classes=2, batch_size=8, steps=2, image_size=32, seed=1, backup_every=1, checkpoint_dir=str(tmp_path))
    bit_keras.BiTPretrainer(TINY, **settings).fit((images, labels), verbose=0)
    changes = {
        "base_lr": 0.1,
        "weight_decay": 0.0,
        "epochs": 3,
        "steps": 4,
        "image_size": 24,
        "crop_area": (0.5, 1.0),
        "flip": False,
        "loss": "softmax",
    }
    assert set(changes) == set(config.fingerprint(config.PretrainRecipe()))
    for name, value in changes.items():
        with pytest.raises(ValueError, match=rf"another run: .*\b{name}="):
            bit_keras.BiTPretrainer(TINY, **{**settings, name: value}).fit((images, labels), verbose=0)


def test_upstream_loss_is_sigmoid_cross_entropy_summed_over_classes():
    pretrainer = bit_keras.BiTPretrainer(TINY, num_classes=3, batch_size=8, steps=1, image_size=32)
    assert pretrainer.loss == "sigmoid"
    logits = np.array([[2.0, -1.0, 0.5]], "float32")
    labels = np.array([[0.0, 1.0, 1.0]], "float32")
    expected = np.sum(np.log1p(np.exp(-logits)) * labels + np.log1p(np.exp(logits)) * (1 - labels))
    got = float(keras.ops.convert_to_numpy(bit_keras.training.loss_function("sigmoid")(labels, logits)))
    assert got == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="loss must be one of"):
        bit_keras.BiTPretrainer(TINY, loss="hinge")
