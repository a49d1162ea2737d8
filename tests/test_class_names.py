"""Class names of the released heads, `decode_predictions` and `model.class_names` (no network).

The shipped lists are checked against timm's own files (their source) and
TFDS' imagenet2012 labels (the label order BiT's ILSVRC-2012 heads were
trained with), read as files, without importing either library.
"""

import importlib.util
import json
import os

import huggingface_hub
import keras
import numpy as np
import pytest
import transformers
from conftest import requires_tensorflow
from reference import random_state

import bit_keras
from bit_keras import checkpoints, labels

TINY = (1, 1, 1, 1)


def package_file(package, *parts):
    """A file of an installed package, found without importing the package."""
    return os.path.join(importlib.util.find_spec(package).submodule_search_locations[0], *parts)


def timm_info(name):
    with open(package_file("timm", "data", "_info", name), encoding="utf-8") as f:
        return f.read().splitlines()


def timm_lemmas():
    return dict(line.split("\t", 1) for line in timm_info("imagenet_synset_to_lemma.txt") if line)


# ------------------------------------------------------------------ the lists


def test_ilsvrc2012_list_is_the_standard_order_with_first_lemmas():
    ids, names = zip(*labels.imagenet_labels(1000))
    assert len(ids) == 1000 and len(set(ids)) == 1000
    known = {0: ("n01440764", "tench"), 1: ("n01443537", "goldfish"), 207: ("n02099601", "golden retriever")}
    known.update({281: ("n02123045", "tabby"), 850: ("n04399382", "teddy"), 999: ("n15075141", "toilet tissue")})
    for index, pair in known.items():
        assert (ids[index], names[index]) == pair, index
    assert list(ids) == timm_info("imagenet_synsets.txt")
    with open(package_file("tensorflow_datasets", "datasets", "imagenet2012", "labels.txt")) as f:
        assert list(ids) == f.read().split()  # the label ids of the TFDS imagenet2012 BiT-S was trained on
    lemmas = timm_lemmas()
    assert [lemmas[i].split(",")[0] for i in ids] == list(names)
    assert labels.imagenet_class_names(1000) == names


def test_imagenet21k_list_is_googles_order_of_the_bit_m_heads():
    ids, names = zip(*labels.imagenet_labels(21843))
    assert len(ids) == 21843 and len(set(ids)) == 21843
    expected = timm_info("imagenet21k_goog_synsets.txt")
    assert list(ids) == expected and list(ids) == sorted(ids)
    lemmas = timm_lemmas()
    for index in (0, 1, 2, 5000, 12345, 21842):
        assert names[index] == lemmas[expected[index]].split(",")[0].strip(), index
    assert (ids[0], names[0]) == ("n00004475", "organism")
    # timm names 21843-class heads (its BiT-M ports among them) by this very list.
    with open(package_file("timm", "data", "imagenet_info.py")) as f:
        assert "21843: 'imagenet-21k-goog'" in f.read()
    # ILSVRC-2012's classes are ImageNet-21k classes, but for the teddy bear (not among fall11's ids either).
    outside = [i for i in labels.imagenet_labels(1000) if i[0] not in set(ids)]
    assert outside == [("n04399382", "teddy")]


def test_the_lists_ship_as_package_data():
    folder = os.path.dirname(labels.__file__)
    for name, count in (("ilsvrc2012.txt", 1000), ("imagenet21k.txt", 21843)):
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            rows = [line for line in f.read().splitlines() if not line.startswith("#")]
        assert len(rows) == count and all(len(row.split("\t")) == 2 for row in rows)
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.cfg")) as f:
        assert "bit_keras.labels = *.txt" in f.read()


def test_other_head_sizes_have_no_list():
    with pytest.raises(ValueError, match="num_classes must be 1000 .* or 21843"):
        labels.imagenet_labels(21841)


# --------------------------------------------------------- decode_predictions


def test_decode_predictions_gives_the_top_classes_by_score():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 1000)).astype("float32")
    decoded = bit_keras.decode_predictions(logits, top=5)
    names = labels.imagenet_labels(1000)
    assert len(decoded) == 3
    for row, result in zip(logits, decoded):
        best = np.argsort(row)[::-1][:5]
        assert [r[:2] for r in result] == [names[i] for i in best]
        assert [r[2] for r in result] == [float(row[i]) for i in best]
        assert all(isinstance(r[2], float) for r in result)
    # Probabilities rank the same; the default is five.
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
    assert [[r[0] for r in row] for row in bit_keras.decode_predictions(probabilities)] == [
        [r[0] for r in row] for row in decoded
    ]


