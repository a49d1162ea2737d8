"""The suites as data: each task's dataset, splits, label and augmentation, and the published figures.

Facts come from three places, named beside each table:

- VTAB-1k: the benchmark's task definitions (google-research/task_adaptation,
  `task_adaptation/data/*.py` and `scripts/run_all_tasks.sh`): TFDS builders
  and versions, the `train800val200` training split (the 800 first examples
  of the training split plus 200 of the validation split, as the benchmark's
  final protocol), the test split, and the label of the derived tasks (CLEVR
  count and closest-object distance, dSprites position and orientation in 16
  bins, KITTI closest-vehicle distance, smallNORB azimuth and elevation).
- few-shot: the official README of google-research/big_transfer, "Expected
  results": min <- median -> max of at least five runs for CIFAR-10 and
  CIFAR-100 at 1, 5 examples per class and on full data (trained with
  `--batch 128 --base_lr 0.001`), and single ILSVRC-2012 runs; the training
  splits are the official code's (`bit_keras.tasks.OFFICIAL_SPLITS`).
- paper: the BiT paper (arXiv:1912.11370), Table 1, for BiT-M-R152x4 and
  BiT-L-R152x4 on full data; the official README's full-data CIFAR rows for
  the smaller released models.

A figure nobody published for a variant is absent (None), never guessed: no
per-task VTAB-1k figure of BiT is given here, because neither the official
README nor the parts of the paper at hand list one per task; the README gives
the group means of its re-runs, which the tables print.
"""

import dataclasses

from bit_keras import optional, tasks
from bit_keras.checkpoints import releases

tf = optional.tensorflow("bit_keras.suites (tf.data label functions)")

NATURAL, SPECIALIZED, STRUCTURED = "Natural", "Specialized", "Structured"
GROUPS = (NATURAL, SPECIALIZED, STRUCTURED)
VTAB_TRAIN_EXAMPLES = 1000  # train800 + val200
VTAB_TRAIN_SHARE = (4, 5)  # 800 of the 1000 from the training split, 200 from the validation split


@dataclasses.dataclass(frozen=True)
class Figure:
    """A published top-1 (%): the headline (a single run, or the median of several) and, where given, min and max."""

    value: float
    low: float = None
    high: float = None
    source: str = ""
    decimals: int = 2  # as published

    @classmethod
    def of(cls, value, low=None, high=None, source=""):
        """A figure from its published text, e.g. `Figure.of("54.4", "49.9", "60.2")`: the decimals are kept."""
        texts = [text for text in (value, low, high) if text is not None]
        decimals = max(len(text.partition(".")[2]) for text in texts)
        return cls(float(value), None if low is None else float(low), None if high is None else float(high), source, decimals)

    def __str__(self):
        value = f"{self.value:.{self.decimals}f}"
        if self.low is None:
            return value
        return f"{self.low:.{self.decimals}f} ← {value} → {self.high:.{self.decimals}f}"


@dataclasses.dataclass(frozen=True)
class Task:
    """One row of a suite: what to train on, what to report on, how the label is read.

    `train` is a TFDS split; VTAB tasks add `validation` = (split, offset):
    their training set is `train[:800]` plus 200 examples of that split from
    the offset. `label` maps a TFDS example (a dict of tensors) to the class;
    `image` maps it to the image (None: its "image" feature, grey made RGB).
    """

    name: str
    builder: str
    train: str
    test: str
    num_classes: int = None  # None: the "label" feature's
    version: str = None  # the TFDS version the benchmark names
    group: str = None
    validation: tuple = None
    label: object = None
    image: object = None
    examples_per_class: int = None
    flip: bool = True
    random_crop: bool = True
    batch_size: int = None  # None: the HyperRule's 512
    base_lr: float = None  # None: the HyperRule's 0.003 at batch 512
    runs: int = 1
    published: dict = dataclasses.field(default_factory=dict)  # variant name -> Figure
    release: str = None  # VTAB: the task's name in the released checkpoints
    feature_classes: tuple = ()  # (feature, classes) the label function assumes of the TFDS dataset: checked on load
    needs_manual_data: bool = False  # run by default only when TFDS has it prepared

    def train_split(self, train_examples=None):
        """The TFDS split to train on; `train_examples` shrinks a VTAB training set (4:1 as 800:200)."""
        if self.validation is None:
            return self.train
        total = VTAB_TRAIN_EXAMPLES if train_examples is None else train_examples
        first = total * VTAB_TRAIN_SHARE[0] // VTAB_TRAIN_SHARE[1]
        split, offset = self.validation
        return f"{self.train}[:{first}]+{split}[{offset}:{offset + total - first}]"


