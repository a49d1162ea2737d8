"""Runs a suite: each task's runs fine-tuned with `BiTFineTuner` (or the released VTAB models evaluated), resumably.

Every finished run is written at once to `<out>/runs/<task>/run<k>.json`
(through `checkpoints.atomic_file`), and `results.json` and the figure are
rewritten after it; a restart with the same settings skips finished runs and
resumes a half-finished one from its backups (the engine's `checkpoint_dir`,
`<out>/backups/<task>/run<k>` or under `--checkpoint_dir`), which are removed
once its result is written unless `keep_backups`.
"""

import contextlib
import dataclasses
import gc
import json
import os
import shutil
import time

import keras

from bit_keras import checkpoints, config, data, distribute, hyperrule
from bit_keras.finetune import BiTFineTuner, release_name
from bit_keras.models import BiT
from bit_keras.resnet import get_variant
from bit_keras.suites import report
from bit_keras.suites.definitions import SPLIT_SIZES, VTAB_TRAIN_EXAMPLES, get

RESULTS = "results.json"


def reproduce(
    suite, variant="BiT-M-R50x1", *, weights="release", settings=None, run=None, recipe=None, callbacks=(), verbose="auto"
):
    """Runs `suite` ("vtab1k", "fewshot", "paper") for `variant`; returns the results (as written to results.json).

    Args:
        suite: a suite name or `definitions.Suite`.
        variant: the model, e.g. "BiT-M-R50x1" (a name or `bit_keras.Variant`).
        weights: "release" (the variant's released checkpoint), None (random
            weights: checks of the machinery only) or any `BiT` weights.
        settings: a `config.SuiteConfig` (runs, tasks, out, train_examples,
            evaluate_released, ...).
        run: `config.RunConfig` fields as a dict (strategy, tpu, batch_split,
            mixed_precision, checkpoint_dir, ...); `batch_size` overrides the
            suite's protocol, `seed` is the first run's seed (run k has seed + k,
            which also draws its few-shot subset, as the official
            `--examples_per_class_seed`).
        recipe: `config.FineTuneRecipe` fields as a dict (base_lr, rule,
            steps, sizes, ...): each replaces the suite's protocol.
        callbacks: extra Keras callbacks for every fine-tuning run.
    """
    suite = get(suite) if isinstance(suite, str) else suite
    settings = config.as_config(config.SuiteConfig, settings if settings is not None else {}, "settings")
    run, recipe = dict(run or {}), {k: v for k, v in (recipe or {}).items() if v is not None}
    if isinstance(variant, str) and variant.lower() == "auto":
        raise ValueError(
            "reproduce needs the variant named (e.g. --variant BiT-M-R50x1): its published figures are looked up by name."
        )
    variant = get_variant(variant)
    out = settings.out or f"reproduce_{suite.name}"
    if settings.evaluate_released:
        if suite.name != "vtab1k":
            raise ValueError(f"--evaluate_released applies to vtab1k, whose per-task models were released; not to {suite.name}.")
        weights = None
        for k in range(settings.runs or 1):  # refused before any data is read
            _released_name(variant, k, suite.tasks[0])
    elif weights == "release":
        weights = release_name(variant)
    chosen = _chosen_tasks(suite, settings)
    context = _Context(suite, variant, weights, settings, run, recipe, out, callbacks, verbose)
    _make_folder(out)
    source = (
        "released per-task models" if settings.evaluate_released else f"weights {weights or 'random (a check of the machinery)'}"
    )
    print(f"[reproduce] {suite.name}: {suite.title}\n  {variant.name}, {source}; {len(chosen)} task(s), results in {out}")
    for task in suite.tasks:  # runs of other tasks finished earlier in `out` with these settings join the table
        if task not in chosen:
            context.records[task.name] = context.earlier(task, settings.runs or task.runs)
    print(report.header(suite, variant.name))
    for number, task in enumerate(chosen, 1):
        runs = settings.runs or task.runs
        for k in range(runs):
            record = context.finished(task, k)
            if record is None:
                print(f"[{number}/{len(chosen)}] {task.name}, run {k + 1} of {runs} (seed {context.seed(k)})")
                record = context.measure(task, k)
            else:
                print(
                    f"[{number}/{len(chosen)}] {task.name}, run {k + 1} of {runs}: done before ({record['top1']:.2f}%), skipped"
                )
            context.records[task.name].append(record)
            context.write()
        print(report.row(suite, task, context.records[task.name], variant.name))
    results = context.write(final=True)
    print()
    print(report.table(suite, results))
    print(f"\nresults: {os.path.join(out, RESULTS)}, figure: {os.path.join(out, suite.name + '.png')}")
    return results


