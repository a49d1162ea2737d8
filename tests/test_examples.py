"""The example scripts end to end, each in its own process, run from another directory, on tiny settings."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import requires_tensorflow
from PIL import Image
from test_cli import QUICK_LEARNER

pytestmark = requires_tensorflow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
REDUCED = ["--seeds", "1", "--shots", "1,full", "--upstream_steps", "3", "--finetune_steps", "2"]
ROW_KEYS = {"examples_per_class", "transfer_mean", "transfer_std", "scratch_mean", "scratch_std", "probe_mean", "probe_std"}


def run_script(name, args, cwd, code=None, timeout=900):
    """`python examples/<name>.py args` from `cwd` (not the repository root)."""
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, os.path.join(EXAMPLES, f"{name}.py"), *args]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "cuInit" not in result.stderr and "oneDNN" not in result.stderr, result.stderr[-2000:]
    return result.stdout


def test_transfer_demo_reduced_then_reuses_the_upstream_cache(tmp_path):
    out = tmp_path / "demo_out"
    first = run_script("transfer_demo", ["--out", str(out), *REDUCED], cwd=tmp_path)
    assert "BiTPretrainer on procedural glyphs" in first and "no cached model" in first
    rows = json.loads((out / "results.json").read_text())
    assert [row["examples_per_class"] for row in rows] == [1, "full"]
    for row in rows:
        assert set(row) == ROW_KEYS
        assert all(0.0 <= row[key] <= 1.0 for key in ROW_KEYS - {"examples_per_class"})
        # The printed table holds the same numbers as the file.
        shown = "  ".join(f"{row[f'{arm}_mean']:.3f} ± {row[f'{arm}_std']:.3f}" for arm in ("transfer", "scratch", "probe"))
        assert shown in first
    gains = ", ".join(f"{row['transfer_mean'] - row['scratch_mean']:+.3f} at k={row['examples_per_class']}" for row in rows)
    assert re.search(r"^Transfer (helped|did not help).*" + re.escape(gains), first, re.M)
    with Image.open(out / "few_shot.png") as figure:
        assert figure.format == "PNG" and figure.size == (600, 400)

    saved_model = out / "upstream" / "saved_model.pb"
    before = saved_model.stat().st_mtime_ns
    second = run_script("transfer_demo", ["--out", str(out), *REDUCED[:2], "--shots", "1", *REDUCED[4:]], cwd=tmp_path)
    assert "reusing the cached model" in second and "BiTPretrainer on" not in second
    assert saved_model.stat().st_mtime_ns == before


MOCK_TFDS = """
import runpy, sys
import tensorflow_datasets as tfds
sys.argv = [sys.argv[1]] + sys.argv[2:]
with tfds.testing.mock_data(num_examples=12):
    runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_tfds_script_on_mock_data_from_another_directory(tmp_path):
    script = os.path.join(EXAMPLES, "finetune_tfds.py")
    args = [script, *"--dataset cifar100 --variant R1-1-1-1x1 --weights none --batch_size 8 --steps 2".split()]
    args += ["--save", str(tmp_path / "m.keras")]
    out = run_script(None, args, cwd=tmp_path, code=MOCK_TFDS)
    assert "100 classes" in out
    top1 = float(re.search(r"\[eval\] test top-1 ([0-9.]+)", out).group(1))
    assert 0.0 <= top1 <= 1.0 and os.path.exists(tmp_path / "m.keras")


def test_folder_script_learns_and_skips_a_corrupt_file(tmp_path):
    # Dark and bright images: a model that trains at all tells them apart.
    rng = np.random.default_rng(0)
    for split, count in (("train", 10), ("test", 5)):
        for name, level in (("dark", 30), ("bright", 220)):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(rng.normal(level, 10, (12, 12, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / name / f"{i}.png")
    (tmp_path / "train" / "dark" / "broken.jpg").write_bytes(b"not an image")
    out = run_script(
        "finetune_folder",
        [
            "--train_dir",
            str(tmp_path / "train"),
            "--test_dir",
            str(tmp_path / "test"),
            *QUICK_LEARNER.split(),
        ],
        cwd=tmp_path,
    )
    assert "20 images in 2 classes: bright, dark" in out
    top1 = float(re.search(r"\[eval\] test top-1 ([0-9.]+)", out).group(1))
    assert top1 > 0.5, f"test top-1 {top1}: no better than chance on two trivially separable classes"


def test_segmentation_head_on_the_pyramid_learns_the_shapes(tmp_path):
    out = run_script("segmentation_head", ["--variant", "R1-1-1-1x1", "--weights", "none", "--steps", "30"], cwd=tmp_path)
    ious = re.search(r"IoU square ([0-9.]+), disc ([0-9.]+)", out)
    assert ious and min(float(iou) for iou in ious.groups()) > 0.3, out[-2000:]


@pytest.mark.parametrize("name", ["transfer_demo", "finetune_tfds", "finetune_folder", "segmentation_head"])
def test_every_example_takes_help_from_anywhere(name, tmp_path):
    out = run_script(name, ["--help"], cwd=tmp_path, timeout=120)
    if name == "segmentation_head":
        assert "--variant" in out and "--size" in out
    elif name != "transfer_demo":
        assert "--strategy" in out and "--tpu" in out
    else:
        assert "--force_upstream" in out
