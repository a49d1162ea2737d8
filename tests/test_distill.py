"""`BiTDistiller`: the losses against their formulas, consistent views, a frozen teacher, every writer."""

import keras
import numpy as np
import pytest
from conftest import requires_tensorflow
from test_distribute import assert_same_training, finish, run, start, weights
from toy_data import colour_task

import bit_keras
from bit_keras import data, distill

pytestmark = requires_tensorflow
TINY = bit_keras.Variant((1, 1, 1, 1))


def _log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize(
    "kind,temperature,alpha",
    [("function_matching", 1.0, 0.5), ("function_matching", 4.0, 0.5), ("hinton", 3.0, 0.3), ("hinton", 1.0, 1.0)],
)
def test_the_losses_are_their_formulas(kind, temperature, alpha):
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(6, 5)) * 3, rng.normal(size=(6, 5)) * 3
    labels = rng.dirichlet(np.ones(5), size=6)  # soft, as after mixup
    got = distill.DistillationLoss(5, kind, temperature, alpha)(
        labels.astype("float32"), np.concatenate([student, teacher], -1).astype("float32")
    )
    log_q, log_p = _log_softmax(student / temperature), _log_softmax(teacher / temperature)
    p = np.exp(log_p)
    if kind == "function_matching":
        expected = (p * (log_p - log_q)).sum(-1).mean()
    else:
        soft = -(p * log_q).sum(-1) * temperature**2
        hard = -(labels * _log_softmax(student)).sum(-1)
        expected = ((1 - alpha) * hard + alpha * soft).mean()
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_no_gradient_reaches_the_teacher_half():
    import tensorflow as tf

    pair = tf.Variable(np.random.default_rng(1).normal(size=(3, 8)).astype("float32"))
    with tf.GradientTape() as tape:
        loss = distill.DistillationLoss(4)(np.eye(4, dtype="float32")[:3], pair)
    gradient = tape.gradient(loss, pair).numpy()
    assert np.abs(gradient[:, :4]).sum() > 0 and np.all(gradient[:, 4:] == 0)


def probe(name, size):
    """A 'classifier' whose logits are its input's mean colour: what a model saw, read off its output."""
    images = keras.Input((size, size, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Dropout(0.5, name=f"{name}_dropout")(images))
    head = keras.layers.Dense(3, name="head", kernel_initializer="identity", use_bias=False)
    return keras.Model(images, head(pooled), name=name)


def pixels_probe(name, size):
    """A 'classifier' whose logits are the pixels it saw, one per logit: a mirror image reads differently."""
    images = keras.Input((size, size, 3))
    head = keras.layers.Dense(size * size * 3, name="head", kernel_initializer="identity", use_bias=False)
    return keras.Model(images, head(keras.layers.Flatten()(images)), name=name)


@pytest.mark.parametrize("consistent", [True, False])
def test_teacher_and_student_see_the_same_pixels_only_when_consistent(consistent):
    images, labels = colour_task(16, size=20)
    distiller = distill.BiTDistiller(
        pixels_probe("teacher", 16),
        pixels_probe("student", 16),
        batch_size=8,
        steps=2,
        image_size=16,
        consistent=consistent,
        mixup_alpha=1.0,
    )
    batch, _ = next(iter(distiller.train_pipeline(data.from_arrays(images, labels))))
    student, teacher = distill.split_logits(keras.ops.convert_to_numpy(distiller.model(batch, training=False)), 16 * 16 * 3)
    if consistent:
        views = keras.ops.convert_to_numpy(batch).reshape(student.shape)
        np.testing.assert_array_equal(student, teacher)  # every example, mixed images included
        np.testing.assert_array_equal(student, views)  # and what they saw is the batch, pixel for pixel
        mirrored = keras.ops.convert_to_numpy(batch)[:, :, ::-1].reshape(student.shape)
        assert np.abs(mirrored - views).max() > 0.1  # so a mirrored view would not pass for the original
    else:
        assert np.abs(student - teacher).max() > 1e-3


def test_the_teacher_runs_in_inference_mode_and_never_changes():
    teacher = bit_keras.BiT(bit_keras.Variant((1, 1, 1, 1), width=2), num_classes=2)
    head = teacher.get_layer("head")
    head.kernel.assign(np.random.default_rng(0).normal(size=head.kernel.shape).astype("float32"))
    before = [np.array(w) for w in teacher.get_weights()]
    distiller = distill.BiTDistiller(teacher, TINY, student_weights=None, batch_size=8, steps=4, image_size=16, seed=0)
    student_before = [np.array(w) for w in distiller.student.get_weights()]
    images, labels = colour_task(32, size=16)
    distiller.fit((images, labels), verbose=0)
    for a, b in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(student_before, distiller.student.get_weights()))
    assert int(keras.ops.convert_to_numpy(distiller.model.optimizer.iterations)) == 4

    dropout_teacher = probe("dropout_teacher", 16)
    distiller = distill.BiTDistiller(dropout_teacher, probe("student", 16), batch_size=8, steps=1, image_size=16)
    distiller.fit((images, labels), verbose=0)
    batch = (images[:8].astype("float32") - 127.5) / 127.5
    _, teacher_logits = distill.split_logits(keras.ops.convert_to_numpy(distiller.model(batch, training=True)), 3)
    np.testing.assert_allclose(teacher_logits, keras.ops.convert_to_numpy(dropout_teacher(batch, training=False)), atol=1e-6)


