"""`export_format`: a BiT model for the inference runtimes, through Keras' own exporter.

Each format is written by `model.export(path, format=...)` of Keras 3 (which
calls tf2onnx, TensorFlow's LiteRT converter or OpenVINO's converter); this
module only prepares the model (folded by `bit_keras.fold`, its input range,
its output, the traces without XLA clusters), records what the file takes in the file itself, and
writes it atomically. `run_exported` runs a written file with its own runtime.

| format        | written                 | metadata                                   | runtime                   |
| ------------- | ----------------------- | ------------------------------------------ | ------------------------- |
| `saved_model` | a SavedModel folder     | `assets.extra/bit_keras.json`              | TensorFlow, TF Serving    |
| `onnx`        | one `.onnx` file        | the model's `metadata_props`               | onnxruntime               |
| `litert`      | one `.tflite` file      | the flatbuffer's metadata, `bit_keras`     | the LiteRT interpreter    |
| `openvino`    | `.xml` and `.bin` files | the IR's `rt_info`, under `bit_keras`      | OpenVINO runtime          |

`hub_export.read_metadata(path)` reads the record back from any of them.

Why the traces are plain: `bit_keras.layers.GroupNormalization` runs its
arithmetic as an XLA cluster (`tf.function(jit_compile=True)`) under
TensorFlow. In a traced graph that cluster is a `PartitionedCall` marked for
XLA, which TensorFlow's graph optimiser (Grappler, run by tf2onnx) does not
inline, so tf2onnx emitted it as an op ONNX does not have and onnxruntime
refused the file at the first GroupNorm. Traced under `bit_keras.layers.portable()`, every format gets plain
element-wise ops.

OpenVINO's CPU plugin runs a model in bfloat16 by default on processors with
AVX512_BF16 or AMX (2e-2 to 6e-2 of the largest logit away from float32 on
a BiT) and in float32 elsewhere. An IR cannot ask for float32 itself, so compile
with `OPENVINO_CONFIG` (`{"INFERENCE_PRECISION_HINT": "f32"}`), as
`run_exported` does; the IR's metadata records it too.
"""

import json
import os

import keras
import numpy as np

import bit_keras
from bit_keras import arguments, checkpoints, model_facts, preprocess
from bit_keras.model_facts import OUTPUT_NAMES
from bit_keras.optional import require
from hub_export._backend import require_tensorflow
from hub_export.metadata import METADATA_KEY, SUFFIXES, format_of, write_metadata

# Our format name -> Keras' `model.export(format=...)` name.
FORMATS = {"saved_model": "tf_saved_model", "onnx": "onnx", "litert": "litert", "openvino": "openvino"}
# The converters each format needs beyond TensorFlow: (module, pip package).
CONVERTERS = {"onnx": [("tf2onnx", "tf2onnx"), ("onnx", "onnx")], "openvino": [("openvino", "openvino")]}
# The compile configuration that keeps OpenVINO's CPU plugin in float32 (it picks bfloat16 where the CPU has it).
OPENVINO_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}
# Where each format keeps its bit_keras record, and the runtime `run_exported` uses.
METADATA_PLACES = {
    "saved_model": "assets.extra/bit_keras.json",
    "onnx": "metadata_props",
    "litert": "the flatbuffer's metadata entry bit_keras",
    "openvino": "rt_info/bit_keras",
}
RUNTIMES = {"saved_model": "TensorFlow", "onnx": "onnxruntime", "litert": "the LiteRT interpreter", "openvino": "OpenVINO"}
INPUT_NAME = "images"


