"""Official BiT checkpoints: the key mapping, readers, validation, downloads, writer.

The official release stores each model as a flat dictionary of HWIO arrays
keyed like `resnet/block1/unit01/a/standardized_conv2d/kernel` (`.npz`), or as
a tf.keras 2 `save_weights` file (`.h5`) whose dataset paths end in the same
names. `official_weights` is the one place that maps those keys onto the
layers of a `bit_keras` model, in both directions.
"""

import dataclasses
import os
import re
import tempfile
import zipfile

import keras
import numpy as np

BASE_URL = "https://storage.googleapis.com/bit_models"
HEAD_KERNEL = "resnet/head/conv2d/kernel"
HEAD_BIAS = "resnet/head/conv2d/bias"
ROOT_KERNEL = "resnet/root_block/standardized_conv2d/kernel"

_UNIT_LAYER = re.compile(r"^block(\d+)_unit(\d+)_(?:([abc])_(gn|conv)|(proj))$")
_CANONICAL = re.compile(
    r"^(root_block/standardized_conv2d/kernel"
    r"|block\d+/unit\d+/[abc]/(?:group_norm/(?:gamma|beta)|(?:proj/)?standardized_conv2d/kernel)"
    r"|group_norm/(?:gamma|beta)"
    r"|head/(?:\w+/)?(?:kernel|bias))$"
)


def layer_keys(layer_name):
    """Official keys of a layer's weights, in the layer's weight order, or None."""
    if layer_name == "root_conv":
        return [ROOT_KERNEL]
    if layer_name == "pre_head_gn":
        return ["resnet/group_norm/gamma", "resnet/group_norm/beta"]
    if layer_name == "head":
        return [HEAD_KERNEL, HEAD_BIAS]
    match = _UNIT_LAYER.match(layer_name)
    if not match:
        return None
    block, unit, part, kind, proj = match.groups()
    scope = f"resnet/block{int(block)}/unit{int(unit):02d}"
    if proj:
        return [f"{scope}/a/proj/standardized_conv2d/kernel"]
    if kind == "gn":
        return [f"{scope}/{part}/group_norm/gamma", f"{scope}/{part}/group_norm/beta"]
    return [f"{scope}/{part}/standardized_conv2d/kernel"]


def _iter_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _iter_layers(layer)
        else:
            yield layer


def official_weights(model):
    """Maps each official checkpoint key to the `keras.Variable` holding it.

    Example:

    >>> import bit_keras
    >>> model = bit_keras.BiT(bit_keras.Variant((1, 1, 1, 1)), num_classes=2)
    >>> sorted(official_weights(model))[0]
    'resnet/block1/unit01/a/group_norm/beta'
    """
    mapping = {}
    for layer in _iter_layers(model):
        keys = layer_keys(layer.name)
        if keys is None:
            continue
        if len(keys) != len(layer.weights):
            raise ValueError(f"Layer {layer.name!r} has {len(layer.weights)} weights, expected {len(keys)}: {keys}.")
        for key, variable in zip(keys, layer.weights):
            if key in mapping:
                raise ValueError(f"Two layers map to the official key {key!r}; is a BiT model nested twice?")
            mapping[key] = variable
    return mapping


def model_state(model):
    """The model's weights as a dict of NumPy arrays in the official layout."""
    state = {}
    for key, variable in official_weights(model).items():
        value = keras.ops.convert_to_numpy(variable)
        state[key] = value.reshape((1, 1) + value.shape) if key == HEAD_KERNEL else value
    return state


# ---------------------------------------------------------------- reading files


def read_npz(path):
    """Reads an official `.npz` checkpoint; pickled objects are refused."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except ValueError as error:
        if "allow_pickle" in str(error) or "pickle" in str(error).lower():
            raise ValueError(
                f"{path} holds pickled Python objects; BiT checkpoints hold plain arrays only, "
                f"so it was refused without being unpickled. Use an official .npz file."
            ) from None
        raise
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise ValueError(
            f"{path} is not a readable .npz archive ({error}); it may be truncated or not a checkpoint. "
            f"Delete it and download it again."
        ) from None


def canonical_key(h5_path):
    """The official key for a dataset path of the TF2 `.h5` release, or None."""
    parts = h5_path.replace(":0", "").strip("/").split("/")
    for start in range(len(parts)):
        suffix = "/".join(parts[start:])
        if _CANONICAL.match(suffix):
            if suffix.startswith("head/"):
                return HEAD_BIAS if suffix.endswith("bias") else HEAD_KERNEL
            return f"resnet/{suffix}"
    return None


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


def read_checkpoint(path):
    """Reads an official `.npz` or `.h5` checkpoint into a dict of arrays."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        magic = f.read(8)
    if magic.startswith(b"PK"):
        state = read_npz(path)
    elif magic.startswith(b"\x89HDF"):
        state = read_h5(path)
    else:
        raise ValueError(
            f"{path} is neither an .npz (zip) nor an .h5 (HDF5) file. Pass an official BiT checkpoint, "
            f"a .keras or .weights.h5 file of this package, or a known release name."
        )
    if ROOT_KERNEL not in state:
        raise ValueError(
            f"{path} holds no BiT weights: the key {ROOT_KERNEL!r} is missing "
            f"(found {len(state)} tensors{', e.g. ' + repr(next(iter(state))) if state else ''})."
        )
    return state