@dataclasses.dataclass
class _Context:
    suite: object
    variant: object
    weights: object
    settings: object
    run: dict
    recipe: dict
    out: str
    callbacks: tuple
    verbose: object

    def __post_init__(self):
        self.records = {task.name: [] for task in self.suite.tasks}

    def seed(self, k):
        return (self.run.get("seed") or 0) + k

    def configs(self, task, k):
        """The (FineTuneRecipe, RunConfig) of run k of `task`: the suite's protocol, then what the caller set."""
        run = {name: value for name, value in self.run.items() if value is not None}
        run.setdefault("batch_size", task.batch_size or hyperrule.REFERENCE_BATCH_SIZE)  # a given 0 is refused, not replaced
        run["seed"] = self.seed(k)
        root = run.get("checkpoint_dir") or os.path.join(self.out, "backups")
        run["checkpoint_dir"] = os.path.join(root, task.name, f"run{k}")
        recipe = {"base_lr": task.base_lr, "flip": task.flip, "random_crop": task.random_crop, **self.recipe}
        return config.FineTuneRecipe(**recipe), config.RunConfig(**run)

    def fingerprint(self, task, k):
        recipe, run = self.configs(task, k)
        return {
            "suite": self.suite.name,
            "task": task.name,
            "variant": self.variant.name,
            "weights": None if self.weights is None else str(self.weights),
            "released": self.settings.evaluate_released,
            "train_examples": self.settings.train_examples,
            "pin_versions": self.settings.pin_versions,
            "seed": run.seed,
            **config.fingerprint(recipe, run),
        }

    def path(self, task, k):
        return os.path.join(self.out, "runs", task.name, f"run{k}.json")

    def finished(self, task, k, redo=True):
        """The record of a finished run k of `task`, or None; a record of other settings is refused.

        A damaged record (half-written, or not a run's) is said and counts as
        no record: the run is done again when `redo`, else left out of the table.
        """
        path = self.path(task, k)
        try:
            with open(path) as f:
                record = json.load(f)
        except FileNotFoundError:
            return None
        except ValueError as error:
            return _damaged(path, f"not JSON: {error}", task, k, redo)
        except OSError as error:
            raise ValueError(f"{path} is unreadable ({error}); delete it to run {task.name} again.") from None
        if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
            return _damaged(path, "no 'settings' object", task, k, redo)
        top1 = record.get("top1")
        if isinstance(top1, bool) or not isinstance(top1, (int, float)):
            return _damaged(path, f"'top1' is {top1!r}, not a number", task, k, redo)
        expected = self.fingerprint(task, k)
        differences = config.fingerprint_differences(record["settings"], expected)
        if differences:
            raise ValueError(
                f"{self.path(task, k)} holds a result of other settings ({'; '.join(differences)}). Pass another --out, "
                f"or delete that file to run {task.name} again with these."
            )
        return record

    def earlier(self, task, runs):
        """The finished runs of a task this call does not run, those of other settings left out."""
        records = []
        for k in range(runs):
            try:
                record = self.finished(task, k, redo=False)
            except ValueError:
                record = None
            if record is not None:
                records.append(record)
        return records

    def measure(self, task, k):
        start = time.time()
        if self.settings.evaluate_released:
            record = self._released(task, k)
        else:
            record = self._finetune(task, k)
        record.update(
            task=task.name, run=k, seed=self.seed(k), seconds=round(time.time() - start, 1), settings=self.fingerprint(task, k)
        )
        _write_json(self.path(task, k), record)
        print(f"  {task.name} run {k + 1}: top-1 {record['top1']:.2f}% on {record['test_examples']} test examples")
        keras.backend.clear_session()
        gc.collect()
        return record

    def _finetune(self, task, k):
        recipe, run = self.configs(task, k)
        train, version = load_split(task, task.train_split(self.settings.train_examples), self.settings)
        if task.examples_per_class is not None:
            train = data.few_shot(train, task.examples_per_class, seed=run.seed)
        elif task.validation is None and self.settings.train_examples is not None:
            n = min(self.settings.train_examples, train.num_examples)
            train = data.Source(train.dataset.take(n), n, train.num_classes, train.class_names)
        test, _ = load_split(task, task.test, self.settings)
        tuner = BiTFineTuner(self.variant, recipe, run, weights=self.weights, num_classes=train.num_classes)
        tuner.fit(train, callbacks=list(self.callbacks), verbose=self.verbose)
        top1 = tuner.evaluate(test, verbose=0)["accuracy"]
        if not self.settings.keep_backups:
            shutil.rmtree(run.checkpoint_dir, ignore_errors=True)
            for folder in (os.path.dirname(run.checkpoint_dir), os.path.dirname(os.path.dirname(run.checkpoint_dir))):
                with contextlib.suppress(OSError):
                    os.rmdir(folder)  # only when empty
        return {
            "top1": 100 * float(top1),
            "train_examples": train.num_examples,
            "train_digest": data.digest(train),  # which examples it trained on (the few-shot subset's first 16)
            "test_examples": test.num_examples,
            "steps": tuner.total_steps,
            "resolution": list(tuner.resolution),
            "tfds_version": version,
        }

    def _released(self, task, k):
        recipe, run = self.configs(task, k)
        name = _released_name(self.variant, k, task)
        test, version = load_split(task, task.test, self.settings)
        model = BiT("auto", weights=name)
        classes = model.get_layer("head").units
        if classes != test.num_classes:
            raise ValueError(
                f"{name} has a head of {classes} classes, but {task.name} has {test.num_classes}: not this task's model."
            )
        image, _ = data.first_example(test)
        run = dataclasses.replace(run, checkpoint_dir=None)
        recipe = dataclasses.replace(recipe, zero_head=False)
        tuner = BiTFineTuner(model, recipe, run, dataset_size=VTAB_TRAIN_EXAMPLES, image_size=tuple(image.shape[:2]))
        top1 = tuner.evaluate(test, verbose=0)["accuracy"]
        return {
            "top1": 100 * float(top1),
            "test_examples": test.num_examples,
            "resolution": list(tuner.resolution),
            "tfds_version": version,
            "checkpoint": model.weights_source,
        }

    def write(self, final=False):
        results = report.results(self.suite, self.variant.name, self.records, self.weights, self.settings)
        _write_json(os.path.join(self.out, RESULTS), results)
        if distribute.is_chief() and (final or any(self.records.values())):
            report.plot(self.suite, results, os.path.join(self.out, f"{self.suite.name}.png"))
        return results


