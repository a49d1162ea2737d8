"""`BiTDistiller`: a big BiT teacher distilled into a small BiT student, on the training engine.

The recipe of "Knowledge distillation: A good teacher is patient and
consistent" (Beyer et al. 2022), which made the released distilled
BiT-R50x1 models from a BiT-M-R152x2 teacher:

- function matching: the student learns the teacher's whole output
  distribution (KL divergence at temperature T, labels unused), or, with
  `loss="hinton"`, `(1 - alpha) CE(y, q) + alpha T^2 CE(p_T, q_T)`;
- consistent: teacher and student see the very same augmented image (the
  same Inception crop and flip, and the same mixed image), each resized to
  its own resolution; `consistent=False` is the paper's "fixed teacher"
  baseline, where the teacher sees the un-augmented image;
- aggressive mixup (lambda ~ Beta(1, 1)) and patience: long schedules.

The teacher is frozen and called in inference mode inside one Keras model
with the student, whose output is the student's and the teacher's logits side
by side; `DistillationLoss` splits them. So the engine runs it as any other
model: strategies, the global batch and `batch_split`, mixed precision,
backups with exact resume, the NaN stop. `best.keras` holds the student.

The paper trains with Adam and gradient clipping; here the engine's SGD with
momentum 0.9 runs it, with a linear warm-up and a cosine decay as the paper's.
"""

import dataclasses
import hashlib

import keras
import numpy as np
from keras import ops

from bit_keras import arguments, config, data, training
from bit_keras.finetune import release_name
from bit_keras.models import BiT
from bit_keras.resnet import HEAD_LAYER

DISTILL_BATCH_SIZE = 512  # the paper's and big_vision's
BASE_LR = 0.003  # at batch 512, scaled linearly with the batch when no base_lr is given
WARMUP_STEPS = 1500  # big_vision's distillation configs; at most a fifth of a shorter run


@keras.saving.register_keras_serializable(package="bit_keras")
class DistillationLoss(keras.losses.Loss):
    """The distillation loss of a student/teacher logit pair laid side by side: `y_pred = [student | teacher]`.

    Args:
        num_classes: classes of each half.
        kind: "function_matching", KL(p_T || q_T) with p the teacher's and q
            the student's softmax at temperature T (labels unused); or
            "hinton", (1 - alpha) CE(y, q) + alpha T^2 CE(p_T, q_T).
        temperature: T.
        alpha: hinton only: the weight of the distillation term.

    No gradient reaches the teacher's half.

    Example:

    >>> import numpy as np
    >>> loss = DistillationLoss(2)
    >>> float(loss(np.eye(2, dtype="float32"), np.array([[1.0, 0.0, 1.0, 0.0]] * 2, "float32")))  # equal halves
    0.0
    """

    def __init__(self, num_classes, kind="function_matching", temperature=1.0, alpha=0.5, name="distillation", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = arguments.positive_int("num_classes", num_classes)
        if kind not in config.DISTILL_LOSSES:
            raise ValueError(f"kind must be one of {config.DISTILL_LOSSES}, got {kind!r}.")
        self.kind = kind
        self.temperature = arguments.positive_float("temperature", temperature)
        self.alpha = arguments.non_negative_float("alpha", alpha)

    def call(self, y_true, y_pred):
        student, teacher = split_logits(y_pred, self.num_classes)
        teacher = ops.stop_gradient(teacher)
        t = self.temperature
        log_q = ops.log_softmax(student / t, axis=-1)
        log_p = ops.log_softmax(teacher / t, axis=-1)
        p = ops.exp(log_p)
        if self.kind == "function_matching":
            return ops.sum(p * (log_p - log_q), axis=-1)
        soft = -ops.sum(p * log_q, axis=-1) * t * t
        hard = -ops.sum(ops.cast(y_true, student.dtype) * ops.log_softmax(student, axis=-1), axis=-1)
        return (1 - self.alpha) * hard + self.alpha * soft

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "kind": self.kind,
            "temperature": self.temperature,
            "alpha": self.alpha,
        }