@dataclasses.dataclass(frozen=True)
class Suite:
    """A table to reproduce: its tasks, the published group means, where each figure comes from."""

    name: str
    title: str
    tasks: tuple
    references: tuple  # variants whose published figures the table shows when the run's variant has none
    sources: dict  # variant -> where its figures come from
    group_published: dict = dataclasses.field(default_factory=dict)  # variant -> {group or "All": Figure}
    summary: str = "median"  # the per-task figure: "median" of the runs (official README) or "mean" (VTAB)

    def task(self, name):
        for task in self.tasks:
            if task.name == name:
                return task
        raise ValueError(f"{self.name} has no task {name!r}; its tasks are {', '.join(t.name for t in self.tasks)}.")


# ---------------------------------------------------------------------------------------- VTAB-1k labels


def _index_of_bin(value, edges):
    """The index of the last edge below `value`: edges (e0 < e1 < ...) open on the left, closed on the right."""
    below = tf.cast(tf.constant(edges, tf.float32) < tf.cast(value, tf.float32), tf.int64)
    return tf.reduce_sum(below) - 1


def _grey_to_rgb(image):
    return tf.image.grayscale_to_rgb(image) if image.shape[-1] == 1 else image


# CLEVR: the number of objects (3 to 10) less 3; the depth of the closest object (the smallest third
# pixel coordinate) in the bins (0, 8], (8, 8.5], (8.5, 9], (9, 9.5], (9.5, 10], (10, 100].
CLEVR_DISTANCE_EDGES = (0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0)
# KITTI: the depth (location z, metres) of the closest Car, Van or Truck (types 0, 1, 2) in the bins
# (-100, 8], (8, 20], (20, 999], and a fourth class for images without any (a depth of 1000 stands in).
KITTI_VEHICLE_TYPES = 3
KITTI_DISTANCE_EDGES = (-100.0, 8.0, 20.0, 999.0)
KITTI_NO_VEHICLE = 1000.0
# dSprites: the 32 x positions and 40 orientations merged into 16 classes each (floor(value / (n / 16))).
DSPRITES_VALUES = {"label_x_position": 32, "label_orientation": 40}
DSPRITES_CLASSES = 16


def clevr_count(example):
    return tf.cast(tf.size(example["objects"]["size"]), tf.int64) - 3


def clevr_distance(example):
    return _index_of_bin(tf.reduce_min(example["objects"]["pixel_coords"][:, 2]), CLEVR_DISTANCE_EDGES)


def kitti_distance(example):
    objects = example["objects"]
    depth = objects["location"][:, 2]
    vehicles = tf.boolean_mask(depth, objects["type"] < KITTI_VEHICLE_TYPES)
    closest = tf.reduce_min(tf.concat([vehicles, [KITTI_NO_VEHICLE]], axis=0))
    return _index_of_bin(closest, KITTI_DISTANCE_EDGES)


def _dsprites_label(feature):
    width = DSPRITES_VALUES[feature] / DSPRITES_CLASSES

    def label(example):
        return tf.cast(tf.math.floor(tf.cast(example[feature], tf.float32) / width), tf.int64)

    label.__name__ = f"dsprites_{feature}"
    return label


def dsprites_image(example):
    return tf.image.grayscale_to_rgb(example["image"] * 255)  # the images hold 0 and 1


def _feature(name):
    def label(example):
        return tf.cast(example[name], tf.int64)

    label.__name__ = name
    return label