def _make_folder(out):
    """Makes the results folder `out`, or says, naming --out, why it cannot be one (before the runs' backups do)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"out={out!r} (--out) is a file: results go in a folder. Pass the path of a folder, new or existing.")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as error:
        raise ValueError(f"out={out!r} (--out) cannot be made a folder: {error.strerror or error}. Choose another.") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"out={out!r} (--out) is not a writable folder. Choose a folder you can write.")


def _damaged(path, what, task, k, redo):
    """Says that the record at `path` is damaged (`what`), and what becomes of run k of `task`; returns None."""
    then = "it is run again" if redo else f"it is left out of the table; --tasks {task.name} runs it again"
    print(f"[reproduce] {path} is damaged ({what}): the record of {task.name} run {k + 1} does not count, {then}")


def _released_name(variant, k, task):
    name = f"{variant.name}-run{k}-{task.release}"
    if checkpoints.find_release(name) is None:
        raise ValueError(
            f"{name} was not released: the per-task VTAB-1k models are BiT-M-{{{','.join(checkpoints.releases.VTAB_ARCHITECTURES)}}}"
            f"-run{{0..{checkpoints.releases.VTAB_RUNS - 1}}}-<task>. Pass one of those variants and at most "
            f"{checkpoints.releases.VTAB_RUNS} runs."
        )
    return name


def _chosen_tasks(suite, settings):
    if settings.tasks:
        names = set(settings.tasks)
        for name in names:
            suite.task(name)  # an unknown name is an error naming the suite's tasks
        return [task for task in suite.tasks if task.name in names]
    chosen = []
    for task in suite.tasks:
        if task.needs_manual_data and not _prepared(task, settings.tfds_data_dir):
            print(
                f"[reproduce] {task.name} left out: {task.builder} is not prepared in TFDS (a manual download); --tasks runs it"
            )
            continue
        chosen.append(task)
    return chosen


def _prepared(task, data_dir):
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(task.builder, data_dir=data_dir).is_prepared()
    except Exception:  # TFDS raises its own errors for unknown or unreadable datasets
        return False


def load_split(task, split, settings=None):
    """(a `data.Source` of `split` of `task`'s dataset with its labels, the TFDS version read).

    The task's `image` and `label` functions read each example; the version
    the benchmark names is asked for (`pin_versions`), or TFDS's default
    when this TFDS no longer builds it (said in a line).
    """
    import tensorflow as tf

    settings = settings or config.SuiteConfig()
    name = task.builder
    if settings.pin_versions and task.version:
        name = f"{task.builder}:{task.version}"
    try:
        dataset, info = data.sources.tfds_load(name, split, settings.tfds_data_dir)
    except (AssertionError, ValueError) as error:
        if name == task.builder or "version" not in str(error):
            raise
        print(f"[data] {task.builder}: this TFDS has no version {task.version} (the benchmark's); reading its default")
        dataset, info = data.sources.tfds_load(task.builder, split, settings.tfds_data_dir)
    _check_split_sizes(task, info)
    for feature, classes in task.feature_classes:
        if info.features[feature].num_classes != classes:
            raise ValueError(
                f"{task.builder} {info.version}: {feature} has {info.features[feature].num_classes} values, the benchmark's "
                f"{task.name} labels assume {classes}. Prepare the version the benchmark names ({task.version})."
            )
    num_classes = task.num_classes or info.features["label"].num_classes
    image_of = task.image or (lambda example: example["image"])
    label_of = task.label or (lambda example: example["label"])

    def example(features):
        image = image_of(features)
        if image.shape[-1] == 1:
            image = tf.image.grayscale_to_rgb(image)
        return image, tf.cast(label_of(features), tf.int64)

    dataset = dataset.map(example, num_parallel_calls=tf.data.AUTOTUNE)
    try:
        num_examples = info.splits[split].num_examples
    except (KeyError, ValueError, TypeError):  # unknown under tfds.testing.mock_data, or never computed
        num_examples = int(dataset.cardinality())
        if num_examples < 0:
            num_examples = int(dataset.reduce(0, lambda count, _: count + 1))
    return data.Source(dataset, num_examples, num_classes), str(info.version)


def _check_split_sizes(task, info):
    """The benchmark cuts some splits at counts taken from TFDS' metadata: the data must have those counts."""
    for split, expected in SPLIT_SIZES.get(task.builder, {}).items():
        try:
            actual = info.splits[split].num_examples
        except (KeyError, ValueError, TypeError):
            continue  # no metadata (mock data)
        if actual and actual != expected:
            raise ValueError(
                f"{task.builder} version {info.version} has {actual} {split} examples; the benchmark's splits of {task.name} "
                f"are cut at counts of {expected}. Prepare the version the benchmark names ({task.version})."
            )


def _write_json(path, value):
    if not distribute.is_chief():  # multi-worker: worker 0 writes (--out on a file system all workers share)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with checkpoints.atomic_file(path, overwrite=True) as tmp, open(tmp, "w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")
