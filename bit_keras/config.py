"""A run's settings in one place: the engine's `RunConfig` and one frozen recipe per trainer.

Each field carries its help text and how a command line spells it. From these
dataclasses come the trainers' keyword arguments (`BiTFineTuner(model,
batch_size=64, flip=False)` fills a `RunConfig` and a `FineTuneRecipe`), the
`bit-keras` flags (`add_flags`, `from_flags`) and the resume fingerprint
(`fingerprint`: every field that changes what a run computes), so none of them
is a list kept by hand. A new trainer is one more recipe dataclass and an
adapter over `training.Engine`.

Example:

>>> recipe, run = resolve(FineTuneRecipe, settings={"flip": False, "batch_size": 64}, batch_size=512)
>>> recipe.flip, run.batch_size
(False, 64)
>>> sorted(fingerprint(recipe, run))[:4]
['base_lr', 'batch_size', 'batch_split', 'flip']
"""

import argparse
import dataclasses

from bit_keras import arguments

MIXED_PRECISION = ("mixed_bfloat16", "mixed_float16")
STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "tpu")
RULES = ("paper", "official")
FREEZE_POINTS = ("root", "block1", "block2", "block3", "block4", "head_only")
LOSSES = ("softmax", "sigmoid")
DISTILL_LOSSES = ("function_matching", "hinton")


def setting(default, help, *, resumes=True, parse=None, choices=None):
    """A field with its help text; `resumes=False` for settings a resumed run may change (hardware, folders)."""
    return dataclasses.field(default=default, metadata={"help": help, "resumes": resumes, "parse": parse, "choices": choices})


def _jit_compile(text):
    values = {"auto": "auto", "true": True, "false": False}
    if text.lower() not in values:
        raise argparse.ArgumentTypeError(f"--jit_compile takes auto, true or false; got {text!r}.")
    return values[text.lower()]


def _optional(choices, value, name):
    if value is not None and value not in choices:
        raise ValueError(f"{name} must be None or one of {choices}, got {value!r}.")