def describe(state):
    """Names the architecture a checkpoint looks like, e.g. 'BiT-M-R50x1'."""
    from bit_keras.resnet import UNITS_PER_BLOCK, UPSTREAM, Variant

    width = state[ROOT_KERNEL].shape[-1] // 64
    units = [0, 0, 0, 0]
    for key in state:
        match = re.match(r"resnet/block(\d)/unit(\d+)/", key)
        if match and 1 <= int(match[1]) <= 4:
            units[int(match[1]) - 1] = max(units[int(match[1]) - 1], int(match[2]))
    classes = state[HEAD_BIAS].shape[0] if HEAD_BIAS in state else None
    family = next((f for f, (_, k) in UPSTREAM.items() if k == classes), None)
    variant = Variant(tuple(units), width) if min(units) > 0 else None
    if variant is None:
        return f"an unrecognised layout (root width {width}, units {units})"
    name = variant.architecture if tuple(units) in UNITS_PER_BLOCK.values() else variant.name
    name = f"{family}-{name}" if family else name
    return f"{name} ({classes} classes)" if classes else name


# ------------------------------------------------------------ loading into a model


def load_state(model, state, source="checkpoint", skip_head=False):
    """Assigns an official-layout state to `model`, after checking every tensor.

    Raises `ValueError` listing missing, unexpected and wrongly shaped tensors
    by name, and what architecture the checkpoint looks like.
    """
    targets = official_weights(model)
    head_keys = {HEAD_KERNEL, HEAD_BIAS}
    ignored = head_keys if skip_head or HEAD_KERNEL not in targets else set()
    if skip_head:
        targets = {k: v for k, v in targets.items() if k not in head_keys}
    missing = sorted(set(targets) - set(state))
    unexpected = sorted(set(state) - set(targets) - ignored)
    wrong_shape = []
    for key in sorted(set(targets) & set(state)):
        expected = tuple(targets[key].shape)
        got = state[key].shape
        if key == HEAD_KERNEL:
            got = got[-2:]
        if tuple(got) != expected:
            wrong_shape.append(f"{key}: checkpoint {tuple(state[key].shape)}, model {expected}")
    if missing or unexpected or wrong_shape:
        lines = [
            f"{source} does not fit model {model.name!r}: it has {len(state)} tensors, "
            f"the model expects {len(targets)}; the checkpoint looks like {describe(state)}."
        ]
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if items:
                shown = ", ".join(items[:5]) + (f", ... ({len(items) - 5} more)" if len(items) > 5 else "")
                lines.append(f"  {label} ({len(items)}): {shown}")
        lines.append("Pass the variant the checkpoint was saved from, or num_classes= for a new head.")
        raise ValueError("\n".join(lines))
    for key, variable in targets.items():
        variable.assign(np.reshape(state[key], variable.shape).astype(variable.dtype))


