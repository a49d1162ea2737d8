"""Published BiT weights by name: the official bucket, the Hugging Face Hub and Kaggle Models.

- Bucket names (`"BiT-M-R50x1"`, `"BiT-S-R101x3-ILSVRC2012"`, `"BiT-M-R50x1.h5"`,
  `"BiT-distill-R50x1-224"`, VTAB `"BiT-M-R50x1-run0-<task>"`) download once
  into `cache_dir()` with a Keras progress bar.
- Hugging Face repos (`"timm/resnetv2_50x1_bit.goog_in21k"`, `"google/bit-50"`)
  download through `huggingface_hub.hf_hub_download` into its own cache
  (shared with timm and transformers), with its progress bar.
- Kaggle Models handles of the TF2 modules (`"kaggle:google/bit/tensorFlow2/m-r50x1"`,
  or any `owner/model/framework/variation[/version]`) download through
  `kagglehub.model_download` into its cache.

huggingface_hub and kagglehub are optional and imported only when such a name
is used. Every download is checked for truncation and deleted when incomplete.
"""

import dataclasses
import json
import os
import re
import shutil
import zipfile

import keras

from bit_keras import optional
from bit_keras.checkpoints.writing import atomic_file
from bit_keras.optional import require
from bit_keras.resnet import RELEASED_ARCHITECTURES, RELEASED_FAMILIES, UPSTREAM

BASE_URL = "https://storage.googleapis.com/bit_models"


@dataclasses.dataclass(frozen=True)
class Release:
    """One published checkpoint file."""

    name: str
    architecture: str  # e.g. "R50x1"
    num_classes: int
    path: str  # relative to BASE_URL

    @property
    def url(self):
        return f"{BASE_URL}/{self.path}"  # read at call time: point `releases.BASE_URL` at a mirror


def _releases():
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
# The BiT-M models fine-tuned on each VTAB-1k task, three runs each (official README, "BiT-M models
# fine-tuned on the 19 VTAB-1k tasks"): bit_models/vtab/BiT-M-{architecture}-run{0,1,2}-{task}.npz.
VTAB_ARCHITECTURES = ("R50x1", "R101x1", "R50x3", "R101x3", "R152x4")  # no R152x2
VTAB_RUNS = 3
VTAB_TASKS = (
    "caltech101",
    "cifar100",
    "dtd",
    "oxford_flowers102",
    "oxford_iiit_pet",
    "sun397",
    "svhn",
    "patch_camelyon",
    "eurosat",
    "resisc45",
    "diabetic_retinopathy",
    "clevr-count",
    "clevr-distance",
    "dmlab",
    "dsprites-xpos",
    "dsprites-orientation",
    "kitti-distance",
    "smallnorb-azimuth",
    "smallnorb-elevation",
)
_VTAB = re.compile(r"^BiT-M-(R\d+x\d)-run(\d+)-([a-z0-9_-]+)$")
_HF_REPO = re.compile(r"^(?:hf:|hf-hub:)?(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)$")
_KAGGLE_FRAMEWORKS = "tensorflow1|tensorflow2|tfjs|tflite|keras|jax|flax|pytorch|transformers|other"
_KAGGLE = re.compile(
    r"^(?:kaggle:(?P<short>[\w.-]+/[\w.-]+/[\w.-]+/[\w.-]+(?:/\d+)?)"
    rf"|(?P<long>[\w.-]+/[\w.-]+/(?i:{_KAGGLE_FRAMEWORKS})/[\w.-]+(?:/\d+)?))$"
)


