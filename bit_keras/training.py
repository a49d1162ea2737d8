"""The one training engine under `BiTFineTuner` and `BiTPretrainer`.

A trainer brings a recipe: the model, the optimizer, the number of optimizer
updates and an input stream that can start at any update. The engine owns the
rest, the same for both trainers:

- where it runs: a strategy name or instance (`distribute.resolve_strategy`),
  every variable built and every step run under it;
- the global batch: `batch_size` examples per optimizer update, split over
  the replicas and over `batch_split` micro-batches (gradient accumulation).
  GroupNorm has no batch statistics, so the updates do not depend on the split;
- backups: atomic, step-numbered, the newest two kept; a restart with the
  same arguments restores weights, optimizer, step, seed, the position in the
  input stream and the best-model tracking, so it ends where an uninterrupted
  run would;
- the NaN stop, checked every few steps rather than every step;
- the best model, `best.keras`, written through a temporary file.
"""

import contextlib
import json
import math
import os
import shutil
import socket
import tempfile
import warnings

import keras
import numpy as np

from bit_keras import arguments, checkpoints, config, distribute, layers

BACKUP_FOLDER = "backup"
BEST_MODEL = "best.keras"
EVALUATIONS_PER_RUN = 10  # "epochs" of a run: progress bars, validation and backups
NAN_CHECK_EVERY = 10  # steps between reads of the loss; every read waits for the device
XLA_MIN_UPDATES = 100  # shorter runs do not repay XLA's compile time (tens of seconds on a CPU)
_STATE = "state.json"
_WEIGHTS = "state.weights.h5"


