"""The `bit-keras` console command: demo, finetune, pretrain, distill, reproduce, export.

    bit-keras demo                                        # the transfer demo, under 5 minutes on a CPU
    bit-keras finetune --dataset oxford_flowers102 --variant BiT-M-R50x1
    bit-keras finetune --dataset photos/ --variant BiT-M-R50x1 --examples_per_class 5
    bit-keras pretrain --dataset imagenet2012 --variant BiT-S-R50x1 --strategy tpu --tpu my-tpu
    bit-keras distill --dataset oxford_iiit_pet --teacher pets-r152x2.keras --student BiT-M-R50x1
    bit-keras reproduce vtab1k --variant BiT-M-R50x1     # the published tables: vtab1k, fewshot, paper
    bit-keras export --variant BiT-M-R50x1 --weights BiT-M-R50x1.npz --out exported/m-r50x1
    bit-keras export --weights finetuned.keras --flavor classification --format onnx --out model.onnx

`bit-keras <command> --help` lists each command's flags. `finetune`,
`pretrain` and `distill` end with one result line (dataset, variant, steps,
top-1; `distill` adds the teacher's top-1 and the agreement).

Example:

>>> main(["--version"])  # doctest: +ELLIPSIS
bit-keras ...
0
"""

import argparse
import dataclasses
import sys

import keras

import bit_keras
import hub_export
from bit_keras import _startup, config, data, demo, distill, distill_demo, finetune, hyperrule, pretrain, suites, tasks
from hub_export import __main__ as hub_export_cli


