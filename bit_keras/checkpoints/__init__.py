"""BiT weights of every family: the key mapping, readers, validation, writers, releases.

- `mapping`: the one key mapping (official keys <-> model layers, timm, transformers).
- `formats`: readers of each family and `read_weights`, which recognises any input.
- `validate`: `load_state` and the checks every state passes before it is loaded or written.
- `writing`: `save_official`, `save_timm`, `save_transformers` and the atomic writes.
- `releases`: the official bucket, Hugging Face Hub and Kaggle Models names.

Families: "official" (.npz, the TF2 .h5, TF-Hub / Kaggle SavedModels),
"timm" (ResNetV2-BiT state dicts: .safetensors, .pth/.bin), "transformers"
(BitModel / BitForImageClassification folders) and "keras" (this package's
.keras / .weights.h5).
"""

from bit_keras.checkpoints.formats import (
    EXPORT_RECORD_PATH,
    Weights,
    load_keras,
    read_checkpoint,
    read_file,
    read_folder,
    read_h5,
    read_keras,
    read_npz,
    read_safetensors,
    read_saved_model,
    read_torch,
    read_transformers,
    read_weights,
)
from bit_keras.checkpoints.mapping import (
    FAMILIES,
    HEAD_BIAS,
    HEAD_KERNEL,
    ROOT_KERNEL,
    TABLES,
    canonical_key,
    describe,
    from_official,
    infer_variant,
    layer_keys,
    model_state,
    official_weights,
    to_official,
)
from bit_keras.checkpoints.releases import (
    RELEASES,
    Release,
    cache_dir,
    check_complete,
    download,
    download_hf,
    download_kaggle,
    fetch,
    find_release,
)
from bit_keras.checkpoints.validate import check_values, load_state
from bit_keras.checkpoints.writing import (
    atomic_file,
    atomic_folder,
    process_alive,
    refuse_existing,
    remove_stale,
    save_keras,
    save_official,
    save_timm,
    save_transformers,
    scratch_folder,
)
