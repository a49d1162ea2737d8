"""The one training engine under `BiTFineTuner` and `BiTPretrainer`.

A trainer brings a recipe: the model, the optimizer, the number of optimizer
updates and an input stream that can start at any update. The engine owns the
rest, the same for both trainers:

- where it runs: a strategy name or instance (`distribute.resolve_strategy`),
  every variable built and every step run under it;
- the global batch: `batch_size` examples per optimizer update, split over
  the replicas and over `batch_split` micro-batches (gradient accumulation).
  GroupNorm has no batch statistics, so the updates do not depend on the split;
- backups (`backups`): atomic, step-numbered, the newest two kept; a restart
  with the same arguments restores weights, optimizer, step, seed, the
  position in the input stream and the best-model tracking, so it ends where
  an uninterrupted run would;
- the NaN stop, checked every few steps rather than every step;
- the best model, `best.keras`, written through a temporary file.
"""

import contextlib
import math
import os
import warnings

import keras
import numpy as np

from bit_keras import arguments, config, distribute, layers
from bit_keras.training.backups import BACKUP_FOLDER, BEST_MODEL, BackupEachEpoch, Backups, KeepBest, run_lock
from bit_keras.training.losses import loss_function
from bit_keras.training.optimizer import AccumulatingSGD

EVALUATIONS_PER_RUN = 10  # "epochs" of a run: progress bars, validation and backups
NAN_CHECK_EVERY = 10  # steps between reads of the loss; every read waits for the device
XLA_MIN_UPDATES = 100  # shorter runs do not repay GroupNorm's XLA compile time


