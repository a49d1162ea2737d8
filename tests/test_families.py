"""timm and transformers weight families, both ways, against the real libraries (no network).

timm, transformers, torch, safetensors, huggingface_hub and kagglehub are
declared test dependencies: these tests fail, not skip, when one is missing.
"""

import functools
import json
import shutil
import sys

import huggingface_hub
import kagglehub
import numpy as np
import pytest
import safetensors.torch
import timm
import torch
import transformers
from reference import random_state
from timm.layers import StdConv2d
from timm.models.resnetv2 import ResNetV2, _load_weights

import bit_keras
from bit_keras import checkpoints

TINY_UNITS = (1, 2, 1, 1)  # block 2's second unit has an identity shortcut
CLASSES = 5
PEER_EPSILON = 1e-8  # the weight-standardisation epsilon of timm and transformers
TOLERANCE = 1e-4  # of the largest logit


def images(size, n=2, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype("float32")


def nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def assert_logits_close(ours, theirs):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    scale = np.abs(theirs).max()
    assert scale > 0
    assert np.abs(ours - theirs).max() <= TOLERANCE * scale, np.abs(ours - theirs).max() / scale


@torch.no_grad()
def randomize(module, seed):
    """Realistic random weights everywhere (the libraries' inits zero or unit some of them)."""
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in module.named_parameters():
        noise = torch.randn(parameter.shape, generator=generator)
        if parameter.ndim == 1 and "weight" in name:  # GroupNorm gamma
            parameter.copy_(1.0 + 0.1 * noise)
        elif parameter.ndim == 1:
            parameter.copy_(0.1 * noise)
        else:
            fan_in = parameter[0].numel()
            parameter.copy_(noise * (2.0 / fan_in) ** 0.5 + 0.01 * torch.randn((), generator=generator))
    return module.eval()


def tiny_timm(num_classes=CLASSES, seed=0):
    model = ResNetV2(
        layers=list(TINY_UNITS),
        num_classes=num_classes,
        stem_type="fixed",
        conv_layer=functools.partial(StdConv2d, eps=PEER_EPSILON),
    )
    return randomize(model, seed)


def headless(path):
    """The pooled feature extractor of the official-layout checkpoint at `path`, at the peers' epsilon."""
    return bit_keras.BiT(
        bit_keras.Variant(TINY_UNITS), weights=str(path), include_top=False, pooling="avg", ws_epsilon=PEER_EPSILON
    )


def tiny_bit_config(num_labels=CLASSES):
    return transformers.BitConfig(depths=list(TINY_UNITS), num_labels=num_labels)


# ------------------------------------------------------------------------ timm


def test_timm_small_safetensors_and_pth_read_with_inferred_variant(tmp_path):
    peer = tiny_timm()
    state_dict = peer.state_dict()
    safetensors.torch.save_file(state_dict, tmp_path / "tiny.safetensors")
    torch.save(state_dict, tmp_path / "tiny.pth")
    for name in ("tiny.safetensors", "tiny.pth"):
        model = bit_keras.BiT("auto", weights=str(tmp_path / name), ws_epsilon=PEER_EPSILON)
        assert model.weights_family == "timm"
        assert model.name == "R1-2-1-1x1" and model.output.shape == (None, CLASSES)
        for size in (48, 37):
            x = images(size, seed=size)
            with torch.no_grad():
                expected = peer(nchw(x)).numpy()
            assert_logits_close(model.predict(x, verbose=0), expected)


def test_a_bfloat16_safetensors_is_read_upcast_to_float32(tmp_path):
    """Checkpoints are shared in bfloat16 too; every bfloat16 value is exactly a float32 one."""
    halved = {key: value.to(torch.bfloat16) for key, value in tiny_timm().state_dict().items()}
    safetensors.torch.save_file(halved, tmp_path / "bf16.safetensors")
    model = bit_keras.BiT("auto", weights=str(tmp_path / "bf16.safetensors"), ws_epsilon=PEER_EPSILON)
    upcast, _ = checkpoints.to_official("timm", {key: value.float().numpy() for key, value in halved.items()})
    for key, value in checkpoints.model_state(model).items():
        np.testing.assert_array_equal(value, upcast[key])


def test_timm_writer_loads_in_timm_with_and_without_head(tmp_path):
    state = random_state(TINY_UNITS, 1, CLASSES, seed=1)
    np.savez(tmp_path / "tiny.npz", **state)
    ours = bit_keras.BiT(bit_keras.Variant(TINY_UNITS), weights=str(tmp_path / "tiny.npz"), ws_epsilon=PEER_EPSILON)
    checkpoints.save_timm(ours, tmp_path / "out.safetensors")
    peer = tiny_timm(seed=5)
    peer.load_state_dict(safetensors.torch.load_file(tmp_path / "out.safetensors"), strict=True)
    x = images(40)
    with torch.no_grad():
        assert_logits_close(ours.predict(x, verbose=0), peer(nchw(x)).numpy())

    # A headless model writes a backbone that timm loads with num_classes=0, as .safetensors and .npz.
    features = headless(tmp_path / "tiny.npz")
    checkpoints.save_timm(features, tmp_path / "body.safetensors")
    bit_keras.save_official(features, tmp_path / "body.npz")
    with np.load(tmp_path / "body.npz") as data:
        assert checkpoints.HEAD_KERNEL not in data.files
    for load in ("safetensors", "npz"):
        backbone = tiny_timm(num_classes=0, seed=6)
        if load == "safetensors":
            backbone.load_state_dict(safetensors.torch.load_file(tmp_path / "body.safetensors"), strict=True)
        else:
            with torch.no_grad():
                _load_weights(backbone, str(tmp_path / "body.npz"))
        with torch.no_grad():
            assert_logits_close(features.predict(x, verbose=0), backbone(nchw(x)).numpy())


def test_timm_r50x1_both_ways(tmp_path):
    """The one R50x1-sized timm model: timm -> bit_keras at two sizes, then bit_keras -> timm.create_model."""
    peer = randomize(timm.create_model("resnetv2_50x1_bit", pretrained=False, num_classes=7), seed=2)
    path = tmp_path / "r50.safetensors"
    safetensors.torch.save_file(peer.state_dict(), path)
    ours = bit_keras.BiT(None, weights=str(path), ws_epsilon=PEER_EPSILON)
    assert ours.name == "R50x1"
    for size in (64, 72):
        x = images(size, n=1, seed=size)
        with torch.no_grad():
            expected = peer(nchw(x)).numpy()
        assert_logits_close(ours.predict(x, verbose=0), expected)

    out = tmp_path / "tuned.safetensors"
    checkpoints.save_timm(ours, out)
    again = timm.create_model(
        "resnetv2_50x1_bit.goog_in21k",
        pretrained=True,
        num_classes=7,
        pretrained_cfg_overlay=dict(file=str(out), num_classes=7, custom_load=False),
    ).eval()
    x = images(64, n=1, seed=9)
    with torch.no_grad():
        assert_logits_close(ours.predict(x, verbose=0), again(nchw(x)).numpy())


def test_ws_epsilon_reproduces_timm_where_it_matters(tmp_path):
    """A kernel with a tiny variance (as some released kernels have) makes the epsilon visible."""
    peer = tiny_timm(seed=4)
    with torch.no_grad():
        peer.stages[1].blocks[0].conv2.weight.mul_(1e-4)  # variance ~4e-11: between 1e-10 and 1e-8
    safetensors.torch.save_file(peer.state_dict(), tmp_path / "tiny.safetensors")
    x = images(40)
    with torch.no_grad():
        expected = peer(nchw(x)).numpy()
    matched = bit_keras.BiT("auto", weights=str(tmp_path / "tiny.safetensors"), ws_epsilon=PEER_EPSILON)
    assert_logits_close(matched.predict(x, verbose=0), expected)
    official = bit_keras.BiT("auto", weights=str(tmp_path / "tiny.safetensors"))
    with pytest.raises(AssertionError):
        assert_logits_close(official.predict(x, verbose=0), expected)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pth_with_a_pickled_payload_is_refused_unexecuted(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pth"
    torch.save({"stem.conv.weight": _Exploit(str(marker))}, path)
    assert not marker.exists()
    with pytest.raises(ValueError, match="refused without running them"):
        bit_keras.BiT("auto", weights=str(path))
    assert not marker.exists()


def test_timm_file_that_does_not_fit_names_official_keys(tmp_path):
    state_dict = tiny_timm().state_dict()
    del state_dict["stages.1.blocks.0.downsample.conv.weight"]
    state_dict["stem.norm.weight"] = torch.ones(64)
    safetensors.torch.save_file(state_dict, tmp_path / "broken.safetensors")
    with pytest.raises(ValueError) as error:
        bit_keras.BiT(bit_keras.Variant(TINY_UNITS), weights=str(tmp_path / "broken.safetensors"))
    message = str(error.value)
    assert "missing (1): resnet/block2/unit01/a/proj/standardized_conv2d/kernel" in message
    assert "unexpected (1): stem.norm.weight" in message
    assert "looks like R1-2-1-1x1 (5 classes)" in message


# ------------------------------------------------------------------- transformers


def test_transformers_folder_read_with_inferred_variant(tmp_path):
    peer = randomize(transformers.BitForImageClassification(tiny_bit_config()), seed=3)
    peer.save_pretrained(tmp_path / "bit")
    model = bit_keras.BiT("auto", weights=str(tmp_path / "bit"), ws_epsilon=PEER_EPSILON)
    assert model.weights_family == "transformers" and model.output.shape == (None, CLASSES)
    for size in (48, 37):
        x = images(size, seed=size)
        with torch.no_grad():
            expected = peer(pixel_values=nchw(x)).logits.numpy()
        assert_logits_close(model.predict(x, verbose=0), expected)


def test_transformers_writer_loads_with_from_pretrained(tmp_path):
    state = random_state(TINY_UNITS, 1, 3, seed=4)
    np.savez(tmp_path / "tiny.npz", **state)
    ours = bit_keras.BiT(bit_keras.Variant(TINY_UNITS), weights=str(tmp_path / "tiny.npz"), ws_epsilon=PEER_EPSILON)
    checkpoints.save_transformers(ours, tmp_path / "out", class_names=["cat", "dog", "fish"])
    peer = transformers.BitForImageClassification.from_pretrained(tmp_path / "out").eval()
    assert peer.config.num_labels == 3 and peer.config.id2label[2] == "fish"
    x = images(40)
    with torch.no_grad():
        assert_logits_close(ours.predict(x, verbose=0), peer(pixel_values=nchw(x)).logits.numpy())
    assert bit_keras.BiT("auto", weights=str(tmp_path / "out")).weights_family == "transformers"

    features = headless(tmp_path / "tiny.npz")
    checkpoints.save_transformers(features, tmp_path / "body")
    backbone = transformers.BitModel.from_pretrained(tmp_path / "body").eval()
    with torch.no_grad():
        pooled = backbone(pixel_values=nchw(x)).pooler_output.numpy()[:, :, 0, 0]
    assert_logits_close(features.predict(x, verbose=0), pooled)


def test_transformers_layout_that_is_not_bit_is_refused(tmp_path):
    config = tiny_bit_config()
    config.global_padding = "SAME"
    transformers.BitForImageClassification(config).save_pretrained(tmp_path / "hybrid")
    with pytest.raises(ValueError, match="not BiT's ResNet-v2"):
        bit_keras.BiT("auto", weights=str(tmp_path / "hybrid"))


# -------------------------------------------------------------- release names


def fake_hub(folder, calls):
    """An hf_hub_download that serves `folder/<repo_id>/<filename>` from a local cache, like the real one."""

    def hf_hub_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename))
        source = folder / repo_id / filename
        if not source.exists():
            raise huggingface_hub.errors.EntryNotFoundError(f"{repo_id}/{filename} not found")
        target = folder / "cache" / repo_id.replace("/", "--") / filename
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
        return str(target)

    return hf_hub_download


