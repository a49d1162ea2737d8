"""`bit_keras.suites` and `bit-keras reproduce`: the VTAB-1k task definitions, the few-shot draw, a suite end to end.

Expected values here are written from the benchmark's own definitions
(google-research/task_adaptation, google-research/big_transfer), not read
from the package: split positions from its percentages, labels from its bin
edges, the few-shot subset from a transcription of `sample_subset`.
"""

import json
import os
import signal
import subprocess
import sys
import time
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from conftest import requires_tensorflow
from reference import random_state

import bit_keras
from bit_keras import config, data, suites
from bit_keras.checkpoints import releases

pytestmark = requires_tensorflow

TINY = ["--variant", "R1-1-1-1x1", "--weights", "none", "--batch_size", "4", "--steps", "2", "--sizes", "20,16"]
MOCK_CLI = """
import sys
import tensorflow_datasets as tfds
from bit_keras.cli import main
with tfds.testing.mock_data(num_examples={n}):
    sys.exit(main())
"""

# ------------------------------------------------------------------ the benchmark's definitions, transcribed

# task -> (TFDS builder, version the benchmark asks for, group)
BENCHMARK = {
    "caltech101": ("caltech101", "3.*.*", "Natural"),
    "cifar100": ("cifar100", "3.*.*", "Natural"),
    "dtd": ("dtd", "3.*.*", "Natural"),
    "oxford_flowers102": ("oxford_flowers102", "2.*.*", "Natural"),
    "oxford_iiit_pet": ("oxford_iiit_pet", "3.*.*", "Natural"),
    "sun397": ("sun397/tfds", "4.*.*", "Natural"),
    "svhn": ("svhn_cropped", "3.*.*", "Natural"),
    "patch_camelyon": ("patch_camelyon", "2.*.*", "Specialized"),
    "eurosat": ("eurosat/rgb", "2.*.*", "Specialized"),
    "resisc45": ("resisc45", "3.*.*", "Specialized"),
    "diabetic_retinopathy": ("diabetic_retinopathy_detection/btgraham-300", "3.*.*", "Specialized"),
    "clevr-count": ("clevr", "3.*.*", "Structured"),
    "clevr-distance": ("clevr", "3.*.*", "Structured"),
    "dmlab": ("dmlab", "2.0.1", "Structured"),
    "dsprites-xpos": ("dsprites", "2.*.*", "Structured"),
    "dsprites-orientation": ("dsprites", "2.*.*", "Structured"),
    "kitti-distance": ("kitti", "3.1.0", "Structured"),
    "smallnorb-azimuth": ("smallnorb", "2.*.*", "Structured"),
    "smallnorb-elevation": ("smallnorb", "2.*.*", "Structured"),
}
# Split sizes of those TFDS versions.
TFDS_SIZES = {
    "caltech101": {"train": 3060, "test": 6084},
    "cifar100": {"train": 50000, "test": 10000},
    "dtd": {"train": 1880, "validation": 1880, "test": 1880},
    "oxford_flowers102": {"train": 1020, "validation": 1020, "test": 6149},
    "oxford_iiit_pet": {"train": 3680, "test": 3669},
    "sun397/tfds": {"train": 76128, "validation": 10875, "test": 21750},
    "svhn_cropped": {"train": 73257, "test": 26032},
    "patch_camelyon": {"train": 262144, "validation": 32768, "test": 32768},
    "eurosat/rgb": {"train": 27000},
    "resisc45": {"train": 31500},
    "diabetic_retinopathy_detection/btgraham-300": {"train": 35126, "validation": 10906, "test": 42670},
    "clevr": {"train": 70000, "validation": 15000, "test": 15000},
    "dmlab": {"train": 65550, "validation": 22628, "test": 22735},
    "dsprites": {"train": 737280},
    "kitti": {"train": 6347, "validation": 423, "test": 711},
    "smallnorb": {"train": 24300, "test": 24300},
}
# Where val200 starts ((split, first index)) and which examples the benchmark tests on ((split, start, stop)).
# Datasets without a validation split hold out a share of train: 90% (Caltech, CIFAR, SVHN, CLEVR), 80% (Pets);
# EuroSAT and RESISC45 cut train 60/20/20, dSprites 80/10/10; smallNORB validates on test[:50%], CLEVR tests on validation.
VAL_AND_TEST = {
    "caltech101": (("train", 2754), ("test", 0, 6084)),
    "cifar100": (("train", 45000), ("test", 0, 10000)),
    "dtd": (("validation", 0), ("test", 0, 1880)),
    "oxford_flowers102": (("validation", 0), ("test", 0, 6149)),
    "oxford_iiit_pet": (("train", 2944), ("test", 0, 3669)),
    "sun397": (("validation", 0), ("test", 0, 21750)),
    "svhn": (("train", 65931), ("test", 0, 26032)),
    "patch_camelyon": (("validation", 0), ("test", 0, 32768)),
    "eurosat": (("train", 16200), ("train", 21600, 27000)),
    "resisc45": (("train", 18900), ("train", 25200, 31500)),
    "diabetic_retinopathy": (("validation", 0), ("test", 0, 42670)),
    "clevr-count": (("train", 63000), ("validation", 0, 15000)),
    "clevr-distance": (("train", 63000), ("validation", 0, 15000)),
    "dmlab": (("validation", 0), ("test", 0, 22735)),
    "dsprites-xpos": (("train", 589824), ("train", 663552, 737280)),
    "dsprites-orientation": (("train", 589824), ("train", 663552, 737280)),
    "kitti-distance": (("validation", 0), ("test", 0, 711)),
    "smallnorb-azimuth": (("test", 0), ("test", 12150, 24300)),
    "smallnorb-elevation": (("test", 0), ("test", 12150, 24300)),
}
# The VTAB paper's test-set sizes.
TEST_SIZES = {
    "caltech101": 6084,
    "cifar100": 10000,
    "dtd": 1880,
    "oxford_flowers102": 6149,
    "oxford_iiit_pet": 3669,
    "sun397": 21750,
    "svhn": 26032,
    "patch_camelyon": 32768,
    "eurosat": 5400,
    "resisc45": 6300,
    "diabetic_retinopathy": 42670,
    "clevr-count": 15000,
    "clevr-distance": 15000,
    "dmlab": 22735,
    "dsprites-xpos": 73728,
    "dsprites-orientation": 73728,
    "kitti-distance": 711,
    "smallnorb-azimuth": 12150,
    "smallnorb-elevation": 12150,
}
CLASSES = {"clevr-count": 8, "clevr-distance": 6, "dsprites-xpos": 16, "dsprites-orientation": 16}
CLASSES.update({"kitti-distance": 4, "smallnorb-azimuth": 18, "smallnorb-elevation": 9})