def _optional_path(config, name):
    """Checks the path field `name` of a frozen `config` where it is set, and holds it as a str."""
    value = getattr(config, name)
    if value is not None:
        object.__setattr__(config, name, arguments.path(name, value))


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Where and how a run trains: the same for every trainer, read by `training.Engine`."""

    batch_size: int = setting(512, "global batch of one optimizer update, split over replicas and micro-batches")
    batch_split: int = setting(1, "accumulate gradients over this many micro-batches (the updates do not change)")
    strategy: object = setting(
        None, "tf.distribute strategy; when unset, one device, or the TPU that --tpu names", resumes=False, choices=STRATEGIES
    )
    tpu: str = setting(None, "TPU name or grpc:// address; implies --strategy tpu (empty on a TPU VM)", resumes=False)
    connect_timeout: float = setting(
        300.0, "seconds to wait for the TPU, or for the other workers of multi_worker, before giving up", resumes=False
    )
    mixed_precision: str = setting(None, "train in bfloat16 (TPU, recent GPUs) or float16", choices=MIXED_PRECISION)
    checkpoint_dir: str = setting(None, "back up here to resume after an interruption; keeps best.keras", resumes=False)
    backup_every: int = setting(None, "updates between backups in --checkpoint_dir (ten per run by default)", resumes=False)
    seed: int = setting(None, "seeds weights, data order, augmentation, mixup and the few-shot draw", resumes=False)
    jit_compile: object = setting(
        "auto",
        "auto (Keras decides: XLA on a GPU and under JAX, not on a CPU under TensorFlow), true or false",
        resumes=False,
        parse=_jit_compile,
    )

    def __post_init__(self):
        arguments.positive_int("batch_size", self.batch_size)
        arguments.positive_int("batch_split", self.batch_split)
        arguments.positive_float("connect_timeout", self.connect_timeout)
        if self.backup_every is not None:
            arguments.positive_int("backup_every", self.backup_every)
        if self.seed is not None:
            arguments.non_negative_int("seed", self.seed)
        if self.jit_compile not in ("auto", True, False):
            raise ValueError(f"jit_compile must be 'auto', True or False, got {self.jit_compile!r}.")
        _optional(MIXED_PRECISION, self.mixed_precision, "mixed_precision")
        _optional_path(self, "checkpoint_dir")
        if self.tpu is not None and not isinstance(self.tpu, str):  # "" is the TPU of a TPU VM
            raise ValueError(f"tpu must be a TPU name or grpc:// address (a str), got {type(self.tpu).__name__} {self.tpu!r}.")


@dataclasses.dataclass(frozen=True)
class FineTuneRecipe:
    """What `BiTFineTuner` changes in the BiT-HyperRule; the defaults are the rule itself."""

    base_lr: float = setting(None, "peak LR used as given at any batch (as the official --base_lr); default 0.003 x batch/512")
    rule: str = setting("paper", "resolutions: paper (448->384 for large images) or official (512->480)", choices=RULES)
    steps: int = setting(None, "override the HyperRule's number of steps (warm-up and decays scale with it)")
    sizes: tuple = setting(None, "override the HyperRule's resize,crop, e.g. 40,32", parse=arguments.comma_pair(int, "sizes"))
    flip: bool = setting(True, "random left-right flips (the official code's); off where a mirror image changes the label")
    random_crop: bool = setting(True, "random crops of the resized image; off resizes straight to the crop size")
    freeze: str = setting(None, "freeze this stage and all before it (head_only: train the head alone)", choices=FREEZE_POINTS)
    zero_head: bool = setting(True, "zero the head first, as BiT does; off keeps it, to continue an earlier fine-tune")

    def __post_init__(self):
        if self.base_lr is not None:
            arguments.positive_float("base_lr", self.base_lr)
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {self.rule!r}.")
        if self.steps is not None:
            arguments.positive_int("steps", self.steps)
        if self.sizes is not None:
            object.__setattr__(self, "sizes", arguments.sizes(self.sizes))
        arguments.flag("flip", self.flip)
        arguments.flag("random_crop", self.random_crop)
        arguments.flag("zero_head", self.zero_head)
        _optional(FREEZE_POINTS, self.freeze, "freeze")


@dataclasses.dataclass(frozen=True)
class PretrainRecipe:
    """The BiT-S/M upstream recipe of `BiTPretrainer` (paper section 3.1); the defaults are the recipe."""

    base_lr: float = setting(None, "peak LR used as given at any batch; default the recipe's 0.03 x batch/256")
    weight_decay: float = setting(1e-4, "L2 weight decay added to the gradient (the recipe's 1e-4)")
    epochs: float = setting(90, "epochs; the LR decays at 30/60/80 of 90 scale with them")
    steps: int = setting(None, "a number of updates instead of --epochs (quick runs)")
    image_size: int = setting(224, "training resolution (the recipe's 224)")
    crop_area: tuple = setting(
        (0.08, 1.0), "share of the image area an Inception crop covers", parse=arguments.comma_pair(float, "crop_area")
    )
    flip: bool = setting(True, "random left-right flips; off where a mirror image changes the label")
    loss: str = setting(
        "sigmoid", "sigmoid (the upstream recipe's, summed over classes) or softmax cross-entropy", choices=LOSSES
    )

    def __post_init__(self):
        if self.base_lr is not None:
            arguments.positive_float("base_lr", self.base_lr)
        arguments.non_negative_float("weight_decay", self.weight_decay)
        arguments.positive_float("epochs", self.epochs)
        if self.steps is not None:
            arguments.positive_int("steps", self.steps)
        arguments.positive_int("image_size", self.image_size)
        object.__setattr__(self, "crop_area", arguments.crop_area(self.crop_area))
        arguments.flag("flip", self.flip)
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}.")


@dataclasses.dataclass(frozen=True)
class DistillRecipe:
    """What `BiTDistiller` trains: "patient and consistent" distillation (Beyer et al. 2022); the defaults are its recipe."""

    loss: str = setting(
        "function_matching",
        "function_matching (KL from the teacher's to the student's outputs, labels unused) or hinton "
        "((1 - alpha) CE(labels) + alpha T^2 CE(teacher_T, student_T))",
        choices=DISTILL_LOSSES,
    )
    temperature: float = setting(1.0, "softmax temperature T of both outputs in the distillation term")
    alpha: float = setting(0.5, "hinton only: weight of the distillation term against the labels' cross-entropy")
    consistent: bool = setting(True, "teacher and student see the same augmented image; off: the teacher sees it unaugmented")
    mixup_alpha: float = setting(1.0, "mixup of every batch with lambda ~ Beta(alpha, alpha): the paper's aggressive mixup")
    epochs: float = setting(1000, "epochs of the training set: patience, the paper's long schedules")
    steps: int = setting(None, "a number of updates instead of --epochs (quick runs)")
    base_lr: float = setting(None, "peak LR used as given at any batch; default 0.003 x batch/512")
    image_size: int = setting(224, "the student's resolution")
    teacher_size: int = setting(None, "the teacher's resolution (384 for the released R152x2_T_384 teachers); default image_size")
    crop_area: tuple = setting(
        (0.08, 1.0), "share of the image area an Inception crop covers", parse=arguments.comma_pair(float, "crop_area")
    )
    flip: bool = setting(True, "random left-right flips; off where a mirror image changes the label")

    def __post_init__(self):
        if self.loss not in DISTILL_LOSSES:
            raise ValueError(f"loss must be one of {DISTILL_LOSSES}, got {self.loss!r}.")
        arguments.positive_float("temperature", self.temperature)
        alpha = arguments.non_negative_float("alpha", self.alpha)
        if alpha > 1:
            raise ValueError(f"alpha must be in [0, 1] (the distillation term's weight), got {self.alpha!r}.")
        arguments.flag("consistent", self.consistent)
        arguments.non_negative_float("mixup_alpha", self.mixup_alpha)
        arguments.positive_float("epochs", self.epochs)
        if self.steps is not None:
            arguments.positive_int("steps", self.steps)
        if self.base_lr is not None:
            arguments.positive_float("base_lr", self.base_lr)
        arguments.positive_int("image_size", self.image_size)
        if self.teacher_size is not None:
            arguments.positive_int("teacher_size", self.teacher_size)
        object.__setattr__(self, "crop_area", arguments.crop_area(self.crop_area))
        arguments.flag("flip", self.flip)


def _names(text):
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"--tasks takes task names separated by commas; got {text!r}.")
    return names


@dataclasses.dataclass(frozen=True)
class SuiteConfig:
    """What `bit-keras reproduce` runs of a suite (`bit_keras.suites`) and where; the defaults are the suite's protocol."""

    runs: int = setting(
        None, "runs per task, with seeds --seed, --seed+1, ... (default: the suite's, 5 for few-shot rows, else 1)", resumes=False
    )
    tasks: tuple = setting(
        None, "a comma-separated subset of the suite's tasks (default: all of them)", resumes=False, parse=_names
    )
    out: str = setting(
        None, "folder of results.json, the figure and each finished run's result (default reproduce_<suite>)", resumes=False
    )
    train_examples: int = setting(
        None,
        "train on this many examples instead of the suite's (VTAB 800+200 kept 4:1; full rows take the first N): checks only",
    )
    evaluate_released: bool = setting(
        False, "vtab1k: evaluate the released BiT-M-<arch>-run<k>-<task> checkpoints on each test split, without training"
    )
    pin_versions: bool = setting(True, "load the TFDS versions the benchmark names (kitti:3.1.0, ...) where TFDS still has them")
    keep_backups: bool = setting(False, "keep each run's backups once its result is written (removed by default)", resumes=False)
    tfds_data_dir: str = setting(None, "where tensorflow-datasets keeps its data (its default when unset)", resumes=False)

    def __post_init__(self):
        if self.runs is not None:
            arguments.positive_int("runs", self.runs)
        if self.tasks is not None:
            names = self.tasks.split(",") if isinstance(self.tasks, str) else self.tasks
            names = tuple(str(name).strip() for name in names if str(name).strip())
            if not names:
                raise ValueError(f"tasks must name at least one task of the suite, got {self.tasks!r}.")
            object.__setattr__(self, "tasks", names)
        if self.train_examples is not None:
            arguments.positive_int("train_examples", self.train_examples)
        arguments.flag("evaluate_released", self.evaluate_released)
        arguments.flag("pin_versions", self.pin_versions)
        arguments.flag("keep_backups", self.keep_backups)
        _optional_path(self, "out")
        _optional_path(self, "tfds_data_dir")


