"""Command line: export a BiT checkpoint or `.keras` model as a TF-Hub-format SavedModel,
or with --format as a plain SavedModel, an ONNX, LiteRT or OpenVINO file.

    python -m hub_export --variant BiT-M-R50x1 --weights BiT-M-R50x1.npz \\
        --flavor feature_vector --out exported/bit_m-r50x1
    python -m hub_export --weights finetuned.keras --flavor classification --out exported/pets
    python -m hub_export --weights finetuned.keras --flavor classification --format onnx --out pets.onnx

Prints a line per phase, then what was written: signature, input range,
variant, parameter count and size on disk.
"""

import argparse
import os
import sys

import bit_keras
import hub_export
from bit_keras import _startup, arguments, checkpoints
from hub_export import deploy

# "tf_hub" (the default) is the reusable TF-Hub module of hub_export.export; the others are hub_export.export_format's.
EXPORT_FORMATS = ("tf_hub", *deploy.FORMATS)


def add_arguments(parser):
    """The export flags, on `parser`: shared by `python -m hub_export` and `bit-keras export`."""
    parser.add_argument(
        "--weights",
        required=True,
        help="an official .npz/.h5 checkpoint, a timm .safetensors/.pth, a transformers Bit folder, "
        "a release name (BiT-M-R50x1, timm/..., google/bit-50, kaggle:...), or a .keras file",
    )
    parser.add_argument(
        "--variant",
        help="e.g. BiT-M-R50x1, R{u1}-{u2}-{u3}-{u4}x{width} for a custom size, or auto to read it from --weights; "
        "not needed for a .keras file",
    )
    parser.add_argument("--flavor", default="feature_vector", choices=("feature_vector", "classification"))
    parser.add_argument(
        "--format",
        default="tf_hub",
        choices=EXPORT_FORMATS,
        help="tf_hub: the fine-tunable TF-Hub module (default); saved_model: a plain inference SavedModel; "
        'onnx, litert, openvino: a file for that runtime (pip install "bit-keras[deploy]")',
    )
    parser.add_argument(
        "--out",
        required=True,
        help="the SavedModel folder to write, or the file: .onnx (onnx), .tflite (litert), .xml and its .bin (openvino)",
    )
    parser.add_argument("--num_classes", type=int, help="classification only: a new, zero head of this size")
    parser.add_argument(
        "--input_range",
        default="0,1",
        type=arguments.comma_pair(float, "input_range"),
        help="low,high of the images the module will take (default 0,1 as the TF-Hub BiT modules; 0,255 for pixels)",
    )
    parser.add_argument(
        "--image_size",
        type=arguments.comma_pair(int, "image_size"),
        help="HEIGHT,WIDTH: fix the input's spatial size in a saved_model/onnx/litert/openvino export (any size by default)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder or file")
    return parser


def check_args(parser, args):
    """Checks the flags together (`parser.error` exits with a message); returns `args`."""
    is_keras_file = args.weights.endswith(".keras")
    if not is_keras_file and not args.variant:
        parser.error("--variant is required with a checkpoint (a .keras file names its own architecture).")
    if is_keras_file and (args.variant or args.num_classes):
        parser.error("--variant and --num_classes do not apply to a .keras file, which holds the whole model.")
    if args.num_classes and args.flavor != "classification":
        parser.error("--num_classes gives a new head, which only --flavor classification has.")
    fmt = args.format
    if args.image_size and fmt == "tf_hub":
        parser.error("--image_size applies to --format saved_model, onnx, litert and openvino; a TF-Hub module takes any size.")
    suffix = deploy.SUFFIXES.get(fmt, "")
    if suffix and not args.out.endswith(suffix):
        parser.error(f"--format {fmt} writes a {suffix} file: --out must end with {suffix}, e.g. --out model{suffix}.")
    return args


def _parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m hub_export",
        description="Writes a BiT model as a reusable TF-Hub-format SavedModel, or with --format as a SavedModel, ONNX, "
        "LiteRT or OpenVINO export (images in [0, 1] by default).",
    )
    add_arguments(parser)
    return check_args(parser, parser.parse_args(argv))


def _load_model(args):
    if args.weights.endswith(".keras"):
        print(f"[1/3] Loading the model from {args.weights}")
        return checkpoints.load_keras(args.weights)
    variant = args.variant if args.variant == "auto" else bit_keras.get_variant(args.variant)
    print(f"[1/3] Building {args.variant} with the weights of {args.weights}")
    include_top = args.flavor == "classification"
    return bit_keras.BiT(variant, weights=args.weights, num_classes=args.num_classes, include_top=include_top)


