"""SavedModels of BiT: this package's TF-Hub-format exports, the TF-Hub modules and Kaggle's, read without running them."""

import json
import os

from bit_keras import optional
from bit_keras.checkpoints.mapping import HEAD_KERNEL, ROOT_KERNEL, canonical_key

# Where `hub_export` records what an exported SavedModel is (its input range, class names, ...).
EXPORT_RECORD_PATH = os.path.join("assets.extra", "bit_keras.json")


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
    from tensorflow.core.protobuf import trackable_object_graph_pb2  # after the check above: TensorFlow is optional

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


def export_record(folder):
    """What `hub_export` recorded in a SavedModel folder (its class names, its format, ...), or {} (TF Hub's modules record nothing)."""
    try:
        with open(os.path.join(folder, EXPORT_RECORD_PATH)) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def exported_class_names(record):
    """The class names in an export's record, or None."""
    names = record.get("class_names")
    return list(names) if isinstance(names, list) and all(isinstance(name, str) for name in names) else None
