"""Writers of every family, and the one atomic-write mechanism they (and hub_export) use.

A file or folder is written under a temporary name beside its target,
`.{name}.bit-keras-tmp.{host}.{pid}.{random}`, and renamed when complete, so
the target never holds half a file. Temporary names left by a writer that
died (`kill -9`) are recognised by that pattern and removed by the next write
to the same folder once their process is gone. Files and folders get the
usual permissions (0666 / 0777 less the umask), not mkstemp's owner-only ones.
An existing target is refused unless `overwrite=True`.
"""

import contextlib
import json
import os
import re
import secrets
import shutil
import socket

import keras
import numpy as np

from bit_keras import arguments
from bit_keras.checkpoints.mapping import HEAD_BIAS, HEAD_KERNEL, from_official, infer_variant, model_state
from bit_keras.checkpoints.validate import check_values
from bit_keras.optional import require

_TAG = ".bit-keras-tmp"
_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
_TEMPORARY = re.compile(
    rf"^\.(?P<base>.+){re.escape(_TAG)}\.(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>\d+)\.[0-9a-f]+"
    # A writer's suffix (".keras", ".xml", ...; never ".previous", which marks a folder left aside).
    rf"(?:\.(?!previous$)[A-Za-z0-9]+)?(?P<previous>\.previous)?$"
)


def refuse_existing(path, overwrite):
    """FileExistsError naming `path` when it exists and `overwrite` is False."""
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it, or choose another path.")