def _check(path):
    """Reloads the module and runs one image through `__call__`: the written folder works."""
    import numpy as np
    import tensorflow as tf

    module = tf.saved_model.load(path)
    outputs = module(np.zeros((1, 64, 64, 3), "float32"), training=False)
    return f"reloaded; __call__(1x64x64x3 images) -> {tuple(outputs.shape)}"


def _check_deployed(path, record):
    """Runs one image through the export with its format's runtime; a missing runtime is said, not fatal."""
    import numpy as np

    height, width = (size or 64 for size in record["input_shape"][1:3])
    try:
        outputs = deploy.run_exported(path, np.zeros((1, height, width, 3), "float32"))
    except ImportError as error:
        return f"not checked: {error}"
    return f"{deploy.RUNTIMES[record['format']]} ran it; 1x{height}x{width}x3 images -> {tuple(outputs.shape)}"


def _size_on_disk(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(folder, f)) for folder, _, files in os.walk(path) for f in files)


def _deployed_summary(path, record):
    low, high = (f"{v:g}" for v in record["input_range"])
    shape = ", ".join(
        {0: "batch", 1: "height", 2: "width"}[i] if v is None else str(v) for i, v in enumerate(record["input_shape"])
    )
    files = [path]
    if record["format"] == "openvino":
        files.append(deploy.openvino_bin(path))
    lines = [
        f"Wrote {' and '.join(files)}",
        f"  format        {record['format']}; metadata inside: {deploy.METADATA_PLACES[record['format']]}",
        f"  input         {record['input']}: float32[{shape}], RGB in [{low}, {high}] (the Keras model itself takes [-1, 1])",
        f"  output        {record['output']}: float32[batch, {record['output_size']}]",
        f"  variant       {record['variant']} ({record['flavor']}), bit_keras {record['bit_keras_version']}",
        f"  parameters    {record['parameters']:,}",
        f"  size on disk  {sum(_size_on_disk(f) for f in files) / 2**20:.1f} MiB",
    ]
    if "compile_config" in record:
        lines.append(f"  compile with  {record['compile_config']} (float32; OpenVINO's CPU default may be bfloat16)")
    return "\n".join(lines)


def _summary(path, record):
    low, high = (f"{v:g}" for v in record["input_range"])
    output = f"{record['output']}: float32[batch, {record['output_size']}]"
    return "\n".join(
        [
            f"Wrote {path}",
            f"  signature     serving_default(images: float32[batch, height, width, 3]) -> {output}",
            "  __call__      (images, training=False), traced for training=False and True; fine-tunable",
            f"  input range   [{low}, {high}] (float32 RGB, any size; the Keras model itself takes [-1, 1])",
            f"  variant       {record['variant']} ({record['flavor']}), bit_keras {record['bit_keras_version']}",
            f"  parameters    {record['parameters']:,}",
            f"  size on disk  {_size_on_disk(path) / 2**20:.1f} MiB",
        ]
    )


def main(argv=None):
    """Runs the command line; returns the exit status."""
    return run(_parse_args(argv))


def run(args):
    """Exports as the parsed flags say; returns the exit status."""
    _startup.quiet_absl()
    if os.path.lexists(args.out) and not args.overwrite:  # before the slow loading
        print(f"error: {args.out} already exists; pass --overwrite to replace it, or another --out.", file=sys.stderr)
        return 1
    fmt = args.format
    try:
        model = _load_model(args)
        if fmt == "tf_hub":
            print(f"[2/3] Writing the {args.flavor} module to {args.out}")
            record = hub_export.export(
                model, args.out, flavor=args.flavor, input_range=args.input_range, overwrite=args.overwrite
            )
        else:
            print(f"[2/3] Writing the {args.flavor} {fmt} export to {args.out}")
            record = hub_export.export_format(
                model,
                args.out,
                fmt,
                flavor=args.flavor,
                input_range=args.input_range,
                image_size=args.image_size,
                overwrite=args.overwrite,
            )
    except (ValueError, FileExistsError, FileNotFoundError, RuntimeError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # an unwritable --out, a full disk: one line naming the path
        where = error.filename or args.out
        print(f"error: cannot write {where}: {error.strerror or error}. Choose a writable --out.", file=sys.stderr)
        return 1
    if fmt != "tf_hub":
        print(f"[3/3] Checking the export with its runtime: {_check_deployed(args.out, record)}")
        print(_deployed_summary(os.path.abspath(args.out), record))
        return 0
    print(f"[3/3] Checking the module: {_check(args.out)}")
    print(_summary(os.path.abspath(args.out), record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
