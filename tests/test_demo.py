"""The transfer demo's arms, in process on a tiny budget: one recipe for every k, the probe on the exported model;
the glyph upstream it pre-trains on, and the cache that names it."""

import dataclasses
import json

import keras
import numpy as np
import pytest
from conftest import requires_tensorflow

import bit_keras
from bit_keras import data, demo, glyphs

pytestmark = requires_tensorflow


def test_every_k_shares_one_recipe_and_the_probe_reads_the_exported_upstream(tmp_path, monkeypatch):
    import tensorflow as tf
    from sklearn.linear_model import LogisticRegression

    import hub_export

    keras.utils.set_random_seed(123)  # not a seed the scratch arm draws
    folder = str(tmp_path / "upstream")
    hub_export.export(bit_keras.BiT(demo.VARIANT, num_classes=5), folder, flavor="feature_vector")
    _, train, test = demo.sources(demo.Recipe(upstream_steps=1))
    assert train.num_classes == test.num_classes == 10
    recipe = demo.Recipe(seeds=1, shots=(1, 2, "full"), finetune_epochs=1, finetune_min_steps=3)

    runs = []
    finetune = demo.finetune

    def recording_finetune(tuner, start, source, test_source, seed):
        accuracy = finetune(tuner, start, source, test_source, seed)
        runs.append((source.num_examples, tuner.hyperrule, [np.copy(w) for w in start]))
        return accuracy

    monkeypatch.setattr(demo, "finetune", recording_finetune)
    rows = demo.compare(folder, train, test, recipe)

    assert len(runs) == 6  # three splits, two fine-tuned arms
    settings = {
        (rule.batch_size, round(rule.peak_lr, 12), rule.resolution, rule.flip, rule.random_crop, rule.rule) for _, rule, _ in runs
    }
    assert settings == {(32, recipe.finetune_peak_lr, (18, 16), False, True, "paper")}
    for size, rule, _ in runs:
        assert rule.total_steps == recipe.steps_for(size)
        assert rule.schedule == bit_keras.hyperrule.scaled(bit_keras.hyperrule.schedule(size), rule.total_steps)
    assert [size for size, _, _ in runs[::2]] == [10, 20, train.num_examples]
    assert {rule.total_steps for _, rule, _ in runs} == {3, -(-train.num_examples // 32)}

    # Transfer starts from the exported model, read back; scratch from other weights.
    upstream = bit_keras.BiT(demo.VARIANT, weights=folder, num_classes=10).get_weights()
    transfer_starts, scratch_starts = runs[0::2], runs[1::2]
    for (_, _, start), (_, _, other) in zip(transfer_starts, scratch_starts):
        for got, want in zip(start, upstream):
            np.testing.assert_array_equal(got, want)
        assert not np.array_equal(other[0], upstream[0])

    # The probe: scikit-learn's logistic regression on the exported module's features, computed here anew.
    module = tf.saved_model.load(folder)

    def features(source):
        images, labels = zip(*source.dataset.as_numpy_iterator())
        pixels = tf.image.resize(np.stack(images).astype("float32"), (16, 16)) / 255.0
        return module(pixels, training=False).numpy(), np.array(labels)

    test_features = features(test)
    for shot, r in zip(recipe.shots, rows):
        subset = train if shot == "full" else data.few_shot(train, shot, seed=0)
        expected = LogisticRegression(max_iter=2000).fit(*features(subset)).score(*test_features)
        assert r["probe_mean"] == pytest.approx(expected, abs=1e-9) and r["probe_std"] == 0
        assert set(r) == {"examples_per_class"} | {f"{arm}_{stat}" for arm in demo.ARMS for stat in ("mean", "std")}


def test_recipe_rule_and_upstream_record():
    recipe = demo.Recipe()
    assert recipe.steps_for(5) == recipe.finetune_min_steps
    assert recipe.steps_for(717) == -(-recipe.finetune_epochs * 717 // recipe.finetune_batch_size)
    assert dataclasses.replace(recipe, finetune_steps=7).steps_for(717) == 7
    # Flips change the upstream model, so they are part of what the cache depends on; so is the upstream itself.
    assert recipe.upstream_record() != dataclasses.replace(recipe, flip=True).upstream_record()
    assert recipe.upstream_record() != dataclasses.replace(recipe, upstream="digits").upstream_record()
    assert recipe.upstream_record() != dataclasses.replace(recipe, glyph_classes=50).upstream_record()
    # --upstream digits keeps the earlier demo's upstream numbers and fine-tuning rule; flags given override them.
    digits = demo.Recipe.of("digits")
    assert (digits.upstream_steps, digits.upstream_batch_size, digits.upstream_peak_lr) == (300, 16, 0.00625)
    assert demo.Recipe.of("digits", upstream_steps=5, seeds=None).upstream_steps == 5 and digits.seeds == recipe.seeds
    assert [digits.steps_for(n) for n in (5, 717)] == [recipe.steps_for(n) for n in (5, 717)]
    with pytest.raises(ValueError, match="glyphs, digits"):
        demo.Recipe.of("imagenet")


def test_the_glyph_upstream_meets_every_digit_and_the_digits_option_keeps_the_old_split():
    recipe = demo.Recipe(upstream_steps=10, upstream_batch_size=30, glyph_classes=7)
    upstream, train, test = demo.sources(recipe)
    # As many glyphs as the run draws (10 x 30), rounded up to whole classes; all ten digits downstream.
    assert (upstream.num_classes, upstream.num_examples) == (7, 7 * 43)
    _, labels = zip(*train.dataset.as_numpy_iterator())
    assert set(labels) == set(range(10)) and (train.num_examples, test.num_examples) == (1437, 360)

    # --upstream digits: 0-4 upstream, and the 5-9 of the same 80/20 split downstream, relabelled 0-4.
    old_upstream, old_train, old_test = demo.sources(demo.Recipe.of("digits"))
    for old, every in ((old_train, train), (old_test, test)):
        images, labels = map(np.array, zip(*every.dataset.as_numpy_iterator()))
        old_images, old_labels = map(np.array, zip(*old.dataset.as_numpy_iterator()))
        np.testing.assert_array_equal(old_images, images[labels >= 5])
        np.testing.assert_array_equal(old_labels, labels[labels >= 5] - 5)
    _, upstream_labels = zip(*old_upstream.dataset.as_numpy_iterator())
    assert old_upstream.num_examples == 708 and set(upstream_labels) == set(range(5))


def test_glyphs_are_deterministic_distinct_classes_of_varied_examples():
    images, labels = glyphs.glyphs(num_classes=100, examples_per_class=10, seed=3)
    assert images.shape == (1000, 8, 8) and images.dtype == np.uint8 and labels.tolist() == list(range(100)) * 10
    again, _ = glyphs.glyphs(num_classes=100, examples_per_class=10, seed=3)
    np.testing.assert_array_equal(images, again)
    assert not np.array_equal(images, glyphs.glyphs(num_classes=100, examples_per_class=10, seed=4)[0])
    # 17 grey levels, as the digits' ink counts 0-16 scaled to [0, 255], the glyph spanning the full height.
    assert set(np.unique(images)) <= {round(count * 255 / 16) for count in range(17)}
    assert (images[:, 0].max(axis=1) > 0).all() and (images[:, -1].max(axis=1) > 0).all()

    pixels = images.reshape(len(images), -1).astype(float)
    first = pixels[:100]
    assert len({row.tobytes() for row in first}) == 100  # distinct classes
    assert not any(np.array_equal(pixels[c], pixels[c + 100]) for c in range(100))  # jitter: no two examples alike
    # Still a class: a nearest-centroid rule on raw pixels, fitted on 5 examples per class, names most of the others.
    fitted = np.arange(len(labels)) < 500
    centroids = np.stack([pixels[fitted & (labels == c)].mean(axis=0) for c in range(100)])
    distances = ((pixels[~fitted, None] - centroids[None]) ** 2).sum(axis=-1)
    assert (distances.argmin(axis=1) == labels[~fitted]).mean() > 0.5  # chance: 0.01


def test_the_cache_names_its_upstream_so_switching_pretrains_again(tmp_path, capsys):
    tiny = {"upstream_steps": 2, "upstream_batch_size": 4}
    glyph_recipe, digit_recipe = demo.Recipe.of("glyphs", **tiny), demo.Recipe.of("digits", **tiny)
    glyph_source, digit_source = demo.sources(glyph_recipe)[0], demo.sources(digit_recipe)[0]
    for recipe, source, said in (
        (glyph_recipe, glyph_source, "no cached model"),
        (glyph_recipe, glyph_source, "reusing the cached model"),
        (digit_recipe, digit_source, "recipe changed"),
        (digit_recipe, digit_source, "reusing the cached model"),
    ):
        demo.pretrain(source, recipe, str(tmp_path))
        printed = capsys.readouterr().out
        assert said in printed and recipe.describe_upstream() in printed
    record = json.loads((tmp_path / demo.UPSTREAM_RECORD).read_text())
    assert record["recipe"]["upstream"] == "digits" and record["data"] == data.digest(digit_source)


def test_the_distillation_demo_in_a_reduced_mode(tmp_path, capsys):
    from bit_keras.cli import main

    assert main(["demo", "--distill", "--seeds", "2", "--distill_steps", "3", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "teacher R1-1-1-1x2: top-1" in printed and "Distillation" in printed
    rows = [line.split() for line in printed.splitlines() if line.startswith(("distilled ", "labels "))]
    assert [row[0] for row in rows] == ["distilled", "labels"]
    record = json.loads((tmp_path / "distill_results.json").read_text())
    assert len(record["runs"]) == 2 and 0 <= record["teacher_accuracy"] <= 1
    for run in record["runs"]:
        assert set(run) == {"distilled", "labels"}
        assert all(0 <= run[arm][key] <= 1 for arm in run for key in ("accuracy", "agreement"))
        assert run["distilled"]["teacher"] == record["teacher_accuracy"]  # one teacher for every run
    means = {row[0]: float(row[1]) for row in rows}
    assert abs(means["distilled"] - np.mean([run["distilled"]["accuracy"] for run in record["runs"]])) <= 0.0005 + 1e-9
