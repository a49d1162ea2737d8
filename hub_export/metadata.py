"""What an export records about itself, and reading it back from every format.

A SavedModel keeps its record in `assets.extra/bit_keras.json`:
`assets.extra/` is the SavedModel folder meant for files that travel with a
model without being loaded by its graph (TF Serving keeps its warm-up data
there), so the record never changes what `tf.saved_model.load` sees. A .onnx,
.tflite or .xml file (`hub_export.deploy`) holds its record inside, under
`METADATA_KEY`.
"""

import importlib
import json
import os

from bit_keras.checkpoints import EXPORT_RECORD_PATH as METADATA_PATH
from bit_keras.optional import require

# What a path of each format ends with ("" for the SavedModel folder).
SUFFIXES = {"saved_model": "", "onnx": ".onnx", "litert": ".tflite", "openvino": ".xml"}
# The name of the record inside a .onnx, .tflite or .xml file.
METADATA_KEY = "bit_keras"


def write_metadata(folder, record):
    """Writes `record` (a JSON-able dict) into the SavedModel at `folder`."""
    target = os.path.join(folder, METADATA_PATH)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
        f.write("\n")


def read_metadata(path):
    """The record `hub_export.export` (or `export_format`) wrote into the export at `path`.

    Keys: `bit_keras_version`, `variant`, `flavor`, `input_range`, `output`
    (the `serving_default` output name), `output_size` and `parameters`,
    and `class_names` where the model had them (`model.class_names`; a
    classification export only, and `bit_keras.BiT(weights=folder)` reads
    them back);
    an `export_format` record adds `format`, `input`, `input_shape` and
    `input_dtype` (and `compile_config` for OpenVINO). A .onnx, .tflite or
    .xml file holds its record inside (see `hub_export.deploy`).

    Example:

    >>> import bit_keras, hub_export, os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny")
    >>> _ = hub_export.export(bit_keras.BiT(bit_keras.Variant((1, 1, 1, 1)), num_classes=3), path)
    >>> hub_export.read_metadata(path)["input_range"]
    [0.0, 1.0]
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        return read_file_metadata(path)
    target = os.path.join(path, METADATA_PATH)
    if not os.path.isfile(target):
        raise ValueError(
            f"{path} has no {METADATA_PATH}, so it was not written by hub_export.export (or is not a "
            f"SavedModel folder); its input range is unknown. TF-Hub BiT modules take images in [0, 1]."
        )
    with open(target) as f:
        return json.load(f)


def format_of(path):
    """The format of an export at `path`, from its suffix (a folder is a SavedModel)."""
    path = os.fspath(path)
    for kind, suffix in SUFFIXES.items():
        if suffix and path.endswith(suffix):
            return kind
    if os.path.isdir(path):
        return "saved_model"
    raise ValueError(f"{path} is not an export: expected a .onnx, .tflite or .xml file or a SavedModel folder.")


def read_file_metadata(path):
    """The record `export_format` wrote into the .onnx, .tflite or .xml file at `path`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist.")
    kind = format_of(path)
    if kind == "onnx":
        onnx = require("onnx", "onnx")
        proto = onnx.load(path, load_external_data=False)
        record = {entry.key: json.loads(entry.value) for entry in proto.metadata_props}
    elif kind == "litert":
        record = _tflite_metadata(path)
    else:
        ov = require("openvino", "openvino")
        ir = ov.Core().read_model(path)
        info = ir.get_rt_info()[METADATA_KEY] if ir.has_rt_info([METADATA_KEY]) else {}
        record = {key: json.loads(value.astype(str)) for key, value in info.items()}
    if "format" not in record:
        raise ValueError(f"{path} has no bit_keras record, so it was not written by hub_export.export_format.")
    return record


def _tflite_metadata(path):
    # TensorFlow's reader of the LiteRT flatbuffer schema (not in tf.* as an API).
    schema = importlib.import_module("tensorflow.lite.python.schema_py_generated")
    with open(path, "rb") as f:
        content = bytearray(f.read())
    tflite = schema.Model.GetRootAs(content, 0)
    for i in range(tflite.MetadataLength()):
        entry = tflite.Metadata(i)
        if entry.Name().decode() == METADATA_KEY:
            return json.loads(tflite.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
    return {}