def test_hugging_face_names_served_from_local_files(tmp_path, monkeypatch):
    hub, calls = tmp_path / "hub", []
    timm_repo = hub / "timm" / "resnetv2_tiny_bit.goog_in21k"
    timm_repo.mkdir(parents=True)
    peer = tiny_timm()
    safetensors.torch.save_file(peer.state_dict(), timm_repo / "model.safetensors")
    (timm_repo / "config.json").write_text(json.dumps({"architecture": "resnetv2_50x1_bit", "num_classes": CLASSES}))
    hf = randomize(transformers.BitForImageClassification(tiny_bit_config()), seed=7)
    hf.save_pretrained(hub / "google" / "bit-tiny")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hub(hub, calls))

    x = images(40)
    model = bit_keras.BiT("auto", weights="timm/resnetv2_tiny_bit.goog_in21k", ws_epsilon=PEER_EPSILON)
    assert model.weights_family == "timm"
    with torch.no_grad():
        assert_logits_close(model.predict(x, verbose=0), peer(nchw(x)).numpy())
    model = bit_keras.BiT("auto", weights="google/bit-tiny", ws_epsilon=PEER_EPSILON)
    assert model.weights_family == "transformers"
    with torch.no_grad():
        assert_logits_close(model.predict(x, verbose=0), hf(pixel_values=nchw(x)).logits.numpy())
    assert ("google/bit-tiny", "model.safetensors") in calls

    # A truncated download is refused and deleted.
    data = (timm_repo / "model.safetensors").read_bytes()
    broken = hub / "timm" / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    (broken / "model.safetensors").write_bytes(data[: len(data) - 1000])
    with pytest.raises(ValueError, match="not a complete checkpoint and was deleted"):
        bit_keras.BiT("auto", weights="timm/broken")
    assert not (hub / "cache" / "timm--broken" / "model.safetensors").exists()