def grey_image(example):
    return _grey_to_rgb(example["image"])


def _share(count, percent):
    """The benchmark's `percent * count // 100`: where its validation (or test) slice of a split begins."""
    return percent * count // 100


def _vtab(
    release, group, builder, version, *, validation=("validation", 0), test="test", classes=None, label=None, image=None, **kw
):
    assert release in releases.VTAB_TASKS, release
    return Task(
        release,
        builder,
        "train",
        test,
        num_classes=classes,
        version=version,
        group=group,
        validation=validation,
        label=label,
        image=image,
        release=release,
        **kw,
    )


# Split sizes of the TFDS versions the benchmark reads, for the slices it cuts out of a split by count.
CALTECH_TRAIN, CIFAR_TRAIN, PETS_TRAIN, SVHN_TRAIN = 3060, 50_000, 3680, 73_257
EUROSAT_TRAIN, RESISC_TRAIN, CLEVR_TRAIN, DSPRITES_TRAIN = 27_000, 31_500, 70_000, 737_280
SPLIT_SIZES = {  # split -> examples, for the checks in `runner` (TFDS' own metadata, where it has it, must agree)
    "caltech101": {"train": CALTECH_TRAIN},
    "cifar100": {"train": CIFAR_TRAIN},
    "oxford_iiit_pet": {"train": PETS_TRAIN},
    "svhn_cropped": {"train": SVHN_TRAIN},
    "eurosat/rgb": {"train": EUROSAT_TRAIN},
    "resisc45": {"train": RESISC_TRAIN},
    "clevr": {"train": CLEVR_TRAIN},
    "dsprites": {"train": DSPRITES_TRAIN},
}

VTAB1K = (
    _vtab("caltech101", NATURAL, "caltech101", "3.*.*", validation=("train", _share(CALTECH_TRAIN, 90))),
    _vtab("cifar100", NATURAL, "cifar100", "3.*.*", validation=("train", _share(CIFAR_TRAIN, 90))),
    _vtab("dtd", NATURAL, "dtd", "3.*.*"),
    _vtab("oxford_flowers102", NATURAL, "oxford_flowers102", "2.*.*"),
    _vtab("oxford_iiit_pet", NATURAL, "oxford_iiit_pet", "3.*.*", validation=("train", _share(PETS_TRAIN, 80))),
    _vtab("sun397", NATURAL, "sun397/tfds", "4.*.*"),
    _vtab("svhn", NATURAL, "svhn_cropped", "3.*.*", validation=("train", _share(SVHN_TRAIN, 90))),
    _vtab("patch_camelyon", SPECIALIZED, "patch_camelyon", "2.*.*"),
    _vtab(
        "eurosat",
        SPECIALIZED,
        "eurosat/rgb",
        "2.*.*",
        validation=("train", _share(EUROSAT_TRAIN, 60)),
        test=f"train[{_share(EUROSAT_TRAIN, 60) + _share(EUROSAT_TRAIN, 20)}:]",
    ),
    _vtab(
        "resisc45",
        SPECIALIZED,
        "resisc45",
        "3.*.*",
        validation=("train", _share(RESISC_TRAIN, 60)),
        test=f"train[{_share(RESISC_TRAIN, 60) + _share(RESISC_TRAIN, 20)}:]",
    ),
    _vtab("diabetic_retinopathy", SPECIALIZED, "diabetic_retinopathy_detection/btgraham-300", "3.*.*"),
    _vtab(
        "clevr-count",
        STRUCTURED,
        "clevr",
        "3.*.*",
        validation=("train", _share(CLEVR_TRAIN, 90)),
        test="validation",  # CLEVR's test split has no scenes: the benchmark tests on its validation split
        classes=8,
        label=clevr_count,
    ),
    _vtab(
        "clevr-distance",
        STRUCTURED,
        "clevr",
        "3.*.*",
        validation=("train", _share(CLEVR_TRAIN, 90)),
        test="validation",
        classes=len(CLEVR_DISTANCE_EDGES) - 1,
        label=clevr_distance,
    ),
    _vtab("dmlab", STRUCTURED, "dmlab", "2.0.1"),
    # The paper leaves out flips and crops where they change the label, e.g. object orientation and
    # coordinates in pixel space; which tasks those are is our reading (docs/reproduce.md).
    _vtab(
        "dsprites-xpos",
        STRUCTURED,
        "dsprites",
        "2.*.*",
        validation=("train", _share(DSPRITES_TRAIN, 80)),
        test=f"train[{_share(DSPRITES_TRAIN, 80) + _share(DSPRITES_TRAIN, 10)}:]",
        classes=DSPRITES_CLASSES,
        label=_dsprites_label("label_x_position"),
        feature_classes=(("label_x_position", DSPRITES_VALUES["label_x_position"]),),
        image=dsprites_image,
        flip=False,
        random_crop=False,
    ),
    _vtab(
        "dsprites-orientation",
        STRUCTURED,
        "dsprites",
        "2.*.*",
        validation=("train", _share(DSPRITES_TRAIN, 80)),
        test=f"train[{_share(DSPRITES_TRAIN, 80) + _share(DSPRITES_TRAIN, 10)}:]",
        classes=DSPRITES_CLASSES,
        label=_dsprites_label("label_orientation"),
        feature_classes=(("label_orientation", DSPRITES_VALUES["label_orientation"]),),
        image=dsprites_image,
        flip=False,
    ),
    _vtab(
        "kitti-distance",
        STRUCTURED,
        "kitti",
        "3.1.0",
        classes=len(KITTI_DISTANCE_EDGES),
        label=kitti_distance,
    ),
    _vtab(
        "smallnorb-azimuth",
        STRUCTURED,
        "smallnorb",
        "2.*.*",
        validation=("test", 0),
        test="test[50%:]",  # the first half of smallNORB's test split validates, the second tests
        classes=18,
        label=_feature("label_azimuth"),
        feature_classes=(("label_azimuth", 18),),
        image=grey_image,
        flip=False,
    ),
    _vtab(
        "smallnorb-elevation",
        STRUCTURED,
        "smallnorb",
        "2.*.*",
        validation=("test", 0),
        test="test[50%:]",
        classes=9,
        label=_feature("label_elevation"),
        feature_classes=(("label_elevation", 9),),
        image=grey_image,
    ),
)

