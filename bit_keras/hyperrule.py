"""BiT-HyperRule: fine-tuning hyper-parameters from dataset size and image size.

The rule (paper section 3.3 and the official `bit_hyperrule.py`) needs no
search: images smaller than 96x96 px are trained at 128 px (resized to 160,
randomly cropped), larger ones at 384 px (448 -> 384; the official code uses
512 -> 480, available as `rule="official"`); the number of steps, the
warm-up, the learning-rate decays and mixup follow from the dataset size.
"""

import dataclasses

import keras
from keras import ops

from bit_keras import arguments

REFERENCE_BATCH_SIZE = 512
BASE_LR = 0.003
SMALL_IMAGE_AREA = 96 * 96
RESOLUTIONS = {
    "paper": {"small": (160, 128), "large": (448, 384)},
    "official": {"small": (160, 128), "large": (512, 480)},
}
# (examples below which it applies, total steps, warm-up steps, decay boundaries), at batch 512.
SCHEDULES = (
    (20_000, 500, 100, (200, 300, 400)),
    (500_000, 10_000, 500, (3_000, 6_000, 9_000)),
    (float("inf"), 20_000, 500, (6_000, 12_000, 18_000)),
)
MIXUP_THRESHOLD = 20_000
MIXUP_ALPHA = 0.1


def resolution(image_size, rule="paper"):
    """(resize, crop) for images of `image_size` (height, width) or a side length.

    >>> resolution((32, 32))
    (160, 128)
    >>> resolution((500, 375))
    (448, 384)
    """
    if rule not in RESOLUTIONS:
        raise ValueError(f"rule must be one of {sorted(RESOLUTIONS)}, got {rule!r}.")
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)[:2]
    size = "small" if height * width < SMALL_IMAGE_AREA else "large"
    return RESOLUTIONS[rule][size]


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Steps of a HyperRule run at the reference batch size of 512."""

    warmup_steps: int
    boundaries: tuple
    total_steps: int


def schedule(dataset_size):
    """The HyperRule step schedule for a dataset of `dataset_size` examples.

    >>> schedule(50_000)
    Schedule(warmup_steps=500, boundaries=(3000, 6000, 9000), total_steps=10000)
    """
    dataset_size = check_dataset_size(dataset_size)
    for limit, total, warmup, boundaries in SCHEDULES:
        if dataset_size < limit:
            return Schedule(warmup, boundaries, total)


def mixup_alpha(dataset_size):
    """Mixup's Beta(a, a) parameter: 0 (no mixup) below 20k examples, 0.1 otherwise."""
    dataset_size = check_dataset_size(dataset_size)
    return 0.0 if dataset_size < MIXUP_THRESHOLD else MIXUP_ALPHA


def check_dataset_size(dataset_size):
    """`dataset_size` (the number of training examples) as an int: a positive integer of any kind, never a float or bool."""
    return arguments.positive_int("dataset_size", dataset_size)