def export_format(model, path, format="onnx", *, flavor=None, input_range=(0, 1), image_size=None, overwrite=False):
    """Writes `model` at `path` in a deployment `format`, through Keras' `model.export`.

    The exported model takes float32 RGB images with values in `input_range`,
    [0, 1] by default as the TF-Hub modules do (the rescale to the Keras
    model's [-1, 1] is inside the exported graph), as `images[batch, height,
    width, 3]`: any batch size, and any height and width unless `image_size`
    fixes them. It returns float32 `logits[batch, classes]` (classification)
    or `feature_vector[batch, 2048*width]`. The model is folded first
    (`bit_keras.fold`: its convolutions hold the standardised kernels), and
    the traces have no XLA cluster or fused batch norm in them
    (`bit_keras.layers.portable()`).

    Formats: "saved_model" (a folder; a plain inference SavedModel with a
    `serve` endpoint and a `serving_default` signature: use `hub_export.export`
    for the fine-tunable TF-Hub module), "onnx" (a `.onnx` file), "litert" (a
    `.tflite` file), "openvino" (an `.xml` file and its `.bin` beside it;
    compile it with `OPENVINO_CONFIG` for float32 results). The converters are
    in the `deploy` extra: `pip install "bit-keras[deploy]"`.

    The record returned is also written into the export (see the module
    docstring for where); `hub_export.read_metadata(path)` reads it back.
    Everything is written under temporary names beside `path` and renamed when
    complete (for OpenVINO the `.bin` first, then the `.xml`), so `path` never
    holds half an export.

    Args:
        model: a model built by `bit_keras.BiT` (or loaded from its `.keras` file).
        path: the file (or, for "saved_model", the folder) to write; its
            suffix must be the format's (.onnx, .tflite, .xml).
        format: "saved_model", "onnx", "litert" or "openvino".
        flavor: "classification" (the head's logits) or "feature_vector" (the
            pooled features); by default the logits when the model has its
            head, else the features.
        input_range: (low, high) of the images the export will be given;
            e.g. (0, 255) for raw pixel values.
        image_size: None for any height and width, or (height, width) to fix
            them (some runtimes optimise static shapes better).
        overwrite: replace an existing export at `path`; otherwise it is refused.

    Returns:
        The metadata recorded in the export: `format`, `input`, `input_shape`
        (None where dynamic), `input_dtype`, `input_range`, `output`,
        `output_size`, `flavor`, `variant`, `parameters`, `bit_keras_version`,
        and for OpenVINO `compile_config`.

    Example:

    >>> import bit_keras, hub_export, os, tempfile
    >>> import numpy as np
    >>> model = bit_keras.BiT("R1-1-1-1x1", num_classes=3)
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny.tflite")
    >>> hub_export.export_format(model, path, "litert")["input_shape"]
    [None, None, None, 3]
    >>> hub_export.run_exported(path, np.zeros((2, 64, 48, 3), "float32")).shape
    (2, 3)
    """
    require_tensorflow("hub_export.export_format")
    if format not in FORMATS:
        raise ValueError(f"format must be one of {tuple(FORMATS)}, got {format!r}.")
    low, high = arguments.input_range(input_range)
    image_size = _check_image_size(image_size)
    path = os.path.abspath(arguments.path("path", path))
    _check_suffix(path, format)
    for module, package in CONVERTERS.get(format, ()):
        require(module, package)
    checkpoints.refuse_existing(path, overwrite)
    if format == "openvino":
        checkpoints.refuse_existing(openvino_bin(path), overwrite)

    model = _deployable(model)
    flavor = flavor or ("classification" if model_facts.has_head(model) else "feature_vector")
    if flavor not in OUTPUT_NAMES:
        raise ValueError(f"flavor must be one of {tuple(OUTPUT_NAMES)}, got {flavor!r}.")
    names = model_facts.class_names(model, flavor)  # refused before the work of converting
    if format in ("onnx", "litert"):
        _check_float32(model, format)
    # Plain graphs: an XLA cluster is a PartitionedCall that tf2onnx cannot convert (see the module docstring).
    with bit_keras.layers.portable():
        serving = _serving_model(model, flavor, low, high, image_size)
        record = {
            "bit_keras_version": bit_keras.__version__,
            "format": format,
            "variant": model_facts.variant_name(model),
            "flavor": flavor,
            "input": INPUT_NAME,
            "input_shape": [None, *image_size, 3],
            "input_dtype": "float32",
            "input_range": [low, high],
            "output": OUTPUT_NAMES[flavor],
            "output_size": int(serving.output[OUTPUT_NAMES[flavor]].shape[-1]),
            "parameters": int(sum(np.prod(v.shape) for v in serving.weights)),
            **names,
        }
        if format == "openvino":
            record["compile_config"] = dict(OPENVINO_CONFIG)
        _WRITERS[format](serving, path, record, overwrite)
    return record


