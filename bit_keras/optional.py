"""Optional dependencies: imported where they are used, or an ImportError that says what to install.

TensorFlow is one of them for the backend-agnostic core (see `bit_keras/__init__.py`);
torch, safetensors, huggingface_hub and kagglehub are needed only by the weight
families and release names that use them; onnx, tf2onnx, onnxruntime,
ai-edge-litert and openvino only by the deployment exports (`hub_export.export_format`).

>>> require("json", "json").dumps([1])
'[1]'
"""

import importlib

INSTALL = {
    "safetensors": "pip install safetensors  (or pip install 'bit-keras[families]')",
    "torch": "pip install torch  (or pip install 'bit-keras[torch]')",
    "huggingface_hub": "pip install huggingface_hub  (or pip install 'bit-keras[families]')",
    "kagglehub": "pip install kagglehub  (or pip install 'bit-keras[families]')",
    # The deployment formats' converters and runtimes (hub_export.export_format, run_exported).
    "onnx": 'pip install "bit-keras[deploy]"  (or pip install onnx)',
    "tf2onnx": 'pip install "bit-keras[deploy]"  (or pip install tf2onnx)',
    "onnxruntime": 'pip install "bit-keras[deploy]"  (or pip install onnxruntime)',
    "ai-edge-litert": 'pip install "bit-keras[deploy]"  (or pip install ai-edge-litert)',
    "openvino": 'pip install "bit-keras[deploy]"  (or pip install openvino)',
}


def require(module, package):
    """Imports `module` of the optional `package`, or raises ImportError saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"This needs the optional package {package!r}: {INSTALL.get(package, 'pip install ' + package)}."
        ) from None


def tensorflow(what):
    """TensorFlow, imported; or an ImportError that names `what` needs it and how to get it."""
    try:
        return importlib.import_module("tensorflow")
    except ImportError:
        raise ImportError(
            f"{what} needs TensorFlow, which is not installed here. pip install tensorflow, or use what works "
            f"without it: bit_keras.BiT, the weight families (.npz, .safetensors, transformers folders, .keras), "
            f"model.fit on arrays, HyperRule."
        ) from None
