"""`read_weights`: the one place each input kind is recognised, and the `Weights` record it returns.

Every family's reader (`official`, `pytorch`, `saved_model`, `keras_files`)
returns the weights in the official layout (see `mapping`); `read_weights`
recognises the input (files by content and extension, folders, release names)
and wraps the weights in a `Weights` record naming the family they came from.
Nothing is unpickled: `.npz` is read with `allow_pickle=False` and PyTorch
files only through `torch.load(weights_only=True)`.
"""

import dataclasses
import os
import zipfile

from bit_keras import labels
from bit_keras.checkpoints import releases
from bit_keras.checkpoints.keras_files import read_keras, read_keras_weights
from bit_keras.checkpoints.mapping import HEAD_BIAS, ROOT_KERNEL
from bit_keras.checkpoints.official import read_h5, read_npz
from bit_keras.checkpoints.pytorch import pytorch_family, read_safetensors, read_torch, read_transformers
from bit_keras.checkpoints.saved_model import export_record, exported_class_names, read_saved_model


@dataclasses.dataclass
class Weights:
    """Weights read from a source, in the official layout.

    Attributes:
        state: dict of official key -> NumPy array (HWIO kernels).
        family: "official" (.npz, .h5, SavedModel), "timm", "transformers" or
            "keras" (this package's .keras / .weights.h5).
        source: the path or name read, for messages.
        class_names: the head's class names when the source says them
            (transformers' id2label; the ImageNet names for a release name
            with a 1000 / 21843-class head, see `bit_keras.labels`; those a
            `hub_export` SavedModel recorded), else None.
    """

    state: dict
    family: str
    source: str
    class_names: list = None


def _magic(path):
    with open(path, "rb") as f:
        return f.read(9)


def _is_torch_zip(path):
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("data.pkl") for name in archive.namelist())
    except zipfile.BadZipFile:
        return path.endswith((".pth", ".pt", ".bin"))


def read_file(path, spec=None):
    """Reads a weights file of any family into a `Weights` record."""
    if path.endswith(".keras"):
        return Weights(read_keras(path), "keras", path)
    if path.endswith(".weights.h5"):
        return Weights(read_keras_weights(path, spec), "keras", path)
    magic = _magic(path)
    if magic.startswith(b"PK") and _is_torch_zip(path):
        return _pytorch(path, read_torch(path))
    if magic.startswith(b"PK"):
        state, family = read_npz(path), "official"
    elif magic.startswith(b"\x89HDF"):
        state, family = read_h5(path), "official"
    elif (len(magic) == 9 and magic[8:9] == b"{") or path.endswith(".safetensors"):
        return _pytorch(path, read_safetensors(path))
    elif path.endswith((".pth", ".pt", ".bin")) or magic[:1] == b"\x80":
        return _pytorch(path, read_torch(path))
    else:
        raise ValueError(
            f"{path} is neither an .npz (zip) nor an .h5 (HDF5) file, nor .safetensors or a PyTorch state dict. "
            f"Pass an official BiT checkpoint, a timm/transformers checkpoint, a .keras or .weights.h5 file of "
            f"this package, or a known release name."
        )
    if ROOT_KERNEL not in state:
        raise ValueError(
            f"{path} holds no BiT weights: the key {ROOT_KERNEL!r} is missing "
            f"(found {len(state)} tensors{', e.g. ' + repr(next(iter(state))) if state else ''})."
        )
    return Weights(state, family, path)


def _pytorch(path, raw):
    family, state = pytorch_family(path, raw)
    return Weights(state, family, path)


def read_folder(path):
    """Reads a transformers Bit folder or a SavedModel folder into a `Weights` record."""
    if os.path.isfile(os.path.join(path, "config.json")) and not os.path.isfile(os.path.join(path, "saved_model.pb")):
        state, names = read_transformers(path)
        return Weights(state, "transformers", path, names)
    record = export_record(path)
    if record.get("format") == "saved_model":
        raise ValueError(
            f"{path} is a deployment export (hub_export.export_format(..., 'saved_model')): a serving model around "
            f"folded convolutions, for inference, which BiT(weights=) does not read back. Run it with "
            f"tf.saved_model.load or hub_export.run_exported; to load the model, pass its own weights (a .keras or "
            f".npz file) or a TF-Hub export (hub_export.export(model, path))."
        )
    return Weights(read_saved_model(path), "official", path, exported_class_names(record))


def read_checkpoint(path):
    """Reads a checkpoint file of any family into a dict of official-layout arrays."""
    return read_file(os.fspath(path)).state


def read_weights(weights, spec=None):
    """Reads `weights` (a path, folder or release name) into a `Weights` record, or None for None.

    The one place that recognises each kind of input: files by content (and
    extension), folders (transformers or SavedModel), then release names: the
    bucket's (`BiT-M-R50x1`), Hugging Face repos (`timm/resnetv2_50x1_bit.goog_in21k`,
    `google/bit-50`) and Kaggle handles (`kaggle:google/bit/tensorFlow2/m-r50x1`).
    """

    if weights is None:
        return None
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            f"weights must be None, a path (str or os.PathLike) or a release name, got {type(weights).__name__} "
            f"{weights!r}. Pass e.g. weights='BiT-M-R50x1.npz' or weights='BiT-M-R50x1'."
        )
    path = os.fspath(weights)
    if os.path.isdir(path):
        return read_folder(path)
    if os.path.isfile(path):
        return read_file(path, spec)
    local = releases.fetch(path)
    if local is None:
        raise ValueError(
            f"weights={weights!r} is neither an existing file or folder nor a known release name. "
            f"Pass a path to a .npz/.h5/.safetensors/.pth/.keras/.weights.h5 file, a SavedModel or transformers "
            f"folder, or a name such as 'BiT-M-R50x1', 'timm/resnetv2_50x1_bit.goog_in21k', 'google/bit-50' or "
            f"'kaggle:google/bit/tensorFlow2/m-r50x1'."
        )
    record = read_folder(local) if os.path.isdir(local) else read_file(local, spec)
    record.source = f"{path} ({local})"
    if record.class_names is None and releases.has_imagenet_head(path):
        classes = record.state[HEAD_BIAS].shape[0] if HEAD_BIAS in record.state else None
        if classes in (labels.ILSVRC2012_CLASSES, labels.IMAGENET21K_CLASSES):
            record.class_names = list(labels.imagenet_class_names(classes))
    return record
