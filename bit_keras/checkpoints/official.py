"""The official BiT release files: the `.npz` checkpoints and the TF2 `.h5` release, in the official layout."""

import zipfile

import numpy as np

from bit_keras.checkpoints.mapping import HEAD_KERNEL, canonical_key


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
