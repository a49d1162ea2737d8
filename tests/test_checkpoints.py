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
            scope = key[len("resnet/") :]
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
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(same.get_layer("head").bias), small_state[checkpoints.HEAD_BIAS])
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
    with pytest.raises(
        ValueError, match=r"wrong shape \(1\): resnet/block1/unit01/b/group_norm/gamma: checkpoint \(65,\), model \(64,\)"
    ):
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
    monkeypatch.setattr(checkpoints.releases, "BASE_URL", (mirror).as_uri())
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
    monkeypatch.setattr(checkpoints.releases, "BASE_URL", mirror.as_uri())
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


# ------------------------------------------------ nothing lost, nothing half-written


def test_save_official_refuses_to_overwrite_unless_asked(tmp_path, small_npz):
    model = bit_keras.BiT(small_variant(), weights=small_npz)
    path = tmp_path / "tuned.npz"
    path.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match=r"tuned\.npz already exists; pass overwrite=True"):
        bit_keras.save_official(model, path)
    assert path.read_bytes() == b"keep me"
    bit_keras.save_official(model, path, overwrite=True)
    assert checkpoints.ROOT_KERNEL in checkpoints.read_checkpoint(path)


def test_written_files_honour_the_umask(tmp_path, small_npz):
    model = bit_keras.BiT(small_variant(), weights=small_npz)
    old = os.umask(0o027)
    try:
        bit_keras.save_official(model, tmp_path / "a.npz")
        with checkpoints.atomic_folder(tmp_path / "folder") as folder:
            open(os.path.join(folder, "x"), "w").close()
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "a.npz").st_mode & 0o777 == 0o640
    assert os.stat(tmp_path / "folder").st_mode & 0o777 == 0o750


def test_temporaries_of_a_killed_writer_are_removed_by_the_next_write(tmp_path, small_npz):
    import subprocess
    import sys

    script = (
        "import os, signal, sys\n"
        "from bit_keras.checkpoints import writing\n"
        "with writing.atomic_file(sys.argv[1]) as tmp:\n"
        "    open(tmp, 'wb').write(b'half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    target = tmp_path / "out" / "tuned.npz"
    result = subprocess.run([sys.executable, "-c", script, str(target)], timeout=120)
    assert result.returncode == -9
    left = os.listdir(tmp_path / "out")
    assert len(left) == 1 and ".bit-keras-tmp." in left[0] and not target.exists()
    bit_keras.save_official(bit_keras.BiT(small_variant(), weights=small_npz), tmp_path / "out" / "other.npz")
    assert os.listdir(tmp_path / "out") == ["other.npz"]


# --------------------------------------------------------------- refused inputs


def test_nan_checkpoint_is_refused_by_key_and_nan_weights_are_not_written(tmp_path, small_state):
    state = dict(small_state)
    state["resnet/block3/unit01/b/group_norm/beta"] = np.full(256, np.inf, "float32")
    path = write_npz(tmp_path / "inf.npz", state)
    with pytest.raises(ValueError, match=r"'resnet/block3/unit01/b/group_norm/beta' holds 256 NaN/Inf"):
        bit_keras.BiT(small_variant(), weights=path)
    model = bit_keras.BiT(small_variant(), num_classes=5)
    model.get_layer("pre_head_gn").gamma.assign(np.full(2048, np.nan, "float32"))
    with pytest.raises(ValueError, match=r"'resnet/group_norm/gamma' holds 2048 NaN/Inf values .* cannot be written"):
        bit_keras.save_official(model, tmp_path / "nan.npz")
    assert not os.path.exists(tmp_path / "nan.npz")


def test_string_tensor_is_refused_by_key(tmp_path, small_state):
    state = dict(small_state)
    state["resnet/group_norm/beta"] = np.array(["a"] * 2048)
    path = write_npz(tmp_path / "strings.npz", state)
    with pytest.raises(ValueError, match=r"'resnet/group_norm/beta' has dtype <U1"):
        bit_keras.BiT(small_variant(), weights=path)


@pytest.mark.parametrize("bad", [0, -3, 2.0, True, "10"])
def test_num_classes_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match=r"num_classes must be a positive integer .* got"):
        bit_keras.BiT(small_variant(), num_classes=bad)