_README = "official README (github.com/google-research/big_transfer)"
VTAB_SUITE = Suite(
    "vtab1k",
    "VTAB-1k: 19 tasks, 1000 training examples each (train800 + val200), top-1 on each test split",
    VTAB1K,
    references=("BiT-M-R152x4", "BiT-M-R101x3"),
    sources={
        "BiT-M-R152x4": f"{_README}, 'VTAB-1k results': re-runs, not the paper's models",
        "BiT-M-R101x3": f"{_README}, 'VTAB-1k results': re-runs, not the paper's models",
        "BiT-L-R152x4": "BiT paper (arXiv:1912.11370), Table 1: mean over the 19 tasks",
    },
    group_published={
        "BiT-M-R152x4": {
            "All": Figure.of("73.51"),
            NATURAL: Figure.of("80.77"),
            STRUCTURED: Figure.of("61.08"),
            SPECIALIZED: Figure.of("85.67"),
        },
        "BiT-M-R101x3": {
            "All": Figure.of("72.65"),
            NATURAL: Figure.of("80.29"),
            STRUCTURED: Figure.of("59.40"),
            SPECIALIZED: Figure.of("85.75"),
        },
        "BiT-L-R152x4": {"All": Figure.of("76.29")},
    },
    summary="mean",
)


# -------------------------------------------------------------------------------------------- few-shot