def process_alive(pid):
    """Whether a process `pid` of this host still runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(folder, writers_gone=False):
    """Removes temporary files and folders of dead writers on this host from `folder`; returns their names.

    A writer killed while replacing a folder may leave the old one only
    under its `.previous` name: that one is put back where it was.
    `writers_gone=True` is for a caller that knows no other writer is at
    work in `folder` (a run's backups, under its lock): the temporaries of
    every host go, not only those of this host's dead processes.
    """
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = _TEMPORARY.match(name)
        if match and (writers_gone or (match["host"] == _HOST and not process_alive(int(match["pid"])))):
            target = os.path.join(folder, match["base"])
            if match["previous"] and not os.path.lexists(target):
                os.rename(os.path.join(folder, name), target)
            else:
                _remove(os.path.join(folder, name))
            removed.append(name)
    return removed


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def _prepare(path, overwrite, suffix=""):
    """Absolute path, its folder created, the stale temporaries there removed, a fresh temporary name."""
    path = os.path.abspath(os.fspath(path))
    refuse_existing(path, overwrite)
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise OSError(f"Cannot create the folder {folder} for {path}: {error.strerror or error}.") from None
    remove_stale(folder)
    name = f".{os.path.basename(path)}{_TAG}.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}{suffix}"
    return path, os.path.join(folder, name)


@contextlib.contextmanager
def atomic_file(path, overwrite=False, suffix=""):
    """Yields a temporary file name beside `path`; renamed to `path` when the body succeeds.

    `suffix` ends the temporary name, for writers that insist on one (".keras"
    for `model.save`). A temporary left by a killed writer is removed by the
    next write into the same folder.

    Example:

    >>> import os, tempfile
    >>> target = os.path.join(tempfile.mkdtemp(), "a.txt")
    >>> with atomic_file(target) as tmp:
    ...     _ = open(tmp, "w").write("done")
    >>> open(target).read(), os.listdir(os.path.dirname(target))
    ('done', ['a.txt'])
    """
    path, tmp = _prepare(path, overwrite, suffix)
    try:
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the umask applies
    except OSError as error:
        raise OSError(f"Cannot write {path}: {error.strerror or error}. Choose a writable folder.") from None
    try:
        yield tmp
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if something appeared at `path` meanwhile
            except FileExistsError:
                refuse_existing(path, overwrite)
            except OSError:  # no hard links on this file system
                refuse_existing(path, overwrite)
                os.replace(tmp, path)
    finally:
        _remove(tmp)


@contextlib.contextmanager
def atomic_folder(path, overwrite=False):
    """Yields a temporary folder beside `path`; renamed to `path` once the body succeeds."""
    path, tmp = _prepare(path, overwrite)
    try:
        os.mkdir(tmp, 0o777)  # the umask applies
    except OSError as error:
        raise OSError(f"Cannot write {path}: {error.strerror or error}. Choose a writable folder.") from None
    previous = None
    try:
        yield tmp
        refuse_existing(path, overwrite)  # again: something may have appeared there meanwhile
        if os.path.lexists(path):
            previous = f"{tmp}.previous"
            os.rename(path, previous)
        os.rename(tmp, path)
    except BaseException:
        _remove(tmp)
        if previous and os.path.lexists(previous) and not os.path.lexists(path):
            os.rename(previous, path)
        raise
    if previous:
        _remove(previous)


@contextlib.contextmanager
def scratch_folder(path):
    """Yields a temporary folder beside `path` for a writer's intermediate files; removed at exit.

    Named as the atomic writes' temporaries are, so one left by a killed
    writer is removed by the next write into the same folder. Whatever is
    meant to last is moved out of it (e.g. into an `atomic_file`) before the
    body ends; a rename within one file system, never a copy.

    >>> import os, tempfile
    >>> target = os.path.join(tempfile.mkdtemp(), "m.onnx")
    >>> with scratch_folder(target) as stage:
    ...     os.path.dirname(stage) == os.path.dirname(target)
    True
    >>> os.listdir(os.path.dirname(target))
    []
    """
    _, tmp = _prepare(path, overwrite=True)
    try:
        os.mkdir(tmp, 0o777)
    except OSError as error:
        raise OSError(f"Cannot write {path}: {error.strerror or error}. Choose a writable folder.") from None
    try:
        yield tmp
    finally:
        _remove(tmp)


# ----------------------------------------------------------------- the writers


def _state_to_write(model, writer):
    if not isinstance(model, keras.Model):
        raise ValueError(f"{writer} takes a keras.Model built by bit_keras.BiT, got {type(model).__name__}: {model!r:.80}.")
    top_level = {layer.name for layer in model.layers}
    nested = [layer.name for layer in model.layers if isinstance(layer, keras.Model) and "root_conv" not in top_level]
    if nested:
        others = sorted(top_level - set(nested))
        raise ValueError(
            f"{writer}: model {model.name!r} wraps a BiT model ({', '.join(nested)}); its own layers "
            f"({', '.join(others[:5])}{', ...' if len(others) > 5 else ''}) have no place in the BiT layout and would be "
            f"dropped. Save the BiT model itself: {writer}(model.get_layer({nested[0]!r}), ...)."
        )
    state = model_state(model)
    if not state:
        raise ValueError(
            f"{writer}: model {model.name!r} has no BiT weights (no layer named like 'root_conv', "
            f"'block1_unit01_a_conv', ...), so nothing would be written. Pass a model built by bit_keras.BiT "
            f"(not a model wrapping it)."
        )
    check_values(state, f"{writer}: model {model.name!r}", action="written")
    return state


def save_official(model, path, overwrite=False):
    """Writes `model` as an official BiT `.npz` checkpoint, atomically.

    The file loads in the official BiT code and in timm (`_load_weights`). A
    model built with `include_top=False` writes a headless backbone: timm
    loads it with `num_classes=0`, the official code with `zero_head=True`.
    An existing file is refused unless `overwrite=True`; NaN/Inf weights are
    refused by key.

    Example:

    >>> import bit_keras, tempfile, os
    >>> model = bit_keras.BiT(bit_keras.Variant((1, 1, 1, 1)), num_classes=2)
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny.npz")
    >>> bit_keras.save_official(model, path)
    >>> bit_keras.BiT(bit_keras.Variant((1, 1, 1, 1)), weights=path).output.shape
    (None, 2)
    """
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise ValueError(f"save_official writes the official .npz layout; give a path ending in .npz, got {path!r}.")
    state = _state_to_write(model, "save_official")
    with atomic_file(path, overwrite) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **state)


def save_keras(model, path, overwrite=False):
    """`model.save(path)` to a `.keras` file, atomically: a full disk or a kill never leaves half a file.

    Example:

    >>> import bit_keras, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny.keras")
    >>> save_keras(bit_keras.BiT(bit_keras.Variant((1, 1, 1, 1)), num_classes=2), path)
    >>> os.listdir(os.path.dirname(path))
    ['tiny.keras']
    """
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"save_keras writes a .keras file; give a path ending in .keras, got {path!r}.")
    with atomic_file(path, overwrite, suffix=".keras") as tmp:
        model.save(tmp)


def save_timm(model, path, overwrite=False):
    """Writes `model` as a timm ResNetV2-BiT state dict in `.safetensors`, atomically.

    It loads with `timm.create_model("resnetv2_50x1_bit", pretrained=True,
    num_classes=K, pretrained_cfg_overlay=dict(file=path, num_classes=K))`
    (timm drops a head whose size differs from the pretrained config's, hence
    `num_classes` in the overlay too). A model built with `include_top=False`
    writes a headless backbone: load it with `num_classes=0`. timm uses
    weight-standardisation epsilon 1e-8 (see `BiT(ws_epsilon=...)`).

    Example:

    >>> import bit_keras, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny.safetensors")
    >>> save_timm(bit_keras.BiT(bit_keras.Variant((1, 1, 1, 1)), num_classes=2), path)
    >>> bit_keras.BiT("auto", weights=path).output.shape
    (None, 2)
    """
    safetensors_numpy = require("safetensors.numpy", "safetensors")
    path = os.fspath(path)
    if not path.endswith(".safetensors"):
        raise ValueError(f"save_timm writes a .safetensors file; give a path ending in .safetensors, got {path!r}.")
    state = from_official("timm", _state_to_write(model, "save_timm"))
    with atomic_file(path, overwrite) as tmp:
        safetensors_numpy.save_file(state, tmp, metadata={"format": "pt"})


def transformers_config(state, class_names=None, names_argument="class_names"):
    """The `config.json` of a transformers Bit model for an official-layout state; `names_argument` names `class_names` in errors."""
    variant = infer_variant(state)
    if variant is None:
        raise ValueError("The model's weights are not a BiT layout; nothing to describe in config.json.")
    classes = int(state[HEAD_BIAS].shape[0]) if HEAD_BIAS in state else 0
    if class_names is not None:
        class_names = list(arguments.class_names(names_argument, class_names, classes))
    config = {
        "architectures": ["BitForImageClassification" if classes else "BitModel"],
        "model_type": "bit",
        "num_channels": 3,
        "embedding_size": 64 * variant.width,
        "hidden_sizes": [256, 512, 1024, 2048],
        "depths": list(variant.units),
        "width_factor": variant.width,
        "layer_type": "preactivation",
        "hidden_act": "relu",
        "global_padding": None,
        "num_groups": 32,
        "embedding_dynamic_padding": False,
        "output_stride": 32,
        "drop_path_rate": 0.0,
    }
    if classes:
        names = class_names or [f"LABEL_{i}" for i in range(classes)]
        config["id2label"] = {str(i): name for i, name in enumerate(names)}
        config["label2id"] = {name: i for i, name in enumerate(names)}
    return config


def save_transformers(model, path, class_names=None, overwrite=False):
    """Writes `model` as a transformers Bit folder (`config.json` + `model.safetensors`), atomically.

    `BitForImageClassification.from_pretrained(path)` loads it with the
    model's head (`config.num_labels`, and `id2label` from `class_names`, by
    default the model's own `model.class_names` where `bit_keras.BiT` set
    them); a model built with `include_top=False` writes a headless `BitModel`.
    transformers uses weight-standardisation epsilon 1e-8.

    Example:

    >>> import bit_keras, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny-bit")
    >>> model = bit_keras.BiT(bit_keras.Variant((1, 1, 1, 1)), num_classes=2)
    >>> save_transformers(model, path, class_names=["cat", "dog"])
    >>> sorted(os.listdir(path))
    ['config.json', 'model.safetensors']
    """
    safetensors_numpy = require("safetensors.numpy", "safetensors")
    official = _state_to_write(model, "save_transformers")
    names, argument = class_names, "class_names"
    if names is None:  # the model's own, as BiT() read them with the weights or a trainer set them
        names, argument = getattr(model, "class_names", None), "model.class_names"
    config = transformers_config(official, names, argument)
    state = from_official("transformers", official)
    if HEAD_KERNEL not in official:  # a BitModel: the body without the "bit." prefix
        state = {key[len("bit.") :]: value for key, value in state.items()}
    with atomic_folder(path, overwrite) as folder:
        safetensors_numpy.save_file(state, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
            f.write("\n")
