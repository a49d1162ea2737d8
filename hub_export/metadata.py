"""What an exported module records about itself, in `assets.extra/bit_keras.json`.

`assets.extra/` is the SavedModel folder meant for files that travel with a
model without being loaded by its graph (TF Serving keeps its warm-up data
there), so the record never changes what `tf.saved_model.load` sees.
"""

import json
import os

from bit_keras.checkpoints import EXPORT_RECORD_PATH as METADATA_PATH


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
        from hub_export.deploy import read_file_metadata  # it imports this module

        return read_file_metadata(path)
    target = os.path.join(path, METADATA_PATH)
    if not os.path.isfile(target):
        raise ValueError(
            f"{path} has no {METADATA_PATH}, so it was not written by hub_export.export (or is not a "
            f"SavedModel folder); its input range is unknown. TF-Hub BiT modules take images in [0, 1]."
        )
    with open(target) as f:
        return json.load(f)
