"""Checks every state before it is loaded or written, and assigns it to a model.

Whatever the family, a state reaches a model only through `load_state`, and
a file is written only after `check_values`: non-numeric, NaN and infinite
tensors are refused by key name, and a state that does not fit the model is
refused with the missing, unexpected and misshapen tensors and the variant
the file looks like.
"""

import numpy as np

from bit_keras.checkpoints.mapping import HEAD_BIAS, HEAD_KERNEL, describe, official_weights


def check_values(state, source, action="loaded"):
    """Raises ValueError naming the first non-numeric or non-finite tensor of `state`.

    Example:

    >>> check_values({"resnet/group_norm/gamma": np.array([1.0, np.nan])}, "tuned.npz")
    Traceback (most recent call last):
    ...
    ValueError: tuned.npz: tensor 'resnet/group_norm/gamma' holds 1 NaN/Inf values (of 2), so it cannot be loaded. Use a checkpoint saved before training diverged, or re-download the file.
    """
    for key, value in state.items():
        value = np.asarray(value)
        if value.dtype.kind not in "fiub":
            raise ValueError(
                f"{source}: tensor {key!r} has dtype {value.dtype} ({value.dtype.kind!r}), not numbers; "
                f"BiT checkpoints hold float arrays. Remove that entry or pass the right file."
            )
        if value.dtype.kind == "f":
            bad = value.size - int(np.count_nonzero(np.isfinite(value)))
            if bad:
                raise ValueError(
                    f"{source}: tensor {key!r} holds {bad} NaN/Inf values (of {value.size}), so it cannot be "
                    f"{action}. Use a checkpoint saved before training diverged, or re-download the file."
                )


def load_state(model, state, source="checkpoint", skip_head=False):
    """Assigns an official-layout state to `model`, after checking every tensor.

    Raises `ValueError` listing missing, unexpected and wrongly shaped tensors
    by name, and what architecture the checkpoint looks like.
    """
    check_values(state, source)
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
        got = np.shape(state[key])
        if key == HEAD_KERNEL:
            got = got[-2:]
        if tuple(got) != expected:
            wrong_shape.append(f"{key}: checkpoint {tuple(np.shape(state[key]))}, model {expected}")
    if missing or unexpected or wrong_shape:
        looks_like = describe(state)
        lines = [
            f"{source} does not fit model {model.name!r}: it has {len(state)} tensors, "
            f"the model expects {len(targets)}; the checkpoint looks like {looks_like}."
        ]
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if items:
                shown = ", ".join(items[:5]) + (f", ... ({len(items) - 5} more)" if len(items) > 5 else "")
                lines.append(f"  {label} ({len(items)}): {shown}")
        name = looks_like.split(" (")[0]
        hint = f"variant={name!r} or " if not looks_like.startswith("an unrecognised") else ""
        lines.append(
            f"Pass the variant the checkpoint was saved from ({hint}variant='auto' to read it from the file), "
            f"or num_classes= for a new head."
        )
        raise ValueError("\n".join(lines))
    for key, variable in targets.items():
        variable.assign(np.reshape(state[key], variable.shape).astype(variable.dtype))
