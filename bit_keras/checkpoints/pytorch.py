"""The PyTorch families: timm's ResNetV2-BiT state dicts (.safetensors, .pth/.bin) and transformers' Bit folders.

Both are read into the official layout through the one key mapping
(`mapping`). Nothing is unpickled: PyTorch files are read only through
`torch.load(weights_only=True)`, whose restricted unpickler refuses anything
that is not a state dict of tensors.
"""

import json
import os
import pickle

import numpy as np

from bit_keras.checkpoints.mapping import ROOT_KERNEL, guess_family, to_official, transformers_keys
from bit_keras.optional import require

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


def pytorch_family(path, raw):
    """(family, official-layout state) of the raw tensors of a timm or transformers file at `path`."""
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