# What each config object is for: named when one is passed where another was expected.
_ROLES = {
    "RunConfig": "the run= of every trainer",
    "FineTuneRecipe": "BiTFineTuner's recipe=",
    "PretrainRecipe": "BiTPretrainer's recipe=",
    "DistillRecipe": "BiTDistiller's recipe=",
    "SuiteConfig": "the settings= of suites.reproduce",
}


def as_config(config_class, value, name, **defaults):
    """`value` as a `config_class`: an instance as it is, or a dict of its fields (over `defaults`).

    Anything else is a TypeError naming `name`, the expected class, and what
    the given config object is for:

    >>> as_config(RunConfig, {"batch_size": 64}, "run").batch_size
    64
    >>> as_config(FineTuneRecipe, RunConfig(), "recipe")
    Traceback (most recent call last):
    ...
    TypeError: recipe must be a config.FineTuneRecipe or a dict of its fields, got a RunConfig: that is the run= of every trainer.
    """
    if isinstance(value, config_class):
        return value
    if isinstance(value, dict):
        fields = sorted(field.name for field in dataclasses.fields(config_class))
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise TypeError(f"{name}: {config_class.__name__} has no field(s) {', '.join(unknown)}; its fields are {fields}.")
        return config_class(**{**defaults, **value})
    kind = type(value).__name__
    role = _ROLES.get(kind) if dataclasses.is_dataclass(value) else None
    raise TypeError(
        f"{name} must be a config.{config_class.__name__} or a dict of its fields, got a {kind}"
        + (f": that is {role}." if role else ".")
    )


