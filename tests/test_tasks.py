"""Dataset splits by name or folder (never selecting on a test split), and the official few-shot draw."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import requires_tensorflow
from PIL import Image

from bit_keras import data, tasks

pytestmark = requires_tensorflow

# big_transfer's input_pipeline_tf2_or_jax.DATASET_SPLITS, transcribed: the official train and test splits.
OFFICIAL = {
    "cifar10": {"train": "train[:98%]", "test": "test"},
    "cifar100": {"train": "train[:98%]", "test": "test"},
    "imagenet2012": {"train": "train[:99%]", "test": "validation"},
}


def official_few_shot(labels, num_classes, examples_per_class, seed):
    """big_transfer's sample_subset, transcribed: the indices of the examples it keeps."""
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        indices = [
            idx
            for c in range(num_classes)
            for idx in np.random.choice(np.where(labels == c)[0], examples_per_class, replace=False)
        ]
    finally:
        np.random.set_state(state)
    return sorted(indices)


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_datasets_train_and_report_on_the_official_splits_and_validate_on_the_rest(name):
    with tfds.testing.mock_data(num_examples=4):
        task = tasks.load(name)
    train, validation, test = task.splits
    assert (train, test) == (OFFICIAL[name]["train"], OFFICIAL[name]["test"])
    # Validation is what the official training split leaves of `train`, never the test split.
    assert validation == "train[" + train[len("train[:") : -1] + ":]"


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_few_shot_draws_the_official_subset(seed):
    labels = np.random.default_rng(5).integers(0, 7, 300)
    index_images = np.zeros((300, 2, 2, 3), np.uint8)
    index_images[..., 0] = (np.arange(300) % 256)[:, None, None]
    index_images[..., 1] = (np.arange(300) // 256)[:, None, None]
    subset = data.few_shot(data.from_arrays(index_images, labels), 3, seed=seed)
    kept = sorted(int(image[0, 0, 0]) + 256 * int(image[0, 0, 1]) for image, _ in subset.dataset.as_numpy_iterator())
    assert kept == official_few_shot(labels, 7, 3, seed)


def _write_class_folders(root, classes, per_class, level=0):
    """Images whose pixel value names them: level + 10 x class + i."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((8, 8, 3), level + 10 * c + i, np.uint8)).save(root / name / f"{i}.png")


def test_a_folder_without_validation_holds_out_part_of_train_never_the_test_split(tmp_path):
    _write_class_folders(tmp_path / "train", ("a", "b"), 10, level=0)
    _write_class_folders(tmp_path / "test", ("a", "b"), 3, level=100)
    task = tasks.load(str(tmp_path))
    assert task.splits == ("train 90%", "train 10% hold-out", "test")
    assert (task.train.num_examples, task.validation.num_examples, task.test.num_examples) == (18, 2, 6)
    levels = {
        split: {int(image[0, 0, 0]) for image, _ in source.dataset.as_numpy_iterator()}
        for split, source in (("validation", task.validation), ("train", task.train), ("test", task.test))
    }
    assert max(levels["validation"]) < 100 and min(levels["test"]) >= 100  # held out of train/, not test/
    assert not levels["validation"] & levels["train"] and levels["validation"] | levels["train"] == set(range(20))
    # The hold-out and the rest stay readable in any order: a training epoch is a permutation of the rest.
    epoch = data.train_pipeline(task.train, resize=8, crop=8, batch_size=18, seed=0, flip=False)
    images, _ = next(iter(epoch))
    seen = sorted(int(round(v)) for v in np.asarray(images)[:, 0, 0, 0] * 127.5 + 127.5)
    assert seen == sorted(int(image[0, 0, 0]) for image, _ in task.train.dataset.as_numpy_iterator())
