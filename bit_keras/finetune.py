"""`BiTFineTuner`: BiT-HyperRule fine-tuning in one call, on top of `model.fit`."""

import contextlib
import math
import os
import tempfile
import warnings

import keras
import numpy as np

from bit_keras import checkpoints, data, hyperrule
from bit_keras.models import BiT

FREEZE_POINTS = ("root", "block1", "block2", "block3", "block4", "head_only")
EVALUATIONS_PER_RUN = 10  # "epochs" of a run: progress bars, validation and backups


class BiTFineTuner:
    """Fine-tunes a BiT model with the BiT-HyperRule: no hyper-parameter search.

    The rule sets the resolution from the image size, the number of steps, the
    warm-up, the learning-rate decays and mixup from the dataset size. The
    decisions are readable before training (`resolution`, `total_steps`,
    `mixup_alpha`, `learning_rate`) and printed when `fit` starts.

    Args:
        model_or_variant: a `bit_keras.BiT` model, or a variant name such as
            "BiT-M-R50x1" (its released weights are used, see `weights`).
        dataset_size: training examples; read from the data when it is a
            `bit_keras.data.Source` or arrays.
        image_size: (height, width) of the original images; read from the
            first training example when not given.
        num_classes: classes of the task; the model's head must have as many.
        batch_size: the global batch (512 in the rule); the LR scales with it.
        base_lr: LR at batch 512 (0.003 in the rule).
        batch_split: accumulate gradients over this many micro-batches, so a
            batch of 512 fits in small memory. GroupNorm has no batch
            statistics, so the update equals the whole batch's.
        rule: "paper" (448 -> 384 px for large images) or "official" (512 -> 480).
        strategy: a `tf.distribute.Strategy` to build and train under.
        mixed_precision: None, "mixed_bfloat16" or "mixed_float16"; needs a
            variant name, since an existing model keeps its dtype policy.
        checkpoint_dir: where to back up training (a run resumes from there
            after an interruption) and keep the best model (`best.keras`).
        seed: seeds weights, the data order, augmentation and mixup.
        freeze: None (train everything), "head_only", or a stage ("root",
            "block1".."block4"): that stage and all before it are frozen.
        weights: for a variant name, what to load: "release" (default: the
            released checkpoint of that name), None, or any `BiT` weights.
        steps: override the rule's number of steps (warm-up and decays scale
            with it), for quick runs and demos.
        sizes: override the rule's (resize, crop), for quick runs and demos.

    Example:

    >>> import numpy as np, bit_keras
    >>> model = bit_keras.BiT(bit_keras.Variant((1, 1, 1, 1)), num_classes=10)
    >>> tuner = bit_keras.BiTFineTuner(model, dataset_size=50_000, image_size=(32, 32))
    >>> tuner.resolution, tuner.total_steps, tuner.mixup_alpha
    ((160, 128), 10000, 0.1)
    """

    def __init__(
        self,
        model_or_variant,
        *,
        dataset_size=None,
        image_size=None,
        num_classes=None,
        batch_size=hyperrule.REFERENCE_BATCH_SIZE,
        base_lr=hyperrule.BASE_LR,
        batch_split=1,
        rule="paper",
        strategy=None,
        mixed_precision=None,
        checkpoint_dir=None,
        seed=None,
        freeze=None,
        weights="release",
        steps=None,
        sizes=None,
    ):
        if batch_split < 1 or batch_size % batch_split:
            raise ValueError(f"batch_split={batch_split} must be a positive divisor of batch_size={batch_size}.")
        if freeze not in (None,) + FREEZE_POINTS:
            raise ValueError(f"freeze must be None or one of {FREEZE_POINTS}, got {freeze!r}.")
        hyperrule.resolution((1, 1), rule)  # validates the rule name now, not at fit time
        self.dataset_size = dataset_size
        self.image_size = image_size
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.base_lr = base_lr
        self.batch_split = batch_split
        self.rule = rule
        self.strategy = strategy
        self.checkpoint_dir = checkpoint_dir
        self.seed = seed
        self.freeze = freeze
        self.steps = steps
        self.sizes = sizes
        if seed is not None:
            keras.utils.set_random_seed(seed)
        self.model = self._build(model_or_variant, mixed_precision, weights)
        self._compiled = False

    # ------------------------------------------------------------- the rule's decisions

    @property
    def hyperrule(self):
        if self.dataset_size is None or self.image_size is None:
            raise ValueError(
                "The HyperRule needs dataset_size= and image_size=; pass them to BiTFineTuner, "
                "or call fit() with a bit_keras.data.Source or arrays, which carry both."
            )
        return hyperrule.HyperRule(
            self.dataset_size, tuple(self.image_size), self.batch_size, self.base_lr, self.rule, self.steps, self.sizes
        )

    @property
    def resolution(self):
        return self.hyperrule.resolution

    @property
    def total_steps(self):
        return self.hyperrule.total_steps

    @property
    def mixup_alpha(self):
        return self.hyperrule.mixup_alpha

    @property
    def learning_rate(self):
        return self.hyperrule.learning_rate(steps_per_update=self.batch_split)

    # ------------------------------------------------------------------- training

    def fit(self, train, validation_data=None, callbacks=None, verbose="auto"):
        """Fine-tunes for exactly the HyperRule's steps; returns the `History`.

        Args:
            train: a `bit_keras.data.Source`, a tuple (images, labels) of
                arrays with pixels in [0, 255], or an unbatched `tf.data.Dataset`
                of (image, label) pairs (then pass dataset_size= and num_classes=).
            validation_data: the same kinds, evaluated at the crop size.
            callbacks: extra Keras callbacks.
        """
        source = self._source(train)
        self._adopt(source)
        rule = self.hyperrule
        micro_batch = self.batch_size // self.batch_split
        print(rule)
        if self.batch_split > 1:
            print(f"  gradient accumulation over {self.batch_split} micro-batches of {micro_batch}")
        pipeline = data.train_pipeline(
            source,
            resize=rule.resize,
            crop=rule.crop,
            batch_size=micro_batch,
            mixup_alpha=rule.mixup_alpha,
            seed=self.seed,
        )
        validation = None
        if validation_data is not None:
            validation = data.eval_pipeline(self._source(validation_data), crop=rule.crop, batch_size=micro_batch)
        self._compile()
        micro_steps = rule.total_steps * self.batch_split
        epochs = max(n for n in range(1, EVALUATIONS_PER_RUN + 1) if micro_steps % n == 0)
        stop_on_nan = _StopOnNaN(self.checkpoint_dir)
        all_callbacks = [stop_on_nan] + self._checkpoint_callbacks(validation is not None) + list(callbacks or [])
        return self.model.fit(
            pipeline,
            validation_data=validation,
            steps_per_epoch=micro_steps // epochs,
            epochs=epochs,
            callbacks=all_callbacks,
            shuffle=False,  # the pipeline shuffles
            verbose=verbose,
        )

    def evaluate(self, data_source, verbose="auto"):
        """Loss and accuracy on `data_source` at the HyperRule's crop size, as a dict."""
        source = self._source(data_source)
        pipeline = data.eval_pipeline(source, crop=self.hyperrule.crop, batch_size=self.batch_size // self.batch_split)
        self._compile()
        return self.model.evaluate(pipeline, return_dict=True, verbose=verbose)

    def predict(self, images, verbose=0):
        """Logits for images with pixels in [0, 255] (N, H, W, 3), resized to the crop size."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(f"predict takes a batch of images (N, H, W, 3) with pixels in [0, 255]; got shape {images.shape}.")
        crop = self.hyperrule.crop
        resized = keras.ops.image.resize(images.astype("float32"), (crop, crop))
        if images.shape[-1] == 1:
            resized = keras.ops.repeat(resized, 3, axis=-1)
        return self.model.predict((resized - 127.5) / 127.5, batch_size=self.batch_size // self.batch_split, verbose=verbose)

    # ------------------------------------------------------------------ internals

    def _scope(self):
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def _build(self, model_or_variant, mixed_precision, weights):
        if isinstance(model_or_variant, keras.Model):
            model = model_or_variant
            if mixed_precision and model.dtype_policy.name != mixed_precision:
                raise ValueError(
                    f"The model was built with dtype policy {model.dtype_policy.name!r}, not {mixed_precision!r}. "
                    f"Pass the variant name instead of a model, or build it after "
                    f"keras.config.set_dtype_policy({mixed_precision!r})."
                )
            if self.strategy is not None:
                model = self._rebuild_under_strategy(model)
        else:
            if weights == "release":
                weights = model_or_variant if checkpoints.find_release(str(model_or_variant)) else None
                if weights is None:
                    warnings.warn(
                        f"{model_or_variant} has no released weights: fine-tuning starts from random weights. "
                        f"Pass weights= a checkpoint to transfer from one.",
                        stacklevel=3,
                    )
            previous = keras.config.dtype_policy()
            if mixed_precision:
                keras.config.set_dtype_policy(mixed_precision)
            try:
                with self._scope():
                    model = BiT(model_or_variant, weights=weights, num_classes=self.num_classes)
            finally:
                keras.config.set_dtype_policy(previous)
        self._check_head(model)
        self._zero_head(model)
        self._apply_freeze(model)
        return model

    def _rebuild_under_strategy(self, model):
        with self.strategy.scope():
            clone = keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
        return clone

    def _check_head(self, model):
        if "head" not in {layer.name for layer in model.layers}:
            raise ValueError("BiTFineTuner needs a classifier: build the model with include_top=True and num_classes=.")
        classes = model.get_layer("head").units
        if self.num_classes is None:
            self.num_classes = classes
        elif classes != self.num_classes:
            raise ValueError(
                f"The model's head has {classes} classes but num_classes={self.num_classes}. "
                f"Build it with bit_keras.BiT(..., num_classes={self.num_classes})."
            )

    @staticmethod
    def _zero_head(model):
        for variable in model.get_layer("head").weights:
            variable.assign(keras.ops.zeros(variable.shape, variable.dtype))

    def _apply_freeze(self, model):
        if self.freeze is None:
            return
        frozen_stages = FREEZE_POINTS[: FREEZE_POINTS.index(self.freeze) + 1]
        for layer in model.layers:
            stage = "root" if layer.name.startswith("root") else layer.name.split("_")[0]
            if self.freeze == "head_only":
                layer.trainable = layer.name == "head"
            elif stage in frozen_stages:
                layer.trainable = False

    def _compile(self):
        if self._compiled:
            return
        with self._scope():
            optimizer = keras.optimizers.SGD(
                learning_rate=self.learning_rate,
                momentum=0.9,
                gradient_accumulation_steps=self.batch_split if self.batch_split > 1 else None,
            )
            self.model.compile(
                optimizer=optimizer,
                loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
            )
        self._compiled = True

    def _checkpoint_callbacks(self, has_validation):
        if self.checkpoint_dir is None:
            return []
        os.makedirs(self.checkpoint_dir, exist_ok=True)
        return [
            keras.callbacks.BackupAndRestore(os.path.join(self.checkpoint_dir, "backup"), delete_checkpoint=False),
            _KeepBest(os.path.join(self.checkpoint_dir, "best.keras"), "val_accuracy" if has_validation else "loss"),
        ]

    def _source(self, train):
        if isinstance(train, data.Source):
            return train
        if isinstance(train, (tuple, list)) and len(train) == 2:
            return data.from_arrays(np.asarray(train[0]), np.asarray(train[1]), num_classes=self.num_classes)
        import tensorflow as tf

        if isinstance(train, tf.data.Dataset):
            if self.dataset_size is None or self.num_classes is None:
                raise ValueError("With a tf.data.Dataset, pass dataset_size= and num_classes= to BiTFineTuner.")
            return data.Source(train, self.dataset_size, self.num_classes)
        raise TypeError(
            f"Training data must be a bit_keras.data.Source, (images, labels) arrays or a tf.data.Dataset "
            f"of (image, label) pairs; got {type(train).__name__}."
        )

    def _adopt(self, source):
        if source.num_classes != self.num_classes:
            raise ValueError(f"The data has {source.num_classes} classes but the model's head has {self.num_classes}.")
        if self.dataset_size is None:
            self.dataset_size = source.num_examples
        if self.image_size is None:
            image, _ = next(iter(source.dataset.take(1)))
            self.image_size = tuple(int(d) for d in image.shape[:2])


class _StopOnNaN(keras.callbacks.Callback):
    """Raises on a NaN or infinite loss, before anything is saved from the bad weights."""

    def __init__(self, checkpoint_dir):
        super().__init__()
        self.checkpoint_dir = checkpoint_dir

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            kept = f"the last good backup is kept in {self.checkpoint_dir}" if self.checkpoint_dir else "no checkpoint_dir was set"
            raise FloatingPointError(
                f"The training loss became {float(loss)} at batch {batch}; {kept}. Lower base_lr, "
                f"or use batch_split= instead of a smaller batch_size."
            )


class _KeepBest(keras.callbacks.Callback):
    """Saves the model when the monitored metric improves, via a temporary file."""

    def __init__(self, path, monitor):
        super().__init__()
        self.path = path
        self.monitor = monitor
        self.best = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        better = self.best is None or (value > self.best if "acc" in self.monitor else value < self.best)
        if better:
            self.best = value
            fd, tmp = tempfile.mkstemp(suffix=".keras", dir=os.path.dirname(self.path))
            os.close(fd)
            try:
                self.model.save(tmp)
                os.replace(tmp, self.path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