def benchmark_bin(value, thresholds):
    """task_adaptation's labels of binned tasks: the largest i with thresholds[i] < value."""
    return max(i for i, t in enumerate(thresholds) if t < value)


def clevr_distance_label(pixel_coords):
    return benchmark_bin(min(pixel_coords[:, 2]), [0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0])


def kitti_distance_label(types, location):
    depths = [z for kind, z in zip(types, location[:, 2]) if kind in (0, 1, 2)] + [1000.0]  # Car, Van, Truck
    return benchmark_bin(min(depths), [-100.0, 8.0, 20.0, 999.0])


def official_sample_subset(labels, num_classes, examples_per_class, seed):
    """big_transfer's input_pipeline_tf2_or_jax.sample_subset, transcribed: the indices it keeps."""
    np.random.seed(seed)
    return sorted(
        int(idx)
        for c in range(num_classes)
        for idx in np.random.choice(np.where(labels == c)[0], examples_per_class, replace=False)
    )


# --------------------------------------------------------------------------------------------- definitions


def test_vtab1k_is_the_benchmarks_19_tasks_in_their_groups_with_the_released_names():
    suite = suites.get("vtab1k")
    assert [task.name for task in suite.tasks] == list(BENCHMARK)
    assert set(BENCHMARK) == set(releases.VTAB_TASKS)
    for task in suite.tasks:
        assert (task.builder, task.version, task.group) == BENCHMARK[task.name], task.name
        assert task.release == task.name
        assert task.num_classes == CLASSES.get(task.name), task.name
    groups = [task.group for task in suite.tasks]
    assert (groups.count("Natural"), groups.count("Specialized"), groups.count("Structured")) == (7, 4, 8)


