"""Bad input, as a new user gives it: a clear error naming the argument, never a silently wrong run."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error

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


def test_from_folder_takes_only_true_false_or_auto_for_verify(tmp_path):
    (tmp_path / "cat").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), "uint8")).save(tmp_path / "cat" / "a.png")
    for verify in (1, 0, "yes", None):
        with pytest.raises(ValueError, match=f"verify must be True, False or 'auto', got {verify!r}"):
            data.from_folder(tmp_path, verify=verify)


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
    monkeypatch.setattr(distribute, "_tf_strategy", lambda spec, tpu, connect_timeout: asked.append((spec, tpu)))
    distribute.resolve_strategy(None, tpu="my-tpu")
    distribute.resolve_strategy(None)
    assert asked == [("tpu", "my-tpu"), ("default", None)]


def test_a_tpu_address_where_nothing_listens_fails_within_the_timeout(capsys):
    with socket.socket() as unused:  # a port that was free a moment ago, so nothing listens there
        unused.bind(("127.0.0.1", 0))
        address = f"grpc://127.0.0.1:{unused.getsockname()[1]}"
    started = time.monotonic()
    with pytest.raises(ValueError, match=f"nothing answered at {address} within 2 s"):
        distribute.resolve_strategy("tpu", tpu=address, connect_timeout=2)
    assert time.monotonic() - started < 30
    assert f"waiting up to 2 s (connect_timeout) for the TPU at {address} to answer" in capsys.readouterr().err  # at once


def test_a_tpu_name_that_cannot_be_looked_up_is_named(monkeypatch):
    def unreachable(**kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", unreachable)
    with pytest.raises(ValueError, match=r"strategy='tpu' found no TPU: looked for tpu='my-tpu' \(.*could not look the TPU up"):
        distribute.resolve_strategy("tpu", tpu="my-tpu")


def test_a_worker_that_never_starts_is_named_and_given_up_on(tmp_path):
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}})}
    script = "from bit_keras import distribute; distribute.resolve_strategy('multi_worker', connect_timeout=3)"
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 1
    assert f"waiting up to 3 s (connect_timeout) for TF_CONFIG's worker 1 at 127.0.0.1:{ports[1]}" in result.stderr
    assert "Timeout (0:00:03)" in result.stderr
    assert time.monotonic() - started < 200


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    "value", ["[1, 2]", "not json", '{"cluster": [], "task": {}}', '{"cluster": {}, "task": {"index": "0"}}']
)
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
    with pytest.warns(UserWarning, match=r"skipped 6 file\(s\) .* do not decode"):
        with pytest.raises(ValueError, match=f"{tmp_path} holds no readable images"):
            data.from_folder(tmp_path)
    source = data.from_folder(tmp_path, verify=False)  # headers only: the engine finds out
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


# ------------------------------------------------------------------ nothing lost


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--save", "{tmp}/m.h5"], "use a .keras file, or .npz"),
        (["--save", "{tmp}/existing.npz"], "already exists; pass --overwrite"),
        (["--save", "{tmp}/existing.keras"], "already exists; pass --overwrite"),
        (["--export_dir", "{tmp}/existing_folder"], "already exists; pass --overwrite"),
        (["--save", "{tmp}/existing.npz/m.keras"], "is not a writable folder"),  # root may write anywhere: a file as folder
    ],
)
@pytest.mark.parametrize("command", ["finetune", "pretrain"])
def test_cli_outputs_are_checked_before_any_training(tmp_path, capsys, command, flags, message):
    from bit_keras import cli

    (tmp_path / "existing.npz").write_bytes(b"keep")
    (tmp_path / "existing.keras").write_bytes(b"keep")
    (tmp_path / "existing_folder").mkdir()
    args = [command, "--dataset", str(tmp_path / "no_such_data"), "--variant", "R1-1-1-1x1", "--weights", "none"]
    assert cli.main(args + [flag.format(tmp=tmp_path) for flag in flags]) == 1
    shown = capsys.readouterr()
    assert message in shown.err and "[data]" not in shown.out  # refused before the data was even read
    assert (tmp_path / "existing.npz").read_bytes() == b"keep" and (tmp_path / "existing.keras").read_bytes() == b"keep"


def test_keras_files_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    from bit_keras import checkpoints

    model = bit_keras.BiT(TINY, num_classes=2)
    target = tmp_path / "m.keras"
    target.write_bytes(b"previous")

    def full_disk(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"half a model")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(model, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        checkpoints.save_keras(model, target, overwrite=True)
    assert target.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == ["m.keras"]


def _dead_pid():
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_killed_best_keras_write_is_cleaned_and_a_second_run_on_the_folder_is_refused(tmp_path):
    import os
    import socket

    from bit_keras.checkpoints import writing

    images, labels = colour_task(16)
    options = dict(batch_size=8, steps=2, sizes=(20, 16), seed=0, checkpoint_dir=str(tmp_path))
    left_over = tmp_path / f".best.keras{writing._TAG}.{writing._HOST}.{_dead_pid()}.0123abcd.keras"
    left_over.write_bytes(b"\0" * 1000)  # what a writer killed mid-save leaves
    lock = tmp_path / training.LOCK
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid()}))  # a live run
    tuner = BiTFineTuner(bit_keras.BiT(TINY, num_classes=2), **options)
    with pytest.raises(ValueError, match=rf"in use by another run \(pid {os.getppid()} on"):
        tuner.fit((images, labels), validation_data=(images, labels), verbose=0)
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid()}))  # that run is gone: a stale lock
    tuner.fit((images, labels), validation_data=(images, labels), verbose=0)
    assert not left_over.exists() and (tmp_path / "best.keras").exists() and not lock.exists()


@pytest.mark.parametrize("damage", ["", "not json", "[1, 2]", "{}", "folder"])
def test_a_lock_that_cannot_be_read_is_called_damaged_with_how_to_clear_it(tmp_path, damage):
    lock = tmp_path / training.LOCK
    if damage == "folder":
        lock.mkdir()
    else:
        lock.write_text(damage)
    with pytest.raises(ValueError, match=rf"its lock {lock} is damaged .*If no run is using this folder, delete {lock}"):
        with training.backups.run_lock(str(tmp_path)):
            pass


def test_a_checkpoint_dir_that_is_a_file_is_refused_before_training(tmp_path):
    images, labels = colour_task(16)
    (tmp_path / "file").write_text("not a folder")
    tuner = BiTFineTuner(
        bit_keras.BiT(TINY, num_classes=2), batch_size=8, steps=2, sizes=(20, 16), checkpoint_dir=str(tmp_path / "file")
    )
    with pytest.raises(ValueError, match="cannot be made a folder"):
        tuner.fit((images, labels), verbose=0)
    assert int(keras.ops.convert_to_numpy(tuner.model.optimizer.iterations)) == 0


def test_a_release_that_cannot_be_downloaded_is_a_clear_error(tmp_path, monkeypatch):
    from bit_keras import checkpoints

    monkeypatch.setattr(checkpoints.releases, "BASE_URL", (tmp_path / "offline").as_uri())
    monkeypatch.setenv("BIT_KERAS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=r"BiT-M-R50x1 is not in the cache .* could not be downloaded from file://"):
        bit_keras.BiT("BiT-M-R50x1", weights="BiT-M-R50x1")


def test_numpy_class_counts_are_integers_too():
    assert bit_keras.BiT(TINY, num_classes=np.int64(4)).output.shape == (None, 4)


def test_a_resume_with_another_model_names_what_differs(tmp_path):
    images, labels = colour_task(16)
    options = dict(batch_size=8, steps=2, sizes=(20, 16), seed=0, checkpoint_dir=str(tmp_path), backup_every=1)
    BiTFineTuner(bit_keras.BiT(TINY, num_classes=2), **options).fit((images, labels), verbose=0)
    with pytest.raises(ValueError, match=r"another run: classes=2 there, 3 now"):
        BiTFineTuner(bit_keras.BiT(TINY, num_classes=3), **options).fit((images, np.arange(16) % 3), verbose=0)
    with pytest.raises(ValueError, match=r"another run: model='R1-1-1-1x1' there, 'R1-1-1-1x2' now"):
        BiTFineTuner(bit_keras.BiT(bit_keras.Variant((1, 1, 1, 1), 2), num_classes=2), **options).fit((images, labels), verbose=0)


def test_a_hand_edited_backup_step_is_not_believed(tmp_path):
    images, labels = colour_task(16)
    options = dict(batch_size=8, steps=4, sizes=(20, 16), seed=0, checkpoint_dir=str(tmp_path), backup_every=2)
    BiTFineTuner(bit_keras.BiT(TINY, num_classes=2), **options).fit((images, labels), verbose=0)
    state = sorted((tmp_path / "backup").glob("step-*"))[-1] / "state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "step": 2}))
    with pytest.raises(ValueError, match="is damaged: state.json says update 2, its optimizer state update 4"):
        BiTFineTuner(bit_keras.BiT(TINY, num_classes=2), **options).fit((images, labels), verbose=0)


def test_float_images_in_zero_one_from_tf_data_are_warned_about():
    images, labels = colour_task(16)
    floats = tf.data.Dataset.from_tensor_slices((images.astype("float32") / 255, labels))
    tuner = BiTFineTuner(bit_keras.BiT(TINY, num_classes=2), batch_size=8, steps=1, sizes=(20, 16), dataset_size=16)
    with pytest.warns(UserWarning, match=r"fit takes pixels in \[0, 255\].*multiply them by 255"):
        tuner.fit(floats, verbose=0)


def test_a_saved_model_with_truncated_variables_is_named(tmp_path):
    import hub_export

    path = tmp_path / "module"
    hub_export.export(bit_keras.BiT(TINY, num_classes=3), path)
    data_file = next((path / "variables").glob("variables.data-*"))
    data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 3])
    for load in (lambda: bit_keras.BiT(None, weights=str(path)), lambda: hub_export.load(path)):
        with pytest.raises(ValueError, match=rf"{path}.*variables/variables.data may be truncated"):
            load()


@pytest.mark.parametrize(
    "trainer,recipe,run,message",
    [
        (
            "finetune",
            bit_keras.config.RunConfig(),
            bit_keras.config.FineTuneRecipe(),
            "recipe must be a config.FineTuneRecipe.*got a RunConfig: that is the run=",
        ),
        (
            "finetune",
            bit_keras.config.PretrainRecipe(),
            None,
            "recipe must be a config.FineTuneRecipe.*got a PretrainRecipe: that is BiTPretrainer's recipe=",
        ),
        ("finetune", None, bit_keras.config.FineTuneRecipe(), "run must be a config.RunConfig.*got a FineTuneRecipe"),
        ("finetune", None, "fast", "run must be a config.RunConfig or a dict of its fields, got a str"),
        ("finetune", {"steps": 1, "speed": 2}, None, r"recipe: FineTuneRecipe has no field\(s\) speed"),
        ("pretrain", bit_keras.config.DistillRecipe(), None, "recipe must be a config.PretrainRecipe.*got a DistillRecipe"),
        ("distill", bit_keras.config.FineTuneRecipe(), None, "recipe must be a config.DistillRecipe.*got a FineTuneRecipe"),
    ],
)
def test_config_objects_of_the_wrong_kind_are_refused_naming_the_expected_class(trainer, recipe, run, message):
    model = bit_keras.BiT(TINY, num_classes=3)
    make = {
        "finetune": lambda: bit_keras.BiTFineTuner(model, recipe, run),
        "pretrain": lambda: bit_keras.BiTPretrainer(model, recipe, run),
        "distill": lambda: bit_keras.BiTDistiller(model, TINY, recipe, run, student_weights=None),
    }[trainer]
    with pytest.raises(TypeError, match=message):
        make()


def test_config_objects_may_be_dicts_of_their_fields():
    tuner = bit_keras.BiTFineTuner(bit_keras.BiT(TINY, num_classes=3), {"steps": 3}, {"batch_split": 2})
    assert (tuner.steps, tuner.batch_split, tuner.batch_size) == (3, 2, 512)  # the trainer's default batch kept


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: bit_keras.config.RunConfig(checkpoint_dir=5), "checkpoint_dir must be a path .*got int 5"),
        (
            lambda: BiTFineTuner(bit_keras.BiT(TINY, num_classes=2), checkpoint_dir=123),
            "checkpoint_dir must be a path .*got int 123",
        ),
        (lambda: bit_keras.config.RunConfig(checkpoint_dir=""), "checkpoint_dir must be a path"),
        (lambda: bit_keras.config.RunConfig(tpu=5), "tpu must be a TPU name or grpc:// address"),
        (lambda: bit_keras.config.SuiteConfig(out=5), "out must be a path .*got int 5"),
        (lambda: bit_keras.config.SuiteConfig(tfds_data_dir=["data"]), "tfds_data_dir must be a path"),
    ],
)
def test_path_fields_of_configs_are_refused_when_the_config_is_made(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_export_paths_that_are_not_paths_are_refused_by_name():
    import hub_export

    model = bit_keras.BiT(TINY, num_classes=2)
    with pytest.raises(ValueError, match="path must be a path .*got NoneType None"):
        hub_export.export_format(model, None, "litert")
    with pytest.raises(ValueError, match="path must be a path .*got NoneType None"):
        hub_export.export(model, None)


def test_reproduce_out_must_be_a_writable_folder(tmp_path, monkeypatch):
    from bit_keras import suites

    taken = tmp_path / "results.txt"
    taken.write_text("mine")
    settings = bit_keras.config.SuiteConfig(out=str(taken), tasks="dtd")
    with pytest.raises(ValueError, match=r"out=.*results.txt' \(--out\) is a file: results go in a folder"):
        suites.reproduce("vtab1k", "R1-1-1-1x1", weights=None, settings=settings)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    access = os.access
    # Root may write in a read-only folder: the folder reads as read-only to the check whoever runs the test.
    monkeypatch.setattr(os, "access", lambda path, mode: access(path, mode) and os.fspath(path) != str(locked))
    settings = bit_keras.config.SuiteConfig(out=str(locked), tasks="dtd")
    with pytest.raises(ValueError, match=r"out=.*locked' \(--out\) is not a writable folder"):
        suites.reproduce("vtab1k", "R1-1-1-1x1", weights=None, settings=settings)


def test_small_data_and_model_mistakes_are_named():
    images, labels = colour_task(8, size=16)
    for num_classes in ("3", 3.0):
        with pytest.raises(ValueError, match=f"num_classes must be a positive integer, got {num_classes!r}"):
            data.from_arrays(images, labels, num_classes=num_classes)
    with pytest.raises(ValueError, match=r"images must be equally sized.*2 shapes.*use from_folder"):
        data.from_arrays([images[0], images[1, :8]], [0, 1])
    with pytest.raises(ValueError, match=r"labels must be one class id per image.*look like images: pass \(images, labels\)"):
        data.as_source([images[0], images[1]])
    batched = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    with pytest.raises(ValueError, match=r"is batched .*dataset.unbatch\(\)"):
        data.as_source(batched, 2, 8)
    unbatched = tf.data.Dataset.from_tensor_slices((images, labels))
    pretrainer = bit_keras.BiTPretrainer(bit_keras.BiT(TINY, num_classes=2), batch_size=4, steps=1, image_size=16)
    for trainer in (pretrainer, bit_keras.BiTDistiller(bit_keras.BiT(TINY, num_classes=2), TINY, student_weights=None)):
        with pytest.raises(ValueError, match=r"wrap it as bit_keras.data.Source\(dataset, num_examples, num_classes\)"):
            trainer.fit(unbatched, verbose=0)
    with pytest.raises(ValueError, match="BiTPretrainer trains a classifier: build the model with include_top=True"):
        bit_keras.BiTPretrainer(bit_keras.BiT(TINY, include_top=False, pooling="avg"))
    tuner = BiTFineTuner(bit_keras.BiT(TINY, num_classes=2), dataset_size=100, image_size=32)
    assert tuner.resolution == (160, 128)  # one side length: square images
    for image_size, message in (((32,), r"image_size must be \(height, width\)"), ((32, 0), r"image_size\[1\] \(width\)")):
        with pytest.raises(ValueError, match=message):
            BiTFineTuner(bit_keras.BiT(TINY, num_classes=2), dataset_size=100, image_size=image_size)


def test_a_full_disk_under_checkpoint_dir_names_what_was_being_written(tmp_path, monkeypatch):
    model = bit_keras.BiT(TINY, num_classes=2)
    keep = training.backups.KeepBest(str(tmp_path / "best.keras"), "val_accuracy")
    keep.set_model(model)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(model, "save", full_disk)
    with pytest.raises(OSError, match=rf"{tmp_path / 'best.keras'}, the best model so far, could not be written \(No space left"):
        keep.on_epoch_end(0, {"val_accuracy": 0.5})
    monkeypatch.setattr(model, "save_weights", full_disk)
    backups = training.backups.Backups(str(tmp_path / "backup"))
    each_epoch = training.backups.BackupEachEpoch(backups, training.Engine(batch_size=8), 2, {}, keep)
    each_epoch.set_model(model)
    with pytest.raises(OSError, match=rf"the backup of update 2 in {tmp_path / 'backup'} could not be written \(No space left"):
        each_epoch.on_epoch_end(0)


def test_an_offline_tfds_download_says_where_tfds_looked_and_what_to_do(tmp_path, monkeypatch, capsys):
    import requests
    import tensorflow_datasets as tfds

    class Unprepared:
        data_dir = str(tmp_path / "cifar10" / "3.0.2")

        def is_prepared(self):
            return False

    def offline(*args, **kwargs):
        raise requests.exceptions.ConnectionError("Max retries exceeded with url: https://www.cs.toronto.edu/...")

    monkeypatch.setattr(tfds, "builder", lambda name, data_dir=None: Unprepared())
    monkeypatch.setattr(tfds, "load", offline)
    with pytest.raises(
        ValueError,
        match=rf"TFDS could not download cifar10 \(ConnectionError: .*not prepared in {Unprepared.data_dir}.*--tfds_data_dir",
    ):
        data.from_tfds("cifar10")
    assert (
        f"[data] cifar10 is not prepared in {Unprepared.data_dir}: TFDS downloads and prepares it first"
        in capsys.readouterr().err
    )
