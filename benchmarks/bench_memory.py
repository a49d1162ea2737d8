"""Memory that a long process keeps from every model it builds: BiT against Keras' ResNet50V2, in one run.

Each contender runs in a process of its own, one after the other, a loop of
`--cycles` cycles as a user's long process (a suite, a demo, a notebook)
runs them: build the model (random weights, 10 classes), predict two
64x64 images, compile with SGD, fit one step, then `del`,
`gc.collect()` and `keras.backend.clear_session()`. The resident memory
(RSS) after each cycle is printed, and the growth per cycle: (last - first)
/ (cycles - 1), what each further model leaves behind.

Contenders:

    bit_keras          bit_keras.BiT(--variant)
    keras/resnet50v2   keras.applications.ResNet50V2 (BatchNorm), the same loop
    bit_keras/vtab1k   not a loop of the above: `bit_keras.suites.reproduce("vtab1k")` in full
                       (19 tasks x --suite_runs runs, each a BiTFineTuner fit and evaluate) with
                       --suite_variant on TFDS mock data; a "cycle" is one fine-tuning run, and its
                       figure is the process's peak RSS once that run (evaluation included) is
                       done (only when named in --contenders)

    python benchmarks/bench_memory.py                          # BiT-M-R50x1 and ResNet50V2, 6 cycles
    python benchmarks/bench_memory.py --variant R1-1-1-1x1 --cycles 4
    python benchmarks/bench_memory.py --contenders bit_keras/vtab1k

Prints a table, then one JSON line per cycle (`"kind": "cycle"`) and per
contender (`"kind": "summary"`: growth per cycle, and for the suite the
peak over the first run's).
"""

import argparse
import gc
import sys
import tempfile

import harness

CONTENDERS = {"bit_keras": "tensorflow", "keras/resnet50v2": "tensorflow", "bit_keras/vtab1k": "tensorflow"}
DEFAULT_CONTENDERS = ["bit_keras", "keras/resnet50v2"]
IMAGE_SIZE = 64
NUM_CLASSES = 10


# ----------------------------------------------------------------- worker side


