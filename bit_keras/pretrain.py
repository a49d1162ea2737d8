"""`BiTPretrainer`: the BiT-S / BiT-M upstream recipe on the training engine.

The recipe (paper section 3.1): SGD with momentum 0.9, LR 0.03 * batch / 256 at
batch 4096, weight decay 1e-4, linear warm-up over 5000 steps, x0.1 at epochs
30, 60 and 80 of 90; Inception-style random crops and flips at 224 px; a
sigmoid cross-entropy loss (the BiT authors, big_transfer issue 26: ImageNet-21k
images can carry several labels).
`epochs=` and `steps=` shorten a run with its decays in proportion; the
warm-up keeps its share of the ILSVRC-2012 run (5000 of its 28,150 steps),
up to 5000 steps.
"""

import dataclasses

import keras

from bit_keras import arguments, config, data, hyperrule, training
from bit_keras.models import BiT
from bit_keras.resnet import HEAD_LAYER

UPSTREAM_BATCH_SIZE = 4096
BASE_LR = 0.03  # at batch 256, scaled linearly with the batch when no base_lr is given
WEIGHT_DECAY = 1e-4
EPOCHS = 90
DECAY_EPOCHS = (30, 60, 80)
WARMUP_STEPS = 5000
ILSVRC_STEPS = EPOCHS * 1_281_167 // UPSTREAM_BATCH_SIZE  # the reference run: 28,150 steps, 5000 of them warm-up


@dataclasses.dataclass(frozen=True)
class UpstreamSchedule:
    """Steps and learning rate of one upstream run.

    >>> schedule = upstream_schedule(1_281_167)
    >>> schedule.total_steps, schedule.warmup_steps, schedule.boundaries, schedule.peak_lr
    (28151, 5000, (9384, 18767, 25023), 0.48)
    """

    dataset_size: int
    batch_size: int
    total_steps: int
    warmup_steps: int
    boundaries: tuple
    peak_lr: float
    weight_decay: float
    lr_given: bool = False  # base_lr was given (the peak as is), not the recipe's scaled default

    def learning_rate(self):
        return hyperrule.HyperRuleLearningRate(self.peak_lr, self.warmup_steps, self.boundaries, self.total_steps)

    def __str__(self):
        epochs = self.total_steps * self.batch_size / self.dataset_size
        rows = [
            ("dataset", f"{self.dataset_size:,} examples"),
            ("steps", f"{self.total_steps:,} at batch {self.batch_size} ({epochs:.1f} epochs)"),
            ("warm-up", f"{self.warmup_steps:,} steps, linear from 0"),
            (
                "learning rate",
                f"{self.peak_lr:g} "
                + ("(base_lr, as given)" if self.lr_given else f"(0.03 x {self.batch_size}/256)")
                + f", x0.1 after steps {', '.join(f'{b:,}' for b in self.boundaries)}",
            ),
            ("weight decay", f"{self.weight_decay:g}"),
        ]
        width = max(len(name) for name, _ in rows)
        return "BiT upstream recipe\n" + "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)


def upstream_schedule(
    dataset_size, batch_size=UPSTREAM_BATCH_SIZE, base_lr=None, weight_decay=WEIGHT_DECAY, epochs=EPOCHS, steps=None
):
    """The upstream schedule for `epochs` (or exactly `steps`) over `dataset_size` examples.

    `base_lr=None` is the recipe's 0.03 x batch / 256; a number is the peak LR
    used as given, as the fine-tuner's `base_lr` is.

    >>> upstream_schedule(900, batch_size=64, epochs=9).boundaries
    (42, 85, 113)
    """
    dataset_size = hyperrule.check_dataset_size(dataset_size)
    batch_size = arguments.positive_int("batch_size", batch_size)
    if steps is None:
        steps = max(1, round(arguments.positive_float("epochs", epochs) * dataset_size / batch_size))
    steps = arguments.positive_int("steps", steps)
    boundaries = tuple(round(steps * epoch / EPOCHS) for epoch in DECAY_EPOCHS)
    warmup = min(WARMUP_STEPS, round(steps * WARMUP_STEPS / ILSVRC_STEPS))
    peak_lr = BASE_LR * batch_size / 256 if base_lr is None else arguments.positive_float("base_lr", base_lr)
    weight_decay = arguments.non_negative_float("weight_decay", weight_decay)
    return UpstreamSchedule(
        dataset_size, batch_size, steps, warmup, boundaries, peak_lr, float(weight_decay), base_lr is not None
    )