def test_evaluate_reports_student_teacher_and_agreement():
    images, labels = colour_task(24, size=16)
    teacher = probe("teacher", 16)
    teacher.compile(loss="categorical_crossentropy", metrics=["accuracy"])  # as a fine-tuner leaves its model
    distiller = distill.BiTDistiller(teacher, probe("student", 16), batch_size=8, steps=1, image_size=16)
    results = distiller.evaluate((images, labels % 3), verbose=0)
    logits = keras.ops.convert_to_numpy(teacher.predict((images.astype("float32") - 127.5) / 127.5, verbose=0))
    assert results["teacher_accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == labels % 3))
    assert results["agreement"] == 1.0 and results["accuracy"] == results["teacher_accuracy"]  # identical probes
    assert results["loss"] == pytest.approx(0.0, abs=1e-6) and results["accuracy"] > 0


def test_a_student_with_other_classes_and_a_headless_teacher_are_refused():
    teacher = bit_keras.BiT(TINY, num_classes=3)
    with pytest.raises(ValueError, match="The student has 4 outputs but the teacher 3"):
        distill.BiTDistiller(teacher, bit_keras.BiT(TINY, num_classes=4))
    with pytest.raises(ValueError, match="The teacher must be a classifier"):
        distill.BiTDistiller(bit_keras.BiT(TINY, include_top=False), TINY, student_weights=None)
    with pytest.raises(ValueError, match="loss must be one of"):
        distill.BiTDistiller(teacher, TINY, student_weights=None, loss="mse")
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        distill.BiTDistiller(teacher, TINY, student_weights=None, alpha=2)


def test_the_student_saves_through_every_writer(tmp_path):
    import hub_export

    teacher = bit_keras.BiT(bit_keras.Variant((1, 1, 1, 1), width=2), num_classes=2)
    distiller = distill.BiTDistiller(teacher, TINY, student_weights=None, batch_size=8, steps=1, image_size=16)
    distiller.fit(colour_task(16, size=16), verbose=0)
    student = distiller.student
    expected = keras.ops.convert_to_numpy(student(np.full((1, 16, 16, 3), 0.25, "float32")))
    bit_keras.checkpoints.save_keras(student, tmp_path / "s.keras")
    bit_keras.save_official(student, tmp_path / "s.npz")
    bit_keras.save_timm(student, tmp_path / "s.safetensors")
    bit_keras.save_transformers(student, tmp_path / "hf")
    hub_export.export(student, tmp_path / "hub", flavor="classification")
    for written in ("s.keras", "s.npz", "s.safetensors", "hf", "hub"):
        epsilon = 1e-8 if written in ("s.safetensors", "hf") else bit_keras.resnet.WS_EPSILON
        model = bit_keras.BiT("auto", weights=str(tmp_path / written), ws_epsilon=epsilon)
        got = keras.ops.convert_to_numpy(model(np.full((1, 16, 16, 3), 0.25, "float32")))
        np.testing.assert_allclose(got, expected, atol=1e-4 * max(1.0, np.abs(expected).max()))


def test_replicas_micro_batches_and_a_kill_give_the_updates_of_one_device(tmp_path):
    one = start(tmp_path / "one.npz", "--trainer", "distill")
    mirrored = start(tmp_path / "two.npz", "--trainer", "distill", "--strategy", "mirrored", "--cpus", "2", "--batch_split", "2")
    killed = start(tmp_path / "k.npz", "--trainer", "distill", "--checkpoint_dir", str(tmp_path / "run"), "--kill_at_batch", "3")
    finish(one)
    assert "replicas 2" in finish(mirrored)
    finish(killed, expect_kill=True)
    reference = weights(tmp_path / "one.npz")
    assert_same_training(weights(tmp_path / "two.npz"), reference)
    assert_same_training(run(tmp_path / "k.npz", "--trainer", "distill", "--checkpoint_dir", str(tmp_path / "run")), reference)
    best = keras.saving.load_model(tmp_path / "run" / "best.keras", compile=False)
    assert best.name == "R1-1-1-1x1" and best.output.shape == (None, 2)  # the student, not the pair


def test_a_resume_with_another_teacher_of_the_same_architecture_is_refused(tmp_path):
    images, labels = colour_task(16, size=16)
    settings = {"student_weights": None, "batch_size": 8, "steps": 1, "image_size": 16, "seed": 0}
    teacher = bit_keras.BiT(TINY, num_classes=3, name="teacher")
    distill.BiTDistiller(teacher, TINY, checkpoint_dir=str(tmp_path), **settings).fit((images, labels), verbose=0)
    other = bit_keras.BiT(TINY, num_classes=3, name="teacher")  # the same name and shapes, other weights
    distiller = distill.BiTDistiller(other, TINY, checkpoint_dir=str(tmp_path), **settings)
    with pytest.raises(ValueError, match="is of another run: teacher="):
        distiller.fit((images, labels), verbose=0)


def test_data_of_other_classes_than_the_teachers_is_refused():
    images, labels = colour_task(16, size=16)
    distiller = distill.BiTDistiller(bit_keras.BiT(TINY, num_classes=5), TINY, student_weights=None, batch_size=8, steps=1)
    three = data.from_arrays(images, labels, num_classes=3)
    with pytest.raises(ValueError, match="train has 3 classes but the teacher 5.*fine-tuned on these classes"):
        distiller.fit(three, verbose=0)
    five = data.from_arrays(images, labels, num_classes=5)
    with pytest.raises(ValueError, match="validation_data has 3 classes but the teacher 5"):
        distiller.fit(five, validation_data=three, verbose=0)
    with pytest.raises(ValueError, match="data_source has 3 classes but the teacher 5"):
        distiller.evaluate(three, verbose=0)


def test_the_student_takes_the_class_names_of_the_data():
    images, labels = colour_task(16, size=16)
    source = data.Source(data.from_arrays(images, labels).dataset, 16, 3, ["red", "green", "blue"])
    distiller = distill.BiTDistiller(bit_keras.BiT(TINY, num_classes=3), TINY, student_weights=None, batch_size=8, steps=1)
    distiller.fit(source, verbose=0)
    assert distiller.student.class_names == ("red", "green", "blue")


def test_a_student_without_a_defined_output_is_refused_by_name():
    unbuilt = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(3)], name="mine")
    with pytest.raises(ValueError, match=r"The student 'mine' \(Sequential\) has no defined output.*student='BiT-M-R50x1'"):
        distill.BiTDistiller(bit_keras.BiT(TINY, num_classes=3), unbuilt)


def test_the_teacher_as_its_own_student_and_unreadable_teachers_are_refused_with_teacher_advice(tmp_path):
    teacher = bit_keras.BiT(TINY, num_classes=3)
    with pytest.raises(
        ValueError, match="The student is the teacher model itself: the teacher is frozen, so nothing would train"
    ):
        distill.BiTDistiller(teacher, teacher)
    headless = tmp_path / "headless.npz"
    bit_keras.save_official(bit_keras.BiT(TINY, include_top=False), headless)
    with pytest.raises(
        ValueError, match=rf"teacher='{headless}' could not be read as a classifier: .*pass the model as teacher="
    ):
        distill.BiTDistiller(str(headless), TINY, student_weights=None)