def test_input_shape_needs_three_channels_and_weights_a_path():
    with pytest.raises(ValueError, match=r"input_shape must be \(height, width, 3\)"):
        bit_keras.BiT(small_variant(), num_classes=2, input_shape=(32, 32, 1))
    with pytest.raises(ValueError, match=r"weights must be None, a path .* got int 5"):
        bit_keras.BiT(small_variant(), weights=5)


def test_save_official_refuses_a_model_that_is_not_a_bit(tmp_path):
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="has no BiT weights"):
        bit_keras.save_official(other, tmp_path / "empty.npz")
    assert not os.path.exists(tmp_path / "empty.npz")


def test_truncated_keras_files_are_named(tmp_path, small_npz):
    model = bit_keras.BiT(small_variant(), weights=small_npz)
    model.save(tmp_path / "m.keras")
    model.save_weights(tmp_path / "m.weights.h5")
    for name in ("m.keras", "m.weights.h5"):
        data = (tmp_path / name).read_bytes()
        cut = tmp_path / f"cut-{name}"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(ValueError, match=rf"{cut}.* truncated"):
            bit_keras.BiT(small_variant(), weights=str(cut))


def test_garbage_saved_model_is_named(tmp_path):
    folder = tmp_path / "garbage"
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"nonsense")
    (folder / "variables" / "variables.index").write_bytes(b"nonsense")
    with pytest.raises(ValueError, match=rf"{folder} is not a readable SavedModel"):
        bit_keras.BiT(small_variant(), weights=str(folder))


def test_mismatch_message_suggests_a_variant_that_works(tmp_path):
    path = write_npz(tmp_path / "tiny.npz", random_state((1, 1, 1, 1), 1, 21843, seed=0))
    with pytest.raises(ValueError, match=r"variant='BiT-M-R1-1-1-1x1'") as error:
        bit_keras.BiT(small_variant(), weights=path)
    suggested = str(error.value).split("variant='")[1].split("'")[0]
    model = bit_keras.BiT(suggested, weights=path)
    assert model.output.shape == (None, 21843)
    assert bit_keras.BiT("auto", weights=path).name == suggested


def test_ws_epsilon_reaches_every_convolution(tmp_path):
    model = bit_keras.BiT(small_variant(), num_classes=2, ws_epsilon=1e-8)
    convs = [layer for layer in model.layers if isinstance(layer, bit_keras.StandardizedConv2D)]
    assert len(convs) == 1 + 3 * sum(SMALL_UNITS) + 4
    assert {layer.epsilon for layer in convs} == {1e-8}
    assert {
        layer.epsilon
        for layer in bit_keras.BiT(small_variant(), num_classes=2).layers
        if isinstance(layer, bit_keras.StandardizedConv2D)
    } == {1e-10}
    model.save(tmp_path / "eps.keras")
    loaded = keras.saving.load_model(tmp_path / "eps.keras")
    assert {layer.epsilon for layer in loaded.layers if isinstance(layer, bit_keras.StandardizedConv2D)} == {1e-8}


def test_variant_is_inferred_from_official_files(tmp_path, small_npz, small_state):
    model = bit_keras.BiT("auto", weights=small_npz)
    assert model.name == "R1-2-1-1x1" and model.weights_family == "official"
    h5 = write_tf2_h5(tmp_path / "small.h5", small_state)
    assert bit_keras.BiT(None, weights=h5).output.shape == (None, 5)


def test_a_replaced_folder_left_aside_by_a_killed_writer_is_put_back(tmp_path):
    import subprocess
    import sys

    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "keep.txt").write_text("mine")
    script = (
        "import os, signal, sys\n"
        "from bit_keras.checkpoints import writing\n"
        "original = os.rename\n"
        "def rename(src, dst):\n"
        "    original(src, dst)\n"
        "    if dst.endswith('.previous'):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "os.rename = rename\n"
        "with writing.atomic_folder(sys.argv[1], overwrite=True) as tmp:\n"
        "    open(os.path.join(tmp, 'new.txt'), 'w').close()\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "export")], timeout=120)
    assert result.returncode == -9 and not (tmp_path / "export").exists()
    checkpoints.remove_stale(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["export"]
    assert (tmp_path / "export" / "keep.txt").read_text() == "mine"