class BiTPretrainer:
    """Pre-trains a BiT upstream with the BiT-S/M recipe; its `model` then transfers.

    It runs on the same engine as `BiTFineTuner`: `strategy`, `batch_size`
    as the global batch with `batch_split`, `mixed_precision`, backups and
    exact resume with `checkpoint_dir` / `backup_every`, the NaN stop. The
    result is a normal bit_keras model, for `save_official`, `.keras` files
    and `hub_export.export`.

    Args:
        model_or_variant: a `bit_keras.BiT` model, or a variant name /
            `bit_keras.Variant` built with fresh weights.
        num_classes: upstream classes; read from the data when None.
        recipe: a `config.PretrainRecipe` (`base_lr`: None is the recipe's
            0.03 x batch / 256, 0.48 at 4096, a number the peak LR as given;
            `weight_decay`; `epochs` or `steps`; `image_size`; `crop_area`,
            the share of the image area an Inception crop covers, where tiny
            images (a digit of 8x8 px) keep more of themselves with e.g.
            (0.5, 1.0); `flip`; `loss`, "sigmoid" as the recipe or
            "softmax"); its fields also as keyword arguments and attributes.
        run: a `config.RunConfig` (`batch_size`, the recipe's 4096, and the
            rest as for `BiTFineTuner`); its fields also as keyword arguments.

    Example:

    >>> import numpy as np, bit_keras
    >>> pretrainer = bit_keras.BiTPretrainer(bit_keras.Variant((1, 1, 1, 1)), num_classes=3, batch_size=4, steps=2, image_size=32)
    >>> history = pretrainer.fit((np.zeros((8, 40, 40, 3), "uint8"), np.arange(8) % 3), verbose=0)
    BiT upstream recipe
      dataset        8 examples
      steps          2 at batch 4 (1.0 epochs)
      warm-up        0 steps, linear from 0
      learning rate  0.00046875 (0.03 x 4/256), x0.1 after steps 1, 1, 2
      weight decay   0.0001
      loss           sigmoid cross-entropy
    >>> pretrainer.model.output.shape
    (None, 3)
    """

    def __init__(self, model_or_variant, recipe=None, run=None, *, num_classes=None, **settings):
        self.recipe, run = config.resolve(config.PretrainRecipe, recipe, run, settings, batch_size=UPSTREAM_BATCH_SIZE)
        self.engine = training.Engine(run)
        self.num_classes = None if num_classes is None else arguments.positive_int("num_classes", num_classes)
        self._variant = None
        self.model = None
        if isinstance(model_or_variant, keras.Model):
            if HEAD_LAYER not in {layer.name for layer in model_or_variant.layers}:
                raise ValueError(
                    "BiTPretrainer trains a classifier: build the model with include_top=True and num_classes=, or pass "
                    "the variant name and num_classes=."
                )
            self.model = self.engine.adopt(model_or_variant)
        else:
            self._variant = model_or_variant
            if self.num_classes is not None:
                self._build()

    def schedule(self, dataset_size):
        """The `UpstreamSchedule` this pretrainer runs over `dataset_size` examples."""
        return upstream_schedule(dataset_size, self.engine.batch_size, self.base_lr, self.weight_decay, self.epochs, self.steps)

    def fit(self, train, validation_data=None, callbacks=None, verbose="auto"):
        """Pre-trains on `train` (a `data.Source` or (images, labels) arrays in [0, 255]); returns the `History`."""
        source = data.as_source(train, self.num_classes)
        data.first_example(source)
        if self.model is None:
            self.num_classes = source.num_classes
            self._build()
        classes = self.model.output.shape[-1]
        if source.num_classes != classes:
            raise ValueError(f"The data has {source.num_classes} classes but the model's head has {classes}.")
        schedule = self.schedule(source.num_examples)
        print(schedule)
        print(f"  {'loss':<13}  {self.loss} cross-entropy")
        self.engine.compile(
            self.model,
            self.engine.optimizer(schedule.learning_rate(), schedule.weight_decay),
            schedule.total_steps,
            self.loss,
        )

        def make_train(start_batch):
            return data.upstream_pipeline(
                source,
                image_size=self.image_size,
                batch_size=self.engine.batch_size,
                seed=self.engine.seed,
                batch_split=self.engine.batch_split,
                start_batch=start_batch,
                crop_area=self.crop_area,
                flip=self.flip,
            )

        validation = None
        if validation_data is not None:
            validation = data.eval_pipeline(
                data.as_source(validation_data, classes), crop=self.image_size, batch_size=self.engine.micro_batch
            )
        fingerprint = {"dataset_size": source.num_examples, "data": data.digest(source), **config.fingerprint(self.recipe)}
        return self.engine.fit(
            self.model,
            make_train,
            schedule.total_steps,
            validation=validation,
            fingerprint=fingerprint,
            callbacks=callbacks or (),
            verbose=verbose,
        )

    def _build(self):
        with self.engine.scope():
            self.model = BiT(self._variant, num_classes=self.num_classes, mixed_precision=self.engine.run.mixed_precision)


config.recipe_properties(BiTPretrainer, config.PretrainRecipe)
