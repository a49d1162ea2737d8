"""`BiTFineTuner`: BiT-HyperRule fine-tuning in one call, on top of `model.fit`."""

import warnings

import keras
import numpy as np

from bit_keras import arguments, checkpoints, config, data, hyperrule, preprocess, training
from bit_keras.folding import fold
from bit_keras.models import BiT
from bit_keras.resnet import HEAD_LAYER, get_variant, stage_of, variants


def release_name(variant):
    """The release to load for `weights="release"`: the variant's own name, or a clear error.

    A `Variant` object and its name resolve alike (the lookup is by `Variant.name`).

    >>> release_name(get_variant("BiT-M-R50x1"))
    'BiT-M-R50x1'
    """
    name = get_variant(variant).name
    if checkpoints.find_release(name) is None:
        raise ValueError(
            f'weights="release": {name} has no released weights (released: {", ".join(variants())}). '
            f"Pass one of those variants, weights= a checkpoint to transfer from, or weights=None "
            f"(--weights none) to fine-tune from random weights."
        )
    return name


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
        recipe: a `config.FineTuneRecipe`: what changes in the rule
            (`base_lr`, `rule`, `steps`, `sizes`, `flip`, `random_crop`,
            `freeze`, `zero_head`); its fields can also be passed as keyword
            arguments, and read or set as attributes between runs.
        run: a `config.RunConfig`: `batch_size` (the global batch, 512 in the
            rule), `batch_split`, `strategy` / `tpu`, `mixed_precision` (for a
            variant; an existing model keeps its dtype policy),
            `checkpoint_dir` (a restart with the same arguments resumes from
            the last backup and ends as an uninterrupted run would; it keeps
            `best.keras`, chosen on the validation data), `backup_every`,
            `seed`, `jit_compile`; also as keyword arguments.
        weights: for a variant (name or `Variant`), what to load: "release"
            (default: the released checkpoint of that name; an error for a
            variant that has none), None (random weights), or any `BiT` weights.

    `base_lr=None` is the rule's LR, 0.003 at batch 512 scaled linearly with
    the batch; a number is the peak LR used as given, as the official flag.
    `freeze` takes None, "head_only" or a stage ("root", "block1".."block4"):
    that stage and all before it are frozen, while the final GroupNorm and
    the head train. `flip=False` and `random_crop=False` leave out
    augmentations that would change the label (digits, text).

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
        recipe=None,
        run=None,
        *,
        dataset_size=None,
        image_size=None,
        num_classes=None,
        weights="release",
        **settings,
    ):
        self.recipe, run = config.resolve(config.FineTuneRecipe, recipe, run, settings, batch_size=hyperrule.REFERENCE_BATCH_SIZE)
        self.engine = training.Engine(run)
        self.dataset_size = None if dataset_size is None else hyperrule.check_dataset_size(dataset_size)
        self.image_size = None if image_size is None else arguments.image_size(image_size)
        self._given_sizes = (self.dataset_size, self.image_size)  # the rest is read from each run's data
        self.num_classes = None if num_classes is None else arguments.positive_int("num_classes", num_classes)
        self.model = self._build(model_or_variant, weights)
        self._compiled_schedule = None
        self._kept_fold = None  # (model, its compile config, the folded copy) of the last predict or evaluate

    @property
    def batch_size(self):
        return self.engine.batch_size

    @property
    def batch_split(self):
        return self.engine.batch_split

    @property
    def strategy(self):
        return self.engine.strategy

    @property
    def checkpoint_dir(self):
        return self.engine.checkpoint_dir

    @property
    def seed(self):
        return self.engine.seed

    # ------------------------------------------------------------- the rule's decisions

    @property
    def hyperrule(self):
        if self.dataset_size is None or self.image_size is None:
            raise ValueError(
                "The HyperRule needs dataset_size= and image_size=; pass them to BiTFineTuner, "
                "or call fit() with a bit_keras.data.Source or arrays, which carry both."
            )
        return hyperrule.HyperRule(
            self.dataset_size,
            self.image_size,
            self.batch_size,
            self.base_lr,
            self.rule,
            self.steps,
            self.sizes,
            self.flip,
            self.random_crop,
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
        return self.hyperrule.learning_rate()

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
        print(rule)
        if self.batch_split > 1 or self.engine.replicas > 1:
            print(
                f"  global batch {self.batch_size}: {self.batch_split} micro-batch(es) of {self.engine.micro_batch} "
                f"over {self.engine.replicas} replica(s)"
            )

        def make_train(start_batch):
            return data.train_pipeline(
                source,
                resize=rule.resize,
                crop=rule.crop,
                batch_size=self.batch_size,
                mixup_alpha=rule.mixup_alpha,
                seed=self.engine.seed,
                batch_split=self.batch_split,
                start_batch=start_batch,
                flip=rule.flip,
                random_crop=rule.random_crop,
            )

        validation = None
        if validation_data is not None:
            validation = data.eval_pipeline(self._source(validation_data), crop=rule.crop, batch_size=self.engine.micro_batch)
        self._apply_freeze(self.model)
        self._compile()
        fingerprint = {
            "dataset_size": self.dataset_size,
            "image_size": list(self.image_size),
            "data": data.digest(source),
            **config.fingerprint(self.recipe),
        }
        return self.engine.fit(
            self.model,
            make_train,
            rule.total_steps,
            validation=validation,
            fingerprint=fingerprint,
            callbacks=callbacks or (),
            verbose=verbose,
        )

    def restart(self, weights, seed=None):
        """Makes the next `fit` a fresh run from `weights`, reusing the compiled training step.

        For several runs of one recipe (seeds, few-shot subsets): each new
        tuner traces and compiles a new training step, which on a CPU can
        take longer than a short run itself. `weights` is a list as
        `model.get_weights()` returns, e.g. taken right after the tuner was
        made; the optimizer starts over (update 0, no momentum); `seed` as in
        the constructor (None: a new one). A dataset size or image size that
        was read from the previous run's data is read again from the next
        run's. Not with `checkpoint_dir`, whose backups belong to one run.
        `freeze` is a setting of each run: set `tuner.freeze` before a
        restart to freeze another depth, or None to train everything again.

        Example:

        >>> import numpy as np, bit_keras
        >>> tuner = bit_keras.BiTFineTuner(bit_keras.BiT("R1-1-1-1x1", num_classes=2), batch_size=2, steps=1, sizes=(20, 16))
        >>> start = tuner.model.get_weights()
        >>> images, labels = np.zeros((4, 16, 16, 3), "uint8"), np.array([0, 1, 0, 1])
        >>> for seed in (0, 1):
        ...     tuner.restart(start, seed=seed)
        ...     history = tuner.fit((images, labels), verbose=0)  # doctest: +ELLIPSIS
        BiT-HyperRule...
        >>> int(tuner.model.optimizer.iterations)
        1
        """
        self.engine.restart(self.model, weights, seed)
        self.dataset_size, self.image_size = self._given_sizes

    def evaluate(self, data_source, verbose="auto"):
        """Loss and accuracy on `data_source` at the HyperRule's crop size, as a dict.

        Runs on a folded copy of the model (see `bit_keras.fold`), folded for
        this call from the current weights, with the model's loss and metrics.
        """
        source = self._source(data_source)
        pipeline = data.eval_pipeline(source, crop=self.hyperrule.crop, batch_size=self.engine.micro_batch)
        self._compile()
        with self.engine.scope():
            return self._folded().evaluate(pipeline, return_dict=True, verbose=verbose)

    def predict(self, images, verbose=0):
        """Logits for images with pixels in [0, 255] (N, H, W, 3), resized to the crop size.

        Runs on a folded copy of the model (see `bit_keras.fold`), folded for
        this call from the current weights.
        """
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(f"predict takes a batch of images (N, H, W, 3) with pixels in [0, 255]; got shape {images.shape}.")
        if images.size and images.min() < 0:
            raise ValueError(
                f"predict takes pixels in [0, 255]; these images reach {images.min():g}. For images in [-1, 1] "
                f"pass (images + 1) * 127.5, or call tuner.model.predict(images) directly."
            )
        if images.size and images.dtype != np.uint8 and images.max() <= 1:
            warnings.warn(
                f"predict takes pixels in [0, 255], but these images are at most {images.max():g}: if they are in "
                f"[0, 1], pass images * 255.",
                stacklevel=2,
            )
        crop = self.hyperrule.crop
        resized = keras.ops.image.resize(images.astype("float32"), (crop, crop))
        if images.shape[-1] == 1:
            resized = keras.ops.repeat(resized, 3, axis=-1)
        with self.engine.scope():
            return self._folded().predict(preprocess.to_model_range(resized), batch_size=self.engine.micro_batch, verbose=verbose)

    # ------------------------------------------------------------------ internals

    def _folded(self):
        """The model folded (`bit_keras.fold`) from its current weights, compiled for inference, for one call.

        The weights cannot change during one `predict` or `evaluate`, so the
        standardised kernels are computed once for the call instead of on
        every batch. The copy has the model's loss and metrics, and
        `jit_compile=True` under JAX. Every call folds from the weights as
        they are then; the copy of the last call is refolded in place
        (`fold(model, into=)`) so its traced steps are reused, unless the
        model or its compile settings changed since. The copy holds a second
        set of the weights. Call under `engine.scope()`, where the copy's
        variables and traced steps belong.
        """
        # The same loss and metrics; not the optimizer, which only training uses.
        compiled = {key: value for key, value in self.model.get_compile_config().items() if key != "optimizer"}
        if self._kept_fold and self._kept_fold[0] is self.model and self._kept_fold[1] == compiled:
            return fold(self.model, into=self._kept_fold[2])
        folded = fold(self.model)
        settings = keras.saving.deserialize_keras_object(compiled) if compiled else {}  # {} before `fit` or `evaluate`
        if keras.backend.backend() == "jax":
            settings["jit_compile"] = True  # one XLA program for the whole forward pass
        elif keras.backend.backend() == "tensorflow":
            # TensorFlow keeps every XLA program it compiles for the life of the process: a whole-model
            # program per copy grew a suite by ~10 MB a run (benchmarks/bench_memory.py), where GroupNorm's
            # clusters, shared by every layer and model, compile once per shape (docs/performance.md).
            settings["jit_compile"] = False
        folded.compile(**settings)
        self._kept_fold = (self.model, compiled, folded)
        return folded

    def _build(self, model_or_variant, weights):
        mixed_precision = self.engine.run.mixed_precision
        if isinstance(model_or_variant, keras.Model):
            model = model_or_variant
            if mixed_precision and model.dtype_policy.name != mixed_precision:
                raise ValueError(
                    f"The model was built with dtype policy {model.dtype_policy.name!r}, not {mixed_precision!r}. "
                    f"Pass the variant name instead of a model, or build it after "
                    f"keras.config.set_dtype_policy({mixed_precision!r})."
                )
            model = self.engine.adopt(model)
        else:
            if weights == "release":
                weights = release_name(model_or_variant)
            with self.engine.scope():
                model = BiT(model_or_variant, weights=weights, num_classes=self.num_classes, mixed_precision=mixed_precision)
        self._check_head(model)
        if self.zero_head:
            self._zero_head(model)
        self._apply_freeze(model)
        return model

    def _check_head(self, model):
        if HEAD_LAYER not in {layer.name for layer in model.layers}:
            raise ValueError("BiTFineTuner needs a classifier: build the model with include_top=True and num_classes=.")
        classes = model.get_layer(HEAD_LAYER).units
        if self.num_classes is None:
            self.num_classes = classes
        elif classes != self.num_classes:
            raise ValueError(
                f"The model's head has {classes} classes but num_classes={self.num_classes}. "
                f"Build it with bit_keras.BiT(..., num_classes={self.num_classes})."
            )

    @staticmethod
    def _zero_head(model):
        for variable in model.get_layer(HEAD_LAYER).weights:
            variable.assign(keras.ops.zeros(variable.shape, variable.dtype))

    def _apply_freeze(self, model):
        """Makes exactly the layers before `freeze` untrainable, and every other layer trainable again."""
        points = config.FREEZE_POINTS
        frozen_stages = () if self.freeze is None else points[: points.index(self.freeze) + 1]
        for layer in model.layers:
            stage = stage_of(layer.name)
            if self.freeze == "head_only":
                layer.trainable = layer.name == HEAD_LAYER
            else:
                layer.trainable = stage not in frozen_stages

    def _compile(self):
        # The compiled step depends on the data only through the LR schedule:
        # a run whose schedule is unchanged (see `restart`) keeps the traced step.
        schedule = self.learning_rate
        compiled = (schedule.get_config(), self.freeze)  # trainability changes the compiled step too
        if compiled == self._compiled_schedule:
            return
        self.engine.compile(self.model, self.engine.optimizer(schedule), schedule.total_steps)
        self._compiled_schedule = compiled

    def _source(self, train):
        return data.as_source(train, self.num_classes, self.dataset_size)

    def _adopt(self, source):
        if source.num_classes != self.num_classes:
            raise ValueError(f"The data has {source.num_classes} classes but the model's head has {self.num_classes}.")
        if self.dataset_size is None:
            self.dataset_size = source.num_examples
        image, _ = data.first_example(source)
        if image.dtype.is_floating and float(keras.ops.max(image)) <= 1:
            warnings.warn(
                f"fit takes pixels in [0, 255], but the first training image is {image.dtype.name} with values at most "
                f"{float(keras.ops.max(image)):g}: if the images are in [0, 1], multiply them by 255 (training on "
                f"near-constant input learns nothing).",
                stacklevel=3,
            )
        if self.image_size is None:
            self.image_size = tuple(int(d) for d in image.shape[:2])
        if source.class_names:
            # What the head now predicts; `save_transformers` and `hub_export` write them with the model.
            self.model.class_names = tuple(source.class_names)


config.recipe_properties(BiTFineTuner, config.FineTuneRecipe)
