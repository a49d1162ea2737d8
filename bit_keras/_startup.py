"""How TensorFlow starts under bit_keras: one place that every entry point shares.

Two settings take effect only before TensorFlow is imported, so
`bit_keras/__init__.py` calls `import_tensorflow()` first:

- oneDNN kernels on. TensorFlow enables them by default only on CPUs with
  AVX-512 VNNI, BF16 or AMX; elsewhere (AVX2 machines, most AMD servers) its
  fallback convolution gradients are slow (`benchmarks/bench_step.py`
  measures a BiT training step with and without them; the README's
  Performance section quotes a run). A `TF_ENABLE_ONEDNN_OPTS` the user set is kept,
  and nothing changes when TensorFlow was imported before bit_keras.
- Start-up logging filtered.

Importing TensorFlow on a machine without a GPU prints about nine lines to
stderr (`Could not find cuda drivers`, `failed call to cuInit`, the oneDNN and
CPU-instruction notices, `All log messages before absl::InitializeLog()`),
none of which a user can act on; with them filtered, `bit-keras`, `python -m
hub_export`, the example scripts and `import bit_keras` all start quietly.

Set `TF_CPP_MIN_LOG_LEVEL=0` to see every line again; `TF_ENABLE_ONEDNN_OPTS=0`
for TensorFlow's own kernel choice. (Not 1: Keras sets 1 when it imports TensorFlow, and child
processes inherit it, so 1 does not tell a user's request apart.)
"""

import os
import re
import sys
import tempfile

# Lines that TensorFlow writes at start-up and that carry no information a user can act on.
NOISE = re.compile(
    "|".join(
        [
            r"All log messages before absl::InitializeLog\(\) is called",
            r"cudart_stub\.cc",
            r"Could not find cuda drivers",
            r"failed call to cuInit",
            r"oneDNN custom operations are on",
            r"cpu_feature_guard\.cc",
            r"To enable the following instructions: .* rebuild TensorFlow",
            r"Unable to register cu(DNN|FFT|BLAS) factory",
            r"computation placer already registered",
            r"TF-TRT Warning",
        ]
    )
)


def import_tensorflow():
    """Imports TensorFlow with oneDNN on by default and its start-up noise filtered out of stderr.

    Does nothing when TensorFlow is already imported. The noise is kept when
    `TF_CPP_MIN_LOG_LEVEL` is 0 (every line asked for). Otherwise sets it to 2
    (errors only) unless it is higher already, sends stderr to a temporary
    file while TensorFlow loads and enumerates its devices (which is where the
    `cuInit` error comes from; the devices stay configurable), then writes
    back every captured line that is not known noise. Python absl warnings are left alone here; see `quiet_absl`.
    """
    if "tensorflow" in sys.modules:
        _warn_if_onednn_off()
        return
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "")
    if level == "0":
        return
    if level not in ("2", "3"):
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    try:
        stderr_fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # e.g. a notebook's stderr has no file descriptor
        stderr_fd = 2
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(stderr_fd)
        os.dup2(captured.fileno(), stderr_fd)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()
        except ImportError:
            pass  # the import that needs TensorFlow reports it, with its own message
        finally:
            os.dup2(saved, stderr_fd)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines() if not NOISE.search(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr)


def configured_backend():
    """The Keras backend this process will use, read as Keras reads it, without importing Keras.

    KERAS_BACKEND, else the "backend" of `$KERAS_HOME/keras.json` (`~/.keras`),
    else TensorFlow. When Keras is already imported, its own answer.
    """
    if "keras" in sys.modules and hasattr(sys.modules["keras"], "backend"):
        return sys.modules["keras"].backend.backend()
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    import json

    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as f:
            return json.load(f).get("backend", "tensorflow")
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def onednn_enabled():
    """Whether this process's TensorFlow runs its oneDNN kernels (fixed when TensorFlow is imported)."""
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


def _warn_if_onednn_off():
    import warnings

    if "TF_ENABLE_ONEDNN_OPTS" in os.environ or os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        return
    try:
        enabled = onednn_enabled()
    except (ImportError, AttributeError):
        return
    if not enabled:
        warnings.warn(
            "TensorFlow was imported before bit_keras, with its oneDNN kernels off (its default on CPUs without "
            "AVX-512 VNNI, BF16 or AMX), so BiT training runs several times slower on this CPU. Import bit_keras "
            "before keras and tensorflow, or set TF_ENABLE_ONEDNN_OPTS=1 (0 to silence this) before Python starts.",
            stacklevel=4,
        )


def quiet_absl():
    """Entry points only: absl's Python warnings (e.g. `WARNING:absl:...` from Keras saving) off."""
    from absl import logging

    logging.set_verbosity(logging.ERROR)