def save_official(model, path):
    """Writes `model` as an official BiT `.npz` checkpoint, atomically.

    The file loads in the official BiT code and in timm. It is written under
    a temporary name in the same folder and renamed when complete.

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
    state = model_state(model)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **state)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# ------------------------------------------------------------------ known releases


@dataclasses.dataclass(frozen=True)
class Release:
    """One published checkpoint file."""

    name: str
    architecture: str  # e.g. "R50x1"
    num_classes: int
    path: str  # relative to BASE_URL

    @property
    def url(self):
        return f"{BASE_URL}/{self.path}"


def _releases():
    from bit_keras.resnet import RELEASED_ARCHITECTURES, RELEASED_FAMILIES, UPSTREAM

    table = {}
    for family in RELEASED_FAMILIES:
        for arch in RELEASED_ARCHITECTURES:
            name = f"{family}-{arch}"
            table[name] = Release(name, arch, UPSTREAM[family][1], f"{name}.npz")
            table[f"{name}-ILSVRC2012"] = Release(f"{name}-ILSVRC2012", arch, 1000, f"{name}-ILSVRC2012.npz")
            table[f"{name}.h5"] = Release(f"{name}.h5", arch, UPSTREAM[family][1], f"{name}.h5")
    for resolution in (224, 160):
        name = f"BiT-distill-R50x1-{resolution}"
        table[name] = Release(name, "R50x1", 1000, f"distill/R50x1_{resolution}.npz")
    return table


RELEASES = _releases()
_VTAB = re.compile(r"^(BiT-[SM]-(R\d+x\d))-run(\d+)-([a-z0-9_]+)$")


def find_release(name):
    """The `Release` called `name`, including the VTAB pattern, or None.

    VTAB files are named `BiT-{S,M}-R{..}x{..}-run{n}-{task}` (their heads have
    the task's classes, read from the file itself).
    """
    if name in RELEASES:
        return RELEASES[name]
    match = _VTAB.match(name)
    if match:
        return Release(name, match[2], None, f"vtab/{name}.npz")
    return None


def cache_dir():
    """Folder of downloaded checkpoints: $BIT_KERAS_CACHE or ~/.keras/bit_keras."""
    return os.environ.get("BIT_KERAS_CACHE") or os.path.join(os.path.expanduser("~"), ".keras", "bit_keras")


def download(name, origin=None):
    """Downloads a known release once into `cache_dir()` and returns its path.

    `origin` overrides the release URL (a mirror, or a `file://` URL). A file
    that does not open as a checkpoint, such as a truncated download, is
    deleted and refused.
    """
    release = find_release(name)
    if release is None:
        known = ", ".join(sorted(RELEASES)[:6])
        raise ValueError(
            f"{name!r} is not a known BiT release (e.g. {known}, ...; VTAB: 'BiT-M-R50x1-run0-<task>'). "
            f"Pass a local .npz/.h5 path instead."
        )
    folder = cache_dir()
    os.makedirs(folder, exist_ok=True)
    filename = os.path.basename(release.path) if not release.path.startswith("distill/") else f"{name}.npz"
    path = keras.utils.get_file(
        fname=filename,
        origin=origin or release.url,
        cache_dir=folder,
        cache_subdir=".",
    )
    try:
        _check_complete(path)
    except ValueError as error:
        os.remove(path)
        raise ValueError(
            f"The download of {name} from {origin or release.url} is not a complete checkpoint and was deleted "
            f"({error}). Try again; if it persists, download the file by hand and pass its path."
        ) from None
    return path


def _check_complete(path):
    """Opens the file's index (zip directory or HDF5 superblock): cheap, and fails on truncation."""
    import h5py

    with open(path, "rb") as f:
        magic = f.read(8)
    try:
        if magic.startswith(b"PK"):
            with zipfile.ZipFile(path) as archive:
                archive.namelist()
        elif magic.startswith(b"\x89HDF"):
            with h5py.File(path, "r") as f:
                f.visit(lambda name: None)
        else:
            raise ValueError("neither a zip (.npz) nor an HDF5 (.h5) file")
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(str(error)) from None


def read_saved_model(path):
    """Reads the weights of a BiT SavedModel folder (exported here, or from TF Hub).

    Variables are matched to the official keys by name, on the suffix as
    `canonical_key` does: the variable names recorded in the checkpoint of a
    TF2 SavedModel (`hub_export` names them by the official keys, and the
    published TF-Hub BiT modules follow the official layout), or the keys of
    a name-based checkpoint. The graph itself is never loaded or run.

    Example:

    >>> import os, tempfile, numpy as np, tensorflow as tf
    >>> module = tf.Module()
    >>> module.root = tf.Variable(np.ones((7, 7, 3, 64), "float32"), name=ROOT_KERNEL)
    >>> path = os.path.join(tempfile.mkdtemp(), "module")
    >>> tf.saved_model.save(module, path)
    >>> read_saved_model(path)[ROOT_KERNEL].shape
    (7, 7, 3, 64)
    """
    import tensorflow as tf
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    path = os.fspath(path)
    prefix = os.path.join(path, "variables", "variables")
    if not os.path.isfile(prefix + ".index"):
        raise ValueError(
            f"{path} is a folder but not a SavedModel with weights (no variables/variables.index). "
            f"Pass a SavedModel folder, or a .npz/.h5/.keras/.weights.h5 file."
        )
    reader = tf.train.load_checkpoint(prefix)
    if "_CHECKPOINTABLE_OBJECT_GRAPH" in reader.get_variable_to_shape_map():
        graph = trackable_object_graph_pb2.TrackableObjectGraph.FromString(
            reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH")
        )
        # Object-based (TF2): keys are object paths; `full_name` is the variable's name.
        names = {
            attribute.checkpoint_key: (attribute.full_name, attribute.checkpoint_key)
            for node in graph.nodes
            for attribute in node.attributes
            if attribute.name == "VARIABLE_VALUE"
        }
    else:  # name-based (TF1 Hub format): keys are the variable names
        names = {key: (key,) for key in reader.get_variable_to_shape_map()}
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
        state[key], sources[key] = reader.get_tensor(checkpoint_key), checkpoint_key
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