def _examples_read(spec, sizes):
    """[(split, first, stop)] of a TFDS split spec, resolved by TFDS itself against the datasets' split sizes."""
    splits = {split: types.SimpleNamespace(num_examples=n) for split, n in sizes.items()}
    parts = tfds.core.ReadInstruction.from_spec(spec).to_absolute(splits)
    return [(p.splitname, p.from_ or 0, sizes[p.splitname] if p.to is None else p.to) for p in parts]


def test_vtab_splits_train_on_800_plus_200_and_test_on_the_benchmarks_test_set():
    for name in BENCHMARK:
        task = suites.get("vtab1k").task(name)
        sizes = TFDS_SIZES[task.builder]
        (val_split, val_start), (test_split, test_start, test_stop) = VAL_AND_TEST[name]
        train = _examples_read(task.train_split(), sizes)
        assert train == [("train", 0, 800), (val_split, val_start, val_start + 200)], name
        assert _examples_read(task.test, sizes) == [(test_split, test_start, test_stop)], name
        assert test_stop - test_start == TEST_SIZES[name], name
        for split, first, stop in train:  # never train on a test example
            assert split != test_split or stop <= test_start or first >= test_stop, name
        # A smaller training set for checks keeps the 4:1 proportion at the same places.
        assert _examples_read(task.train_split(10), sizes) == [("train", 0, 8), (val_split, val_start, val_start + 2)], name


def test_released_vtab_names_are_the_published_ones():
    names = {
        f"BiT-M-{a}-run{r}-{t}" for a in ("R50x1", "R101x1", "R50x3", "R101x3", "R152x4") for r in range(3) for t in BENCHMARK
    }
    assert len(names) == 285  # 5 architectures x 3 runs x 19 tasks
    for name in names:
        assert releases.find_release(name).url == f"{releases.BASE_URL}/vtab/{name}.npz"
    for name in ("BiT-M-R152x2-run0-dtd", "BiT-M-R50x1-run3-dtd", "BiT-S-R50x1-run0-dtd", "BiT-M-R50x1-run0-mnist"):
        assert releases.find_release(name) is None, name


def test_published_figures_are_the_official_ones():
    fewshot = suites.get("fewshot")
    r50 = {task.name: task.published["BiT-M-R50x1"] for task in fewshot.tasks}
    # The figures the issue quotes from the official README (medians; TF2 for CIFAR).
    assert [r50[f"cifar10-{k}"].value for k in ("1shot", "5shot", "full")] == [54.4, 83.3, 97.2]
    assert [r50[f"cifar100-{k}"].value for k in ("1shot", "5shot", "full")] == [37.1, 65.0, 86.5]
    assert [r50[f"imagenet2012-{k}"].value for k in ("1shot", "5shot", "full")] == [18.36, 50.64, 80.68]
    assert str(r50["cifar10-1shot"]) == "49.9 ← 54.4 → 60.2" and r50["cifar10-1shot"].source == "TF2"
    vtab = suites.get("vtab1k").group_published
    assert vtab["BiT-M-R152x4"]["All"].value == 73.51 and vtab["BiT-M-R101x3"]["All"].value == 72.65
    assert all(not task.published for task in suites.get("vtab1k").tasks)  # none sourced per task: none invented
    paper = {task.name: task.published["BiT-M-R152x4"].value for task in suites.get("paper").tasks}
    assert paper == {"cifar10": 98.91, "cifar100": 92.17, "oxford_iiit_pet": 94.46, "oxford_flowers102": 99.30}
    # The few-shot protocol of the README: batch 128, LR 0.001, at least five runs; official splits.
    cifar = fewshot.task("cifar10-5shot")
    assert (cifar.batch_size, cifar.base_lr, cifar.runs, cifar.train, cifar.test) == (128, 0.001, 5, "train[:98%]", "test")


# ------------------------------------------------------------------------------ labels under mock data