def _model_loop(args):
    import numpy as np

    if args.worker == "bit_keras":
        import bit_keras  # first, as a user imports it: it sets TensorFlow's start-up options

        build = lambda: bit_keras.BiT(args.variant, weights=None, num_classes=NUM_CLASSES)
    import keras

    if args.worker == "keras/resnet50v2":
        build = lambda: keras.applications.ResNet50V2(weights=None, classes=NUM_CLASSES, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (2, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
    labels = np.eye(NUM_CLASSES, dtype="float32")[[1, 2]]
    for cycle in range(1, args.cycles + 1):
        model = build()
        model.predict(images, verbose=0)
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="categorical_crossentropy")
        model.fit(images, labels, epochs=1, verbose=0)
        del model
        gc.collect()
        keras.backend.clear_session()
        gc.collect()
        harness.say(status="cycle", cycle=cycle, rss_mb=round(harness.rss_mb(), 1))


def _suite(args):
    import bit_keras  # first, as a user imports it: it sets TensorFlow's start-up options

    # isort: split
    import keras
    import tensorflow_datasets as tfds

    class RunEnd(keras.callbacks.Callback):
        """Reports the peak so far when the next run starts (the previous one evaluated by then)."""

        runs = 0

        def on_train_begin(self, logs=None):
            if RunEnd.runs:
                harness.say(status="cycle", cycle=RunEnd.runs, rss_mb=round(harness.peak_rss_mb(), 1))
            RunEnd.runs += 1

    _constant_mock_shapes()
    with tempfile.TemporaryDirectory() as out, tfds.testing.mock_data(num_examples=args.suite_examples):
        bit_keras.suites.reproduce(
            "vtab1k",
            args.suite_variant,
            weights=None,
            settings=bit_keras.config.SuiteConfig(out=out, runs=args.suite_runs),
            run={"batch_size": 4},
            recipe={"steps": args.suite_steps, "sizes": (20, 16)},
            callbacks=[RunEnd()],
            verbose=0,
        )
    harness.say(status="cycle", cycle=RunEnd.runs, rss_mb=round(harness.peak_rss_mb(), 1))


def _constant_mock_shapes():
    """TFDS' mock data with every unknown dimension 10 long, not 5 to 49.

    CLEVR-count's label is the number of objects less 3 (8 classes): the
    mock's random sequence lengths make labels up to 46, which the fine-tuner
    rightly refuses. With 10 objects every label is a class.
    """
    from tensorflow_datasets.testing import mocking

    make = mocking.RandomFakeGenerator.__init__
    mocking.RandomFakeGenerator.__init__ = lambda self, *a, **k: make(self, *a, **{**k, "constant_dynamic_shape": True})


def worker(args):
    try:
        (_suite if args.worker == "bit_keras/vtab1k" else _model_loop)(args)
    except ImportError as error:
        harness.say(status="absent", reason=f"{type(error).__name__}: {error}")
        return
    harness.say(status="done")


# ------------------------------------------------------------ coordinator side


def _describe(name, args):
    if name == "bit_keras/vtab1k":
        return (
            f"reproduce vtab1k, {args.suite_variant}, {args.suite_runs} run(s) per task of {args.suite_steps} updates, "
            "peak RSS after each run"
        )
    model = args.variant if name == "bit_keras" else "ResNet50V2"
    return f"{model}, {args.cycles} cycles, RSS after each"


def coordinate(args, passthrough):
    names = args.contenders.split(",") if args.contenders else DEFAULT_CONTENDERS
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown:
        sys.exit(f"Unknown contenders {unknown}; choose from {', '.join(CONTENDERS)}.")
    print(f"bench_memory: {', '.join(names)}; python {sys.version.split()[0]}", flush=True)
    readings, json_lines = {}, []
    for name in names:  # one at a time: no contender's memory or compilation presses on another's
        contender = harness.Contender(__file__, name, passthrough, backend=CONTENDERS[name])
        print(f"  {name}: {_describe(name, args)}", flush=True)
        values = []
        while True:
            message = contender.receive(args.timeout)
            if message["status"] == "cycle":
                values.append(message["rss_mb"])
                print(f"    cycle {message['cycle']}: {message['rss_mb']:.0f} MB", flush=True)
                json_lines.append(dict(kind="cycle", contender=name, cycle=message["cycle"], rss_mb=message["rss_mb"]))
                continue
            if message["status"] != "done":
                print(f"  {message['status']} {name}: {message['reason']}", flush=True)
                json_lines.append(dict(kind="absent", contender=name, reason=message["reason"]))
            break
        contender.stop()
        if len(values) >= 2 and message["status"] == "done":
            readings[name] = values

    print()
    print(f"{'contender':<20} {'first MB':>9} {'last MB':>9} {'growth/cycle MB':>16} {'vs keras':>9} {'last/first':>11}")
    keras_growth = _growth(readings["keras/resnet50v2"]) if "keras/resnet50v2" in readings else None
    for name, values in readings.items():
        growth = _growth(values)
        versus = growth / keras_growth if keras_growth and name != "keras/resnet50v2" else None
        versus_cell = f"{versus:.2f}x" if versus is not None else "-"
        print(
            f"{name:<20} {values[0]:>9.0f} {values[-1]:>9.0f} {growth:>16.1f} {versus_cell:>9} {values[-1] / values[0]:>10.2f}x"
        )
        json_lines.append(
            dict(
                kind="summary",
                contender=name,
                description=_describe(name, args),
                cycles=len(values),
                first_mb=values[0],
                last_mb=values[-1],
                growth_per_cycle_mb=round(growth, 1),
                growth_vs_keras=None if versus is None else round(versus, 3),
                last_over_first=round(values[-1] / values[0], 3),
            )
        )
    print("(growth per cycle: (last - first) / (cycles - 1); for bit_keras/vtab1k the readings are peak RSS)")
    harness.print_json_lines(json_lines)
    return 0 if readings else 1


def _growth(values):
    return (values[-1] - values[0]) / (len(values) - 1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="BiT-M-R50x1", help="any bit_keras variant name, e.g. R1-1-1-1x1")
    parser.add_argument("--cycles", type=int, default=6)
    parser.add_argument("--contenders", default="", help=f"comma-separated subset of: {', '.join(CONTENDERS)}")
    parser.add_argument("--suite_variant", default="R1-1-1-1x1", help="the model of bit_keras/vtab1k's runs")
    parser.add_argument("--suite_runs", type=int, default=3, help="runs per task of bit_keras/vtab1k (VTAB-1k: 3)")
    parser.add_argument("--suite_examples", type=int, default=8, help="examples in every mock TFDS split")
    parser.add_argument(
        "--suite_steps", type=int, default=100, help="updates per run; 100 and more take the trainers' long-run path"
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds a cycle may take")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cycles < 2:
        parser.error("--cycles must be at least 2: the growth per cycle compares the first and the last")
    if args.worker:
        return worker(args)
    return coordinate(args, harness.passthrough(args))


if __name__ == "__main__":
    sys.exit(main())
