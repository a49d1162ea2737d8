"""TF-Hub-format SavedModels of BiT models, and a Keras 3 layer that loads them.

`export` writes a reusable SavedModel that replaces a published TF-Hub BiT
module (e.g. https://tfhub.dev/google/bit/m-r50x1/1) unchanged: it takes
float32 RGB images in [0, 1] (not [-1, 1]) of any size. `load` wraps such a
module as a Keras 3 layer that fine-tunes; `bit_keras.BiT(variant,
weights=path)` turns it back into a bit_keras model. The command line is
`python -m hub_export --help`.

`export_format` writes the deployment formats through Keras' own exporter: a
plain SavedModel, ONNX, LiteRT or OpenVINO (`hub_export.deploy`; the
converters and runtimes are the `deploy` extra), and `run_exported` runs
such a file with its runtime.

Example:

>>> import bit_keras, hub_export, os, tempfile
>>> model = bit_keras.BiT(bit_keras.Variant((1, 1, 1, 1)), num_classes=3)
>>> path = os.path.join(tempfile.mkdtemp(), "tiny")
>>> hub_export.export(model, path, flavor="classification")["output_size"]
3
>>> layer = hub_export.load(path, trainable=True)
"""

# First: importing bit_keras filters TensorFlow's start-up log noise (bit_keras/_startup.py).
import bit_keras  # noqa: I001

bit_keras.optional.tensorflow("hub_export (TF-Hub-format SavedModels)")
from hub_export.deploy import FORMATS, OPENVINO_CONFIG, export_format, run_exported
from hub_export.exporter import FLAVORS, export
from hub_export.loader import HubModuleLayer, load
from hub_export.metadata import read_metadata
