import os

import h5py
import keras
import numpy as np
import pytest
from reference import UNITS, forward, random_state

import bit_keras
from bit_keras import checkpoints

pytestmark = pytest.mark.backends

SMALL_UNITS = (1, 2, 1, 1)  # the second unit of block 2 has an identity shortcut


def images(size=48, n=2, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype("float32")


def assert_close_to_reference(logits, expected):
    """The release's bar: within 3e-4 of the largest logit."""
    scale = np.abs(expected).max()
    assert np.abs(np.asarray(logits, np.float64) - expected).max() <= 3e-4 * scale


def write_npz(path, state):
    np.savez(path, **state)
    return str(path)


def write_tf2_h5(path, state):
    """The TF2 release's layout: tf.keras 2 save_weights of a subclassed model."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"resnet"]
        for key, value in state.items():
            scope = key[len("resnet/"):]
            if key == checkpoints.HEAD_KERNEL:
                scope, value = "head/kernel", value[0, 0]  # a Dense kernel
            elif key == checkpoints.HEAD_BIAS:
                scope = "head/bias"
            f.create_dataset(f"resnet/resnet/{scope}:0", data=value)
    return str(path)


@pytest.fixture(scope="module")
def small_state():
    return random_state(SMALL_UNITS, 1, 5, seed=0)


@pytest.fixture
def small_npz(tmp_path, small_state):
    return write_npz(tmp_path / "small.npz", small_state)


def small_variant():
    return bit_keras.Variant(SMALL_UNITS, 1)


def test_npz_matches_independent_numpy_forward(small_npz, small_state):
    model = bit_keras.BiT(small_variant(), weights=small_npz)
    for size in (48, 37):
        x = images(size)
        assert_close_to_reference(model.predict(x, verbose=0), forward(small_state, x, SMALL_UNITS))


def test_tf2_h5_release_loads_the_same_weights(tmp_path, small_state):
    path = write_tf2_h5(tmp_path / "small.h5", small_state)
    state = checkpoints.read_checkpoint(path)
    assert sorted(state) == sorted(small_state)
    model = bit_keras.BiT(small_variant(), weights=path)
    x = images()
    assert_close_to_reference(model.predict(x, verbose=0), forward(small_state, x, SMALL_UNITS))


def test_r50x1_matches_numpy_forward(tmp_path):
    state = random_state(UNITS[50], 1, 1000, seed=3)
    path = write_npz(tmp_path / "BiT-S-R50x1.npz", state)
    model = bit_keras.BiT("BiT-S-R50x1", weights=path)
    x = images(64, n=2, seed=4)
    assert_close_to_reference(model.predict(x, verbose=0), forward(state, x, UNITS[50]))


def test_load_save_load_is_bit_exact(tmp_path, small_npz, small_state):
    model = bit_keras.BiT(small_variant(), weights=small_npz)
    saved = str(tmp_path / "out" / "saved.npz")
    bit_keras.save_official(model, saved)
    assert os.listdir(tmp_path / "out") == ["saved.npz"]  # no temporary left behind
    with np.load(saved, allow_pickle=False) as data:
        assert sorted(data.files) == sorted(small_state)
        for key in data.files:
            np.testing.assert_array_equal(data[key], small_state[key])
    again = bit_keras.BiT(small_variant(), weights=saved)
    x = images()
    np.testing.assert_array_equal(model.predict(x, verbose=0), again.predict(x, verbose=0))


def test_head_choices(small_npz, small_state):
    x = images()
    same = bit_keras.BiT(small_variant(), weights=small_npz, num_classes=5)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(same.get_layer("head").bias), small_state[checkpoints.HEAD_BIAS]
    )
    new_head = bit_keras.BiT(small_variant(), weights=small_npz, num_classes=3)
    assert not np.any(new_head.predict(x, verbose=0))
    features = bit_keras.BiT(small_variant(), weights=small_npz, include_top=False, pooling="avg")
    body = keras.ops.convert_to_numpy(checkpoints.official_weights(features)[checkpoints.ROOT_KERNEL])
    np.testing.assert_array_equal(body, small_state[checkpoints.ROOT_KERNEL])
    assert features.output.shape == (None, 2048)


def test_keras_files_are_weight_sources(tmp_path, small_npz):
    model = bit_keras.BiT(small_variant(), weights=small_npz)
    model.save(tmp_path / "m.keras")
    model.save_weights(tmp_path / "m.weights.h5")
    x = images()
    expected = model.predict(x, verbose=0)
    for name in ("m.keras", "m.weights.h5"):
        loaded = bit_keras.BiT(small_variant(), weights=str(tmp_path / name))
        np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)


def test_missing_tensor_is_named(tmp_path, small_state):
    state = dict(small_state)
    del state["resnet/block2/unit01/a/proj/standardized_conv2d/kernel"]
    path = write_npz(tmp_path / "missing.npz", state)
    with pytest.raises(ValueError, match=r"missing \(1\): resnet/block2/unit01/a/proj/standardized_conv2d/kernel"):
        bit_keras.BiT(small_variant(), weights=path)


def test_wrong_shape_is_named(tmp_path, small_state):
    state = dict(small_state)
    state["resnet/block1/unit01/b/group_norm/gamma"] = np.ones(65, "float32")
    path = write_npz(tmp_path / "shape.npz", state)
    with pytest.raises(ValueError, match=r"wrong shape \(1\): resnet/block1/unit01/b/group_norm/gamma: checkpoint \(65,\), model \(64,\)"):
        bit_keras.BiT(small_variant(), weights=path)


def test_wrong_variant_names_what_the_file_looks_like(tmp_path):
    path = write_npz(tmp_path / "tiny.npz", random_state((1, 1, 1, 1), 2, 21843, seed=0))
    with pytest.raises(ValueError, match=r"looks like BiT-M-R1-1-1-1x2 \(21843 classes\)") as error:
        bit_keras.BiT(small_variant(), weights=path)
    assert "unexpected" in str(error.value) or "missing" in str(error.value)


def test_truncated_file_is_refused(tmp_path, small_npz):
    data = open(small_npz, "rb").read()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        bit_keras.BiT(small_variant(), weights=str(truncated))


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_npz_is_refused_and_nothing_runs(tmp_path, small_state):
    marker = tmp_path / "executed"
    state = dict(small_state)
    state["payload"] = np.array([_Exploit(str(marker))], dtype=object)
    path = tmp_path / "pickled.npz"
    with open(path, "wb") as f:
        np.savez(f, **state)
    assert not marker.exists()
    with pytest.raises(ValueError, match="pickled"):
        bit_keras.BiT(small_variant(), weights=str(path))
    assert not marker.exists()


def test_non_checkpoint_files_are_refused(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="neither an .npz"):
        bit_keras.BiT(small_variant(), weights=str(text))
    other = write_npz(tmp_path / "other.npz", {"weights": np.zeros(3)})
    with pytest.raises(ValueError, match="holds no BiT weights"):
        bit_keras.BiT(small_variant(), weights=other)
    with pytest.raises(ValueError, match="neither an existing file"):
        bit_keras.BiT(small_variant(), weights=str(tmp_path / "absent.npz"))


def test_release_registry():
    release = checkpoints.find_release("BiT-M-R152x4")
    assert release.url == "https://storage.googleapis.com/bit_models/BiT-M-R152x4.npz"
    assert checkpoints.find_release("BiT-S-R50x1-ILSVRC2012").num_classes == 1000
    assert checkpoints.find_release("BiT-M-R101x3.h5").url.endswith("/BiT-M-R101x3.h5")
    assert checkpoints.find_release("BiT-distill-R50x1-160").url.endswith("/distill/R50x1_160.npz")
    assert checkpoints.find_release("BiT-M-R50x1-run0-caltech101").url.endswith("/vtab/BiT-M-R50x1-run0-caltech101.npz")
    assert checkpoints.find_release("BiT-L-R50x1") is None
    names = {r for r in checkpoints.RELEASES if not r.endswith((".h5", "-ILSVRC2012")) and "distill" not in r}
    assert names == set(bit_keras.variants())


def test_download_once_into_cache(tmp_path, monkeypatch, small_state):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    write_npz(mirror / "BiT-M-R50x1.npz", small_state)
    monkeypatch.setattr(checkpoints, "BASE_URL", (mirror).as_uri())
    monkeypatch.setenv("BIT_KERAS_CACHE", str(tmp_path / "cache"))
    model = bit_keras.BiT(small_variant(), weights="BiT-M-R50x1")
    assert os.path.exists(tmp_path / "cache" / "BiT-M-R50x1.npz")
    os.remove(mirror / "BiT-M-R50x1.npz")  # a second call must not fetch again
    again = bit_keras.BiT(small_variant(), weights="BiT-M-R50x1")
    x = images()
    np.testing.assert_array_equal(model.predict(x, verbose=0), again.predict(x, verbose=0))


def test_truncated_download_is_refused_and_removed(tmp_path, monkeypatch, small_state):
    mirror = tmp_path / "mirror"
    (mirror / "vtab").mkdir(parents=True)
    data = open(write_npz(tmp_path / "full.npz", small_state), "rb").read()
    (mirror / "vtab" / "BiT-M-R50x1-run0-dtd.npz").write_bytes(data[: len(data) - 100])
    monkeypatch.setattr(checkpoints, "BASE_URL", mirror.as_uri())
    monkeypatch.setenv("BIT_KERAS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="not a complete checkpoint and was deleted"):
        bit_keras.BiT(small_variant(), weights="BiT-M-R50x1-run0-dtd")
    assert not os.path.exists(tmp_path / "cache" / "BiT-M-R50x1-run0-dtd.npz")


def test_canonical_keys_of_h5_paths():
    assert checkpoints.canonical_key("block1/resnet/block1/unit01/a/group_norm/gamma:0") == (
        "resnet/block1/unit01/a/group_norm/gamma"
    )
    assert checkpoints.canonical_key("resnet/group_norm/beta:0") == "resnet/group_norm/beta"
    assert checkpoints.canonical_key("head/resnet/head/dense/kernel:0") == checkpoints.HEAD_KERNEL
    assert checkpoints.canonical_key("optimizer/iterations:0") is None
