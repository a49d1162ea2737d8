"""Without TensorFlow: the model, `fold`, the NumPy weight families, fit on arrays and HyperRule under JAX and PyTorch.

Each run is a fresh process whose `import tensorflow` fails, as in an
environment without it; the TensorFlow-only parts must say they need it.
"""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

SCRIPT = r"""
import sys
sys.modules["tensorflow"] = None  # `import tensorflow` now fails, as where it is not installed
sys.path.insert(0, sys.argv[1])
import os, tempfile
import numpy as np
import keras
import bit_keras
from reference import forward, random_state

folder = tempfile.mkdtemp()
state = random_state((1, 1, 1, 1), 1, 3, seed=2)
np.savez(os.path.join(folder, "tiny.npz"), **state)
model = bit_keras.BiT("auto", weights=os.path.join(folder, "tiny.npz"))
x = np.random.default_rng(0).uniform(-1, 1, (2, 40, 40, 3)).astype("float32")
got, expected = model.predict(x, verbose=0), forward(state, x, (1, 1, 1, 1))
assert np.abs(got - expected).max() <= 3e-4 * np.abs(expected).max(), np.abs(got - expected).max()
folded = bit_keras.fold(model)  # keras alone: no TensorFlow to fold
assert np.abs(folded.predict(x, verbose=0) - got).max() <= 1e-6 * np.abs(got).max()

# Every weight family that needs only NumPy, written and read back.
bit_keras.save_official(model, os.path.join(folder, "out.npz"))
bit_keras.save_timm(model, os.path.join(folder, "out.safetensors"))
bit_keras.save_transformers(model, os.path.join(folder, "hf"))
bit_keras.checkpoints.save_keras(model, os.path.join(folder, "out.keras"))
model.save_weights(os.path.join(folder, "out.weights.h5"))
for name in ("out.npz", "out.safetensors", "hf", "out.keras", "out.weights.h5"):
    again = bit_keras.BiT("R1-1-1-1x1", weights=os.path.join(folder, name), num_classes=3,
                          ws_epsilon=1e-8 if name in ("out.safetensors", "hf") else 1e-10)
    assert np.abs(again.predict(x, verbose=0) - got).max() <= 3e-4 * np.abs(got).max(), name

# Class names need only NumPy, and decode the backend's own tensors.
assert bit_keras.decode_predictions(np.eye(1000)[[207]], top=1) == [[("n02099601", "golden retriever", 1.0)]]
best = bit_keras.decode_predictions(model(x[:1]), top=1, class_names=["a", "b", "c"])[0][0]
assert best[0] == int(np.argmax(got[0])) and abs(best[2] - float(got[0].max())) <= 1e-4 * np.abs(got).max(), best

# model.fit on arrays with the HyperRule's schedule.
rule = bit_keras.HyperRule(dataset_size=8, image_size=(40, 40), batch_size=4, steps=2)
model.compile(optimizer=keras.optimizers.SGD(rule.learning_rate(), momentum=0.9),
              loss=keras.losses.CategoricalCrossentropy(from_logits=True))
model.fit(x.repeat(4, axis=0), np.eye(3)[np.arange(8) % 3], batch_size=4, epochs=1, verbose=0)
assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 2

# The TensorFlow-only parts say that they need it.
for name in ("data", "BiTFineTuner", "BiTPretrainer", "tasks"):
    try:
        getattr(bit_keras, name)
    except ImportError as error:
        assert "needs TensorFlow" in str(error) and "pip install tensorflow" in str(error), error
    else:
        raise AssertionError(f"bit_keras.{name} without TensorFlow")
try:
    import hub_export
except ImportError as error:
    assert "hub_export (TF-Hub-format SavedModels) needs TensorFlow" in str(error), error
else:
    raise AssertionError("hub_export without TensorFlow")
loaded = [name for name, module in sys.modules.items() if name.split(".")[0] == "tensorflow" and module is not None]
assert not loaded, loaded
print("no tensorflow: ok", keras.backend.backend())
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_the_core_runs_without_tensorflow(tmp_path, backend):
    env = {**os.environ, "KERAS_BACKEND": backend}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, HERE], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"no tensorflow: ok {backend}" in result.stdout
