"""One fine-tuning run in its own process, for the distribution and kill tests.

    python fit_worker.py OUT.npz [--strategy mirrored] [--batch_split 2] [--cpus 2]
        [--checkpoint_dir DIR] [--kill_at_batch K [--kill_only_worker I]] [--kill_in_backup_at STEP]

Fine-tunes a tiny BiT with `BiTFineTuner.fit` on a fixed colour task with
mixup on (or pre-trains it with `BiTPretrainer.fit`, or distils a wider one
into it with `BiTDistiller.fit`), then writes the final weights to OUT.npz (each worker of a
multi-worker run to OUT with its index). `--kill_at_batch` makes the process
SIGKILL itself after that many micro-batches; `--kill_in_backup_at` halfway
through writing the weights of that update's backup.
"""

import argparse
import json
import os
import signal
import sys

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("--strategy", default="default")
parser.add_argument("--trainer", default="finetune", choices=("finetune", "pretrain", "distill"))
parser.add_argument("--batch_split", type=int, default=1)
parser.add_argument("--cpus", type=int, default=1)
parser.add_argument("--checkpoint_dir")
parser.add_argument("--kill_at_batch", type=int)
parser.add_argument("--kill_in_backup_at", type=int)
parser.add_argument("--kill_only_worker", type=int, help="with TF_CONFIG: only this worker kills itself")
args = parser.parse_args()

if args.cpus > 1:
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.cpus}"

import keras  # noqa: E402

keras.config.disable_traceback_filtering()
import numpy as np  # noqa: E402

if keras.backend.backend() == "tensorflow" and args.cpus > 1:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * args.cpus)

import bit_keras  # noqa: E402
from bit_keras import training  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from toy_data import colour_task  # noqa: E402


class KillAtBatch(keras.callbacks.Callback):
    def __init__(self, at):
        super().__init__()
        self.seen, self.at = 0, at

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.at:
            os.kill(os.getpid(), signal.SIGKILL)


if args.kill_in_backup_at is not None:
    write = training.Backups.save

    def die_while_writing(self, model, record):
        if record["step"] == args.kill_in_backup_at:

            def half_written(path, *unused, **unused_too):  # dies in the middle of writing the weights file
                with open(path, "wb") as f:
                    f.write(b"\x89HDF\r\n\x1a\n" + b"\0" * 4096)
                    f.flush()
                    os.fsync(f.fileno())
                os.kill(os.getpid(), signal.SIGKILL)

            model.save_weights = half_written
        write(self, model, record)

    training.Backups.save = die_while_writing

images, labels = colour_task(48, size=12)
options = dict(
    batch_size=8,
    batch_split=args.batch_split,
    strategy=args.strategy,
    steps=6,
    seed=3,
    checkpoint_dir=args.checkpoint_dir,
    backup_every=2,
)
if args.trainer == "distill":
    keras.utils.set_random_seed(5)  # the same teacher in every process: it is built before the engine seeds
    teacher = bit_keras.BiT(bit_keras.Variant((1, 1, 1, 1), width=2), num_classes=2)
    head = teacher.get_layer("head")
    head.kernel.assign(np.random.default_rng(5).normal(size=head.kernel.shape).astype("float32"))
    tuner = bit_keras.BiTDistiller(teacher, bit_keras.Variant((1, 1, 1, 1)), student_weights=None, image_size=32, **options)
    assert tuner.mixup_alpha > 0
elif args.trainer == "pretrain":
    tuner = bit_keras.BiTPretrainer(bit_keras.Variant((1, 1, 1, 1)), num_classes=2, image_size=32, base_lr=0.015625, **options)
else:
    tuner = bit_keras.BiTFineTuner(
        bit_keras.Variant((1, 1, 1, 1)),
        weights=None,
        num_classes=2,
        dataset_size=20_000,  # the rule turns mixup on from 20k examples
        image_size=(12, 12),
        sizes=(40, 32),
        base_lr=0.0046875,
        **options,
    )
    assert tuner.mixup_alpha > 0
worker = json.loads(os.environ.get("TF_CONFIG") or '{"task": {"index": 0}}')["task"]["index"]
kills = args.kill_at_batch and args.kill_only_worker in (None, worker)
callbacks = [KillAtBatch(args.kill_at_batch)] if kills else []
tuner.fit((images, labels), callbacks=callbacks, verbose=0)
out = args.out.replace(".npz", f"-{worker}.npz") if os.environ.get("TF_CONFIG") else args.out
updates = int(keras.ops.convert_to_numpy(tuner.model.optimizer.iterations))
np.savez(out, *[keras.ops.convert_to_numpy(w) for w in tuner.model.weights], updates=updates)
print(f"updates {updates}, replicas {tuner.engine.replicas}")