def resolve(recipe_class, recipe=None, run=None, settings=None, **run_defaults):
    """(recipe, `RunConfig`): the given ones (or the defaults, `run_defaults` for the run) with `settings` applied.

    `recipe` and `run` are config objects or dicts of their fields (see
    `as_config`); `settings` are keyword arguments naming fields of either; an
    unknown one is a TypeError naming it.
    """
    settings = settings or {}
    recipe_names = {field.name for field in dataclasses.fields(recipe_class)}
    run_names = {field.name for field in dataclasses.fields(RunConfig)}
    unknown = sorted(set(settings) - recipe_names - run_names)
    if unknown:
        raise TypeError(
            f"unexpected argument(s) {', '.join(unknown)}; the run settings are {sorted(run_names)} and the "
            f"{recipe_class.__name__} fields {sorted(recipe_names)}."
        )
    recipe = dataclasses.replace(
        as_config(recipe_class, recipe if recipe is not None else {}, "recipe"),
        **{name: value for name, value in settings.items() if name in recipe_names},
    )
    run = dataclasses.replace(
        as_config(RunConfig, run if run is not None else {}, "run", **run_defaults),
        **{name: value for name, value in settings.items() if name in run_names},
    )
    return recipe, run


def recipe_properties(cls, recipe_class):
    """Gives `cls` one property per field of `recipe_class`, read from and written to `self.recipe` (validated anew)."""

    def accessor(name):
        def get(self):
            return getattr(self.recipe, name)

        def set(self, value):
            self.recipe = dataclasses.replace(self.recipe, **{name: value})

        return property(get, set, doc=f"The recipe's `{name}`; settable between runs.")

    for field in dataclasses.fields(recipe_class):
        setattr(cls, field.name, accessor(field.name))
    return cls


def fingerprint(*configs):
    """Every field that changes what a run computes, of each config, as JSON values: what a resume must match."""
    merged = {}
    for config in configs:
        for field in dataclasses.fields(config):
            if field.metadata["resumes"]:
                value = getattr(config, field.name)
                merged[field.name] = list(value) if isinstance(value, tuple) else value
    return merged


def fingerprint_differences(recorded, expected):
    """Where a recorded fingerprint differs from `expected`, one "name=old there, new now" per field.

    >>> fingerprint_differences({"seed": 0, "steps": 10}, {"seed": 0, "steps": 20})
    ['steps=10 there, 20 now']
    """
    return [f"{key}={recorded.get(key)!r} there, {value!r} now" for key, value in expected.items() if recorded.get(key) != value]


def add_flags(parser, config_class, skip=(), **defaults):
    """One `--name` flag per field of `config_class` but those in `skip`, with its help; `defaults` overrides defaults."""
    for field in dataclasses.fields(config_class):
        if field.name in skip:
            continue
        default = defaults.get(field.name, field.default)
        options = {"default": default, "help": field.metadata["help"]}
        if isinstance(field.default, bool):
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["choices"] = field.metadata["choices"]
            options["type"] = field.metadata["parse"] or _type_of(field)
        parser.add_argument(f"--{field.name}", **options)


def from_flags(args, config_class):
    """The `config_class` instance of parsed `add_flags` flags (those present on `args`)."""
    names = [field.name for field in dataclasses.fields(config_class) if hasattr(args, field.name)]
    return config_class(**{name: getattr(args, name) for name in names})


def _type_of(field):
    return {"int": int, "float": float}.get(field.type if isinstance(field.type, str) else field.type.__name__, str)