def test_decode_predictions_ties_and_nan():
    logits = np.zeros((1, 1000))
    logits[0, [3, 1, 2]] = 7.0
    logits[0, 0] = np.nan
    assert [r[0] for r in bit_keras.decode_predictions(logits, top=4)[0]] == ["n01443537", "n01484850", "n01491361", "n01494475"]
    logits = np.full((1, 1000), np.nan)
    logits[0, 999] = -1.0
    assert bit_keras.decode_predictions(logits, top=1)[0][0][:2] == ("n15075141", "toilet tissue")


def test_decode_predictions_of_an_imagenet21k_head():
    logits = np.zeros((2, 21843), "float32")
    logits[0, 21842], logits[1, 0] = 2.0, 1.0
    decoded = bit_keras.decode_predictions(logits, top=1)
    assert decoded[0][0] == (labels.imagenet_labels(21843)[21842] + (2.0,))
    assert decoded[1][0] == ("n00004475", "organism", 1.0)


def test_decode_predictions_with_class_names_and_backend_tensors():
    logits = keras.ops.convert_to_tensor(np.array([[0.1, 0.7, 0.2], [0.5, 0.0, -1.0]], "float32"))
    decoded = bit_keras.decode_predictions(logits, top=2, class_names=("cat", "dog", "fish"))
    assert [[r[:2] for r in row] for row in decoded] == [[(1, "dog"), (2, "fish")], [(0, "cat"), (1, "dog")]]
    assert decoded[0][0][2] == pytest.approx(0.7) and isinstance(decoded[0][0][0], int)
    assert bit_keras.decode_predictions([[1, 3]], top=2, class_names=["a", "b"]) == [[(1, "b", 3.0), (0, "a", 1.0)]]


@pytest.mark.parametrize(
    "logits, kwargs, message",
    [
        (np.zeros(1000), {}, r"logits must be 2-D, \(batch, classes\), got shape \(1000,\)\. For one image pass logits\[None\]"),
        (np.zeros((1, 2, 1000)), {}, r"logits must be 2-D"),
        (np.zeros((2, 10)), {}, r"logits has 10 classes per row.*1000 \(ILSVRC-2012.*21843.*class_names=model\.class_names"),
        ([["a", "b"]], {}, r"logits must be a \(batch, classes\) array of numbers"),
        (np.zeros((1, 1000)), {"top": 0}, r"top must be a positive integer no larger than the 1000 classes of logits, got 0"),
        (np.zeros((1, 1000)), {"top": 1001}, r"top must be a positive integer .* got 1001"),
        (np.zeros((1, 1000)), {"top": 2.5}, r"top must be a positive integer"),
        (np.zeros((1, 1000)), {"top": True}, r"top must be a positive integer"),
        (np.zeros((1, 3)), {"class_names": ["a", "b"]}, r"class_names has 2 names but logits has 3 classes per row"),
        (np.zeros((1, 3)), {"class_names": "abc"}, r"class_names must be a list of strings, one name per class"),
        (np.zeros((1, 3)), {"class_names": {0: "a", 1: "b", 2: "c"}}, r"class_names must be a list of strings in class order"),
    ],
)
def test_decode_predictions_refuses_bad_arguments(logits, kwargs, message):
    with pytest.raises(ValueError, match=message):
        bit_keras.decode_predictions(logits, **kwargs)


# ------------------------------------------------------------ model.class_names


def tiny_transformers(folder, id2label):
    config = transformers.BitConfig(depths=list(TINY), num_labels=len(id2label), id2label=dict(enumerate(id2label)))
    transformers.BitForImageClassification(config).save_pretrained(folder)
    return folder