def _deployable(model):
    """The model every format is exported from: `bit_keras.fold(model)`.

    Deployments only infer, so their convolutions hold the standardised
    kernels (`bit_keras.fold`) instead of standardising on every call.
    """
    return bit_keras.fold(model)


def _check_image_size(image_size):
    if image_size is None:
        return (None, None)
    try:
        height, width = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be None or (height, width), got {image_size!r}.") from None
    if height < 1 or width < 1:
        raise ValueError(f"image_size must be two positive sizes (height, width), got {image_size!r}.")
    return (height, width)


def _check_suffix(path, format):
    suffix = SUFFIXES[format]
    if suffix and not path.endswith(suffix):
        raise ValueError(f"A {format} export is a {suffix} file: {path} should end with {suffix}.")


def _check_float32(model, format):
    # LiteRT converts half-precision ops only as Flex (select TensorFlow) ops, which its interpreter, and so
    # `run_exported`, cannot run.
    dtypes = sorted({layer.compute_dtype for layer in model.layers if layer.compute_dtype != "float32"})
    if dtypes:
        name = {"onnx": "ONNX", "litert": "LiteRT"}[format]
        raise ValueError(
            f"Model {model.name!r} computes in {', '.join(dtypes)}; Keras' {name} export needs a float32 model. "
            f"Build it under keras.config.set_dtype_policy('float32') and copy the weights "
            f"(model.get_weights() / set_weights()), then export that."
        )


def _serving_model(model, flavor, low, high, image_size):
    """`images` in `input_range` -> {output name: float32 outputs}: what every format exports."""
    network = model_facts.network(model, flavor)
    images = keras.Input(shape=(*image_size, 3), name=INPUT_NAME, dtype="float32")
    # The one input scaling of the package, inside the exported graph.
    outputs = network(preprocess.to_model_range(images, (low, high)))
    if flavor == "feature_vector":
        outputs = keras.ops.mean(outputs, axis=(1, 2))
    outputs = keras.ops.cast(outputs, "float32")
    return keras.Model(images, {OUTPUT_NAMES[flavor]: outputs}, name=f"{network.name}_{INPUT_NAME}")


def _input_spec(serving):
    import tensorflow as tf

    return [tf.TensorSpec(serving.input.shape, tf.float32, name=INPUT_NAME)]


def _keras_export(serving, path, format):
    serving.export(path, format=FORMATS[format], input_signature=_input_spec(serving), verbose=False)


# --------------------------------------------------------------------- writers


def _write_saved_model(serving, path, record, overwrite):
    with checkpoints.atomic_folder(path, overwrite) as folder:
        _keras_export(serving, folder, "saved_model")
        write_metadata(folder, record)


def _write_onnx(serving, path, record, overwrite):
    onnx = require("onnx", "onnx")
    with checkpoints.scratch_folder(path) as stage:
        staged = os.path.join(stage, "model.onnx")
        _keras_export(serving, staged, "onnx")
        proto = onnx.load(staged)
        _name_dimensions(proto)
        for key, value in record.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, json.dumps(value)
        proto.doc_string = _description(record)
        with checkpoints.atomic_file(path, overwrite) as tmp:
            onnx.save(proto, tmp)


def _name_dimensions(proto):
    """Names the dynamic input and output dimensions `batch`, `height`, `width` (tf2onnx says `unk__911`)."""
    names = ("batch", "height", "width")
    for value, count in ((proto.graph.input[0], 3), (proto.graph.output[0], 1)):
        for dim, name in zip(value.type.tensor_type.shape.dim[:count], names):
            if not dim.HasField("dim_value"):
                dim.dim_param = name


