"""BiT weights of every family: the key mapping, readers, validation, writers, releases.

- `mapping`: the one key mapping (official keys <-> model layers, timm, transformers).
- `official` (.npz, the TF2 .h5), `pytorch` (timm state dicts, transformers folders),
  `saved_model` (TF-Hub / Kaggle / hub_export SavedModels), `keras_files` (.keras,
  .weights.h5): the readers of each family.
- `formats`: `read_weights`, which recognises any input, and its `Weights` record.
- `validate`: `load_state` and the checks every state passes before it is loaded or written.
- `writing`: `save_official`, `save_timm`, `save_transformers` and the atomic writes.
- `releases`: the official bucket, Hugging Face Hub and Kaggle Models names.

Families: "official" (.npz, the TF2 .h5, TF-Hub / Kaggle SavedModels),
"timm" (ResNetV2-BiT state dicts: .safetensors, .pth/.bin), "transformers"
(BitModel / BitForImageClassification folders) and "keras" (this package's
.keras / .weights.h5).
"""

from bit_keras.checkpoints.formats import Weights, read_checkpoint, read_file, read_folder, read_weights
from bit_keras.checkpoints.keras_files import load_keras, read_keras
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
from bit_keras.checkpoints.official import read_h5, read_npz
from bit_keras.checkpoints.pytorch import read_safetensors, read_torch, read_transformers
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
from bit_keras.checkpoints.saved_model import EXPORT_RECORD_PATH, read_saved_model
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