def test_missing_optional_clients_name_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ImportError, match="pip install huggingface_hub"):
        bit_keras.BiT("auto", weights="timm/resnetv2_50x1_bit.goog_in21k")
    monkeypatch.setitem(sys.modules, "kagglehub", None)
    with pytest.raises(ImportError, match="pip install kagglehub"):
        bit_keras.BiT("auto", weights="kaggle:google/bit/tensorFlow2/m-r50x1")


def test_kaggle_handle_served_from_a_local_folder(tmp_path, monkeypatch):
    import tensorflow as tf

    state = random_state(TINY_UNITS, 1, CLASSES, seed=8)
    module = tf.Module()
    module.weights = [tf.Variable(v[0, 0] if k == checkpoints.HEAD_KERNEL else v, name=k) for k, v in state.items()]
    folder = tmp_path / "kaggle" / "m-r-tiny" / "1"
    tf.saved_model.save(module, str(folder))
    handles = []

    def model_download(handle, **kwargs):
        handles.append(handle)
        return str(folder)

    monkeypatch.setattr(kagglehub, "model_download", model_download)
    model = bit_keras.BiT("auto", weights="kaggle:google/bit/tensorFlow2/m-r-tiny")
    assert handles == ["google/bit/tensorFlow2/m-r-tiny"]
    np.testing.assert_array_equal(checkpoints.model_state(model)[checkpoints.ROOT_KERNEL], state[checkpoints.ROOT_KERNEL])
    # A truncated module is refused and deleted.
    index = folder / "variables" / "variables.index"
    index.write_bytes(index.read_bytes()[:20])
    with pytest.raises(ValueError, match="not a complete checkpoint and was deleted"):
        bit_keras.BiT("auto", weights="kaggle:google/bit/tensorFlow2/m-r-tiny")
    assert not folder.exists()


def test_a_batchnorm_resnetv2_is_said_not_to_be_a_bit(tmp_path):
    model = timm.create_model("resnetv2_50", pretrained=False)
    path = tmp_path / "batchnorm.safetensors"
    safetensors.torch.save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(path))
    for variant in ("auto", "BiT-S-R50x1"):
        with pytest.raises(ValueError, match=r"is not a BiT model: it holds BatchNorm statistics .*resnetv2_50"):
            bit_keras.BiT(variant, weights=str(path))