def main(argv=None):
    """Runs `bit-keras`; returns the exit status."""

    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}{_valued_switches(parser, argv, unknown)}")
    if args.version:
        print(f"bit-keras {bit_keras.__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    _startup.quiet_absl()
    try:
        return args.run(args)
    except (ValueError, FileExistsError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _valued_switches(parser, argv, unknown):
    """What to say of `unknown` arguments that are values given to flags taking none (`--flip false`)."""
    switches = {}  # option string -> its action, for flags that take no value, in every sub-command
    parsers = [parser]
    while parsers:
        for action in parsers.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            elif action.nargs == 0:
                switches.update(dict.fromkeys(action.option_strings, action))
    advice = []
    for flag, value in zip(argv, argv[1:]):
        if flag in switches and value in unknown and not value.startswith("-"):
            action = switches[flag]
            if isinstance(action, argparse.BooleanOptionalAction):
                on, off = action.option_strings
                advice.append(f"{flag} takes no value: {on} turns it on, {off} off")
            else:
                advice.append(f"{flag} takes no value: give it alone, or leave it out")
    return "; " + "; ".join(advice) if advice else ""


def build_parser():
    """The parser of `bit-keras` and its sub-commands."""
    parser = argparse.ArgumentParser(prog="bit-keras", description="Big Transfer (BiT) for Keras 3: " + __doc__.splitlines()[0])
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(
        dest="command", title="commands", metavar="{demo,finetune,pretrain,distill,reproduce,export}"
    )

    demo_parser = commands.add_parser(
        "demo",
        help="pre-train upstream on generated glyphs, export, few-shot fine-tune on the digits, compare with scratch (no download)",
    )
    demo.add_arguments(demo_parser)
    demo_parser.set_defaults(run=run_demo)

    finetune_parser = commands.add_parser(
        "finetune", help="fine-tune with the BiT-HyperRule on a TFDS dataset or an image folder"
    )
    add_data_flags(finetune_parser)
    finetune_parser.add_argument("--examples_per_class", type=int, help="few-shot: train on k examples per class")
    add_model_flags(finetune_parser, default_variant="BiT-M-R50x1")
    config.add_flags(finetune_parser, config.RunConfig, batch_size=hyperrule.REFERENCE_BATCH_SIZE, seed=0)
    config.add_flags(finetune_parser, config.FineTuneRecipe)
    add_output_flags(finetune_parser)
    finetune_parser.set_defaults(run=run_finetune)

    pretrain_parser = commands.add_parser(
        "pretrain", help="pre-train upstream with the BiT-S/M recipe on a TFDS dataset or an image folder"
    )
    add_data_flags(pretrain_parser)
    add_model_flags(
        pretrain_parser,
        default_variant="BiT-S-R50x1",
        weights_help="'none' (fresh weights, the default) or weights to start from: a file or a SavedModel folder",
    )
    config.add_flags(pretrain_parser, config.RunConfig, batch_size=pretrain.UPSTREAM_BATCH_SIZE, seed=0)
    config.add_flags(pretrain_parser, config.PretrainRecipe)
    add_output_flags(pretrain_parser)
    pretrain_parser.set_defaults(run=run_pretrain)

    distill_parser = commands.add_parser(
        "distill", help="distil a fine-tuned BiT teacher into a smaller BiT student (patient and consistent)"
    )
    add_data_flags(distill_parser)
    distill_parser.add_argument(
        "--teacher", required=True, help="the fine-tuned teacher: a .keras file, a checkpoint, a SavedModel or a release name"
    )
    distill_parser.add_argument("--student", default="BiT-M-R50x1", help="the student's variant, e.g. BiT-M-R50x1")
    distill_parser.add_argument(
        "--student_weights", default="release", help="'release' (the variant's released checkpoint), 'none' or a file"
    )
    config.add_flags(distill_parser, config.RunConfig, batch_size=distill.DISTILL_BATCH_SIZE, seed=0)
    config.add_flags(distill_parser, config.DistillRecipe)
    add_output_flags(distill_parser)
    distill_parser.set_defaults(run=run_distill)

    reproduce_parser = commands.add_parser(
        "reproduce", help="run a published table (vtab1k, fewshot, paper) and print it beside the published figures"
    )
    reproduce_parser.add_argument("suite", choices=sorted(suites.SUITES), help="the table to reproduce (docs/reproduce.md)")
    add_model_flags(reproduce_parser, default_variant="BiT-M-R50x1")
    config.add_flags(reproduce_parser, config.SuiteConfig)
    config.add_flags(reproduce_parser, config.RunConfig, batch_size=None, seed=0)  # no batch: the suite's protocol's
    config.add_flags(reproduce_parser, config.FineTuneRecipe, skip=REPRODUCE_PROTOCOL)
    reproduce_parser.set_defaults(run=run_reproduce)

    export_parser = commands.add_parser(
        "export",
        help="write a BiT model as a TF-Hub-format SavedModel, or --format saved_model/onnx/litert/openvino (as python -m hub_export)",
    )
    hub_export_cli.add_arguments(export_parser)
    export_parser.set_defaults(run=lambda args: hub_export_cli.run(hub_export_cli.check_args(export_parser, args)))
    return parser


# ------------------------------------------------------------------ shared flag groups

# FineTuneRecipe fields each suite task sets itself (flips and crops where they keep the label; fresh heads).
REPRODUCE_PROTOCOL = ("flip", "random_crop", "freeze", "zero_head")


def add_data_flags(parser):
    parser.add_argument(
        "--dataset",
        required=True,
        help="a TFDS name (cifar10, cifar100, oxford_iiit_pet, oxford_flowers102, any image classification one) "
        "or a folder with one sub-folder of images per class",
    )
    parser.add_argument("--tfds_data_dir", help="where tensorflow-datasets keeps its data (its default when unset)")


def add_model_flags(parser, *, default_variant, weights_help=None):
    parser.add_argument(
        "--variant",
        default=default_variant,
        help="e.g. BiT-M-R50x1, R{u1}-{u2}-{u3}-{u4}x{width} for a custom size, or auto to read it from --weights",
    )
    parser.add_argument(
        "--weights",
        default="release" if weights_help is None else "none",
        help=weights_help or "'release' (the variant's released checkpoint), 'none', a file or a SavedModel folder",
    )


def add_output_flags(parser):
    parser.add_argument("--save", help="write the trained model: a .keras file, or .npz in the official layout")
    parser.add_argument("--export_dir", help="write the trained model as a TF-Hub-format SavedModel folder")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --save file or --export_dir folder")


def check_outputs(args):
    """Refuses, before any training, the outputs that could not be written after it."""
    import os

    outputs = []
    if args.save:
        if not args.save.endswith((".keras", ".npz")):
            raise ValueError(f"--save {args.save}: use a .keras file, or .npz for the official checkpoint layout.")
        outputs.append(("--save", args.save))
    if args.export_dir:
        outputs.append(("--export_dir", args.export_dir))
    for flag, path in outputs:
        if os.path.lexists(path) and not args.overwrite:
            raise FileExistsError(f"{flag} {path} already exists; pass --overwrite to replace it, or choose another path.")
        folder = os.path.dirname(os.path.abspath(path))
        while not os.path.exists(folder):  # the writer creates missing folders: the nearest existing one must take them
            folder = os.path.dirname(folder)
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
            raise ValueError(f"{flag} {path}: {folder} is not a writable folder. Choose a path in a writable folder.")


def weights_option(text):
    return None if text.lower() == "none" else text


def variant_option(text, weights):
    """The `Variant` that --variant names, or "auto" (read from --weights, which must then name a checkpoint)."""
    if text != "auto":
        return bit_keras.get_variant(text)
    if weights in (None, "release"):
        raise ValueError(
            f"--variant auto reads the architecture from --weights, so --weights must be a checkpoint file, folder "
            f"or release name, not {weights or 'none'!r}. Name the variant instead, e.g. --variant BiT-M-R50x1."
        )
    return text


# --------------------------------------------------------------------------- commands


def run_demo(args):
    if args.distill:
        demo.check_flags(args)
        return distill_demo.run(args)
    return demo.run(args)


def run_finetune(args):
    check_outputs(args)
    recipe, run = config.from_flags(args, config.FineTuneRecipe), config.from_flags(args, config.RunConfig)
    weights = weights_option(args.weights)
    variant = variant_option(args.variant, weights)
    if weights == "release":  # refused before any data is read
        weights = finetune.release_name(variant)
    task = tasks.load(args.dataset, data_dir=args.tfds_data_dir, examples_per_class=args.examples_per_class, seed=args.seed)
    print(
        f"[data] {task.name}: {task.train.num_examples} training ({task.splits[0]}), {task.validation.num_examples} "
        f"validation ({task.splits[1]}), {task.test.num_examples} test ({task.splits[2]}) examples, {task.train.num_classes} classes"
    )
    tuner = bit_keras.BiTFineTuner(variant, recipe, run, weights=weights, num_classes=task.train.num_classes)
    print(f"[model] {tuner.model.name}, weights from {tuner.model.weights_source or 'random initialisation'}")
    tuner.fit(task.train, validation_data=task.validation)
    top1 = tuner.evaluate(task.test, verbose=0)["accuracy"]
    write_outputs(tuner.model, args)
    print(f"result: dataset={task.name} variant={tuner.model.name} steps={tuner.total_steps} top-1={top1:.4f}")
    return 0


def run_pretrain(args):
    check_outputs(args)
    recipe, run = config.from_flags(args, config.PretrainRecipe), config.from_flags(args, config.RunConfig)
    task = tasks.load(args.dataset, data_dir=args.tfds_data_dir, seed=args.seed)
    print(
        f"[data] {task.name}: {task.train.num_examples} training ({task.splits[0]}) and {task.validation.num_examples} "
        f"validation ({task.splits[1]}) examples, {task.train.num_classes} classes"
    )
    weights = weights_option(args.weights)
    variant = variant_option(args.variant, weights)
    print(f"[model] {args.variant}, {'fresh weights' if weights is None else 'weights ' + weights}")
    model_or_variant = variant if weights is None else bit_keras.BiT(variant, weights=weights, num_classes=task.train.num_classes)
    pretrainer = bit_keras.BiTPretrainer(model_or_variant, recipe, run, num_classes=task.train.num_classes)
    pretrainer.fit(task.train, validation_data=task.validation)
    top1 = _evaluate(pretrainer.model, task.validation, recipe.image_size, pretrainer.engine.micro_batch)
    write_outputs(pretrainer.model, args)
    steps = pretrainer.schedule(task.train.num_examples).total_steps
    print(f"result: dataset={task.name} variant={pretrainer.model.name} steps={steps} top-1={top1:.4f}")
    return 0


def run_distill(args):
    check_outputs(args)
    recipe, run = config.from_flags(args, config.DistillRecipe), config.from_flags(args, config.RunConfig)
    student_weights = weights_option(args.student_weights)
    student = bit_keras.get_variant(args.student)
    if student_weights == "release":  # refused before any data is read
        student_weights = finetune.release_name(student)
    task = tasks.load(args.dataset, data_dir=args.tfds_data_dir, seed=args.seed)
    print(
        f"[data] {task.name}: {task.train.num_examples} training ({task.splits[0]}), {task.validation.num_examples} "
        f"validation ({task.splits[1]}), {task.test.num_examples} test ({task.splits[2]}) examples, {task.train.num_classes} classes"
    )
    distiller = distill.BiTDistiller(args.teacher, student, recipe, run, student_weights=student_weights)
    if distiller.num_classes != task.train.num_classes:
        raise ValueError(
            f"--teacher {args.teacher} has {distiller.num_classes} classes but {task.name} has {task.train.num_classes}: "
            f"the teacher must be fine-tuned on the task first (bit-keras finetune ... --save teacher.keras)."
        )
    print(
        f"[model] teacher {distiller.teacher.name} from {args.teacher}; student {distiller.student.name}, weights from "
        f"{distiller.student.weights_source or 'random initialisation'}"
    )
    distiller.fit(task.train, validation_data=task.validation)
    results = distiller.evaluate(task.test, verbose=0)
    write_outputs(distiller.student, args)
    steps = distiller.schedule(task.train.num_examples).total_steps
    print(
        f"result: dataset={task.name} variant={distiller.student.name} steps={steps} top-1={results['accuracy']:.4f} "
        f"teacher_top-1={results['teacher_accuracy']:.4f} agreement={results['agreement']:.4f}"
    )
    return 0


def run_reproduce(args):
    settings = config.from_flags(args, config.SuiteConfig)
    run = {field.name: getattr(args, field.name) for field in dataclasses.fields(config.RunConfig)}
    recipe = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(config.FineTuneRecipe)
        if field.name not in REPRODUCE_PROTOCOL
    }
    weights = weights_option(args.weights)
    if settings.evaluate_released and weights != "release":
        raise ValueError("--evaluate_released evaluates the released per-task models; leave out --weights.")
    variant = variant_option(args.variant, weights)
    suites.reproduce(args.suite, variant, weights=weights, settings=settings, run=run, recipe=recipe)
    return 0


def _evaluate(model, source, image_size, batch_size):
    """Top-1 of `model` on `source` at `image_size` (the pre-training resolution)."""
    correct = total = 0
    for images, labels in data.eval_pipeline(source, crop=image_size, batch_size=batch_size):
        logits = model.predict_on_batch(images)
        correct += int(keras.ops.sum(keras.ops.argmax(logits, -1) == keras.ops.argmax(labels, -1)))
        total += int(labels.shape[0])
    return correct / max(total, 1)


def write_outputs(model, args):
    """--save (.keras or .npz) and --export_dir (TF-Hub format, classification flavour)."""
    if args.save:
        save = bit_keras.save_official if args.save.endswith(".npz") else bit_keras.checkpoints.save_keras
        save(model, args.save, overwrite=args.overwrite)
        print(f"[save] wrote {args.save}")
    if args.export_dir:
        hub_export.export(model, args.export_dir, flavor="classification", overwrite=args.overwrite)
        print(f"[export] wrote the TF-Hub-format SavedModel {args.export_dir} (images in [0, 1])")


if __name__ == "__main__":
    sys.exit(main())