def split_logits(pair_logits, num_classes):
    """(student logits, teacher logits) of the pair model's output."""
    return pair_logits[:, :num_classes], pair_logits[:, num_classes:]


def pair_metrics(num_classes):
    """The student's top-1 ("accuracy"), the teacher's ("teacher_accuracy") and their top-1 agreement ("agreement")."""

    def accuracy(y_true, y_pred):
        return ops.cast(ops.argmax(y_true, -1) == ops.argmax(split_logits(y_pred, num_classes)[0], -1), "float32")

    def teacher_accuracy(y_true, y_pred):
        return ops.cast(ops.argmax(y_true, -1) == ops.argmax(split_logits(y_pred, num_classes)[1], -1), "float32")

    def agreement(y_true, y_pred):
        student, teacher = split_logits(y_pred, num_classes)
        return ops.cast(ops.argmax(student, -1) == ops.argmax(teacher, -1), "float32")

    return [
        keras.metrics.MeanMetricWrapper(function, name=function.__name__) for function in (accuracy, teacher_accuracy, agreement)
    ]


class InferenceOnly(keras.layers.Layer):
    """Calls a model in inference mode whatever mode its caller runs in.

    A `training=False` given when a functional model is built does not hold:
    `pair(x, training=True)` passes True to every layer. The teacher's
    dropout (where it has any) must stay off while the student trains.
    """

    def __init__(self, model, **kwargs):
        super().__init__(name=kwargs.pop("name", f"{model.name}_inference"), **kwargs)
        self.model = model

    def call(self, inputs, training=None):
        return self.model(inputs, training=False)

    def compute_output_shape(self, input_shape):
        return self.model.compute_output_shape(input_shape)

    @property
    def metrics(self):
        # A compiled teacher (as a fine-tuner leaves it) keeps its loss tracker and metrics, named
        # "loss" and "accuracy"; reported through this layer they would shadow the pair's own.
        return []


def pair_model(student, teacher, view_size, image_size, teacher_size, consistent=True):
    """One model of the student and the frozen teacher, outputting their logits side by side.

    With `consistent`, both read the one input (the augmented view, of
    `view_size`), each resized to its own resolution. Otherwise the inputs are
    (student's view, teacher's view): the teacher's is the un-augmented image.
    """
    teacher.trainable = False
    images = keras.Input((view_size, view_size, 3), name="images")
    teacher_images = images if consistent else keras.Input((teacher_size, teacher_size, 3), name="teacher_images")
    student_logits = student(_resized(images, image_size, "student_resize"))
    teacher_logits = InferenceOnly(teacher)(_resized(teacher_images, teacher_size, "teacher_resize"))
    both = keras.layers.Concatenate(name="student_teacher", dtype="float32")([student_logits, teacher_logits])
    inputs = images if consistent else [images, teacher_images]
    return keras.Model(inputs, both, name=f"distill_{student.name}")


def _resized(images, size, name):
    if images.shape[1] == size:
        return images
    return keras.layers.Resizing(size, size, interpolation="bilinear", name=name)(images)