def test_class_names_of_a_transformers_folder(tmp_path):
    folder = tiny_transformers(tmp_path / "bit", ["cat", "dog", "fish"])
    model = bit_keras.BiT("auto", weights=str(folder))
    assert model.class_names == ("cat", "dog", "fish")
    assert bit_keras.BiT("auto", weights=str(folder), num_classes=4).class_names is None  # a new head
    assert bit_keras.BiT("auto", weights=str(folder), include_top=False).class_names is None
    # save_transformers writes the model's own names unless told others.
    bit_keras.save_transformers(model, tmp_path / "again")
    assert bit_keras.BiT("auto", weights=str(tmp_path / "again")).class_names == ("cat", "dog", "fish")
    bit_keras.save_transformers(model, tmp_path / "renamed", class_names=["a", "b", "c"])
    assert bit_keras.BiT("auto", weights=str(tmp_path / "renamed")).class_names == ("a", "b", "c")
    # transformers' default names say nothing.
    transformers.BitForImageClassification(transformers.BitConfig(depths=list(TINY), num_labels=2)).save_pretrained(
        tmp_path / "unnamed"
    )
    assert bit_keras.BiT("auto", weights=str(tmp_path / "unnamed")).class_names is None


def test_class_names_of_an_imagenet_transformers_folder_keep_the_index_order(tmp_path):
    """google/bit-50's config.json names its 1000 classes by their WordNet lemmas, keyed by index."""
    lemmas = timm_lemmas()
    full = [lemmas[wnid] for wnid, _ in labels.imagenet_labels(1000)]
    folder = tiny_transformers(tmp_path / "bit-1k", full)
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = dict(reversed(list(config["id2label"].items())))  # keys "999", ..., "10", ..., "0"
    (folder / "config.json").write_text(json.dumps(config))
    model = bit_keras.BiT("auto", weights=str(folder))
    assert model.class_names == tuple(full)
    assert model.class_names[207] == "golden retriever" and model.class_names[0] == "tench, Tinca tinca"
    assert [name.split(",")[0] for name in model.class_names] == list(labels.imagenet_class_names(1000))


def write_npz(path, state):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **state)
    return str(path)


