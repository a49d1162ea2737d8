"""Downstream and upstream tasks by name: the train / validation / test splits of a dataset.

`load("cifar10")` gives the splits the official BiT release uses: CIFAR-10 and
CIFAR-100 train on `train[:98%]` and validate on `train[98%:]`, ILSVRC-2012 on
`train[:99%]` and `train[99%:]`; each reports on its test split (`test`, and
ILSVRC-2012's `validation`, whose labels are public where the test set's are
not). The other named datasets are this package's choice, not the official
release's (see `OUR_SPLITS`). Any other TFDS image-classification dataset
takes `train`, `validation` and `test` as TFDS has them; a missing validation
split is held out of `train` (its last 10%), and a missing test split is
replaced by the validation split. A folder path instead of a name reads
images with `data.from_folder`: from its `train/`, `validation/` (or `val/`)
and `test/` sub-folders when it has them (a missing `validation/` is held out
of `train/`), otherwise from the folder itself with a 10% hold-out for
validation and testing.

The validation split picks `best.keras` and is evaluated during training; the
test split is only ever used for the final report, never to choose a model.

Example:

>>> import tensorflow_datasets as tfds
>>> with tfds.testing.mock_data(num_examples=10):
...     task = load("cifar10")
>>> task.splits
('train[:98%]', 'train[98%:]', 'test')
>>> task.train.num_classes
10
"""

import dataclasses
import os

from bit_keras import data

# (train, validation, test) of the official release (big_transfer's bit_common.py).
OFFICIAL_SPLITS = {
    "cifar10": ("train[:98%]", "train[98%:]", "test"),
    "cifar100": ("train[:98%]", "train[98%:]", "test"),
    "imagenet2012": ("train[:99%]", "train[99%:]", "validation"),
}
# Our choice for the other datasets of the paper's tables, not the official release's:
# Pets has no validation split in TFDS, so 10% of train is held out (as for any such
# dataset); Flowers uses the three splits TFDS declares.
OUR_SPLITS = {
    "oxford_iiit_pet": ("train[:90%]", "train[90%:]", "test"),
    "oxford_flowers102": ("train", "validation", "test"),
}
HOLDOUT_PERCENT = 10
_VALIDATION_FOLDERS = ("validation", "val")


@dataclasses.dataclass
class Task:
    """A dataset's three `data.Source`s and where each came from."""

    name: str
    train: data.Source
    validation: data.Source
    test: data.Source
    splits: tuple


def load(dataset, *, data_dir=None, examples_per_class=None, seed=0):
    """The `Task` of `dataset`: a TFDS name, or a folder of images (one sub-folder per class).

    Args:
        dataset: e.g. "cifar10", "oxford_flowers102", "mnist", or a path.
        data_dir: the TFDS data folder (TFDS's default when None).
        examples_per_class: few-shot: keep k training examples per class.
        seed: draws the few-shot subset.
    """
    if os.path.isdir(dataset):
        task = _from_folder(dataset)
    elif os.sep in dataset or dataset.startswith("."):
        raise ValueError(f"{dataset} is not a folder. Pass an existing folder of images, or a TFDS dataset name.")
    else:
        task = _from_tfds(dataset, data_dir)
    if examples_per_class is not None:
        task.train = data.few_shot(task.train, examples_per_class, seed=seed)
    return task


def _from_tfds(name, data_dir):
    splits = OFFICIAL_SPLITS.get(name) or OUR_SPLITS.get(name) or _declared_splits(name, data_dir)
    sources = [data.from_tfds(name, split, data_dir=data_dir) for split in splits]
    return Task(name, *sources, splits=splits)