def weights_digest(model):
    """A short digest of `model`'s weights: two teachers of one architecture differ in it.

    >>> import bit_keras
    >>> a, b = bit_keras.BiT("R1-1-1-1x1", num_classes=2), bit_keras.BiT("R1-1-1-1x1", num_classes=2)
    >>> weights_digest(a) == weights_digest(a), weights_digest(a) == weights_digest(b)
    (True, False)
    """
    hashed = hashlib.sha256()
    for weight in model.weights:
        hashed.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return hashed.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class DistillSchedule:
    """Steps and learning rate of one distillation run: linear warm-up, then cosine decay to 0.

    >>> schedule = distill_schedule(3680, batch_size=512, epochs=1000)
    >>> schedule.total_steps, schedule.warmup_steps, schedule.peak_lr
    (7188, 1437, 0.003)
    """

    dataset_size: int
    batch_size: int
    total_steps: int
    warmup_steps: int
    peak_lr: float
    lr_given: bool = False

    def learning_rate(self):
        return keras.optimizers.schedules.CosineDecay(
            0.0,
            max(1, self.total_steps - self.warmup_steps),
            warmup_target=self.peak_lr,
            warmup_steps=self.warmup_steps,
        )

    def __str__(self):
        epochs = self.total_steps * self.batch_size / self.dataset_size
        lr = "(base_lr, as given)" if self.lr_given else f"(0.003 x {self.batch_size}/512)"
        rows = [
            ("dataset", f"{self.dataset_size:,} examples"),
            ("steps", f"{self.total_steps:,} at batch {self.batch_size} ({epochs:.1f} epochs)"),
            ("warm-up", f"{self.warmup_steps:,} steps, linear from 0"),
            ("learning rate", f"{self.peak_lr:g} {lr}, cosine decay to 0"),
        ]
        width = max(len(name) for name, _ in rows)
        return "Distillation schedule\n" + "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)


