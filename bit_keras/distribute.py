"""Where training runs: one name for each kind of hardware, on every backend.

`resolve_strategy` turns "auto", "tpu", "mirrored", "multi_worker" or
"default" into a `tf.distribute.Strategy` under the TensorFlow backend, or a
`keras.distribution.DataParallel` under JAX. Both have `scope()`, which is all
the training engine needs besides `num_replicas`. `accelerator_visible` and
`cpu_flags` say what hardware this process has.

Example:

>>> strategy = resolve_strategy("default")
>>> num_replicas(strategy)
1
"""

import contextlib
import faulthandler
import json
import os
import socket
import sys
import time

import keras

from bit_keras import arguments

NAMES = ("auto", "tpu", "mirrored", "multi_worker", "default")
CONNECT_TIMEOUT = 300  # seconds to wait for a TPU or for the other workers of TF_CONFIG


def resolve_strategy(spec="auto", tpu=None, connect_timeout=CONNECT_TIMEOUT):
    """The strategy (TensorFlow) or distribution (JAX) that `spec` names.

    Args:
        spec: "auto" (a reachable TPU, else all local GPUs, else the default
            strategy), "tpu" (a Cloud TPU through `TPUClusterResolver`),
            "mirrored" (all local GPUs; all logical CPU devices when there is
            no GPU), "multi_worker" (`MultiWorkerMirroredStrategy` from the
            `TF_CONFIG` environment variable), "default" (no distribution), or
            a `tf.distribute.Strategy` / `keras.distribution.DataParallel`,
            returned as is. None means "default", or "tpu" when `tpu` names one.
        tpu: the TPU's name or `grpc://` address for "tpu" (and "auto");
            None looks it up from the environment, as on a Cloud TPU VM.
        connect_timeout: seconds to wait for the TPU to answer, or for the
            other workers of "multi_worker" to start, before giving up.

    Returns:
        A `tf.distribute.Strategy` under the TensorFlow backend; under JAX a
        `keras.distribution.DataParallel`, or None for a single device.
    """
    if spec is None:
        spec = "tpu" if tpu else "default"
    if not isinstance(spec, str):
        return _check_instance(spec)
    if spec not in NAMES:
        raise ValueError(f"strategy must be one of {NAMES} or a tf.distribute.Strategy instance, got {spec!r}.")
    if keras.backend.backend() == "jax":
        return _jax_distribution(spec)
    if keras.backend.backend() != "tensorflow":
        if spec in ("default", "auto"):
            return None
        raise ValueError(
            f"strategy={spec!r} needs the TensorFlow or JAX backend of Keras; this process runs "
            f"{keras.backend.backend()!r}. Set KERAS_BACKEND=tensorflow (or jax) before keras is imported."
        )
    connect_timeout = arguments.positive_float("connect_timeout", connect_timeout)
    return _tf_strategy(spec, tpu, connect_timeout)


def accelerator_visible():
    """Whether the Keras backend sees any device besides the CPU (a GPU, a TPU connected by a strategy)."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.default_backend() != "cpu"
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return any(device.device_type != "CPU" for device in tf.config.list_logical_devices())
    return True  # other backends: not ours to judge


def cpu_flags(path="/proc/cpuinfo"):
    """The instruction-set flags the kernel lists for this CPU, or None where it lists none (not Linux)."""
    try:
        with open(path) as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        return None
    return None


def num_replicas(strategy):
    """How many copies of the model one optimizer update is spread over."""
    if strategy is None:
        return 1
    if hasattr(strategy, "num_replicas_in_sync"):
        return int(strategy.num_replicas_in_sync)
    return int(len(strategy.device_mesh.devices.flatten()))


def tf_config():
    """The TF_CONFIG environment variable, parsed and checked: {} when unset.

    A malformed value would otherwise make each host train alone, or fail
    deep inside TensorFlow without naming the variable.
    """
    text = os.environ.get("TF_CONFIG")
    if not text:
        return {}
    example = '{"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": "worker", "index": 0}}'
    try:
        config = json.loads(text)
    except ValueError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON ({error}): {text!r:.100}. Set it like {example}.") from None
    cluster, task = (config.get(key) if isinstance(config, dict) else None for key in ("cluster", "task"))
    if not isinstance(cluster, dict) or not isinstance(task if task is not None else {}, dict):
        raise ValueError(
            f"TF_CONFIG must be a JSON object with a 'cluster' object and a 'task' object, got {text!r:.100}. "
            f"Set it like {example}."
        )
    index = (task or {}).get("index", 0)
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"TF_CONFIG's task index must be a non-negative integer, got {index!r}. Set it like {example}.")
    return config


def is_chief():
    """Whether this process writes backups and files: the chief (or worker 0) of `TF_CONFIG`, JAX process 0."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.process_index() == 0
    config = tf_config()
    task = config.get("task") or {}
    kind, index = task.get("type", "worker"), int(task.get("index", 0))
    if "chief" in config.get("cluster", {}):
        return kind == "chief"
    return kind == "worker" and index == 0


