"""The engine's promises across devices, hosts and interruptions, each run in its own process.

Every run is `fit_worker.py`: a tiny BiT fine-tuned for 6 updates of a global
batch of 8 with mixup on, backups every 2 updates. Processes use loopback
ports only, are bounded in time and ended by the test.
"""

import json
import os
import signal
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import requires_tensorflow

from bit_keras import distribute

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fit_worker.py")
TIMEOUT = 300


def start(out, *args, backend="tensorflow", tf_config=None):
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CONFIG", None)
    if tf_config:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return subprocess.Popen(
        [sys.executable, WORKER, str(out), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(process, expect_kill=False):
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    if expect_kill:
        assert process.returncode == -signal.SIGKILL, output[-3000:]
    else:
        assert process.returncode == 0, output[-3000:]
    return output


def run(out, *args, **kwargs):
    finish(start(out, *args, **kwargs))
    return weights(out)


def weights(path):
    with np.load(path) as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files) - 1)], int(saved["updates"])


def assert_same_training(got, expected):
    (got_weights, got_updates), (expected_weights, expected_updates) = got, expected
    assert got_updates == expected_updates == 6
    assert len(got_weights) == len(expected_weights)
    for a, b in zip(got_weights, expected_weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    """The reference: one device, whole batches, never interrupted."""
    return run(tmp_path_factory.mktemp("one") / "w.npz")


@requires_tensorflow
def test_replicas_and_micro_batches_give_the_updates_of_one_device(one_device, tmp_path):
    splits = {
        "mirrored": ("--strategy", "mirrored", "--cpus", "2"),
        "split4": ("--batch_split", "4"),
        "mirrored_split2": ("--strategy", "mirrored", "--cpus", "2", "--batch_split", "2"),
    }
    processes = {name: start(tmp_path / f"{name}.npz", *args) for name, args in splits.items()}
    for name, process in processes.items():
        output = finish(process)
        assert ("replicas 2" in output) == name.startswith("mirrored")
        assert_same_training(weights(tmp_path / f"{name}.npz"), one_device)


def cluster(ports):
    return {"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]}}


def start_workers(out, ports, *args):
    return [
        start(out, "--strategy", "multi_worker", *args, tf_config={**cluster(ports), "task": {"type": "worker", "index": i}})
        for i in range(len(ports))
    ]


@requires_tensorflow
def test_two_workers_end_with_the_weights_of_one_process(one_device, tmp_path):
    for worker in start_workers(tmp_path / "w.npz", free_ports(2)):
        assert "replicas 2" in finish(worker)
    for index in (0, 1):
        assert_same_training(weights(tmp_path / f"w-{index}.npz"), one_device)


@requires_tensorflow
def test_a_run_killed_at_a_random_step_resumes_to_the_uninterrupted_weights(one_device, tmp_path):
    kill_at = int(np.random.default_rng().integers(1, 6))  # any micro-batch before the last
    finish(
        start(tmp_path / "w.npz", "--checkpoint_dir", str(tmp_path / "run"), "--kill_at_batch", str(kill_at)), expect_kill=True
    )
    assert_same_training(run(tmp_path / "w.npz", "--checkpoint_dir", str(tmp_path / "run")), one_device)


@requires_tensorflow
def test_a_run_killed_while_writing_a_backup_resumes_from_the_previous_one(one_device, tmp_path):
    backup = tmp_path / "run" / "backup"
    finish(start(tmp_path / "w.npz", "--checkpoint_dir", str(tmp_path / "run"), "--kill_in_backup_at", "4"), expect_kill=True)
    left = sorted(os.listdir(backup))
    assert [name for name in left if not name.startswith(".step-000000004.bit-keras-tmp.")] == ["step-000000002"]
    assert len(left) == 2  # and the half-written one, under its temporary name
    assert sorted(os.listdir(backup / "step-000000002")) == ["state.json", "state.weights.h5"]  # the previous one, whole
    output = finish(start(tmp_path / "w.npz", "--checkpoint_dir", str(tmp_path / "run")))
    assert "Resuming from" in output and "step-000000002" in output
    assert_same_training(weights(tmp_path / "w.npz"), one_device)
    assert not [name for name in os.listdir(backup) if ".bit-keras-tmp." in name]


@requires_tensorflow
def test_a_killed_worker_resumes_with_its_peer_to_the_uninterrupted_weights(one_device, tmp_path):
    checkpoint = ("--checkpoint_dir", str(tmp_path / "run"))
    ports = free_ports(2)
    chief, victim = start_workers(tmp_path / "w.npz", ports, *checkpoint, "--kill_at_batch", "4", "--kill_only_worker", "1")
    try:
        assert victim.wait(timeout=TIMEOUT) == -signal.SIGKILL
    finally:  # the chief waits on its dead peer: end it too, as a scheduler would
        for process in (chief, victim):
            if process.poll() is None:
                process.kill()
            process.communicate()
    for worker in start_workers(tmp_path / "w.npz", free_ports(2), *checkpoint):
        finish(worker)
    for index in (0, 1):
        assert_same_training(weights(tmp_path / f"w-{index}.npz"), one_device)


@pytest.mark.skipif(keras.backend.backend() == "torch", reason="DataParallel is a JAX distribution")
def test_jax_data_parallel_over_two_devices_gives_the_weights_of_one(tmp_path):
    single = run(tmp_path / "one.npz", backend="jax")
    parallel_out = tmp_path / "two.npz"
    output = finish(start(parallel_out, "--strategy", "mirrored", "--cpus", "2", backend="jax"))
    assert "replicas 2" in output
    assert_same_training(weights(parallel_out), single)


@requires_tensorflow
def test_a_tpu_asked_for_where_there_is_none_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TPU_NAME", raising=False)
    with pytest.raises(ValueError, match="strategy='tpu' found no TPU.*pass tpu= the TPU's name"):
        distribute.resolve_strategy("tpu")
    with pytest.raises(ValueError, match="TF_CONFIG environment variable, which is not set"):
        distribute.resolve_strategy("multi_worker")
    with pytest.raises(ValueError, match="strategy must be one of"):
        distribute.resolve_strategy("gpu")
    assert distribute.num_replicas(distribute.resolve_strategy("mirrored")) >= 1


@requires_tensorflow
def test_bit_builds_every_variable_under_a_named_strategy():
    import bit_keras

    model = bit_keras.BiT(bit_keras.Variant((1, 1, 1, 1)), num_classes=2, strategy="mirrored")
    strategy = model.get_layer("root_conv").kernel.value._distribute_strategy
    assert all(strategy.extended.variable_created_in_scope(v.value) for v in model.weights)