# The official README's CIFAR table (min, median, max of at least five runs, `--batch 128 --base_lr 0.001`):
# variant -> dataset -> shots (None: full data) -> {framework: (min, median, max) or a single figure}.
_FEWSHOT_README = {
    "BiT-M-R101x3": {
        "cifar10": {
            1: {"TF2": ("52.5", "55.8", "60.2"), "Jax": ("48.7", "53.9", "65.0"), "PyTorch": ("56.4", "56.7", "73.1")},
            5: {"TF2": ("85.3", "87.2", "89.1"), "Jax": ("80.2", "85.8", "88.6"), "PyTorch": ("84.8", "85.8", "89.6")},
            None: {"TF2": "98.5", "Jax": "98.4", "PyTorch": ("98.5", "98.6", "98.6")},
        },
        "cifar100": {
            1: {"TF2": ("34.8", "35.7", "37.9"), "Jax": ("32.1", "35.0", "37.1"), "PyTorch": ("31.6", "33.8", "36.9")},
            5: {"TF2": ("68.8", "70.4", "71.4"), "Jax": ("68.6", "70.8", "71.6"), "PyTorch": ("70.6", "71.6", "71.7")},
            None: {"TF2": "90.8", "Jax": "91.2", "PyTorch": ("91.1", "91.2", "91.4")},
        },
    },
    "BiT-M-R152x2": {  # no TF2 column: the README had no TF2 model of R152x2
        "cifar10": {
            1: {"Jax": ("44.0", "56.7", "65.0"), "PyTorch": ("50.9", "55.5", "59.5")},
            5: {"Jax": ("85.3", "87.0", "88.2"), "PyTorch": ("85.3", "85.8", "88.6")},
            None: {"Jax": "98.5", "PyTorch": ("98.5", "98.5", "98.6")},
        },
        "cifar100": {
            1: {"Jax": ("36.4", "37.2", "38.9"), "PyTorch": ("34.3", "36.8", "39.0")},
            5: {"Jax": ("69.3", "70.5", "72.0"), "PyTorch": ("70.3", "72.0", "72.3")},
            None: {"Jax": "91.2", "PyTorch": ("91.2", "91.3", "91.4")},
        },
    },
    "BiT-M-R50x1": {
        "cifar10": {
            1: {"TF2": ("49.9", "54.4", "60.2"), "Jax": ("48.4", "54.1", "66.1"), "PyTorch": ("45.8", "57.9", "65.7")},
            5: {"TF2": ("80.8", "83.3", "85.5"), "Jax": ("76.7", "82.4", "85.4"), "PyTorch": ("80.3", "82.3", "84.9")},
            None: {"TF2": "97.2", "Jax": "97.3", "PyTorch": "97.4"},
        },
        "cifar100": {
            1: {"TF2": ("35.3", "37.1", "38.2"), "Jax": ("32.0", "35.2", "37.8"), "PyTorch": ("34.6", "35.2", "38.6")},
            5: {"TF2": ("63.8", "65.0", "66.5"), "Jax": ("63.4", "64.8", "66.5"), "PyTorch": ("64.7", "65.5", "66.0")},
            None: {"TF2": "86.5", "Jax": "86.4", "PyTorch": "86.6"},
        },
    },
}
# The official README's ILSVRC-2012 runs (PyTorch, the HyperRule's batch 512 and LR 0.003, single runs);
# R101x3 on full data was "WIP" there.
_IMAGENET_README = {
    "BiT-M-R50x1": {1: "18.36", 5: "50.64", None: "80.68"},
    "BiT-M-R152x2": {1: "24.5", 5: "64.5", None: "85.15"},
    "BiT-M-R101x3": {1: "25.55", 5: "64.18"},
}
FRAMEWORKS = ("TF2", "Jax", "PyTorch")  # the column a table shows: this package's framework first
FEWSHOT_RUNS = 5  # "at least five runs"
README_CIFAR_BATCH, README_CIFAR_LR = 128, 0.001


def _readme_figure(columns):
    framework = next(name for name in FRAMEWORKS if name in columns)
    value = columns[framework]
    if isinstance(value, tuple):
        return Figure.of(value[1], value[0], value[2], source=framework)
    return Figure.of(value, source=framework)