@keras.saving.register_keras_serializable(package="bit_keras")
class HyperRuleLearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak_lr`, then x0.1 after each boundary.

    At step s: `peak_lr * s / warmup_steps` while s < warmup_steps, else
    `peak_lr * 0.1 ** (number of boundaries b with b < s)`, as the official
    code computes it. Past `total_steps` the last value holds.

    >>> lr = HyperRuleLearningRate(0.003, 100, (200, 300, 400), 500)
    >>> [round(float(lr(s)), 7) for s in (0, 50, 100, 200, 201, 450)]
    [0.0, 0.0015, 0.003, 0.003, 0.0003, 3e-06]
    """

    def __init__(self, peak_lr, warmup_steps, boundaries, total_steps):
        self.peak_lr = float(peak_lr)
        self.warmup_steps = int(warmup_steps)
        self.boundaries = tuple(int(b) for b in boundaries)
        self.total_steps = int(total_steps)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        decays = sum(ops.cast(step > boundary, "float32") for boundary in self.boundaries)
        decayed = self.peak_lr * ops.power(0.1, decays)
        if not self.warmup_steps:
            return decayed
        warmup = self.peak_lr * step / self.warmup_steps
        return ops.where(step < self.warmup_steps, warmup, decayed)

    def get_config(self):
        return {
            "peak_lr": self.peak_lr,
            "warmup_steps": self.warmup_steps,
            "boundaries": list(self.boundaries),
            "total_steps": self.total_steps,
        }


def scaled(steps, total_steps):
    """`steps` stretched or shrunk to `total_steps`, warm-up and decays in proportion.

    For quick runs and demos only: the HyperRule itself fixes the length.

    >>> scaled(schedule(1_000), 50)
    Schedule(warmup_steps=10, boundaries=(20, 30, 40), total_steps=50)
    """
    ratio = total_steps / steps.total_steps
    return Schedule(round(steps.warmup_steps * ratio), tuple(round(b * ratio) for b in steps.boundaries), int(total_steps))


def peak_lr(batch_size=REFERENCE_BATCH_SIZE, base_lr=None):
    """The peak LR: `base_lr` as given, like the official `--base_lr`; by default the rule's 0.003 at batch 512, scaled.

    >>> peak_lr(128), peak_lr(128, base_lr=0.001)
    (0.00075, 0.001)
    """
    return BASE_LR * batch_size / REFERENCE_BATCH_SIZE if base_lr is None else base_lr


def learning_rate(dataset_size, batch_size=REFERENCE_BATCH_SIZE, base_lr=None, total_steps=None):
    """The HyperRule learning-rate schedule, peaking at `peak_lr(batch_size, base_lr)`.

    >>> round(float(learning_rate(50_000, batch_size=128)(500)), 8)
    0.00075
    """
    steps = schedule(dataset_size)
    if total_steps is not None:
        steps = scaled(steps, total_steps)
    return HyperRuleLearningRate(peak_lr(batch_size, base_lr), steps.warmup_steps, steps.boundaries, steps.total_steps)


@dataclasses.dataclass(frozen=True)
class HyperRule:
    """All HyperRule decisions for one downstream task.

    >>> rule = HyperRule(dataset_size=50_000, image_size=(32, 32))
    >>> rule.resize, rule.crop, rule.total_steps, rule.mixup_alpha
    (160, 128, 10000, 0.1)

    `base_lr=None` is the rule's LR, 0.003 at batch 512 scaled linearly with
    `batch_size`; a number is the peak LR used as given at any batch, as the
    official `--base_lr` is. `steps` and `sizes` (resize, crop) override the
    rule for quick runs; the table says so. `flip` and `random_crop` (both on, as in the official
    code) can be turned off where they would change the label (digits,
    text, orientation), as the paper does.
    """

    dataset_size: int
    image_size: tuple
    batch_size: int = REFERENCE_BATCH_SIZE
    base_lr: float = None
    rule: str = "paper"
    steps: int = None
    sizes: tuple = None
    flip: bool = True
    random_crop: bool = True

    def __post_init__(self):
        object.__setattr__(self, "image_size", arguments.image_size(self.image_size))

    @property
    def resolution(self):
        return tuple(self.sizes) if self.sizes else resolution(self.image_size, self.rule)

    @property
    def resize(self):
        return self.resolution[0]

    @property
    def crop(self):
        return self.resolution[1]

    @property
    def schedule(self):
        steps = schedule(self.dataset_size)
        return scaled(steps, self.steps) if self.steps else steps

    @property
    def total_steps(self):
        return self.schedule.total_steps

    @property
    def warmup_steps(self):
        return self.schedule.warmup_steps

    @property
    def boundaries(self):
        return self.schedule.boundaries

    @property
    def mixup_alpha(self):
        return mixup_alpha(self.dataset_size)

    @property
    def peak_lr(self):
        return peak_lr(self.batch_size, self.base_lr)

    def learning_rate(self):
        """The LR schedule: a `HyperRuleLearningRate` of the optimizer's update count."""
        return learning_rate(self.dataset_size, self.batch_size, self.base_lr, self.steps)

    def __str__(self):
        rows = [
            ("dataset", f"{self.dataset_size:,} examples of {self.image_size[0]}x{self.image_size[1]} px"),
            (
                "resolution",
                (f"resize {self.resize}, random crop {self.crop} " if self.random_crop else f"resize {self.crop} ")
                + ("(overridden)" if self.sizes else f"({self.rule} rule)"),
            ),
            ("flips", "random left-right" if self.flip else "off"),
            ("steps", f"{self.total_steps:,} at batch {self.batch_size}" + (" (overridden)" if self.steps else "")),
            ("warm-up", f"{self.warmup_steps:,} steps, linear from 0"),
            (
                "learning rate",
                f"{self.peak_lr:g} "
                + (f"(0.003 x {self.batch_size}/512)" if self.base_lr is None else "(base_lr, as given)")
                + f", x0.1 after steps {', '.join(f'{b:,}' for b in self.boundaries)}",
            ),
            ("mixup", f"alpha {self.mixup_alpha:g}" if self.mixup_alpha else "off"),
        ]
        width = max(len(name) for name, _ in rows)
        return "BiT-HyperRule\n" + "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)
