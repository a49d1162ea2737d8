import keras
import numpy as np
import pytest

from bit_keras import hyperrule

pytestmark = pytest.mark.backends


def official_lr(step, dataset_size, base_lr=0.003):
    """A direct transcription of the official rule (bit_hyperrule.get_lr)."""
    if dataset_size < 20_000:
        supports = [100, 200, 300, 400, 500]
    elif dataset_size < 500_000:
        supports = [500, 3000, 6000, 9000, 10_000]
    else:
        supports = [500, 6000, 12_000, 18_000, 20_000]
    if step < supports[0]:
        return base_lr * step / supports[0]
    for s in supports[1:-1]:
        if s < step:
            base_lr /= 10
    return base_lr


@pytest.mark.parametrize(
    "size,total,warmup,boundaries,alpha",
    [
        (1, 500, 100, (200, 300, 400), 0.0),
        (19_999, 500, 100, (200, 300, 400), 0.0),
        (20_000, 10_000, 500, (3_000, 6_000, 9_000), 0.1),
        (499_999, 10_000, 500, (3_000, 6_000, 9_000), 0.1),
        (500_000, 20_000, 500, (6_000, 12_000, 18_000), 0.1),
        (14_197_122, 20_000, 500, (6_000, 12_000, 18_000), 0.1),
    ],
)
def test_schedule_and_mixup_edges(size, total, warmup, boundaries, alpha):
    steps = hyperrule.schedule(size)
    assert (steps.total_steps, steps.warmup_steps, steps.boundaries) == (total, warmup, boundaries)
    assert hyperrule.mixup_alpha(size) == alpha


@pytest.mark.parametrize(
    "image_size,rule,expected",
    [
        ((95, 95), "paper", (160, 128)),
        ((96, 96), "paper", (448, 384)),
        ((95, 97), "paper", (160, 128)),  # 9215 px < 9216
        ((96, 96), "official", (512, 480)),
        ((32, 32), "official", (160, 128)),
        (500, "paper", (448, 384)),
    ],
)
def test_resolution_edges(image_size, rule, expected):
    assert hyperrule.resolution(image_size, rule) == expected


def test_unknown_rule_and_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="rule must be one of"):
        hyperrule.resolution((32, 32), rule="timm")
    for bad in (0, -5, 1000.0, True):
        with pytest.raises(ValueError, match="dataset_size must be a positive integer"):
            hyperrule.schedule(bad)
    assert hyperrule.schedule(np.int64(50_000)).total_steps == 10_000  # NumPy's integers count too


@pytest.mark.parametrize("dataset_size", [1_000, 50_000, 1_281_167])
@pytest.mark.parametrize("batch_size", [512, 128])
def test_learning_rate_at_every_step(dataset_size, batch_size):
    schedule = hyperrule.learning_rate(dataset_size, batch_size=batch_size)
    total = hyperrule.schedule(dataset_size).total_steps
    steps = np.arange(total)
    got = keras.ops.convert_to_numpy(schedule(keras.ops.convert_to_tensor(steps)))
    expected = np.array([official_lr(s, dataset_size) for s in steps]) * batch_size / 512
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-12)


def test_learning_rate_is_serializable():
    schedule = hyperrule.learning_rate(50_000, batch_size=64)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert clone.get_config() == schedule.get_config()
    assert float(clone(3001)) == pytest.approx(float(schedule(3001)))


def test_hyperrule_bundle_matches_the_functions_and_prints_a_table():
    rule = hyperrule.HyperRule(dataset_size=50_000, image_size=(32, 32))
    assert (rule.resize, rule.crop) == (160, 128)
    assert rule.total_steps == 10_000 and rule.warmup_steps == 500 and rule.mixup_alpha == 0.1
    assert rule.learning_rate().get_config() == hyperrule.learning_rate(50_000).get_config()
    text = str(rule)
    for fragment in ("160", "128", "10,000", "0.003", "alpha 0.1"):
        assert fragment in text


def test_overrides_scale_the_schedule_and_are_reported():
    rule = hyperrule.HyperRule(dataset_size=1_000, image_size=(8, 8), steps=50, sizes=(40, 32))
    assert rule.resolution == (40, 32)
    assert (rule.warmup_steps, rule.boundaries, rule.total_steps) == (10, (20, 30, 40), 50)
    lr = rule.learning_rate()
    assert float(lr(5)) == pytest.approx(0.0015) and float(lr(21)) == pytest.approx(0.0003)
    assert str(rule).count("overridden") == 2