def distill_schedule(dataset_size, batch_size=DISTILL_BATCH_SIZE, base_lr=None, epochs=1000, steps=None):
    """The schedule of `epochs` (or exactly `steps`) over `dataset_size` examples."""
    batch_size = arguments.positive_int("batch_size", batch_size)
    dataset_size = arguments.positive_int("dataset_size", dataset_size)
    if steps is None:
        steps = max(1, round(arguments.positive_float("epochs", epochs) * dataset_size / batch_size))
    steps = arguments.positive_int("steps", steps)
    peak_lr = BASE_LR * batch_size / 512 if base_lr is None else arguments.positive_float("base_lr", base_lr)
    return DistillSchedule(dataset_size, batch_size, steps, min(WARMUP_STEPS, steps // 5), peak_lr, base_lr is not None)


class BiTDistiller:
    """Distils a BiT teacher into a BiT student with the patient-and-consistent recipe.

    Args:
        teacher: the teacher: a `bit_keras.BiT` classifier, or anything
            `bit_keras.BiT(weights=...)` reads (a release or weights name, a
            checkpoint file, a `.keras` file, an exported TF-Hub module). It
            is frozen and runs in inference mode; its weights never change.
        student: a `bit_keras.BiT` classifier with the teacher's classes, or a
            variant name / `bit_keras.Variant`, built with `student_weights`
            and a new head of the teacher's classes.
        student_weights: for a student variant: "release" (default, the
            variant's released checkpoint), None (random weights) or any
            `BiT` weights.
        recipe: a `config.DistillRecipe` (`loss`, `temperature`, `alpha`,
            `consistent`, `mixup_alpha`, `epochs` / `steps`, `base_lr`,
            `image_size`, `teacher_size`, `crop_area`, `flip`); its fields also
            as keyword arguments and attributes.
        run: a `config.RunConfig` (`batch_size`, the recipe's 512, and the
            rest as for `BiTFineTuner`); its fields also as keyword arguments.

    Example:

    >>> import numpy as np, bit_keras
    >>> teacher = bit_keras.BiT("R1-1-1-1x2", num_classes=3)
    >>> distiller = bit_keras.BiTDistiller(teacher, "R1-1-1-1x1", student_weights=None, batch_size=4, steps=2, image_size=32)
    >>> history = distiller.fit((np.zeros((8, 40, 40, 3), "uint8"), np.arange(8) % 3), verbose=0)  # doctest: +ELLIPSIS
    Distillation schedule
    ...
    >>> distiller.student.output.shape
    (None, 3)
    """

    def __init__(self, teacher, student, recipe=None, run=None, *, student_weights="release", **settings):
        self.recipe, run = config.resolve(config.DistillRecipe, recipe, run, settings, batch_size=DISTILL_BATCH_SIZE)
        self.engine = training.Engine(run)
        self.teacher = self._teacher(teacher)
        self.num_classes = _classes(self.teacher, "teacher")
        self.student = self._student(student, student_weights)
        # After the student: copying the teacher under a strategy draws random numbers, which
        # must not change the student's initialisation between one device and several.
        self.teacher = self.engine.adopt(self.teacher)
        self.model = self._pair()

    @property
    def view_size(self):
        """The side of the augmented view: the larger of the two resolutions, each model resizing it to its own."""
        return max(self.image_size, self.teacher_resolution)

    @property
    def teacher_resolution(self):
        return self.teacher_size or self.image_size

    def schedule(self, dataset_size):
        """The `DistillSchedule` this distiller runs over `dataset_size` examples."""
        return distill_schedule(dataset_size, self.engine.batch_size, self.base_lr, self.epochs, self.steps)

    def fit(self, train, validation_data=None, callbacks=None, verbose="auto"):
        """Distils on `train` (a `data.Source`, or (images, labels) arrays in [0, 255]); returns the `History`.

        Validation reports the student's top-1 (`val_accuracy`, which picks
        `best.keras`), the teacher's (`val_teacher_accuracy`) and their top-1
        agreement (`val_agreement`).
        """
        source = self._source(train, "train")
        data.first_example(source)
        schedule = self.schedule(source.num_examples)
        print(schedule)
        print(
            f"  {'loss':<13}  {self.loss}"
            + (f", T={self.temperature:g}, alpha={self.alpha:g}" if self.loss == "hinton" else f", T={self.temperature:g}")
        )
        print(f"  {'views':<13}  {'consistent' if self.consistent else 'fixed teacher'}, mixup alpha {self.mixup_alpha:g}")
        self._compile(schedule)
        validation = None
        if validation_data is not None:
            validation = self._eval_pipeline(validation_data, "validation_data")
        fingerprint = {
            "dataset_size": source.num_examples,
            "data": data.digest(source),
            # The name alone would let a resume continue with another teacher of the same architecture.
            "teacher": f"{self.teacher.name} {weights_digest(self.teacher)}",
            **config.fingerprint(self.recipe),
        }
        if source.class_names:
            # What the student's head now predicts, as the fine-tuner names its model's.
            self.student.class_names = tuple(source.class_names)
        return self.engine.fit(
            self.model,
            lambda start_batch: self.train_pipeline(source, start_batch),
            schedule.total_steps,
            validation=validation,
            fingerprint=fingerprint,
            callbacks=callbacks or (),
            verbose=verbose,
            best_model=self.student,
        )

    def train_pipeline(self, source, start_batch=0):
        """The training stream of `fit`: (views, mixed one-hot labels) micro-batches from global batch `start_batch` on.

        The views are one image batch when `consistent` (teacher and student
        read the same pixels), else (student's augmented view, teacher's
        un-augmented view).
        """
        return data.upstream_pipeline(
            source,
            image_size=self.view_size,
            batch_size=self.engine.batch_size,
            seed=self.engine.seed,
            batch_split=self.engine.batch_split,
            start_batch=start_batch,
            crop_area=self.crop_area,
            flip=self.flip,
            mixup_alpha=self.mixup_alpha,
            teacher_view=None if self.consistent else self.teacher_resolution,
        )

    def evaluate(self, data_source, verbose="auto"):
        """The student's top-1 (`accuracy`), the teacher's (`teacher_accuracy`) and their `agreement` on `data_source`."""
        if getattr(self.model, "optimizer", None) is None:
            self._compile(self.schedule(1))
        with self.engine.scope():
            results = self.model.evaluate(self._eval_pipeline(data_source, "data_source"), return_dict=True, verbose=verbose)
        return {name: results[name] for name in ("loss", "accuracy", "teacher_accuracy", "agreement")}

    # ------------------------------------------------------------------ internals

    def _source(self, data_source, name):
        """`data_source` as a `data.Source`, refused when its classes are not the teacher's."""
        source = data.as_source(data_source, self.num_classes)
        if source.num_classes != self.num_classes:
            raise ValueError(
                f"{name} has {source.num_classes} classes but the teacher {self.num_classes}: the teacher's outputs are "
                f"the targets, so it must be fine-tuned on these classes first (bit_keras.BiTFineTuner, or "
                f"bit-keras finetune ... --save teacher.keras)."
            )
        return source

    def _eval_pipeline(self, data_source, name):
        return data.eval_pipeline(
            self._source(data_source, name),
            crop=self.view_size,
            batch_size=self.engine.micro_batch,
            teacher_view=None if self.consistent else self.teacher_resolution,
        )

    def _pair(self):
        with self.engine.scope():
            return pair_model(
                self.student, self.teacher, self.view_size, self.image_size, self.teacher_resolution, self.consistent
            )

    def _compile(self, schedule):
        self.model = self._pair()  # the recipe's sizes and views may have changed since the last run
        loss = DistillationLoss(self.num_classes, self.loss, self.temperature, self.alpha)
        self.engine.compile(
            self.model,
            self.engine.optimizer(schedule.learning_rate()),
            schedule.total_steps,
            loss=loss,
            metrics=pair_metrics(self.num_classes),
        )

    def _teacher(self, teacher):
        if isinstance(teacher, keras.Model):
            model = teacher
        else:
            try:
                with self.engine.scope():
                    model = BiT(None, weights=teacher, mixed_precision=self.engine.run.mixed_precision)
            except ValueError as error:
                # BiT's advice (pass the variant, num_classes=) names arguments the teacher= cannot take.
                raise ValueError(
                    f"teacher={teacher!r} could not be read as a classifier: {error} The distiller reads a teacher "
                    f"from its weights alone; to say more, build it yourself, bit_keras.BiT(variant, weights=..., "
                    f"num_classes=...), and pass the model as teacher=."
                ) from None
        if HEAD_LAYER not in {layer.name for layer in model.layers}:
            raise ValueError(
                f"The teacher must be a classifier (its logits are the targets), its output layer named {HEAD_LAYER!r} "
                f"as a bit_keras.BiT's; {model.name!r} has none. Pass the BiT fine-tuned on the task (built with "
                f"include_top=True), or the file it was saved to."
            )
        return model

    def _student(self, student, weights):
        if student is self.teacher:
            raise ValueError(
                "The student is the teacher model itself: the teacher is frozen, so nothing would train. Pass another "
                "model, or a variant name (e.g. student='BiT-M-R50x1'), as the student."
            )
        if isinstance(student, keras.Model):
            classes = _classes(student, "student")
            if classes != self.num_classes:
                raise ValueError(
                    f"The student has {classes} outputs but the teacher {self.num_classes}: it needs one per class of the "
                    f"teacher (a BiT student: bit_keras.BiT(..., num_classes={self.num_classes}))."
                )
            return self.engine.adopt(student)
        if weights == "release":
            weights = release_name(student)
        with self.engine.scope():
            return BiT(student, weights=weights, num_classes=self.num_classes, mixed_precision=self.engine.run.mixed_precision)


_FIX = {
    "teacher": "Pass a fine-tuned BiT classifier, or the file it was saved to.",
    "student": "Pass a variant name (e.g. student='BiT-M-R50x1'), or bit_keras.BiT(variant, num_classes=...).",
}


def _classes(model, role):
    """The number of logits of the `role` ("teacher" or "student") model, or an error saying what it must be."""
    try:
        return int(model.output.shape[-1])
    except (AttributeError, ValueError):  # Keras: "has never been called and thus has no defined output"
        raise ValueError(
            f"The {role} {model.name!r} ({type(model).__name__}) has no defined output: the {role} must be a "
            f"bit_keras.BiT classifier, or a functional Keras model built on its input (keras.Input), whose output "
            f"is one logit per class. {_FIX[role]}"
        ) from None


config.recipe_properties(BiTDistiller, config.DistillRecipe)
