"""The transfer demo's arms, in process on a tiny budget: one recipe for every k, the probe on the exported model."""

import dataclasses

import keras
import numpy as np
import pytest
from conftest import requires_tensorflow

import bit_keras
from bit_keras import data, demo

pytestmark = requires_tensorflow


def test_every_k_shares_one_recipe_and_the_probe_reads_the_exported_upstream(tmp_path, monkeypatch):
    import tensorflow as tf
    from sklearn.linear_model import LogisticRegression

    import hub_export

    keras.utils.set_random_seed(123)  # not a seed the scratch arm draws
    folder = str(tmp_path / "upstream")
    hub_export.export(bit_keras.BiT(demo.VARIANT, num_classes=5), folder, flavor="feature_vector")
    _, train, test = demo.digits()
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
    assert [size for size, _, _ in runs[::2]] == [5, 10, train.num_examples]
    assert {rule.total_steps for _, rule, _ in runs} == {3, -(-train.num_examples // 32)}

    # Transfer starts from the exported model, read back; scratch from other weights.
    upstream = bit_keras.BiT(demo.VARIANT, weights=folder, num_classes=5).get_weights()
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
    # Flips change the upstream model, so they are part of what the cache depends on.
    assert recipe.upstream() != dataclasses.replace(recipe, flip=True).upstream()


def test_the_distillation_demo_in_a_reduced_mode(tmp_path, capsys):
    import json

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