def _declared_splits(name, data_dir):
    """train / validation / test from the splits TFDS declares, holding out what is missing."""
    import tensorflow_datasets as tfds

    try:
        declared = set(tfds.builder(name, data_dir=data_dir).info.splits.keys())
    except Exception as error:  # TFDS raises its own DatasetNotFoundError and kin
        raise ValueError(f"{name!r} is neither a folder nor a TFDS dataset ({error}). Pass a folder or a TFDS name.") from None
    # Empty under tfds.testing.mock_data and for datasets never prepared: assume train and test.
    declared = declared or {"train", "test"}
    if "train" not in declared:
        raise ValueError(f"TFDS dataset {name!r} has no 'train' split (it has {sorted(declared)}); it cannot be fine-tuned on.")
    if "validation" in declared:
        train, validation = "train", "validation"
    else:
        train, validation = f"train[:{100 - HOLDOUT_PERCENT}%]", f"train[{100 - HOLDOUT_PERCENT}%:]"
    return train, validation, "test" if "test" in declared else validation


def _from_folder(path):
    subfolders = {entry.name for entry in os.scandir(path) if entry.is_dir() and not entry.name.startswith(".")}
    split_names = subfolders & {"train", "test", *_VALIDATION_FOLDERS}
    if split_names and not {"train", "test"} <= subfolders:
        raise ValueError(
            f"{path} has split folders {sorted(split_names)} but not both train/ and test/: as a folder of classes it "
            f"would train on classes named {sorted(subfolders)}. Add the missing "
            f"{' and '.join(name + '/' for name in ('train', 'test') if name not in subfolders)} (one sub-folder per class "
            f"in each), or point --dataset at a folder of class folders."
        )
    if "train" in subfolders and "test" in subfolders:
        train_folder = os.path.join(path, "train")
        test = _classes(os.path.join(path, "test"), like=train_folder)
        validation = next((name for name in _VALIDATION_FOLDERS if name in subfolders), None)
        if validation is not None:
            splits = ("train", validation, "test")
            validation_source = _classes(os.path.join(path, validation), like=train_folder)
            return Task(path, _classes(train_folder), validation_source, test, splits)
        train, holdout = _hold_out(_classes(train_folder), train_folder)
        splits = (f"train {100 - HOLDOUT_PERCENT}%", f"train {HOLDOUT_PERCENT}% hold-out", "test")
        return Task(path, train, holdout, test, splits=splits)
    train, holdout = _hold_out(_classes(path), path)  # a fixed shuffled order: the hold-out mixes the classes
    splits = (f"{100 - HOLDOUT_PERCENT}%", f"{HOLDOUT_PERCENT}% hold-out", f"{HOLDOUT_PERCENT}% hold-out")
    return Task(path, train, holdout, holdout, splits=splits)


def _classes(folder, like=None):
    """`data.from_folder(folder)`, refused when it holds one class, or other classes than the folder `like`."""
    source = data.from_folder(folder)
    if like is not None:
        expected = sorted(entry.name for entry in os.scandir(like) if entry.is_dir() and not entry.name.startswith("."))
        if source.class_names != expected:
            raise ValueError(
                f"{folder} has the class folders {source.class_names}, {like} has {expected}: classes are matched by "
                f"name, so both must hold the same class folders."
            )
    elif source.num_classes < 2:
        raise ValueError(
            f"{folder} holds one class folder ({source.class_names[0]}): a classifier needs at least two. "
            f"Put the images of each class in a sub-folder of its own."
        )
    return source


def _hold_out(source, path):
    """(the rest, the first HOLDOUT_PERCENT % of `source`), each still readable in any order."""
    held = max(1, source.num_examples * HOLDOUT_PERCENT // 100)
    if source.num_examples - held < 1:
        raise ValueError(f"{path} holds {source.num_examples} image(s); at least 2 are needed to hold one out.")

    def rest_by_index(indices):
        return source.by_index(indices.map(lambda i: i + held))

    rest = data.Source(
        source.dataset.skip(held), source.num_examples - held, source.num_classes, source.class_names, rest_by_index
    )
    holdout = data.Source(source.dataset.take(held), held, source.num_classes, source.class_names, source.by_index)
    return rest, holdout