def find_release(name):
    """The `Release` called `name`, including the VTAB pattern, or None.

    VTAB files are named `BiT-M-{architecture}-run{0,1,2}-{task}` for the
    architectures in `VTAB_ARCHITECTURES` and the tasks in `VTAB_TASKS` (their
    heads have the task's classes, read from the file itself).

    >>> find_release("BiT-M-R50x1-run2-smallnorb-elevation").path
    'vtab/BiT-M-R50x1-run2-smallnorb-elevation.npz'
    >>> find_release("BiT-M-R152x2-run0-dtd") is None  # no VTAB runs of R152x2 were released
    True
    """
    if name in RELEASES:
        return RELEASES[name]
    match = _VTAB.match(name)
    if match and match[1] in VTAB_ARCHITECTURES and int(match[2]) < VTAB_RUNS and match[3] in VTAB_TASKS:
        return Release(name, match[1], None, f"vtab/{name}.npz")
    return None


_IMAGENET_PUBLISHERS = ("google", "timm")  # Hub and Kaggle owners whose 1000 / 21843-class BiT heads are ImageNet's


def has_imagenet_head(name):
    """Whether the release called `name` was published with an ImageNet head, where it has 1000 or 21843 classes.

    True for the bucket's upstream, -ILSVRC2012 and distilled files (not the
    VTAB ones), and for Hugging Face repos and Kaggle handles of Google or
    timm; a head of 1000 classes there is ILSVRC-2012's, of 21843 ImageNet-21k's
    (see `bit_keras.labels`). False for anything else, local paths included.

    Example:

    >>> has_imagenet_head("BiT-M-R50x1"), has_imagenet_head("BiT-M-R50x1-run0-dtd"), has_imagenet_head("me/my-bit")
    (True, False, False)
    """
    release = find_release(name)
    if release is not None:
        return release.num_classes is not None
    kaggle = _KAGGLE.match(name)
    hf = _HF_REPO.match(name)
    owner = (kaggle["short"] or kaggle["long"]) if kaggle else hf["repo"] if hf else ""
    return owner.split("/")[0].lower() in _IMAGENET_PUBLISHERS


def cache_dir():
    """Folder of downloaded bucket checkpoints: $BIT_KERAS_CACHE or ~/.keras/bit_keras."""
    return os.environ.get("BIT_KERAS_CACHE") or os.path.join(os.path.expanduser("~"), ".keras", "bit_keras")


def fetch(name):
    """The local path of the release called `name`, downloaded if needed, or None if no source knows it.

    Example:

    >>> fetch("no such release") is None
    True
    """
    if find_release(name) is not None:
        return download(name)
    kaggle = _KAGGLE.match(name)
    if kaggle:
        return download_kaggle(kaggle["short"] or kaggle["long"])
    hf = _HF_REPO.match(name)
    if hf and os.path.splitext(name)[1] not in (".npz", ".h5", ".keras", ".safetensors", ".pth", ".bin"):
        return download_hf(hf["repo"])
    return None