def _fewshot_task(dataset, shots):
    train, _, test = tasks.OFFICIAL_SPLITS[dataset]
    suffix = "full" if shots is None else f"{shots}shot"
    if dataset == "imagenet2012":
        published = {v: Figure.of(row[shots], source="PyTorch") for v, row in _IMAGENET_README.items() if shots in row}
        return Task(
            f"{dataset}-{suffix}", dataset, train, test, examples_per_class=shots, published=published, needs_manual_data=True
        )
    published = {v: _readme_figure(table[dataset][shots]) for v, table in _FEWSHOT_README.items()}
    return Task(
        f"{dataset}-{suffix}",
        dataset,
        train,
        test,
        examples_per_class=shots,
        batch_size=README_CIFAR_BATCH,
        base_lr=README_CIFAR_LR,
        runs=FEWSHOT_RUNS,
        published=published,
    )


FEWSHOT_SUITE = Suite(
    "fewshot",
    "the official README's few-shot and full-data table: CIFAR-10/100 (batch 128, LR 0.001) and ILSVRC-2012 (HyperRule)",
    tuple(_fewshot_task(d, k) for d in ("cifar10", "cifar100", "imagenet2012") for k in (1, 5, None)),
    references=("BiT-M-R50x1",),
    sources={
        name: f"{_README}, 'Expected results': CIFAR min ← median → max of at least five runs (TF2 column, or the "
        f"first of Jax, PyTorch), ILSVRC-2012 single PyTorch runs"
        for name in _FEWSHOT_README
    },
)


# ------------------------------------------------------------------------------------------------ paper

_PAPER_TABLE_1 = {  # BiT paper, Table 1: R152x4 fine-tuned with the HyperRule on the full training data
    "BiT-M-R152x4": {"cifar10": "98.91", "cifar100": "92.17", "oxford_iiit_pet": "94.46", "oxford_flowers102": "99.30"},
    "BiT-L-R152x4": {"cifar10": "99.37", "cifar100": "93.51", "oxford_iiit_pet": "96.62", "oxford_flowers102": "99.63"},
}
# Pets and Flowers train on every labelled non-test image (TFDS train, and train + validation): the
# choice is ours, the paper does not name the split; CIFAR trains on the official code's train[:98%].
_PAPER_SPLITS = {
    "cifar10": (tasks.OFFICIAL_SPLITS["cifar10"][0], "test"),
    "cifar100": (tasks.OFFICIAL_SPLITS["cifar100"][0], "test"),
    "oxford_iiit_pet": ("train", "test"),
    "oxford_flowers102": ("train+validation", "test"),
}


def _paper_task(dataset):
    published = {variant: Figure.of(row[dataset], source="paper") for variant, row in _PAPER_TABLE_1.items()}
    for variant, table in _FEWSHOT_README.items():  # the README's full-data CIFAR rows (batch 128, LR 0.001)
        if dataset in table:
            figure = _readme_figure(table[dataset][None])
            published[variant] = dataclasses.replace(figure, source=f"README {figure.source}, batch 128")
    return Task(dataset, dataset, *_PAPER_SPLITS[dataset], published=published)


PAPER_SUITE = Suite(
    "paper",
    "the paper's full-data transfer: CIFAR-10, CIFAR-100, Pets, Flowers with the HyperRule",
    tuple(_paper_task(d) for d in _PAPER_SPLITS),
    references=("BiT-M-R152x4",),
    sources={
        "BiT-M-R152x4": "BiT paper (arXiv:1912.11370), Table 1",
        "BiT-L-R152x4": "BiT paper (arXiv:1912.11370), Table 1 (BiT-L weights were never released)",
        **{
            name: f"{_README}, 'Expected results', full-data CIFAR rows (trained at batch 128, LR 0.001)"
            for name in _FEWSHOT_README
        },
    },
)

SUITES = {suite.name: suite for suite in (VTAB_SUITE, FEWSHOT_SUITE, PAPER_SUITE)}


def get(name):
    """The `Suite` called `name`: "vtab1k", "fewshot" or "paper"."""
    if name not in SUITES:
        raise ValueError(f"Unknown suite {name!r}; the suites are {', '.join(SUITES)}.")
    return SUITES[name]
