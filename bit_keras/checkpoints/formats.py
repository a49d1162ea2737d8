"""Readers of every weight family, and `read_weights`: the one place each input kind is recognised.

Every reader returns the weights in the official layout (see `mapping`), and
`read_weights` wraps them in a `Weights` record naming the family they came
from. Nothing is unpickled: `.npz` is read with `allow_pickle=False` and
PyTorch files only through `torch.load(weights_only=True)`.
"""

import dataclasses
import json
import os
import zipfile

import keras
import numpy as np

from bit_keras import labels, optional
from bit_keras.checkpoints import releases
from bit_keras.checkpoints.mapping import (
    HEAD_BIAS,
    HEAD_KERNEL,
    ROOT_KERNEL,
    canonical_key,
    guess_family,
    model_state,
    to_official,
    transformers_keys,
)
from bit_keras.optional import require
from bit_keras.resnet import build_resnet

# Where `hub_export` records what an exported SavedModel is (its input range, class names, ...).
EXPORT_RECORD_PATH = os.path.join("assets.extra", "bit_keras.json")


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


# ------------------------------------------------------------------ official files


def read_npz(path):
    """Reads an official `.npz` checkpoint; pickled objects are refused."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except ValueError as error:
        if "pickle" in str(error).lower():
            raise ValueError(
                f"{path} holds pickled Python objects; BiT checkpoints hold plain arrays only, "
                f"so it was refused without being unpickled. Use an official .npz file."
            ) from None
        raise ValueError(f"{path} is not a readable .npz checkpoint ({error}).") from None
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise ValueError(
            f"{path} is not a readable .npz archive ({error}); it may be truncated or not a checkpoint. "
            f"Delete it and download it again."
        ) from None


def read_h5(path):
    """Reads the official TF2 `.h5` release (a tf.keras 2 `save_weights` file)."""
    import h5py

    state = {}
    try:
        with h5py.File(path, "r") as f:

            def visit(name, item):
                if isinstance(item, h5py.Dataset):
                    key = canonical_key(name)
                    if key is not None:
                        state[key] = np.asarray(item)

            f.visititems(visit)
    except OSError as error:
        raise ValueError(f"{path} is not a readable HDF5 file ({error}); it may be truncated.") from None
    if HEAD_KERNEL in state and state[HEAD_KERNEL].ndim == 2:  # a Dense kernel in the TF2 release
        state[HEAD_KERNEL] = state[HEAD_KERNEL][None, None]
    return state


# ------------------------------------------------------------- PyTorch families


_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "U8": "u1", "BOOL": "?"}


def read_safetensors(path):
    """The raw tensors of a `.safetensors` file (no torch needed); bfloat16 ones upcast to float32."""
    safetensors_numpy = require("safetensors.numpy", "safetensors")
    try:
        state = safetensors_numpy.load_file(path)  # bfloat16 as ml_dtypes' type where it is installed
        return {key: value.astype(np.float32) if value.dtype.name == "bfloat16" else value for key, value in state.items()}
    except Exception as error:  # SafetensorError, or a dtype NumPy lacks (bfloat16)
        bfloat16 = _read_bfloat16_safetensors(path)
        if bfloat16 is not None:
            return bfloat16
        raise ValueError(
            f"{path} is not a readable .safetensors file ({error}); it may be truncated. Delete it and download it again."
        ) from None


def _read_bfloat16_safetensors(path):
    """The tensors of a `.safetensors` file holding bfloat16 ones (NumPy has no bfloat16): upcast, exactly, to float32.

    None when the file holds no bfloat16 tensor or cannot be parsed (the caller reports it).
    """
    try:
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(length))
            body = f.read()
        entries = {key: entry for key, entry in header.items() if key != "__metadata__"}
        if not any(entry["dtype"] == "BF16" for entry in entries.values()):
            return None
        state = {}
        for key, entry in entries.items():
            start, end = entry["data_offsets"]
            if entry["dtype"] == "BF16":  # the high half of a float32
                value = (np.frombuffer(body[start:end], "<u2").astype(np.uint32) << 16).view(np.float32)
            else:
                value = np.frombuffer(body[start:end], _SAFETENSORS_DTYPES[entry["dtype"]])
            state[key] = value.reshape(entry["shape"]).copy()
        return state
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_torch(path):
    """The raw tensors of a PyTorch `.pth`/`.bin` state dict, through `torch.load(weights_only=True)`.

    Anything that is not a plain state dict (arbitrary pickled objects) is
    refused by torch's restricted unpickler before it runs.
    """
    torch = require("torch", "torch")
    import pickle

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(
            f"{path} holds pickled Python objects that are not a state dict of tensors, so it was refused "
            f"without running them ({first[:200]}). Pass a timm state dict (.safetensors preferred)."
        ) from None
    except Exception as error:
        raise ValueError(f"{path} is not a readable PyTorch file ({error}); it may be truncated.") from None
    if isinstance(payload, dict):
        for nested in ("state_dict", "model", "state_dict_ema"):
            if isinstance(payload.get(nested), dict):
                payload = payload[nested]
                break
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise ValueError(
            f"{path} is a PyTorch file but not a state dict of tensors (got {type(payload).__name__}). "
            f"Save model.state_dict(), or pass a .safetensors file."
        )
    state = {}
    for key, tensor in payload.items():
        key = key[len("module.") :] if key.startswith("module.") else key
        tensor = tensor.detach().cpu()
        state[key] = (tensor.float() if tensor.is_floating_point() else tensor).numpy()
    return state


def _pytorch_family(path, raw):
    family = guess_family(raw)
    if family is None:
        examples = ", ".join(repr(k) for k in list(raw)[:3])
        raise ValueError(
            f"{path} holds no BiT weights: none of its {len(raw)} tensors is named like timm's 'stem.conv.weight', "
            f"transformers' 'bit.embedder.convolution.weight' or {ROOT_KERNEL!r}"
            f"{' (e.g. ' + examples + ')' if examples else ''}. Pass a timm ResNetV2-BiT or transformers Bit checkpoint."
        )
    statistics = [key for key in raw if key.endswith((".running_mean", ".running_var", ".num_batches_tracked"))]
    if statistics:
        raise ValueError(
            f"{path} is not a BiT model: it holds BatchNorm statistics ({statistics[0]!r} and {len(statistics) - 1} "
            f"more), so it is a ResNet-v2 with batch norms (such as timm's resnetv2_50), while BiT's norms are "
            f"GroupNorms with weight-standardised convolutions. Pass a BiT checkpoint, e.g. "
            f"'timm/resnetv2_50x1_bit.goog_in21k' or 'google/bit-50'."
        )
    if family == "transformers":
        raw = transformers_keys(raw)
    return family, to_official(family, raw)[0]


def read_transformers(path):
    """Reads a transformers `BitModel` / `BitForImageClassification` folder; returns (state, class_names)."""
    with open(os.path.join(path, "config.json")) as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}/config.json is not valid JSON ({error}); the folder may be incomplete.") from None
    if config.get("model_type") != "bit":
        raise ValueError(
            f"{path} is a transformers folder of model_type {config.get('model_type')!r}, not 'bit'. "
            f"Pass a BitModel / BitForImageClassification folder such as google/bit-50."
        )
    layout = {
        "layer_type": (config.get("layer_type", "preactivation"), "preactivation"),
        "global_padding": (config.get("global_padding"), None),
        "embedding_dynamic_padding": (config.get("embedding_dynamic_padding", False), False),
    }
    differs = {k: got for k, (got, want) in layout.items() if got != want}
    if differs:
        raise ValueError(
            f"{path} is a Bit model whose layout is not BiT's ResNet-v2 ({differs}; BiT is layer_type='preactivation', "
            f"global_padding=None, embedding_dynamic_padding=False): its outputs would differ. It cannot be read."
        )
    weights = os.path.join(path, "model.safetensors")
    if os.path.isfile(weights):
        raw = read_safetensors(weights)
    elif os.path.isfile(os.path.join(path, "pytorch_model.bin")):
        raw = read_torch(os.path.join(path, "pytorch_model.bin"))
    else:
        raise ValueError(f"{path} has a config.json but no model.safetensors (or pytorch_model.bin); it is incomplete.")
    state = to_official("transformers", transformers_keys(raw))[0]
    labels = config.get("id2label") or {}
    names = [labels[k] for k in sorted(labels, key=int)] if labels else None
    if names and all(name == f"LABEL_{i}" for i, name in enumerate(names)):
        names = None
    return state, names


# ------------------------------------------------------------------- SavedModels


def read_saved_model(path):
    """Reads the weights of a BiT SavedModel folder (exported here, from TF Hub or Kaggle).

    Variables are matched to the official keys by name, on the suffix as
    `canonical_key` does: the variable names recorded in the checkpoint of a
    TF2 SavedModel (`hub_export` names them by the official keys, and the
    published TF-Hub BiT modules follow the official layout), or the keys of
    a name-based checkpoint. Optimizer slot variables (a module fine-tuned
    and saved with its optimizer) are skipped. The graph is never run.

    Example:

    >>> import os, tempfile, numpy as np, tensorflow as tf
    >>> module = tf.Module()
    >>> module.root = tf.Variable(np.ones((7, 7, 3, 64), "float32"), name=ROOT_KERNEL)
    >>> path = os.path.join(tempfile.mkdtemp(), "module")
    >>> tf.saved_model.save(module, path)
    >>> read_saved_model(path)[ROOT_KERNEL].shape
    (7, 7, 3, 64)
    """
    tf = optional.tensorflow("Reading a SavedModel (TF Hub, Kaggle, hub_export)")
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    path = os.fspath(path)
    prefix = os.path.join(path, "variables", "variables")
    if not os.path.isfile(prefix + ".index"):
        raise ValueError(
            f"{path} is a folder but not a SavedModel with weights (no variables/variables.index). "
            f"Pass a SavedModel folder, or a .npz/.h5/.keras/.weights.h5 file."
        )
    try:
        reader = tf.train.load_checkpoint(prefix)
        shapes = reader.get_variable_to_shape_map()
        graph_bytes = reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH") if "_CHECKPOINTABLE_OBJECT_GRAPH" in shapes else None
    except (tf.errors.OpError, ValueError, IndexError) as error:  # IndexError: the data file ends early
        raise ValueError(
            f"{path} is not a readable SavedModel: its variables cannot be read ({str(error).splitlines()[0][:200]}); "
            f"variables/variables.data may be truncated, or it is not a SavedModel. Export or download it again."
        ) from None
    if graph_bytes is not None:
        graph = trackable_object_graph_pb2.TrackableObjectGraph.FromString(graph_bytes)
        model_nodes = _model_nodes(graph)
        # Object-based (TF2): keys are object paths; `full_name` is the variable's name.
        names = {
            attribute.checkpoint_key: (attribute.full_name, attribute.checkpoint_key)
            for node_id in sorted(model_nodes)
            for attribute in graph.nodes[node_id].attributes
            if attribute.name == "VARIABLE_VALUE" and "/.OPTIMIZER_SLOT/" not in attribute.checkpoint_key
        }
    else:  # name-based (TF1 Hub format): keys are the variable names
        names = {key: (key,) for key in shapes}
    state, sources = {}, {}
    for checkpoint_key, candidates in sorted(names.items()):
        key = next((k for k in map(canonical_key, candidates) if k is not None), None)
        if key is None:
            continue
        if key in state:
            raise ValueError(
                f"{path} holds two variables for the official key {key!r} ({sources[key]!r} and "
                f"{checkpoint_key!r}); it may hold more than one model. Export the BiT model alone."
            )
        try:
            state[key], sources[key] = reader.get_tensor(checkpoint_key), checkpoint_key
        except (tf.errors.OpError, IndexError) as error:  # IndexError: the data file ends before the tensor
            raise ValueError(
                f"{path}: the variable {checkpoint_key!r} cannot be read ({str(error).splitlines()[0][:200]}); "
                f"variables/variables.data may be truncated. Export or download it again."
            ) from None
    if ROOT_KERNEL not in state:
        examples = ", ".join(repr(c[0]) for c in list(names.values())[:3])
        raise ValueError(
            f"{path} holds no BiT weights: none of its {len(names)} variables is named like {ROOT_KERNEL!r}"
            f"{' (e.g. ' + examples + ')' if examples else ''}. Pass a SavedModel written by hub_export.export "
            f"or a TF-Hub BiT module."
        )
    if HEAD_KERNEL in state and state[HEAD_KERNEL].ndim == 2:  # a Dense kernel, as in the .h5 release
        state[HEAD_KERNEL] = state[HEAD_KERNEL][None, None]
    return state


_OPTIMIZER_STEP = {"iter", "iterations", "_iterations"}  # the step counter every Keras optimizer tracks


def _model_nodes(graph):
    """Ids of the object-graph nodes that are not an optimizer's: no slot variables, no optimizer state.

    A module fine-tuned and saved with its optimizer (the TF-Hub colab
    workflow) also holds momentum variables named like the weights: legacy
    optimizers mark them as slot variables; newer ones keep them as children
    of the optimizer object, recognised by its step counter. Nodes are
    walked from the root without entering an optimizer.
    """
    slots = {slot.slot_variable_node_id for node in graph.nodes for slot in node.slot_variables}
    optimizers = {
        node_id for node_id, node in enumerate(graph.nodes) if any(child.local_name in _OPTIMIZER_STEP for child in node.children)
    }
    seen, stack = set(), [0]
    while stack:
        node_id = stack.pop()
        if node_id in seen or node_id in slots or (node_id in optimizers and node_id != 0):
            continue
        seen.add(node_id)
        stack.extend(child.node_id for child in graph.nodes[node_id].children)
    return seen


# ------------------------------------------------------- this package's files


def read_keras(path):
    """The official-layout weights of a `.keras` file saved from a bit_keras model."""
    return model_state(load_keras(path))


def load_keras(path):
    """The model of a `.keras` file, uncompiled; a ValueError naming the file when it is truncated or foreign.

    The layers the file names (bit_keras>StandardizedConv2D, ...) are registered by `bit_keras.layers`,
    which this module imports through `resnet`.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such .keras file.")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not a complete .keras file (not a readable zip archive); it may be truncated. Save it again."
        )
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:
        raise ValueError(
            f"{path} could not be loaded as a Keras model ({type(error).__name__}: {str(error).splitlines()[0][:300]}). "
            f"It may be truncated or saved by another package; bit_keras models need `import bit_keras` first "
            f"(it registers bit_keras>StandardizedConv2D and bit_keras>GroupNormalization)."
        ) from None