def download(name, origin=None):
    """Downloads a known bucket release once into `cache_dir()` and returns its path.

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
    url = origin or release.url
    path = os.path.join(folder, filename)
    try:
        if not os.path.exists(path):  # downloaded under a temporary name: a killed download leaves no half file
            with atomic_file(path, overwrite=True) as tmp:  # a download beside ours may have finished first
                keras.utils.get_file(
                    fname=os.path.basename(tmp), origin=url, cache_dir=folder, cache_subdir=".", force_download=True
                )
    except Exception as error:  # keras raises a bare Exception for URL and HTTP failures
        raise ValueError(
            f"{name} is not in the cache ({folder}) and could not be downloaded from {url} "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). Check the network, "
            f"or download the file by hand into {folder}, or pass its local path as weights=."
        ) from None
    _checked(path, f"{name} from {origin or release.url}")
    return path


def download_hf(repo):
    """Downloads a timm or transformers BiT repo from the Hugging Face Hub; returns a file or folder.

    A transformers repo (config.json with model_type "bit") gives its
    snapshot folder (config.json + model.safetensors); a timm repo gives its
    model.safetensors file.
    """
    try:
        hub = require("huggingface_hub", "huggingface_hub")
    except ImportError as error:
        raise ImportError(f"weights={repo!r} is no local file or folder; as a Hugging Face repo name: {error}") from None
    try:
        config_path = hub.hf_hub_download(repo_id=repo, filename="config.json")
    except Exception as error:
        raise ValueError(
            f"{repo!r} is no local file or folder, and could not be fetched as a repo from the Hugging Face Hub "
            f"({type(error).__name__}: {error}). "
            f"Check the name (e.g. 'timm/resnetv2_50x1_bit.goog_in21k', 'google/bit-50') and the network, "
            f"or pass a local file."
        ) from None
    with open(config_path) as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError:
            config = {}
    weights = hub.hf_hub_download(repo_id=repo, filename="model.safetensors")
    _checked(weights, f"{repo} (model.safetensors)")
    if config.get("model_type") == "bit":
        return os.path.dirname(weights)  # the snapshot folder: config.json + model.safetensors
    return weights


def download_kaggle(handle):
    """Downloads a Kaggle Models handle (a TF2 SavedModel of BiT) and returns its folder."""
    try:
        kagglehub = require("kagglehub", "kagglehub")
    except ImportError as error:
        raise ImportError(f"weights={handle!r} is no local file or folder; as a Kaggle Models handle: {error}") from None
    try:
        folder = kagglehub.model_download(handle)
    except Exception as error:
        raise ValueError(
            f"{handle!r} could not be fetched from Kaggle Models ({type(error).__name__}: {error}). "
            f"Check the handle (e.g. 'google/bit/tensorFlow2/m-r50x1') and the network, or pass a local folder."
        ) from None
    _checked(folder, f"Kaggle model {handle}")
    return folder


def _checked(path, what):
    try:
        check_complete(path)
    except ValueError as error:
        real = os.path.realpath(path)
        for target in {path, real}:
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target, ignore_errors=True)
            elif os.path.lexists(target):
                os.remove(target)
        raise ValueError(
            f"The download of {what} is not a complete checkpoint and was deleted ({error}). Try again; "
            f"if it persists, download the file by hand and pass its path."
        ) from None


def check_complete(path):
    """Opens a file's index (zip directory, HDF5 superblock, safetensors header) or a SavedModel's: cheap, fails on truncation."""
    import h5py

    if os.path.isdir(path):
        _check_saved_model(path)
        return
    with open(path, "rb") as f:
        magic = f.read(9)
    size = os.path.getsize(path)
    try:
        if magic.startswith(b"PK"):
            with zipfile.ZipFile(path) as archive:
                archive.namelist()
        elif magic.startswith(b"\x89HDF"):
            with h5py.File(path, "r") as f:
                f.visit(lambda name: None)
        elif len(magic) == 9 and magic[8:9] == b"{":
            _check_safetensors(path, size)
        else:
            raise ValueError("neither a zip (.npz), an HDF5 (.h5) nor a .safetensors file")
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(str(error)) from None


def _check_safetensors(path, size):
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        if 8 + length > size:
            raise ValueError(f"the header says {length} bytes but the file has {size}")
        try:
            header = json.loads(f.read(length))
        except ValueError:
            raise ValueError("its header is not valid JSON") from None
    end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    if 8 + length + end > size:
        raise ValueError(f"the tensors end at byte {8 + length + end} but the file has {size} bytes")


def _check_saved_model(path):
    index = os.path.join(path, "variables", "variables.index")
    if os.path.isfile(os.path.join(path, "config.json")):
        return  # a transformers folder: its model.safetensors was checked
    if not os.path.isfile(os.path.join(path, "saved_model.pb")) or not os.path.isfile(index):
        raise ValueError(f"{path} has no saved_model.pb or variables/variables.index")
    tf = optional.tensorflow("Reading a SavedModel (TF Hub, Kaggle, hub_export)")

    try:
        tf.train.load_checkpoint(index[: -len(".index")]).get_variable_to_shape_map()
    except tf.errors.OpError as error:
        raise ValueError(str(error).splitlines()[0]) from None
