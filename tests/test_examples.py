"""The example scripts end to end, each in its own process, on tiny settings."""

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import requires_tensorflow
from PIL import Image

pytestmark = requires_tensorflow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = ["--variant", "tiny", "--batch_size", "8", "--steps", "4", "--sizes", "40,32"]


def run(args, code=None):
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", *args]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_transfer_demo_runs_and_saves(tmp_path):
    out = run(["examples.transfer_demo", "--steps", "10", "--save", str(tmp_path / "digits.npz")])
    assert "scikit-learn digits: 1437 training and 360 test images" in out
    assert "BiT-HyperRule" in out and "[eval] test accuracy" in out
    with np.load(tmp_path / "digits.npz", allow_pickle=False) as saved:
        assert saved["resnet/head/conv2d/bias"].shape == (10,)


MOCK_TFDS = """
import sys
import tensorflow_datasets as tfds
from absl import app
from examples import finetune_tfds
with tfds.testing.mock_data(num_examples=16):
    app.run(finetune_tfds.main, argv=["finetune_tfds"] + sys.argv[1:])
"""


@pytest.mark.parametrize("dataset,classes", [("cifar100", 100), ("oxford_flowers102", 102)])
def test_tfds_script_on_mock_data(dataset, classes, tmp_path):
    out = run(["--dataset", dataset, *QUICK, "--save", str(tmp_path / "m.keras")], code=MOCK_TFDS)
    assert f"16 training and 16 test examples, {classes} classes" in out
    assert "[eval]" in out and os.path.exists(tmp_path / "m.keras")


def test_folder_script_with_a_corrupt_file(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("cats", "dogs"):
        (tmp_path / name).mkdir()
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "dogs" / "broken.jpg").write_bytes(b"not an image")
    out = run(["examples.finetune_folder", "--train_dir", str(tmp_path), *QUICK])
    assert "10 images in 2 classes: cats, dogs" in out