def read_keras_weights(path, spec):
    """Reads a Keras 3 `.weights.h5` file saved from a bit_keras model of `spec`.

    Such files name weights by layer class and order, not layer name, so they
    load into a model of the same architecture, whose head size is read off
    the file's only Dense layer.
    """
    import h5py

    if spec is None:
        raise ValueError(f"{path} is a .weights.h5 file, which does not record its architecture; pass the variant, not 'auto'.")
    try:
        with h5py.File(path, "r") as f:
            if "layers" not in f:
                raise ValueError(f"{path} is not a Keras 3 .weights.h5 file (no 'layers' group).")
            head = f["layers"].get("dense")
            classes = head["vars"]["1"].shape[0] if head is not None else None
    except OSError as error:
        raise ValueError(f"{path} is not a readable .weights.h5 file ({error}); it may be truncated. Save it again.") from None
    template = build_resnet(spec, classes, include_top=classes is not None)
    try:
        template.load_weights(path)
    except (ValueError, OSError, KeyError) as error:
        raise ValueError(f"{path} does not fit {spec.name}: {error}. Pass the variant it was saved from.") from None
    return model_state(template)


# ----------------------------------------------------------------- dispatch


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
    family, state = _pytorch_family(path, raw)
    return Weights(state, family, path)


def read_folder(path):
    """Reads a transformers Bit folder or a SavedModel folder into a `Weights` record."""
    if os.path.isfile(os.path.join(path, "config.json")) and not os.path.isfile(os.path.join(path, "saved_model.pb")):
        state, names = read_transformers(path)
        return Weights(state, "transformers", path, names)
    record = _export_record(path)
    if record.get("format") == "saved_model":
        raise ValueError(
            f"{path} is a deployment export (hub_export.export_format(..., 'saved_model')): a serving model around "
            f"folded convolutions, for inference, which BiT(weights=) does not read back. Run it with "
            f"tf.saved_model.load or hub_export.run_exported; to load the model, pass its own weights (a .keras or "
            f".npz file) or a TF-Hub export (hub_export.export(model, path))."
        )
    names = record.get("class_names")
    names = list(names) if isinstance(names, list) and all(isinstance(name, str) for name in names) else None
    return Weights(read_saved_model(path), "official", path, names)


def _export_record(folder):
    """What `hub_export` recorded in a SavedModel folder (its class names, its format, ...), or {} (TF Hub's modules record nothing)."""
    try:
        with open(os.path.join(folder, EXPORT_RECORD_PATH)) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


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
