"""The `bit-keras` console command: every sub-command's --help, finetune, pretrain and export end to end.

Each run is its own process (as a user's would be), bounded in time, on a tiny model.
"""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import requires_tensorflow
from PIL import Image
from reference import random_state

pytestmark = requires_tensorflow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--variant", "R1-1-1-1x1", "--weights", "none", "--batch_size", "8", "--steps", "3"]
# A tiny model that learns two easy classes in 20 steps.
QUICK_LEARNER = "--variant R1-1-1-1x1 --weights none --batch_size 8 --base_lr 0.015625 --steps 20 --sizes 20,16"
RESULT = re.compile(r"^result: dataset=(\S+) variant=(\S+) steps=(\d+) top-1=([0-9.]+)$", re.M)

# `bit-keras` as installed: the console script's own entry point, run by this interpreter.
BIT_KERAS = [sys.executable, "-c", "import sys; from bit_keras.cli import main; sys.exit(main())"]

MOCK_TFDS = """
import sys
import tensorflow_datasets as tfds
from bit_keras.cli import main
with tfds.testing.mock_data(num_examples=12):
    sys.exit(main())
"""


def bit_keras_cli(args, cwd, code=None, timeout=600):
    command = [sys.executable, "-c", code] if code else BIT_KERAS
    result = subprocess.run(command + args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def result_line(stdout):
    match = RESULT.search(stdout)
    assert match, stdout[-2000:]
    dataset, variant, steps, top1 = match.groups()
    return dataset, variant, int(steps), float(top1)


HELP_FLAGS = {
    "demo": [
        "--out",
        "--force_upstream",
        "--upstream",
        "--seeds",
        "--shots",
        "--upstream_steps",
        "--finetune_steps",
        "--distill",
    ],
    "finetune": [
        "--dataset",
        "--examples_per_class",
        "--batch_size",
        "--batch_split",
        "--mixed_precision",
        "--strategy",
        "--tpu",
        "--checkpoint_dir",
        "--save",
        "--export_dir",
        "--tfds_data_dir",
        "--variant",
        "--weights",
        "--steps",
        "--sizes",
        "--seed",
        "--flip",
        "--no-flip",
        "--random_crop",
        "--no-random_crop",
    ],
    "pretrain": [
        "--dataset",
        "--variant",
        "--batch_size",
        "--base_lr",
        "--weight_decay",
        "--epochs",
        "--steps",
        "--image_size",
        "--batch_split",
        "--mixed_precision",
        "--strategy",
        "--tpu",
        "--checkpoint_dir",
        "--backup_every",
        "--save",
        "--export_dir",
    ],
    "distill": [
        "--dataset",
        "--teacher",
        "--student",
        "--student_weights",
        "--loss",
        "--temperature",
        "--alpha",
        "--consistent",
        "--no-consistent",
        "--mixup_alpha",
        "--teacher_size",
        "--batch_split",
        "--strategy",
        "--checkpoint_dir",
        "--save",
    ],
    "export": [
        "--weights",
        "--variant",
        "--flavor",
        "--format",
        "--out",
        "--num_classes",
        "--input_range",
        "--image_size",
        "--overwrite",
    ],
}


def test_help_runs_quietly_in_a_fresh_process(tmp_path):
    """`bit-keras --help` exits 0, names every command, and prints no TensorFlow start-up noise."""
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(BIT_KERAS + ["--help"], cwd=tmp_path, capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    for command in HELP_FLAGS:
        assert command in result.stdout
    for noise in ("cuInit", "cuda drivers", "oneDNN", "absl::InitializeLog", "cpu_feature_guard"):
        assert noise not in result.stderr, result.stderr


@pytest.mark.parametrize("command", sorted(HELP_FLAGS))
def test_every_command_help_lists_its_flags(command, capsys):
    from bit_keras import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"usage: bit-keras {command}")
    for flag in HELP_FLAGS[command]:
        assert flag in shown, f"{flag} missing from `bit-keras {command} --help`"


def test_finetune_tfds_mock_data_saves_and_exports(tmp_path):
    args = [
        "finetune",
        "--dataset",
        "cifar10",
        *TINY,
        "--sizes",
        "20,16",
        "--save",
        str(tmp_path / "m.npz"),
        "--export_dir",
        str(tmp_path / "hub"),
        "--no-flip",
    ]
    result = bit_keras_cli(args, cwd=tmp_path, code=MOCK_TFDS)
    assert re.search(r"^ +flips +off$", result.stdout, re.M) and "random crop 16" in result.stdout
    # CIFAR's splits as the official release: train[:98%] / train[98%:] / test.
    assert "train[:98%]" in result.stdout and "train[98%:]" in result.stdout
    dataset, variant, steps, top1 = result_line(result.stdout)
    assert (dataset, variant, steps) == ("cifar10", "R1-1-1-1x1", 3) and 0.0 <= top1 <= 1.0
    with np.load(tmp_path / "m.npz", allow_pickle=False) as saved:
        assert saved["resnet/head/conv2d/bias"].shape == (10,)
    assert os.path.exists(tmp_path / "hub" / "saved_model.pb")
    assert "cuInit" not in result.stderr and "oneDNN" not in result.stderr


def test_finetune_loads_the_variants_release_by_default(tmp_path):
    """--weights release (the default) loads the variant's released checkpoint, here served from the cache."""
    cache = tmp_path / "cache"
    cache.mkdir()
    state = random_state((1, 1, 1, 1), 1, 5, seed=11)
    np.savez(cache / "BiT-M-R1-1-1-1x1.npz", **state)
    register = (
        "from bit_keras.checkpoints import releases\n"
        "releases.RELEASES['BiT-M-R1-1-1-1x1'] = releases.Release('BiT-M-R1-1-1-1x1', 'R1-1-1-1x1', 5, 'BiT-M-R1-1-1-1x1.npz')\n"
    )
    args = [
        "finetune",
        "--dataset",
        "cifar10",
        "--variant",
        "BiT-M-R1-1-1-1x1",
        "--batch_size",
        "8",
        "--steps",
        "2",
        "--sizes",
        "20,16",
        "--base_lr",
        "1e-12",
        "--save",
        str(tmp_path / "m.npz"),
    ]
    env = {**os.environ, "BIT_KERAS_CACHE": str(cache)}
    result = subprocess.run(
        [sys.executable, "-c", register + MOCK_TFDS] + args, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"weights from BiT-M-R1-1-1-1x1 ({cache}" in result.stdout
    with np.load(tmp_path / "m.npz", allow_pickle=False) as saved:  # at LR 1e-12 the backbone is the release's
        for key in ("resnet/root_block/standardized_conv2d/kernel", "resnet/group_norm/gamma"):
            np.testing.assert_allclose(saved[key], state[key], atol=1e-6)


def test_finetune_release_of_a_variant_without_one_is_an_error(tmp_path):
    result = subprocess.run(
        BIT_KERAS + ["finetune", "--dataset", "cifar10", "--variant", "R1-1-1-1x1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 1 and "R1-1-1-1x1 has no released weights" in result.stderr, result.stderr[-2000:]
    assert "--weights none" in result.stderr and "Traceback" not in result.stderr


def test_finetune_image_folder_with_a_corrupt_file(tmp_path):
    # Two classes a model can tell apart (dark and bright), so top-1 must beat chance.
    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for name, level in (("dark", 30), ("bright", 220)):
        (root / name).mkdir(parents=True)
        for i in range(10):
            pixels = np.clip(rng.normal(level, 10, (12, 12, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    (root / "bright" / "broken.jpg").write_bytes(b"not an image")
    args = ["finetune", "--dataset", str(root), *QUICK_LEARNER.split(), "--save", str(tmp_path / "m.keras")]
    result = bit_keras_cli(args, cwd=tmp_path)
    assert "skipped 1 file" in result.stderr
    assert "18 training" in result.stdout and "2 classes" in result.stdout  # 20 readable images, 10% held out
    dataset, variant, steps, top1 = result_line(result.stdout)
    assert dataset == str(root) and steps == 20
    assert top1 > 0.5, f"top-1 {top1} on two trivially separable classes"
    assert os.path.exists(tmp_path / "m.keras")


def test_pretrain_then_export(tmp_path):
    """pretrain on mock TFDS data writes a .keras model; export turns it into a module that loads."""
    args = ["pretrain", "--dataset", "mnist", *TINY, "--image_size", "16", "--save", str(tmp_path / "up.keras")]
    result = bit_keras_cli(args, cwd=tmp_path, code=MOCK_TFDS)
    assert "BiT upstream recipe" in result.stdout
    dataset, variant, steps, top1 = result_line(result.stdout)
    assert (dataset, steps) == ("mnist", 3) and 0.0 <= top1 <= 1.0
    out = tmp_path / "hub"
    exported = bit_keras_cli(
        ["export", "--weights", str(tmp_path / "up.keras"), "--flavor", "classification", "--out", str(out)], cwd=tmp_path
    )
    assert "Wrote" in exported.stdout
    check = (
        "import sys, numpy as np, tensorflow as tf; m = tf.saved_model.load(sys.argv[1]); "
        "print(tuple(m(np.zeros((2, 16, 16, 3), 'float32'), training=False).shape))"
    )
    loaded = subprocess.run([sys.executable, "-c", check, str(out)], capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0 and loaded.stdout.strip().endswith("(2, 10)"), loaded.stderr[-2000:]


def test_unknown_dataset_is_a_clear_error(tmp_path):
    result = subprocess.run(
        BIT_KERAS + ["finetune", "--dataset", "./no/such/folder", *TINY],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "is not a folder" in result.stderr and "Traceback" not in result.stderr


def test_the_console_script_is_installed(tmp_path):
    import importlib.metadata

    scripts = {entry.name: entry.value for entry in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("bit-keras") == "bit_keras.cli:main"
    script = os.path.join(os.path.dirname(sys.executable), "bit-keras")
    assert os.path.exists(script), f"{script} missing: reinstall with pip install -e ."
    result = subprocess.run([script, "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0 and result.stdout.startswith("bit-keras "), result.stderr[-2000:]


def test_finetune_variant_auto_reads_the_architecture_from_the_weights(tmp_path):
    np.savez(tmp_path / "tiny.npz", **random_state((1, 1, 1, 1), 1, 5, seed=3))
    args = ["finetune", "--dataset", "cifar10", "--variant", "auto", "--weights", str(tmp_path / "tiny.npz")]
    args += ["--batch_size", "8", "--steps", "2", "--sizes", "20,16"]
    result = bit_keras_cli(args, tmp_path, code=MOCK_TFDS)
    assert result_line(result.stdout)[1].endswith("R1-1-1-1x1")


def test_finetune_variant_auto_needs_weights_to_read(tmp_path, capsys):
    from bit_keras.cli import main

    assert main(["finetune", "--dataset", "cifar10", "--variant", "auto"]) == 1
    assert "--variant auto reads the architecture from --weights" in capsys.readouterr().err


def test_distill_ends_with_student_teacher_and_agreement(tmp_path):
    import bit_keras

    teacher = bit_keras.BiT(bit_keras.Variant((1, 1, 1, 1), width=2), num_classes=10)
    teacher.save(tmp_path / "teacher.keras")
    args = ["distill", "--dataset", "cifar10", "--teacher", str(tmp_path / "teacher.keras"), "--student", "R1-1-1-1x1"]
    args += ["--student_weights", "none", "--batch_size", "8", "--steps", "2", "--image_size", "16", "--save", "s.keras"]
    result = bit_keras_cli(args, tmp_path, code=MOCK_TFDS)
    line = re.search(
        r"^result: dataset=cifar10 variant=R1-1-1-1x1 steps=2 top-1=([0-9.]+) teacher_top-1=([0-9.]+) agreement=([0-9.]+)$",
        result.stdout,
        re.M,
    )
    assert line, result.stdout[-2000:]
    assert all(0 <= float(value) <= 1 for value in line.groups())
    assert bit_keras.BiT("auto", weights=str(tmp_path / "s.keras")).name.endswith("R1-1-1-1x1")


def test_save_writes_keras_files_whole_or_not_at_all(tmp_path, monkeypatch):
    """finetune, pretrain and distill --save through the package's atomic writer: a full disk keeps the previous file."""
    import argparse

    import keras

    import bit_keras
    from bit_keras import cli

    target = tmp_path / "m.keras"
    target.write_bytes(b"previous")

    def full_disk(model, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"half a model")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keras.Model, "save", full_disk)
    args = argparse.Namespace(save=str(target), export_dir=None, overwrite=True)
    with pytest.raises(OSError, match="No space left"):
        cli.write_outputs(bit_keras.BiT(bit_keras.Variant((1, 1, 1, 1)), num_classes=2), args)
    assert target.read_bytes() == b"previous" and os.listdir(tmp_path) == ["m.keras"]


@pytest.mark.parametrize(
    "argv,advice",
    [
        (["finetune", "--dataset", "d", "--flip", "false"], "--flip takes no value: --flip turns it on, --no-flip off"),
        (
            ["distill", "--dataset", "d", "--teacher", "t.keras", "--consistent", "False"],
            "--consistent takes no value: --consistent turns it on, --no-consistent off",
        ),
        (["finetune", "--dataset", "d", "--overwrite", "yes"], "--overwrite takes no value: give it alone"),
    ],
)
def test_a_value_given_to_a_boolean_flag_names_the_no_form(argv, advice, capsys):
    from bit_keras import cli

    with pytest.raises(SystemExit) as exit:
        cli.main(argv)
    assert exit.value.code == 2
    assert advice in capsys.readouterr().err
