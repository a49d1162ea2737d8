"""What a run keeps on disk: its backups, its best model and the lock that allows one run per folder.

Backups are step-numbered folders, written whole or not at all, each with
the model's and optimizer's variables and a record (`state.json`: the
update, the seed, the best value so far and the run's fingerprint) that a
resumed run checks and restores. The best model, `best.keras`, is written
through a temporary file; `lock.json` names the run that holds a folder.
"""

import contextlib
import json
import os
import shutil
import socket
import tempfile

import keras

from bit_keras import checkpoints, config, distribute

BACKUP_FOLDER = "backup"
BEST_MODEL = "best.keras"
LOCK = "lock.json"
_STATE = "state.json"
_WEIGHTS = "state.weights.h5"


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
            if holder is None:
                # No owner can be named, so none can be checked for life; taking it over could run two at once.
                raise ValueError(
                    f"checkpoint_dir={folder!r}: its lock {path} is damaged (empty, not JSON, not a run's record, or "
                    f"not a file), so the run that holds the folder cannot be named. If no run is using this folder, "
                    f"delete {path} and start again; otherwise pass another checkpoint_dir."
                ) from None
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
    """The {"host", "pid"} record of the lock at `path`, or None when it cannot be read as one."""
    try:
        with open(path) as f:
            holder = json.load(f)
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) and {"host", "pid"} <= set(holder) else None


@contextlib.contextmanager
def _naming(what):
    """Names `what` was being written in an OSError of the body: a full disk otherwise says "No space left" and no path."""
    try:
        yield
    except OSError as error:
        raise OSError(
            error.errno,
            f"{what} could not be written ({error.strerror or error}). Free space there, or pass another checkpoint_dir; "
            f"what was written before is kept.",
        ) from error


class Backups:
    """Step-numbered training backups in one folder, each written whole or not at all.

    A backup is a folder `step-<update>` holding the model's and optimizer's
    variables and a small JSON record; it is written through the one atomic
    writer (`checkpoints.atomic_folder`), so a kill at any moment leaves the
    previous backups intact (a left-over temporary folder is removed by the
    next run). The newest two
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
        if not self.writer:
            # Every worker saves, as tf.distribute needs (reading distributed variables
            # can be a collective op); only the chief's copy is kept.
            folder = tempfile.mkdtemp(prefix="bit-keras-worker-backup-")
            try:
                _write_backup(model, record, folder)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            return
        with checkpoints.atomic_folder(os.path.join(self.folder, f"step-{record['step']:09d}"), overwrite=True) as folder:
            _write_backup(model, record, folder)
        for old in self.complete()[: -self.KEEP]:
            shutil.rmtree(os.path.join(self.folder, old), ignore_errors=True)

    def restore(self, model, fingerprint, seed, scope):
        """Loads the newest backup into `model`; returns its record (with "path"), or None when there is none."""
        if self.writer:  # backups whose writer was killed: under the run lock, no other writer is at work here
            checkpoints.remove_stale(self.folder, writers_gone=True)
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
        differences = config.fingerprint_differences(record["fingerprint"], fingerprint)
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


def _write_backup(model, record, folder):
    """The model's and optimizer's variables and the run's record, in `folder`."""
    model.save_weights(os.path.join(folder, _WEIGHTS))
    with open(os.path.join(folder, _STATE), "w") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())


class BackupEachEpoch(keras.callbacks.Callback):
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
        with _naming(f"the backup of update {record['step']} in {self.backups.folder}"):
            self.backups.save(self.model, record)


class KeepBest(keras.callbacks.Callback):
    """Saves the model when the monitored metric improves on the best of the whole run.

    Keras' `ModelCheckpoint(save_best_only=True)` writes in place; this writes
    through a temporary file, and its best value travels with the backups.
    """

    def __init__(self, path, monitor, best=None, saved=None):
        super().__init__()
        self.path, self.monitor, self.best = path, monitor, best
        self.saved = saved  # the model to save, when not the one trained (a distiller's student)
        self.writer = distribute.is_chief()

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        value = float(value)
        if self.best is not None and not (value > self.best if "acc" in self.monitor else value < self.best):
            return
        self.best = value
        model = self.saved if self.saved is not None else self.model
        # Every worker saves (see `Backups.save`); only the chief's file is kept.
        if self.writer:
            with _naming(f"{self.path}, the best model so far,"):
                checkpoints.save_keras(model, self.path, overwrite=True)
            return
        folder = tempfile.mkdtemp(prefix="bit-keras-worker-best-")
        try:
            model.save(os.path.join(folder, BEST_MODEL))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