def _crafted(examples, signature, seen):
    def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False, **kwargs):
        seen.append(split)
        return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=signature)

    return as_dataset


def _load_both(task, crafted=None):
    """(labels, images) of the train and test splits as the suite reads them, and the splits TFDS was asked for."""
    seen = []
    mock = {"as_dataset_fn": _crafted(*crafted, seen)} if crafted else {"num_examples": 6}
    with tfds.testing.mock_data(**mock):
        train, _ = suites.load_split(task, task.train_split())
        test, _ = suites.load_split(task, task.test)
    read = [(np.asarray(image), int(label)) for image, label in train.dataset.as_numpy_iterator()]
    return train, test, read, seen


PLAIN = [name for name in BENCHMARK if name not in CLASSES]


def test_plain_vtab_tasks_read_the_label_feature_as_rgb():
    for name in PLAIN:
        task = suites.get("vtab1k").task(name)
        train, test, read, _ = _load_both(task)
        builder, version, _ = BENCHMARK[name]
        with tfds.testing.mock_data(num_examples=6):
            # This TFDS builds Pets 4.0.0 only: the suite reads that one, saying so.
            raw, info = tfds.load(f"{builder}:{version}" if name != "oxford_iiit_pet" else builder, split="train", with_info=True)
            expected = [int(example["label"]) for example in raw]
        assert [label for _, label in read] == expected, name
        assert train.num_classes == test.num_classes == info.features["label"].num_classes, name
        assert all(image.dtype == np.uint8 and image.shape[-1] == 3 for image, _ in read), name


def test_clevr_count_and_closest_distance_labels():
    rng = np.random.default_rng(0)
    closest = [0.5, 8.0, 8.01, 8.5, 8.51, 9.0, 9.01, 9.5, 9.51, 10.0, 10.01, 99.0]  # at and just past each edge
    examples = []
    for i, depth in enumerate(closest):
        n = 3 + i % 8  # 3 to 10 objects
        coords = rng.uniform(0, 300, (n, 3)).astype(np.float32)
        coords[:, 2] = depth + rng.uniform(0, 5, n)
        coords[rng.integers(n), 2] = depth
        examples.append(
            {"image": np.full((8, 8, 3), i, np.uint8), "objects": {"size": np.zeros(n, np.int64), "pixel_coords": coords}}
        )
    signature = {
        "image": tf.TensorSpec((None, None, 3), tf.uint8),
        "objects": {"size": tf.TensorSpec((None,), tf.int64), "pixel_coords": tf.TensorSpec((None, 3), tf.float32)},
    }
    for name in ("clevr-count", "clevr-distance"):
        task = suites.get("vtab1k").task(name)
        train, _, read, seen = _load_both(task, (examples, signature))
        if name == "clevr-count":
            expected = [len(e["objects"]["size"]) - 3 for e in examples]
        else:
            expected = [clevr_distance_label(e["objects"]["pixel_coords"]) for e in examples]
        assert [label for _, label in read] == expected, name
        assert set(expected) == set(range(CLASSES[name])) and train.num_classes == CLASSES[name]
        assert seen == ["train[:800]+train[63000:63200]", "validation"]


def test_kitti_closest_vehicle_distance_labels():
    # (object types, depths): 0-2 are Car, Van, Truck; 3 and up pedestrians, cyclists, trams, misc.
    scenes = [
        ([3, 4], [2.0, 3.0]),  # no vehicle: the fourth class
        ([0], [5.0]),
        ([1], [8.0]),  # the upper edge belongs to the nearer bin
        ([2], [8.5]),
        ([0, 3], [20.0, 1.0]),  # the pedestrian at 1 m does not count
        ([0, 1, 2], [25.0, 20.1, 40.0]),
        ([0], [500.0]),
        ([5, 6, 7], [1.0, 2.0, 3.0]),
        ([0], [-1.5]),
    ]
    examples = [
        {
            "image": np.zeros((6, 10, 3), np.uint8),
            "objects": {"type": np.array(kinds, np.int64), "location": np.array([[0.0, 1.0, z] for z in depths], np.float32)},
        }
        for kinds, depths in scenes
    ]
    signature = {
        "image": tf.TensorSpec((None, None, 3), tf.uint8),
        "objects": {"type": tf.TensorSpec((None,), tf.int64), "location": tf.TensorSpec((None, 3), tf.float32)},
    }
    task = suites.get("vtab1k").task("kitti-distance")
    train, _, read, seen = _load_both(task, (examples, signature))
    expected = [kitti_distance_label(e["objects"]["type"], e["objects"]["location"]) for e in examples]
    assert expected == [3, 0, 0, 1, 1, 2, 2, 3, 0]
    assert [label for _, label in read] == expected and train.num_classes == 4
    assert seen == ["train[:800]+validation[0:200]", "test"]