@keras.saving.register_keras_serializable(package="bit_keras")
class SigmoidCrossEntropy(keras.losses.Loss):
    """Sigmoid cross-entropy from logits, summed over the classes: BiT's upstream loss.

    Each class is its own binary problem, so an image may carry several
    labels (ImageNet-21k's do). Summed, not averaged, over the classes, as the
    BiT code sums it: an average over 21,843 classes would shrink the
    gradient, and so the effective learning rate, 21,843-fold.

    >>> import numpy as np
    >>> float(SigmoidCrossEntropy()(np.eye(2, dtype="float32"), np.zeros((2, 2), "float32")))  # 2 x log(2)
    1.3862943649291992
    """

    def __init__(self, name="sigmoid_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        y_true = keras.ops.cast(y_true, y_pred.dtype)
        per_class = keras.ops.binary_crossentropy(y_true, y_pred, from_logits=True)
        return keras.ops.sum(per_class, axis=-1)


def loss_function(loss):
    """The Keras loss of a trainer's `loss=` name: "softmax" (fine-tuning) or "sigmoid" (BiT upstream)."""
    if loss == "softmax":
        return keras.losses.CategoricalCrossentropy(from_logits=True)
    if loss == "sigmoid":
        return SigmoidCrossEntropy()
    raise ValueError(f"loss must be one of {config.LOSSES}, got {loss!r}.")


@keras.saving.register_keras_serializable(package="bit_keras")
class AccumulatingSGD(keras.optimizers.Optimizer):
    """SGD with momentum and L2 weight decay, updating once per `accumulation_steps` micro-batches.

    Keras' own `gradient_accumulation_steps` applies the update inside a
    conditional, which tf.distribute refuses (the gradients' all-reduce would
    sit inside it). Here every micro-step runs the same unconditional
    arithmetic, masked to change the weights and the momentum only on the
    last micro-step of an update, so it runs on one device, on replicas and
    on JAX alike. The update is that of `keras.optimizers.SGD`
    (`m = momentum * m - lr * g; w = w + m`) with `g` the mean gradient of
    the micro-batches plus `weight_decay * w`. `iterations` and the learning
    rate schedule count optimizer updates, not micro-steps.

    Example:

    >>> import numpy as np
    >>> w = keras.Variable(np.ones(2, "float32"))
    >>> sgd = AccumulatingSGD(0.5, momentum=0.0, accumulation_steps=2)
    >>> sgd.apply([np.array([1.0, 3.0], "float32")], [w])
    >>> sgd.apply([np.array([3.0, 1.0], "float32")], [w])
    >>> keras.ops.convert_to_numpy(w), int(sgd.iterations)
    (array([0., 0.], dtype=float32), 1)
    """

    def __init__(self, learning_rate, momentum=0.9, weight_decay=0.0, accumulation_steps=1, name="accumulating_sgd", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum = float(momentum)
        self.l2 = float(weight_decay)
        self.accumulation_steps = arguments.positive_int("accumulation_steps", accumulation_steps)

    @property
    def iterations(self):
        return keras.ops.floor_divide(self._iterations, self.accumulation_steps)

    def _get_current_learning_rate(self):
        if isinstance(self._learning_rate, keras.optimizers.schedules.LearningRateSchedule):
            return self._learning_rate(self.iterations)
        return super()._get_current_learning_rate()

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = [self.add_variable_from_reference(v, "momentum") for v in variables]
        self.accumulators = [self.add_variable_from_reference(v, "accumulator") for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        from keras import ops

        index = self._get_variable_index(variable)
        momentum, accumulator = self.momentums[index], self.accumulators[index]
        total = ops.add(accumulator, ops.cast(gradient, variable.dtype))
        step = ops.divide(total, self.accumulation_steps) if self.accumulation_steps > 1 else total
        if self.l2:
            step = ops.add(step, ops.multiply(variable, self.l2))
        new_momentum = ops.subtract(
            ops.multiply(momentum, self.momentum), ops.multiply(step, ops.cast(learning_rate, variable.dtype))
        )
        if self.accumulation_steps == 1:
            self.assign(momentum, new_momentum)
            self.assign_add(variable, new_momentum)
            return
        applies = ops.cast(ops.equal((self._iterations + 1) % self.accumulation_steps, 0), variable.dtype)
        self.assign(momentum, ops.add(ops.multiply(applies, new_momentum), ops.multiply(1 - applies, momentum)))
        self.assign_add(variable, ops.multiply(applies, new_momentum))
        self.assign(accumulator, ops.multiply(1 - applies, total))

    def reset(self):
        """Back to the state before the first update: update 0, no momentum, nothing accumulated."""
        if not self.built:
            return
        for variable in [self._iterations, *self.momentums, *self.accumulators]:
            variable.assign(keras.ops.zeros(variable.shape, variable.dtype))

    def get_config(self):
        return {
            **super().get_config(),
            "momentum": self.momentum,
            "weight_decay": self.l2,
            "accumulation_steps": self.accumulation_steps,
        }


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
        self.run = run = run if run is not None else config.RunConfig(**settings)
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
        self.checkpoint_dir = None if run.checkpoint_dir is None else os.fspath(run.checkpoint_dir)
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

    def xla(self, total_steps):
        """The `jit_compile` of a run of `total_steps` updates.

        "auto" compiles with XLA on the TensorFlow backend when the run has
        one device and at least `XLA_MIN_UPDATES` updates: XLA fuses the
        GroupNorm and weight-standardisation arithmetic around the
        convolutions, on a CPU too, where Keras' own "auto" leaves it off
        (`benchmarks/bench_step.py` compares the two as `bit_keras/tf-xla`
        and `bit_keras/tf`). Otherwise Keras decides (XLA on a GPU and under
        JAX; not under a tf.distribute strategy).
        """
        if self.jit_compile != "auto":
            return self.jit_compile
        if (
            keras.backend.backend() == "tensorflow"
            and not distribute.distributes(self.strategy)
            and total_steps >= XLA_MIN_UPDATES
        ):
            return True
        return "auto"

    def compile(self, model, optimizer, total_steps, loss="softmax"):
        """Compiles `model` for soft-label (mixup) classification from logits, with every object made under the strategy.

        `loss` is "softmax" (categorical cross-entropy) or "sigmoid" (see
        `SigmoidCrossEntropy`).

        Runs shorter than `XLA_MIN_UPDATES`, and runs with `jit_compile=False`,
        then trace their steps (training, `evaluate`, `predict`) under
        `layers.unfused()`: no XLA at all, not even GroupNorm's own clusters.
        """
        self.fused = self.jit_compile is not False and total_steps >= XLA_MIN_UPDATES
        with self.scope():
            model.compile(
                optimizer=optimizer,
                loss=loss_function(loss),
                metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
                jit_compile=self.xla(total_steps),
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

    def fit(self, model, make_train, total_steps, *, validation=None, fingerprint=None, callbacks=(), verbose="auto"):
        """Runs `total_steps` optimizer updates of a compiled `model`; returns the `History`.

        `make_train(start_batch)` gives the input stream of micro-batches from
        global batch `start_batch` on. With `checkpoint_dir`, the run resumes
        from the newest backup whose `fingerprint` (the recipe's arguments)
        matches, and refuses one that does not.
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
            return self._fit(model, make_train, total_steps, epoch_steps, validation, fingerprint, callbacks, verbose)

    def _fit(self, model, make_train, total_steps, epoch_steps, validation, fingerprint, callbacks, verbose):
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
            keep_best = _KeepBest(os.path.join(self.checkpoint_dir, BEST_MODEL), monitor, best)
            engine_callbacks += [keep_best, _Backup(backups, self, epoch_steps, fingerprint, keep_best)]
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


LOCK = "lock.json"


@contextlib.contextmanager
def run_lock(folder):
    """Holds `folder/lock.json` (host and pid of this run) while the body runs: one run per checkpoint_dir.

    A second run on the same folder is refused with the owner's name, before
    it trains; a lock left by a process of this host that no longer lives is
    stale and taken over. Also checks, before any training, that `folder`
    can be written.
    """
    path = os.path.join(folder, LOCK)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise ValueError(
            f"checkpoint_dir={folder!r} cannot be made a folder: {error.strerror or error}. Choose another."
        ) from None
    owner = {"host": socket.gethostname(), "pid": os.getpid()}
    for attempt in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            break
        except FileExistsError:
            holder = _read_lock(path)
            pid = holder.get("pid")
            alive = isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 and checkpoints.process_alive(pid)
            stale = holder.get("host") == owner["host"] and not alive
            if attempt or not stale:
                raise ValueError(
                    f"checkpoint_dir={folder!r} is in use by another run (pid {holder.get('pid')} on "
                    f"{holder.get('host')}, {path}). Wait for it to end, or pass another checkpoint_dir; if that run "
                    f"is gone and this is another host, delete {path}."
                ) from None
            os.remove(path)
        except OSError as error:
            raise ValueError(
                f"checkpoint_dir={folder!r} cannot be written: {error.strerror or error}. Choose a writable folder."
            ) from None
    with os.fdopen(fd, "w") as f:
        json.dump(owner, f)
    try:
        yield
    finally:
        if _read_lock(path) == owner:
            os.remove(path)


def _read_lock(path):
    try:
        with open(path) as f:
            holder = json.load(f)
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


class Backups:
    """Step-numbered training backups in one folder, each written whole or not at all.

    A backup is a folder `step-<update>` holding the model's and optimizer's
    variables and a small JSON record; it is written under a temporary name
    and renamed, so a kill at any moment leaves the previous backups intact
    (a left-over temporary folder is removed by the next run). The newest two
    are kept. Every worker of a multi-worker run saves; only the chief's
    (worker 0's) backups are kept.
    """

    KEEP = 2

    def __init__(self, folder):
        self.folder = folder
        self.writer = distribute.is_chief()

    def complete(self):
        if not os.path.isdir(self.folder):
            return []
        return sorted(name for name in os.listdir(self.folder) if name.startswith("step-") and "." not in name)

    def save(self, model, record):
        # Every worker saves, as tf.distribute needs (reading distributed variables
        # can be a collective op); only the chief's copy is kept.
        folder = self.folder if self.writer else tempfile.mkdtemp(prefix="bit-keras-worker-backup-")
        os.makedirs(folder, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".tmp-step-{record['step']:09d}-", dir=folder)
        try:
            model.save_weights(os.path.join(tmp, _WEIGHTS))
            with open(os.path.join(tmp, _STATE), "w") as f:
                json.dump(record, f)
                f.flush()
                os.fsync(f.fileno())
            if not self.writer:
                return
            target = os.path.join(self.folder, f"step-{record['step']:09d}")
            if os.path.exists(target):
                shutil.rmtree(target)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            if not self.writer:
                shutil.rmtree(folder, ignore_errors=True)
        for old in self.complete()[: -self.KEEP]:
            shutil.rmtree(os.path.join(self.folder, old), ignore_errors=True)

    def restore(self, model, fingerprint, seed, scope):
        """Loads the newest backup into `model`; returns its record (with "path"), or None when there is none."""
        if self.writer and os.path.isdir(self.folder):
            for name in os.listdir(self.folder):
                if name.startswith(".tmp-"):  # a backup whose writer was killed
                    shutil.rmtree(os.path.join(self.folder, name), ignore_errors=True)
        names = self.complete()
        if not names:
            if os.path.isdir(self.folder) and os.listdir(self.folder):
                raise ValueError(
                    f"{self.folder} holds no complete backup ({', '.join(sorted(os.listdir(self.folder))[:3])}, ...): "
                    f"it was not written by this version of bit_keras. Delete it to start over, or pass another checkpoint_dir."
                )
            return None
        path = os.path.join(self.folder, names[-1])
        record = self._read(path, names)
        differences = [
            f"{key}={record['fingerprint'].get(key)!r} there, {value!r} now"
            for key, value in fingerprint.items()
            if record["fingerprint"].get(key) != value
        ]
        if differences:
            raise ValueError(
                f"The backup {path} is of another run: {'; '.join(differences)}. "
                f"Resume with the same arguments, or pass another checkpoint_dir."
            )
        if seed is not None and seed != record["seed"]:
            raise ValueError(
                f"The backup {path} was made with seed={record['seed']}, this run has seed={seed}. "
                f"Resume with the same seed, or pass another checkpoint_dir."
            )
        try:
            with scope():
                if model.optimizer is not None and not model.optimizer.built:
                    model.optimizer.build(model.trainable_variables)
                model.load_weights(os.path.join(path, _WEIGHTS))
        except (OSError, ValueError, KeyError) as error:
            raise self._damaged(path, names, f"its weights do not load: {error}") from None
        updates = int(keras.ops.convert_to_numpy(model.optimizer.iterations)) if model.optimizer is not None else None
        if updates is not None and updates != record["step"]:
            raise self._damaged(path, names, f"{_STATE} says update {record['step']}, its optimizer state update {updates}")
        return {**record, "path": path}

    def _read(self, path, names):
        try:
            with open(os.path.join(path, _STATE)) as f:
                record = json.load(f)
            step, seed, best, fingerprint = int(record["step"]), int(record["seed"]), record["best"], dict(record["fingerprint"])
            if best is not None and (isinstance(best, bool) or not isinstance(best, (int, float))):
                raise ValueError(f"'best' is {best!r}, not a number")
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise self._damaged(path, names, f"its record {_STATE} is missing or garbled ({error})") from None
        if not os.path.isfile(os.path.join(path, _WEIGHTS)):
            raise self._damaged(path, names, f"it has no {_WEIGHTS}")
        return {"step": step, "seed": seed, "best": best, "fingerprint": fingerprint}

    def _damaged(self, path, names, what):
        fix = (
            f"Delete {path} to resume from the previous backup ({names[-2]})"
            if len(names) > 1
            else f"Delete {self.folder} to start over"
        )
        return ValueError(f"The backup {path} is damaged: {what}. {fix}, or pass another checkpoint_dir.")


class _Backup(keras.callbacks.Callback):
    """Writes a backup at the end of each Keras epoch: every `epoch_steps` updates."""

    def __init__(self, backups, engine, epoch_steps, fingerprint, keep_best):
        super().__init__()
        self.backups, self.engine, self.epoch_steps = backups, engine, epoch_steps
        self.fingerprint, self.keep_best = fingerprint, keep_best

    def on_epoch_end(self, epoch, logs=None):
        record = {
            "step": (epoch + 1) * self.epoch_steps,
            "seed": self.engine.seed,
            "best": self.keep_best.best,
            "fingerprint": self.fingerprint,
        }
        self.backups.save(self.model, record)


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


class _KeepBest(keras.callbacks.Callback):
    """Saves the model when the monitored metric improves on the best of the whole run.

    Keras' `ModelCheckpoint(save_best_only=True)` writes in place; this writes
    through a temporary file, and its best value travels with the backups.
    """

    def __init__(self, path, monitor, best=None):
        super().__init__()
        self.path, self.monitor, self.best = path, monitor, best
        self.writer = distribute.is_chief()

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        value = float(value)
        if self.best is not None and not (value > self.best if "acc" in self.monitor else value < self.best):
            return
        self.best = value
        # Every worker saves (see `Backups.save`); only the chief's file is kept.
        if self.writer:
            checkpoints.save_keras(self.model, self.path, overwrite=True)
            return
        folder = tempfile.mkdtemp(prefix="bit-keras-worker-best-")
        try:
            self.model.save(os.path.join(folder, BEST_MODEL))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