def _write_litert(serving, path, record, overwrite):
    with checkpoints.scratch_folder(path) as stage:
        staged = os.path.join(stage, "model.tflite")
        _keras_export(serving, staged, "litert")
        with open(staged, "rb") as f:
            content = _tflite_with_metadata(f.read(), record)
        with checkpoints.atomic_file(path, overwrite) as tmp:
            with open(tmp, "wb") as f:
                f.write(content)


def _tflite_with_metadata(content, record):
    """The flatbuffer `content` with `record` (JSON) as its metadata entry `bit_keras`."""
    import importlib

    # TensorFlow's own reader and writer of the LiteRT flatbuffer schema (not in tf.* as an API).
    flatbuffer_utils = importlib.import_module("tensorflow.lite.tools.flatbuffer_utils")
    schema = importlib.import_module("tensorflow.lite.python.schema_py_generated")
    tflite = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(record).encode(), np.uint8)
    tflite.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_KEY, len(tflite.buffers) - 1
    tflite.metadata = [*(tflite.metadata or []), entry]
    return flatbuffer_utils.convert_object_to_bytearray(tflite)


def openvino_bin(xml_path):
    """The weights file of the OpenVINO IR `xml_path`: the same name, ending .bin."""
    return xml_path[: -len(".xml")] + ".bin"


def _write_openvino(serving, path, record, overwrite):
    ov = require("openvino", "openvino")
    with checkpoints.scratch_folder(path) as stage:
        _keras_export(serving, os.path.join(stage, "keras.xml"), "openvino")
        ir = ov.Core().read_model(os.path.join(stage, "keras.xml"))
        for key, value in record.items():
            ir.set_rt_info(json.dumps(value), [METADATA_KEY, key])
        # The .bin's writer is the inner one, so it is renamed first: an .xml in place always finds its complete weights.
        with (
            checkpoints.atomic_file(path, overwrite, suffix=".xml") as xml,
            checkpoints.atomic_file(openvino_bin(path), overwrite, suffix=".bin") as weights,
        ):
            ov.serialize(ir, xml, weights)
        del ir  # it maps keras.bin, in the scratch folder


_WRITERS = {
    "saved_model": _write_saved_model,
    "onnx": _write_onnx,
    "litert": _write_litert,
    "openvino": _write_openvino,
}


def _description(record):
    low, high = (f"{v:g}" for v in record["input_range"])
    shape = ", ".join("?" if v is None else str(v) for v in record["input_shape"])
    return (
        f"BiT {record['variant']} ({record['flavor']}) by bit_keras {record['bit_keras_version']}: "
        f"{record['input']} float32[{shape}] RGB in [{low}, {high}] -> {record['output']} "
        f"float32[batch, {record['output_size']}]"
    )


def run_exported(path, images):
    """Runs the export at `path` on `images` with its format's runtime; the output as a NumPy array.

    onnxruntime for .onnx, the LiteRT interpreter (ai-edge-litert) for .tflite,
    OpenVINO runtime on the CPU in float32 (`OPENVINO_CONFIG`) for .xml, and
    TensorFlow for a SavedModel. `images` are float32 in the export's input
    range, shaped as its `input_shape` allows.
    """
    images = np.asarray(images, np.float32)
    kind = format_of(path)
    path = os.fspath(path)
    if kind == "onnx":
        ort = require("onnxruntime", "onnxruntime")
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: images})[0]
    if kind == "litert":
        interpreter_module = require("ai_edge_litert.interpreter", "ai-edge-litert")
        interpreter = interpreter_module.Interpreter(model_path=path)
        (inputs,) = interpreter.get_input_details()
        interpreter.resize_tensor_input(inputs["index"], images.shape, strict=True)
        interpreter.allocate_tensors()
        interpreter.set_tensor(inputs["index"], images)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    if kind == "openvino":
        ov = require("openvino", "openvino")
        compiled = ov.Core().compile_model(path, "CPU", OPENVINO_CONFIG)
        return compiled(images)[0]
    import tensorflow as tf

    serve = tf.saved_model.load(path).signatures["serving_default"]
    return next(iter(serve(**{INPUT_NAME: tf.constant(images)}).values())).numpy()