def distributes(strategy):
    """Whether `strategy` spreads work over devices or processes (not None, not TensorFlow's default strategy)."""
    if strategy is None:
        return False
    if keras.backend.backend() != "tensorflow" or not hasattr(strategy, "extended"):
        return True
    import tensorflow as tf

    with strategy.scope():
        return tf.distribute.has_strategy()  # False only in the default strategy's scope


def scope(strategy):
    """The strategy's scope, or a no-op one for a single device."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def _check_instance(spec):
    backend = keras.backend.backend()
    if isinstance(spec, (keras.distribution.DataParallel, keras.distribution.ModelParallel)):
        if backend != "jax":
            raise ValueError(
                f"A keras.distribution.{type(spec).__name__} distributes the JAX backend; this process runs "
                f"{backend!r}. Pass a strategy name such as 'mirrored' instead, or set KERAS_BACKEND=jax."
            )
        return spec
    if type(spec).__module__.startswith("tensorflow"):
        if backend == "tensorflow":
            import tensorflow as tf

            if isinstance(spec, tf.distribute.MultiWorkerMirroredStrategy):
                return _reduces_structures(spec)
        else:
            raise ValueError(
                f"A tf.distribute.{type(spec).__name__} needs the TensorFlow backend; this process runs {backend!r}. "
                f"Pass a strategy name such as 'mirrored' (DataParallel over the devices), or set KERAS_BACKEND=tensorflow."
            )
        return spec
    raise TypeError(
        f"strategy must be a name in {NAMES}, a tf.distribute.Strategy or a keras.distribution.DataParallel; "
        f"got {type(spec).__name__}."
    )


def _tf_strategy(spec, tpu, connect_timeout):
    import tensorflow as tf

    if spec == "default":
        return tf.distribute.get_strategy()
    if spec == "tpu" or (spec == "auto" and (tpu or _tpu_in_environment())):
        return _tpu_strategy(tpu, required=spec == "tpu", connect_timeout=connect_timeout)
    if spec == "multi_worker":
        config = tf_config()
        if not config:
            raise ValueError(
                "strategy='multi_worker' reads the cluster from the TF_CONFIG environment variable, which is not set. "
                'On each host set TF_CONFIG=\'{"cluster": {"worker": ["host1:port", "host2:port"]}, '
                '"task": {"type": "worker", "index": i}}\' (see the README), or use strategy=\'mirrored\' on one host.'
            )
        peers = _peers(config)
        awaited = f"TF_CONFIG's {', '.join(peers)}" if peers else "this worker's own start"
        with _watchdog(connect_timeout, awaited, "start them, check TF_CONFIG on every host, or raise connect_timeout"):
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        return _reduces_structures(strategy)
    gpus = tf.config.list_logical_devices("GPU")
    if spec == "auto":
        return tf.distribute.MirroredStrategy([d.name for d in gpus]) if gpus else tf.distribute.get_strategy()
    devices = gpus or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([d.name for d in devices])


def _reduces_structures(strategy):
    """`strategy`, with a `reduce` that takes what Keras 3's `fit` gives it.

    `fit` reduces the first (images, labels) batch as one structure, and each
    replica's scalar loss and metrics along `axis=0`;
    `MultiWorkerMirroredStrategy.reduce` takes one value, and a scalar has no
    axis 0. Reduced leaf by leaf, scalars across replicas only, it works.
    """
    import tensorflow as tf

    reduce = type(strategy).reduce

    def reduce_leaf(reduce_op, leaf, axis):
        local = strategy.experimental_local_results(leaf)[0] if isinstance(leaf, tf.distribute.DistributedValues) else leaf
        if axis is not None and tf.convert_to_tensor(local).shape.rank == 0:
            axis = None
        return reduce(strategy, reduce_op, leaf, axis)

    def reduce_each(reduce_op, value, axis):
        return tf.nest.map_structure(lambda leaf: reduce_leaf(reduce_op, leaf, axis), value)

    strategy.reduce = reduce_each
    return strategy


def _tpu_in_environment():
    return bool(os.environ.get("TPU_NAME") or os.environ.get("TPU_ACCELERATOR_TYPE") or os.path.exists("/dev/accel0"))


def _peers(config):
    """'worker 1 at host:port' for every task of TF_CONFIG's cluster but this one."""
    task = config.get("task") or {}
    me = (task.get("type", "worker"), int(task.get("index", 0)))
    return [
        f"{kind} {index} at {address}"
        for kind, addresses in config.get("cluster", {}).items()
        for index, address in enumerate(addresses if isinstance(addresses, list) else [])
        if (kind, index) != me
    ]