def test_dsprites_position_and_orientation_in_16_bins_as_rgb_0_255():
    examples = [
        {"image": np.eye(64, dtype=np.uint8)[..., None], "label_x_position": np.int64(i % 32), "label_orientation": np.int64(i)}
        for i in range(40)
    ]
    signature = {
        "image": tf.TensorSpec((64, 64, 1), tf.uint8),
        "label_x_position": tf.TensorSpec((), tf.int64),
        "label_orientation": tf.TensorSpec((), tf.int64),
    }
    for name, feature, values in (("dsprites-xpos", "label_x_position", 32), ("dsprites-orientation", "label_orientation", 40)):
        task = suites.get("vtab1k").task(name)
        train, _, read, seen = _load_both(task, (examples, signature))
        expected = [int(e[feature]) * 16 // values for e in examples]  # num_classes 16 of `values` positions
        assert [label for _, label in read] == expected and set(expected) == set(range(16)), name
        image = read[0][0]
        assert image.shape == (64, 64, 3) and image.max() == 255 and image.min() == 0  # pixels 0/1 made 0/255
        assert seen == ["train[:800]+train[589824:590024]", "train[663552:]"]
    assert not suites.get("vtab1k").task("dsprites-xpos").flip and not suites.get("vtab1k").task("dsprites-xpos").random_crop


@pytest.mark.parametrize("name", ["smallnorb-azimuth", "smallnorb-elevation"])
def test_smallnorb_labels_are_its_azimuth_and_elevation(name):
    task = suites.get("vtab1k").task(name)
    train, test, read, _ = _load_both(task)
    with tfds.testing.mock_data(num_examples=6):
        raw = list(tfds.load("smallnorb:2.*.*", split="train").as_numpy_iterator())
    feature = "label_azimuth" if name.endswith("azimuth") else "label_elevation"
    assert [label for _, label in read] == [int(example[feature]) for example in raw]
    assert train.num_classes == CLASSES[name]
    image, _ = read[0]
    assert image.shape == (96, 96, 3) and (image[..., 0] == image[..., 2]).all()
    assert task.test == "test[50%:]"


# ------------------------------------------------------------------------------------ runs of a suite


def _quiet_settings(out, tasks, **kw):
    return config.SuiteConfig(out=str(out), tasks=tasks, **kw)


def test_fewshot_runs_train_on_the_official_subsets_of_their_seeds(tmp_path, capsys):
    with tfds.testing.mock_data(num_examples=60):
        raw = list(tfds.load("cifar10", split="train[:98%]").as_numpy_iterator())
        suites.reproduce(
            "fewshot",
            bit_keras.Variant((1, 1, 1, 1)),
            weights=None,
            settings=_quiet_settings(tmp_path, ("cifar10-1shot",), runs=2),
            run={"seed": 3, "batch_size": 10},
            recipe={"steps": 1, "sizes": (20, 16)},
            verbose=0,
        )
    images = np.stack([example["image"] for example in raw])
    labels = np.array([example["label"] for example in raw])
    results = json.loads((tmp_path / "results.json").read_text())
    runs = next(task for task in results["tasks"] if task["name"] == "cifar10-1shot")["runs"]
    assert [run["seed"] for run in runs] == [3, 4]
    for run in runs:
        kept = official_sample_subset(labels, 10, 1, run["seed"])
        assert run["train_examples"] == 10
        assert run["train_digest"] == data.digest(data.from_arrays(images[kept], labels[kept], num_classes=10))
    assert runs[0]["train_digest"] != runs[1]["train_digest"]
    table = capsys.readouterr().out
    assert "published BiT-M-R50x1" in table and "49.9 ← 54.4 → 60.2 (TF2)" in table  # the reference's published row
    assert "imagenet2012-1shot" in table  # the suite's every row, measured or not


def test_the_table_prints_min_median_max_beside_the_published_figures():
    suite = suites.get("fewshot")
    records = {task.name: [] for task in suite.tasks}
    records["cifar10-1shot"] = [{"top1": value} for value in (52.0, 50.0, 61.0, 55.0, 53.5)]
    results = suites.report.results(suite, "BiT-M-R50x1", records, "BiT-M-R50x1", config.SuiteConfig())
    line = next(line for line in suites.report.table(suite, results).splitlines() if line.startswith("cifar10-1shot"))
    assert line.split()[1:] == ["5", "50.0", "←", "53.5", "→", "61.0", "49.9", "←", "54.4", "→", "60.2", "(TF2)"]
    # A variant with published figures of its own is shown beside those; R152x2 had no TF2 model: Jax's.
    results = suites.report.results(suite, "BiT-M-R152x2", records, "BiT-M-R152x2", config.SuiteConfig())
    text = suites.report.table(suite, results)
    assert "published BiT-M-R152x2" in text and "published BiT-M-R50x1" not in text
    assert "44.0 ← 56.7 → 65.0 (Jax)" in text
    vtab = suites.get("vtab1k")
    records = {task.name: [{"top1": 70.0 + i}] for i, task in enumerate(vtab.tasks)}
    results = suites.report.results(vtab, "BiT-M-R152x4", records, "BiT-M-R152x4", config.SuiteConfig())
    groups = {line.split(" (")[0]: line for line in suites.report.table(vtab, results).splitlines() if " (" in line}
    assert groups["Natural"].split()[3:5] == ["73.00", "80.77"]  # tasks 0-6: 70..76
    assert groups["Structured"].split()[3:5] == ["84.50", "61.08"]  # tasks 11-18: 81..88
    assert groups["all"].split()[3:5] == ["79.00", "73.51"]


def test_reproduce_two_vtab_tasks_then_resume_after_a_kill(tmp_path):
    """The command end to end under mock data; killed once the first task is written, a rerun skips it."""
    out = tmp_path / "out"
    args = ["reproduce", "vtab1k", *TINY, "--tasks", "dtd,eurosat", "--out", str(out)]
    command = [sys.executable, "-c", MOCK_CLI.format(n=8), *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # each line as it is printed
    first = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    printed = []
    deadline = time.time() + 300
    try:
        for line in first.stdout:
            printed.append(line)
            if line.startswith("dtd ") or time.time() > deadline:  # the task's row: its result is on disk
                break
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.wait(timeout=60)
    assert (out / "runs" / "dtd" / "run0.json").exists(), "".join(printed)[-3000:]
    assert not (out / "runs" / "eurosat" / "run0.json").exists()
    dtd = json.loads((out / "runs" / "dtd" / "run0.json").read_text())

    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    stdout = result.stdout
    assert "dtd, run 1 of 1: done before" in stdout and stdout.count("BiT-HyperRule") == 1  # only eurosat trained
    assert json.loads((out / "runs" / "dtd" / "run0.json").read_text()) == dtd

    table = stdout[stdout.rindex("vtab1k: VTAB-1k") :]  # the final table
    header = next(line for line in table.splitlines() if line.startswith("task"))
    assert header.split() == ["task", "group", "runs", "measured", "published", "BiT-M-R152x4", "published", "BiT-M-R101x3"]
    rows = {line.split()[0]: line.split() for line in table.splitlines() if line.split()}
    assert rows["dtd"][:3] == ["dtd", "Natural", "1"] and float(rows["dtd"][3]) == pytest.approx(dtd["top1"], abs=0.01)
    assert rows["eurosat"][:3] == ["eurosat", "Specialized", "1"] and rows["eurosat"][4:] == ["—", "—"]
    assert rows["caltech101"][2:] == ["0", "—", "—", "—"]
    assert rows["Natural"][-2:] == ["80.77", "80.29"] and "(1 of 7 tasks)" in " ".join(rows["Natural"])
    assert rows["all"][-2:] == ["73.51", "72.65"] and "(2 of 19 tasks)" in " ".join(rows["all"])

    results = json.loads((out / "results.json").read_text())
    done = {task["name"]: task for task in results["tasks"] if task["runs"]}
    assert set(done) == {"dtd", "eurosat"}
    assert results["groups"]["All"]["tasks"] == 2
    assert results["groups"]["All"]["measured"] == pytest.approx(
        (done["dtd"]["summary"]["mean"] + done["eurosat"]["summary"]["mean"]) / 2
    )
    assert results["groups"]["Specialized"]["published"]["BiT-M-R152x4"]["value"] == 85.67
    assert done["eurosat"]["runs"][0]["steps"] == 2 and done["eurosat"]["runs"][0]["resolution"] == [20, 16]
    figure = (out / "vtab1k.png").read_bytes()
    assert figure.startswith(b"\x89PNG") and len(figure) > 10_000
    assert not (out / "backups").exists()  # each run's backups go once its result is written


class _Interrupt(Exception):
    pass


class _StopAfterFirstBackup(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):  # after the engine's backup of this epoch
        raise _Interrupt()


def test_a_half_finished_run_resumes_from_its_backup(tmp_path, capsys):
    settings = _quiet_settings(tmp_path, ("dtd",))
    common = {
        "weights": None,
        "settings": settings,
        "run": {"batch_size": 4, "backup_every": 2, "seed": 0},
        "recipe": {"steps": 4, "sizes": (20, 16)},
        "verbose": 0,
    }
    variant = bit_keras.Variant((1, 1, 1, 1))
    with tfds.testing.mock_data(num_examples=8):
        with pytest.raises(_Interrupt):
            suites.reproduce("vtab1k", variant, callbacks=[_StopAfterFirstBackup()], **common)
        assert not (tmp_path / "runs" / "dtd" / "run0.json").exists()
        assert os.listdir(tmp_path / "backups" / "dtd" / "run0" / "backup") == ["step-000000002"]
        capsys.readouterr()
        suites.reproduce("vtab1k", variant, **common)
    assert "Resuming from" in capsys.readouterr().out
    record = json.loads((tmp_path / "runs" / "dtd" / "run0.json").read_text())
    assert record["steps"] == 4 and 0 <= record["top1"] <= 100


def test_damaged_run_records_are_named_then_run_again_or_left_out(tmp_path, capsys):
    runs = tmp_path / "runs"
    for task in ("dtd", "eurosat"):
        (runs / task).mkdir(parents=True)
    (runs / "dtd" / "run0.json").write_text("{}")
    (runs / "dtd" / "run1.json").write_text("[1, 2]")
    (runs / "eurosat" / "run0.json").write_text('{"top1": 5')  # half-written
    (runs / "eurosat" / "run1.json").write_text('{"settings": {}}')
    with tfds.testing.mock_data(num_examples=8):
        results = suites.reproduce(
            "vtab1k",
            bit_keras.Variant((1, 1, 1, 1)),
            weights=None,
            settings=_quiet_settings(tmp_path, ("dtd",), runs=2),
            run={"batch_size": 4, "seed": 0},
            recipe={"steps": 1, "sizes": (20, 16)},
            verbose=0,
        )
    out = capsys.readouterr().out
    assert f"{runs / 'dtd' / 'run0.json'} is damaged (no 'settings' object)" in out
    assert f"{runs / 'dtd' / 'run1.json'} is damaged (no 'settings' object)" in out
    assert out.count("it is run again") == 2 and out.count("BiT-HyperRule") == 2
    assert f"{runs / 'eurosat' / 'run0.json'} is damaged (not JSON" in out
    assert f"{runs / 'eurosat' / 'run1.json'} is damaged ('top1' is None, not a number)" in out
    assert out.count("left out of the table; --tasks eurosat runs it again") == 2
    for k in (0, 1):
        assert 0 <= json.loads((runs / "dtd" / f"run{k}.json").read_text())["top1"] <= 100
    assert [task["name"] for task in results["tasks"] if task["runs"]] == ["dtd"]


def test_a_batch_size_of_0_is_refused_not_replaced(tmp_path):
    settings = _quiet_settings(tmp_path, ("dtd",))
    recipe = {"steps": 1, "sizes": (20, 16)}
    with tfds.testing.mock_data(num_examples=8), pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        suites.reproduce(
            "vtab1k",
            bit_keras.Variant((1, 1, 1, 1)),
            weights=None,
            settings=settings,
            run={"batch_size": 0},
            recipe=recipe,
            verbose=0,
        )


def test_evaluate_released_reads_the_release_from_the_cache(tmp_path):
    with tfds.testing.mock_data(num_examples=8):
        test_labels = [int(example["label"]) for example in tfds.load("dtd", split="test")]
    favourite = max(set(test_labels), key=test_labels.count)
    state = random_state((1, 1, 1, 1), 1, 47, seed=3)  # DTD's 47 classes
    state["resnet/head/conv2d/kernel"][:] = 0
    state["resnet/head/conv2d/bias"][:] = 0
    state["resnet/head/conv2d/bias"][favourite] = 10.0  # the released "model" always answers `favourite`
    cache = tmp_path / "cache"
    cache.mkdir()
    np.savez(cache / "BiT-M-R50x1-run0-dtd.npz", **state)
    out = tmp_path / "out"
    args = ["reproduce", "vtab1k", "--variant", "BiT-M-R50x1", "--evaluate_released", "--tasks", "dtd", "--out", str(out)]
    env = {**os.environ, "BIT_KERAS_CACHE": str(cache)}
    result = subprocess.run(
        [sys.executable, "-c", MOCK_CLI.format(n=8), *args], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "BiT-HyperRule" not in result.stdout  # evaluated, not trained
    run = json.loads((out / "runs" / "dtd" / "run0.json").read_text())
    assert run["top1"] == pytest.approx(100 * test_labels.count(favourite) / len(test_labels))
    assert run["checkpoint"].startswith("BiT-M-R50x1-run0-dtd") and str(cache) in run["checkpoint"]
    assert run["resolution"] == [160, 128]  # the HyperRule's for DTD's mock images (under 96x96 px)
    assert json.loads((out / "results.json").read_text())["mode"] == "released per-task models"


def test_evaluate_released_refuses_what_was_not_released(tmp_path):
    settings = config.SuiteConfig(out=str(tmp_path), evaluate_released=True)
    with pytest.raises(ValueError, match="BiT-M-R152x2-run0-caltech101 was not released"):
        suites.reproduce("vtab1k", "BiT-M-R152x2", settings=settings)
    with pytest.raises(ValueError, match="applies to vtab1k"):
        suites.reproduce("paper", "BiT-M-R50x1", settings=settings)
    with pytest.raises(ValueError, match="has no task 'mnist'"):
        suites.reproduce("vtab1k", "R1-1-1-1x1", weights=None, settings=config.SuiteConfig(out=str(tmp_path), tasks="dtd,mnist"))


def test_reproduce_help_lists_the_config_flags(capsys):
    from bit_keras import cli

    with pytest.raises(SystemExit):
        cli.main(["reproduce", "--help"])
    text = capsys.readouterr().out
    for flag in ("--runs", "--tasks", "--out", "--train_examples", "--evaluate_released", "--no-pin_versions", "--keep_backups"):
        assert flag in text, flag
    for flag in (
        "--strategy",
        "--tpu",
        "--batch_split",
        "--mixed_precision",
        "--checkpoint_dir",
        "--seed",
        "--base_lr",
        "--steps",
    ):
        assert flag in text, flag
    assert "--flip" not in text and "--random_crop" not in text  # each task's own: they keep the label
    assert "{fewshot,paper,vtab1k}" in text


def test_settings_of_the_wrong_kind_are_refused_naming_the_suite_config():
    with pytest.raises(TypeError, match="settings must be a config.SuiteConfig or a dict of its fields, got a RunConfig"):
        suites.reproduce("vtab1k", "R1-1-1-1x1", weights=None, settings=config.RunConfig())