class Engine:
    """Runs a recipe's optimizer updates on any strategy, with backups and resume.

    Args:
        run: a `config.RunConfig` (or its fields as keyword arguments): the
            global batch and its split, the strategy, mixed precision, the
            checkpoint folder (`backup/` and `best.keras`) and how often to
            back up, the seed (None draws one, which backups keep so that a
            resumed run continues the same stream), and `jit_compile` (see
            `xla`). The trainers build the model under `scope()` and hand it
            over; the engine never builds one.

    Example:

    >>> engine = Engine(batch_size=64, batch_split=4)
    >>> engine.micro_batch, engine.replicas
    (16, 1)
    """

    def __init__(self, run=None, **settings):
        self.run = run = config.as_config(config.RunConfig, run, "run") if run is not None else config.RunConfig(**settings)
        self.jit_compile = run.jit_compile
        self.batch_size = run.batch_size
        self.batch_split = run.batch_split
        self.backup_every = run.backup_every
        self.strategy = distribute.resolve_strategy(run.strategy, run.tpu, run.connect_timeout)
        self.replicas = distribute.num_replicas(self.strategy)
        if self.batch_size % (self.batch_split * self.replicas):
            raise ValueError(
                f"batch_size={self.batch_size} must divide into batch_split={self.batch_split} micro-batches over "
                f"{self.replicas} replica(s), i.e. be a multiple of {self.batch_split * self.replicas}. "
                f"Change batch_size or batch_split."
            )
        self.checkpoint_dir = run.checkpoint_dir
        self.fused = True  # until `compile` knows the run's length
        self._set_seed(run.seed)

    def _set_seed(self, seed):
        self.seed_given = seed is not None
        self.seed = (
            arguments.non_negative_int("seed", seed) if seed is not None else int(np.random.SeedSequence().entropy % 2**31)
        )
        keras.utils.set_random_seed(self.seed)

    @property
    def micro_batch(self):
        """Examples per micro-step over all replicas."""
        return self.batch_size // self.batch_split

    def optimizer(self, learning_rate, weight_decay=0.0):
        """SGD with momentum 0.9 that updates once per global batch, made under the strategy."""
        with self.scope():
            return AccumulatingSGD(learning_rate, 0.9, weight_decay, accumulation_steps=self.batch_split)

    @contextlib.contextmanager
    def scope(self):
        """The strategy's scope, in which the engine builds and runs; unfused for the runs `compile` names."""
        with distribute.scope(self.strategy), contextlib.nullcontext() if self.fused else layers.unfused():
            with warnings.catch_warnings():
                # Keras says "Your input ran out of data" at the end of every pass over a dataset of unknown
                # size (a folder's, TFDS's): the normal end of an evaluation. Training streams repeat forever,
                # so under the engine the warning never means a fault, and users read it as one.
                warnings.filterwarnings("ignore", message="Your input ran out of data", category=UserWarning)
                yield

    def adopt(self, model):
        """`model`, or its copy with variables made under the strategy when they were made outside it."""
        if self.strategy is None or not hasattr(self.strategy, "extended"):
            return model
        if all(self.strategy.extended.variable_created_in_scope(v.value) for v in model.weights):
            return model
        with self.scope():
            clone = keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
        return clone

    def compile(self, model, optimizer, total_steps, loss="softmax", metrics=None):
        """Compiles `model` for soft-label (mixup) classification from logits, with every object made under the strategy.

        `loss` is "softmax" (categorical cross-entropy), "sigmoid" (see
        `SigmoidCrossEntropy`) or a `keras.losses.Loss` of a recipe's own;
        `metrics` are the top-1 `accuracy` by default.

        `jit_compile` is the run's, and Keras decides "auto": XLA on a GPU and
        under JAX, off on a CPU under TensorFlow, where a whole-step XLA
        program trains no faster than TensorFlow's own kernels
        (`benchmarks/bench_step.py`: `bit_keras/tf-xla` against
        `bit_keras/tf`) and, as every XLA program TensorFlow compiles, stays
        in its compilation cache for the life of the process: ~40 MB a run
        for a 4-unit BiT (docs/performance.md). Runs shorter than
        `XLA_MIN_UPDATES`, and runs with `jit_compile=False`, trace their
        steps (training, `evaluate`, `predict`) under `layers.unfused()`: no
        XLA at all, not even GroupNorm's shared clusters.
        """
        self.fused = self.jit_compile is not False and total_steps >= XLA_MIN_UPDATES
        with self.scope():
            model.compile(
                optimizer=optimizer,
                loss=loss_function(loss) if isinstance(loss, str) else loss,
                metrics=metrics or [keras.metrics.CategoricalAccuracy(name="accuracy")],
                jit_compile=self.jit_compile,
            )

    def restart(self, model, weights, seed=None):
        """Makes the next `fit` of a compiled `model` a fresh run from `weights`, keeping its compiled step.

        The optimizer starts over (update 0, no momentum) and `seed` (None: a
        new one) seeds the new run's stream as the constructor's does.
        """
        if self.checkpoint_dir:
            raise ValueError(
                f"restart() cannot be combined with checkpoint_dir={self.checkpoint_dir!r}: the next fit would resume "
                f"the previous run's backups. Make a new trainer with another checkpoint_dir for each run."
            )
        with self.scope():
            model.set_weights(weights)
            if getattr(model, "optimizer", None) is not None:  # not compiled yet: nothing to reset
                model.optimizer.reset()
        self._set_seed(seed)

    def fit(
        self,
        model,
        make_train,
        total_steps,
        *,
        validation=None,
        fingerprint=None,
        callbacks=(),
        verbose="auto",
        best_model=None,
    ):
        """Runs `total_steps` optimizer updates of a compiled `model`; returns the `History`.

        `make_train(start_batch)` gives the input stream of micro-batches from
        global batch `start_batch` on. With `checkpoint_dir`, the run resumes
        from the newest backup whose `fingerprint` (the recipe's arguments)
        matches, and refuses one that does not; `best.keras` holds `model`, or
        `best_model` (a part of it) when given.
        """
        total_steps = arguments.positive_int("total_steps", total_steps)
        epoch_steps = self._epoch_steps(total_steps)
        fingerprint = {
            "model": model.name,
            "classes": int(model.output.shape[-1]),
            "total_steps": total_steps,
            **config.fingerprint(self.run),
            **(fingerprint or {}),
        }
        lock = run_lock(self.checkpoint_dir) if self.checkpoint_dir and distribute.is_chief() else contextlib.nullcontext()
        with lock:
            return self._fit(model, make_train, total_steps, epoch_steps, validation, fingerprint, callbacks, verbose, best_model)

    def _fit(self, model, make_train, total_steps, epoch_steps, validation, fingerprint, callbacks, verbose, best_model):
        epochs = total_steps // epoch_steps
        monitor = "val_accuracy" if validation is not None else "loss"
        backups = Backups(os.path.join(self.checkpoint_dir, BACKUP_FOLDER)) if self.checkpoint_dir else None
        start, best = 0, None
        if backups is not None:
            state = backups.restore(model, fingerprint, self.seed if self.seed_given else None, self.scope)
            if state is not None:
                start, best, self.seed = state["step"], state["best"], state["seed"]
                print(f"Resuming from {state['path']}: update {start} of {total_steps}.")
        if start >= total_steps:
            warnings.warn(
                f"{self.checkpoint_dir} holds a finished run ({start} of {total_steps} updates): nothing was trained, "
                f"the model has its final weights. Pass another checkpoint_dir to train again.",
                stacklevel=4,
            )
            return keras.callbacks.History()
        engine_callbacks = [_StopOnNaN(self.checkpoint_dir)]
        if self.checkpoint_dir:
            os.makedirs(self.checkpoint_dir, exist_ok=True)
            keep_best = KeepBest(os.path.join(self.checkpoint_dir, BEST_MODEL), monitor, best, best_model)
            engine_callbacks += [keep_best, BackupEachEpoch(backups, self, epoch_steps, fingerprint, keep_best)]
        with self.scope():
            return model.fit(
                make_train(start),
                validation_data=validation,
                validation_freq=max(1, epochs // EVALUATIONS_PER_RUN),
                steps_per_epoch=epoch_steps * self.batch_split,
                epochs=epochs,
                initial_epoch=start // epoch_steps,
                callbacks=engine_callbacks + list(callbacks),
                shuffle=False,  # the stream shuffles
                verbose=verbose,
            )

    def _epoch_steps(self, total_steps):
        """Updates per Keras epoch: backups fall on epoch ends, so a resume starts on one."""
        limit = self.backup_every or total_steps // min(EVALUATIONS_PER_RUN, total_steps)
        return max(d for d in range(1, min(limit, total_steps) + 1) if total_steps % d == 0)


class _StopOnNaN(keras.callbacks.Callback):
    """Raises on a NaN or infinite loss, before any backup is written from the bad weights.

    The loss is read every `NAN_CHECK_EVERY` steps and at every epoch end
    (before the backup): Keras reports the epoch's running mean, which stays
    NaN once one step was.
    """

    def __init__(self, checkpoint_dir):
        super().__init__()
        self.checkpoint_dir = checkpoint_dir

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % NAN_CHECK_EVERY == 0:
            self._check((logs or {}).get("loss"), f"by batch {batch}")

    def on_epoch_end(self, epoch, logs=None):
        self._check((logs or {}).get("loss"), f"in epoch {epoch + 1}")

    def _check(self, loss, when):
        if loss is not None and not math.isfinite(float(loss)):
            kept = (
                f"the last good backup is kept in {self.checkpoint_dir}" if self.checkpoint_dir else "no checkpoint_dir was set"
            )
            raise FloatingPointError(
                f"The training loss became {float(loss)} {when}; {kept}. Lower base_lr, "
                f"or use batch_split= instead of a smaller batch_size."
            )