@contextlib.contextmanager
def _watchdog(seconds, awaited, fix):
    """Says what the block waits for; if it blocks past `seconds`, ends the process with exit code 1.

    TensorFlow waits for a cluster inside C++ without releasing the GIL, so
    no Python thread or signal handler runs until it returns; faulthandler's
    timer is a C thread, the one thing left that can end the wait.
    """
    _announce(seconds, awaited, f"past that this process stops with exit code 1 and a 'Timeout' trace: {fix}")
    try:
        faulthandler.dump_traceback_later(seconds, exit=True)
    except (AttributeError, ValueError, OSError, RuntimeError):  # no usable stderr (some notebooks): no limit
        yield
        return
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def _announce(seconds, awaited, then):
    """Says at once what a wait is for and how long it may last: a silent wait of minutes reads as a hang."""
    print(f"bit_keras: waiting up to {seconds:g} s (connect_timeout) for {awaited}; {then}.", file=sys.stderr, flush=True)


def _await_address(address, seconds):
    """Waits until `host:port` accepts a TCP connection; False if it has not within `seconds`."""
    host, _, port = address.rpartition("//")[2].rpartition(":")
    deadline = time.monotonic() + seconds
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=max(0.1, min(5.0, deadline - time.monotonic()))):
                return True
        except (OSError, ValueError):
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def _tpu_strategy(tpu, required, connect_timeout):
    import tensorflow as tf

    where = f"tpu={tpu!r}" if tpu else "a local TPU (/dev/accel*) or the TPU_NAME environment variable"
    try:
        if not (tpu or _tpu_in_environment()):
            # Without a name or a local TPU the resolver would ask the GCE metadata server: fail fast instead.
            raise ValueError("no tpu= given, no TPU_NAME set and no /dev/accel* device")
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        except Exception as error:  # the Cloud TPU API's URL, HTTP and credential errors, among others
            raise ValueError(f"could not look the TPU up ({type(error).__name__}: {error})") from None
        master = resolver.master()
        if master.startswith("grpc://"):
            _announce(connect_timeout, f"the TPU at {master} to answer", "past that it is given up on (raise connect_timeout)")
            if not _await_address(master, connect_timeout):
                raise ValueError(f"nothing answered at {master} within {connect_timeout:g} s (connect_timeout)")
        with _watchdog(connect_timeout, f"the TPU at {master or 'this host'}", "check that the TPU is up and yours"):
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        if not required:
            return _tf_strategy("mirrored" if tf.config.list_logical_devices("GPU") else "default", None, connect_timeout)
        raise ValueError(
            f"strategy='tpu' found no TPU: looked for {where} ({type(error).__name__}: {error}). Run on a Cloud TPU VM, "
            f"pass tpu= the TPU's name or grpc:// address, or choose strategy='mirrored' or 'default'."
        ) from None
    return tf.distribute.TPUStrategy(resolver)


def _jax_distribution(spec):
    import jax

    if spec == "multi_worker":
        raise ValueError(
            "strategy='multi_worker' is TF_CONFIG-based tf.distribute, so it needs the TensorFlow backend. Under JAX, "
            "call jax.distributed.initialize() on each host and pass strategy='auto' (DataParallel over all devices), "
            "or set KERAS_BACKEND=tensorflow."
        )
    if spec == "default":
        return None
    if spec == "tpu":
        devices = [d for d in jax.devices() if d.platform == "tpu"]
        if not devices:
            raise ValueError(
                f"strategy='tpu' found no TPU among JAX's devices ({', '.join(sorted({d.platform for d in jax.devices()}))}). "
                f"Run on a Cloud TPU VM with jax[tpu] installed, or choose strategy='mirrored' or 'default'."
            )
    else:
        devices = jax.devices()
    if len(devices) == 1 and spec == "auto":
        return None
    return keras.distribution.DataParallel(devices=devices)