def test_class_names_of_release_names_with_imagenet_heads(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("BIT_KERAS_CACHE", str(cache))
    state = random_state(TINY, 1, 1000, seed=1)
    local = write_npz(cache / "BiT-S-R50x1.npz", state)  # already downloaded: read from the cache
    model = bit_keras.BiT("auto", weights="BiT-S-R50x1")
    assert model.class_names == labels.imagenet_class_names(1000) and model.class_names[281] == "tabby"
    x = np.random.default_rng(0).uniform(-1, 1, (1, 32, 32, 3)).astype("float32")
    logits = model.predict(x, verbose=0)
    top = int(np.argmax(logits[0]))
    assert bit_keras.decode_predictions(logits, top=1)[0][0][1] == model.class_names[top]
    # The same file by its path does not say what its 1000 classes are; nor does a new head.
    assert bit_keras.BiT("auto", weights=local).class_names is None
    assert bit_keras.BiT("auto", weights="BiT-S-R50x1", num_classes=10).class_names is None
    # VTAB releases have their task's classes, never ImageNet's.
    write_npz(cache / "BiT-M-R50x1-run0-dtd.npz", state)
    assert bit_keras.BiT("auto", weights="BiT-M-R50x1-run0-dtd").class_names is None
    # A BiT-M head: the record carries the 21k names (a root kernel and a head bias are enough to read).
    head = {checkpoints.ROOT_KERNEL: state[checkpoints.ROOT_KERNEL], checkpoints.HEAD_BIAS: np.zeros(21843, "float32")}
    write_npz(cache / "BiT-M-R50x1.npz", head)
    assert checkpoints.read_weights("BiT-M-R50x1").class_names == list(labels.imagenet_class_names(21843))


def test_class_names_of_hub_repos_only_from_google_and_timm(tmp_path, monkeypatch):
    tiny = bit_keras.BiT("auto", weights=write_npz(tmp_path / "tiny.npz", random_state(TINY, 1, 1000, seed=2)))
    for repo in ("timm/resnetv2_tiny_bit.goog_in21k_ft_in1k", "someone/bit-tuned"):
        bit_keras.save_timm(tiny, tmp_path / "hub" / repo / "model.safetensors")
        (tmp_path / "hub" / repo / "config.json").write_text(
            json.dumps({"architecture": "resnetv2_50x1_bit", "num_classes": 1000})
        )
    monkeypatch.setattr(
        huggingface_hub, "hf_hub_download", lambda repo_id, filename, **kwargs: str(tmp_path / "hub" / repo_id / filename)
    )
    timm_model = bit_keras.BiT("auto", weights="timm/resnetv2_tiny_bit.goog_in21k_ft_in1k")
    assert timm_model.weights_family == "timm" and timm_model.class_names == labels.imagenet_class_names(1000)
    assert bit_keras.BiT("auto", weights="someone/bit-tuned").class_names is None


def test_which_release_names_have_imagenet_heads():
    has = checkpoints.releases.has_imagenet_head
    for name in ("BiT-M-R50x1", "BiT-S-R152x4-ILSVRC2012", "BiT-M-R50x1.h5", "BiT-distill-R50x1-224"):
        assert has(name), name
    for name in ("timm/resnetv2_50x1_bit.goog_in21k", "google/bit-50", "kaggle:google/bit/tensorFlow2/m-r50x1"):
        assert has(name), name
    for name in ("BiT-M-R50x1-run0-dtd", "someone/bit-50", "kaggle:someone/bit/tensorFlow2/m-r50x1", "BiT-L-R50x1"):
        assert not has(name), name


@requires_tensorflow
def test_the_tuner_names_the_head_and_an_export_keeps_the_names(tmp_path):
    from toy_data import colour_task

    import hub_export

    pixels, labels_ = colour_task(16)
    source = bit_keras.data.as_source((pixels, labels_), 2)
    named = bit_keras.data.Source(source.dataset, source.num_examples, 2, ["red", "blue"])
    tuner = bit_keras.BiTFineTuner(bit_keras.Variant(TINY), weights=None, num_classes=2, batch_size=8, steps=1, sizes=(16, 12))
    assert tuner.model.class_names is None
    tuner.fit(source, verbose=0)  # a source without names leaves the model without
    assert tuner.model.class_names is None
    tuner.fit(named, verbose=0)
    assert tuner.model.class_names == ("red", "blue")
    record = hub_export.export(tuner.model, tmp_path / "classifier", flavor="classification")
    assert record["class_names"] == ["red", "blue"] == hub_export.read_metadata(tmp_path / "classifier")["class_names"]
    assert bit_keras.BiT("auto", weights=str(tmp_path / "classifier")).class_names == ("red", "blue")
    assert bit_keras.BiT("auto", weights=str(tmp_path / "classifier"), num_classes=3).class_names is None  # a new head
    # Features carry no class names.
    assert "class_names" not in hub_export.export(tuner.model, tmp_path / "features", flavor="feature_vector")


@pytest.mark.parametrize(
    "names,message",
    [
        (["red", "blue"], r"class_names has 2 names but num_classes is 3"),
        ("rgb", r"class_names must be a list of strings, one name per class, got the string 'rgb'"),
        ({0: "red", 1: "green", 2: "blue"}, r"class_names must be a list of strings in class order, got a dict.*labels\[i\]"),
        ([0, 1, 2], r"class_names must be a list of strings.*0 is not a string"),
    ],
)
def test_a_source_with_class_names_not_one_string_per_class_is_refused(names, message):
    source = bit_keras.data.from_arrays(np.zeros((3, 8, 8, 3), "uint8"), [0, 1, 2])
    with pytest.raises(ValueError, match=message):
        bit_keras.data.Source(source.dataset, 3, 3, names)


@pytest.mark.parametrize(
    "names,message",
    [
        (("a", "b"), r"model.class_names has 2 names but the head has 3 classes"),
        ("abc", r"model.class_names must be a list of strings, one name per class, got the string 'abc'"),
        ({0: "a", 1: "b", 2: "c"}, r"model.class_names must be a list of strings in class order, got a dict"),
    ],
)
def test_exports_refuse_model_class_names_not_one_string_per_class(tmp_path, names, message):
    import hub_export

    model = bit_keras.BiT(bit_keras.Variant(TINY), num_classes=3)
    model.class_names = names
    with pytest.raises(ValueError, match=message):
        hub_export.export(model, tmp_path / "hub", flavor="classification")
    with pytest.raises(ValueError, match=message):
        hub_export.export_format(model, tmp_path / "m.tflite", "litert")
    with pytest.raises(ValueError, match=message):
        bit_keras.save_transformers(model, tmp_path / "hf")
    assert os.listdir(tmp_path) == []
