"""Bad input, as a new user gives it: a clear error naming the argument, never a silently wrong run."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import requires_tensorflow
from PIL import Image
from toy_data import colour_task

import bit_keras
from bit_keras import data, distribute, tasks, training
from bit_keras.finetune import BiTFineTuner

pytestmark = requires_tensorflow
TINY = bit_keras.Variant((1, 1, 1, 1))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: bit_keras.BiT(TINY, ws_epsilon=-1), "ws_epsilon must be a positive number"),
        (lambda: bit_keras.BiT(TINY, include_top="False"), "include_top must be True or False"),
        (lambda: bit_keras.Variant((1, 1, 1, 1), width=1.5), "width must be a positive integer"),
        (lambda: bit_keras.Variant((1, 1.5, 1, 1)), "units must be four positive integers"),
        (lambda: training.Engine(batch_size=8, seed=1.5), "seed must be a non-negative integer"),
        (lambda: BiTFineTuner(bit_keras.BiT(TINY, num_classes=2), sizes=(40,)), r"sizes must be \(resize, crop\)"),
        (lambda: BiTFineTuner(bit_keras.BiT(TINY, num_classes=2), sizes=(16, 32)), "must not exceed the resize"),
        (lambda: BiTFineTuner(bit_keras.BiT(TINY, num_classes=2), flip="no"), "flip must be True or False"),
        (lambda: bit_keras.save_official(None, "x.npz"), "save_official takes a keras.Model"),
    ],
)
def test_arguments_of_the_wrong_kind_are_refused_by_name(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_class_names_as_one_string_are_refused(tmp_path):
    model = bit_keras.BiT(TINY, num_classes=5)
    with pytest.raises(ValueError, match="class_names must be a list of strings"):
        bit_keras.save_transformers(model, tmp_path / "hf", class_names="abcde")


def test_saving_a_model_that_wraps_a_bit_is_refused(tmp_path):
    inner = bit_keras.BiT(TINY, num_classes=3, input_shape=(16, 16, 3))
    inputs = keras.Input((16, 16, 3))
    outputs = keras.layers.Softmax(name="probabilities")(inner(keras.layers.Rescaling(1 / 127.5, -1, name="scale")(inputs)))
    wrapper = keras.Model(inputs, outputs)
    with pytest.raises(ValueError, match=r"wraps a BiT model .*probabilities.*model.get_layer"):
        bit_keras.save_official(wrapper, tmp_path / "w.npz")
    assert not (tmp_path / "w.npz").exists()


def test_a_tpu_name_implies_the_tpu_strategy(monkeypatch):
    asked = []
    monkeypatch.setattr(distribute, "_tf_strategy", lambda spec, tpu: asked.append((spec, tpu)))
    distribute.resolve_strategy(None, tpu="my-tpu")
    distribute.resolve_strategy(None)
    assert asked == [("tpu", "my-tpu"), ("default", None)]


@pytest.mark.parametrize("value", ["[1, 2]", "not json", '{"cluster": [], "task": {}}', '{"cluster": {}, "task": {"index": "0"}}'])
def test_malformed_tf_config_is_named(monkeypatch, value):
    monkeypatch.setenv("TF_CONFIG", value)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribute.is_chief()
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribute.resolve_strategy("multi_worker")


def test_a_tf_data_of_dicts_trains_as_tfds_yields_it():
    images, labels = colour_task(16)
    dicts = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})
    tuner = BiTFineTuner(bit_keras.BiT(TINY, num_classes=2), batch_size=8, steps=1, sizes=(20, 16), dataset_size=16)
    tuner.fit(dicts, verbose=0)
    assert int(keras.ops.convert_to_numpy(tuner.model.optimizer.iterations)) == 1
    batched = tf.data.Dataset.from_tensor_slices((images, labels)).map(lambda x, y: (x, y, y))
    with pytest.raises(ValueError, match=r"must yield \(image, label\) pairs"):
        tuner.fit(batched, verbose=0)


def test_a_folder_where_nothing_decodes_is_an_error_not_an_endless_loop(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(3):  # a PNG signature, then nothing an image decoder can read
            (tmp_path / name / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    source = data.from_folder(tmp_path)
    with pytest.raises(ValueError, match="yields no example, though 6 were counted"):
        BiTFineTuner(bit_keras.BiT(TINY, num_classes=2), batch_size=2, steps=1, sizes=(20, 16)).fit(source, verbose=0)
    with pytest.raises(ValueError, match="yields no example"):
        bit_keras.BiTPretrainer(TINY, num_classes=2, batch_size=2, steps=1, image_size=16).fit(source, verbose=0)


def _images(folder, classes, count=2):
    for name in classes:
        (folder / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(folder / name / f"{i}.png")


def test_folders_that_would_train_a_wrong_task_are_refused(tmp_path):
    _images(tmp_path / "one", ["cats"])
    with pytest.raises(ValueError, match="holds one class folder"):
        tasks.load(str(tmp_path / "one"))
    _images(tmp_path / "split" / "train", ["a", "b"])
    _images(tmp_path / "split" / "val", ["a", "b"])
    with pytest.raises(ValueError, match=r"not both train/ and test/.*Add the missing test/"):
        tasks.load(str(tmp_path / "split"))
    _images(tmp_path / "other" / "train", ["a", "b"])
    _images(tmp_path / "other" / "test", ["a", "c"])
    with pytest.raises(ValueError, match=r"class folders \['a', 'c'\].*same class folders"):
        tasks.load(str(tmp_path / "other"))
    _images(tmp_path / "fine", ["a", "b"], count=10)
    with pytest.raises(ValueError, match="examples_per_class must be a positive integer"):
        tasks.load(str(tmp_path / "fine"), examples_per_class=0)


def test_a_garbled_best_value_in_a_backup_is_called_damaged(tmp_path):
    images, labels = colour_task(16)
    options = dict(batch_size=8, steps=2, sizes=(20, 16), seed=0, checkpoint_dir=str(tmp_path), backup_every=1)
    BiTFineTuner(bit_keras.BiT(TINY, num_classes=2), **options).fit((images, labels), verbose=0)
    state = sorted((tmp_path / "backup").glob("step-*"))[-1] / "state.json"
    record = json.loads(state.read_text())
    state.write_text(json.dumps({**record, "best": "high"}))
    with pytest.raises(ValueError, match=r"is damaged: .*'best' is 'high'"):
        BiTFineTuner(bit_keras.BiT(TINY, num_classes=2), **options).fit((images, labels), verbose=0)
