"""The `bit-keras` console command: demo, finetune, pretrain, export.

    bit-keras demo                                        # the transfer demo, under 5 minutes on a CPU
    bit-keras finetune --dataset oxford_flowers102 --variant BiT-M-R50x1
    bit-keras finetune --dataset photos/ --variant BiT-M-R50x1 --examples_per_class 5
    bit-keras pretrain --dataset imagenet2012 --variant BiT-S-R50x1 --strategy tpu --tpu my-tpu
    bit-keras export --variant BiT-M-R50x1 --weights BiT-M-R50x1.npz --out exported/m-r50x1

`bit-keras <command> --help` lists each command's flags. `finetune` and
`pretrain` end with one result line (dataset, variant, steps, top-1).

Example:

>>> main(["--version"])  # doctest: +ELLIPSIS
bit-keras ...
0
"""

import argparse
import sys

STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "tpu")
MIXED_PRECISION = ("mixed_bfloat16", "mixed_float16")


def main(argv=None):
    """Runs `bit-keras`; returns the exit status."""
    import bit_keras  # quiets TensorFlow's start-up logging first (bit_keras/_startup.py)
    from bit_keras import _startup

    parser = build_parser()
    args = parser.parse_args(argv)
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


def build_parser():
    """The parser of `bit-keras` and its sub-commands."""
    from bit_keras import demo
    from hub_export import __main__ as hub_export_cli

    parser = argparse.ArgumentParser(prog="bit-keras", description="Big Transfer (BiT) for Keras 3: " + __doc__.splitlines()[0])
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", title="commands", metavar="{demo,finetune,pretrain,export}")

    demo_parser = commands.add_parser(
        "demo", help="pre-train upstream, export, few-shot fine-tune, compare with scratch (digits, no download)"
    )
    demo.add_arguments(demo_parser)
    demo_parser.set_defaults(run=demo.run)

    finetune_parser = commands.add_parser(
        "finetune", help="fine-tune with the BiT-HyperRule on a TFDS dataset or an image folder"
    )
    add_data_flags(finetune_parser)
    finetune_parser.add_argument("--examples_per_class", type=int, help="few-shot: train on k examples per class")
    add_model_flags(finetune_parser, default_variant="BiT-M-R50x1", default_batch_size=512, lr_rule="0.003 x batch/512")
    finetune_parser.add_argument("--steps", type=int, help="override the HyperRule's number of steps (quick runs)")
    finetune_parser.add_argument("--sizes", type=_sizes, help="override the HyperRule's resize,crop (quick runs), e.g. 40,32")
    finetune_parser.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="random left-right flips (on, as the official code); --no-flip where a mirror image changes the label",
    )
    finetune_parser.add_argument(
        "--random_crop",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="random crops of the resized image (on, as the official code); --no-random_crop resizes to the crop size",
    )
    add_training_flags(finetune_parser)
    add_output_flags(finetune_parser)
    finetune_parser.set_defaults(run=run_finetune)

    pretrain_parser = commands.add_parser(
        "pretrain", help="pre-train upstream with the BiT-S/M recipe on a TFDS dataset or an image folder"
    )
    add_data_flags(pretrain_parser)
    add_model_flags(
        pretrain_parser,
        default_variant="BiT-S-R50x1",
        default_batch_size=4096,
        lr_rule="0.03 x batch/256",
        weights_help="'none' (fresh weights, the default) or weights to start from: a file or a SavedModel folder",
    )
    pretrain_parser.add_argument(
        "--weight_decay", type=float, default=1e-4, help="L2 weight decay added to the gradient (the recipe's is 1e-4)"
    )
    pretrain_parser.add_argument("--epochs", type=int, default=90, help="epochs; LR decays at 30/60/80 of 90 scale with them")
    pretrain_parser.add_argument("--steps", type=int, help="override --epochs with a number of steps (quick runs)")
    pretrain_parser.add_argument("--image_size", type=int, default=224, help="training resolution (the recipe's is 224)")
    add_training_flags(pretrain_parser)
    pretrain_parser.add_argument("--backup_every", type=int, help="steps between backups in --checkpoint_dir")
    add_output_flags(pretrain_parser)
    pretrain_parser.set_defaults(run=run_pretrain)

    export_parser = commands.add_parser(
        "export", help="write a BiT model as a TF-Hub-format SavedModel (as python -m hub_export)"
    )
    hub_export_cli.add_arguments(export_parser)
    export_parser.set_defaults(run=lambda args: hub_export_cli.run(hub_export_cli.check_args(export_parser, args)))
    return parser


# ------------------------------------------------------------------ shared flag groups


def add_data_flags(parser):
    parser.add_argument(
        "--dataset",
        required=True,
        help="a TFDS name (cifar10, cifar100, oxford_iiit_pet, oxford_flowers102, any image classification one) "
        "or a folder with one sub-folder of images per class",
    )
    parser.add_argument("--tfds_data_dir", help="where tensorflow-datasets keeps its data (its default when unset)")


def add_model_flags(parser, *, default_variant, default_batch_size, lr_rule, weights_help=None):
    parser.add_argument(
        "--variant", default=default_variant, help="e.g. BiT-M-R50x1, or R{u1}-{u2}-{u3}-{u4}x{width} for a custom size"
    )
    parser.add_argument(
        "--weights",
        default="release" if weights_help is None else "none",
        help=weights_help or "'release' (the variant's released checkpoint), 'none', a file or a SavedModel folder",
    )
    parser.add_argument("--batch_size", type=int, default=default_batch_size, help="global batch of one update")
    parser.add_argument(
        "--base_lr",
        type=float,
        help=f"the peak learning rate, used as given at any batch (as the official --base_lr); by default the recipe's {lr_rule}",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (weights, data order, augmentation, few-shot draw)")


def add_training_flags(parser):
    """Flags of the training engine; the examples/ scripts take them too."""
    parser.add_argument("--batch_split", type=int, default=1, help="accumulate gradients over this many micro-batches")
    parser.add_argument("--mixed_precision", choices=MIXED_PRECISION, help="train in bfloat16 (TPU, recent GPUs) or float16")
    parser.add_argument(
        "--strategy", choices=STRATEGIES, help="tf.distribute strategy; when unset, one device, or the TPU that --tpu names"
    )
    parser.add_argument("--tpu", help="TPU name or address for --strategy tpu (empty on a TPU VM)")
    parser.add_argument("--checkpoint_dir", help="back up here to resume after an interruption; keeps the best model")


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


def strategy_options(args):
    """`strategy=` / `tpu=` for a trainer, only when given: otherwise the trainer's own default."""
    options = {}
    if getattr(args, "strategy", None):
        options["strategy"] = args.strategy
    if getattr(args, "tpu", None) is not None:
        options["tpu"] = args.tpu
    return options


def weights_option(text):
    return None if text.lower() == "none" else text


# --------------------------------------------------------------------------- commands


def run_finetune(args):
    import bit_keras
    from bit_keras import finetune, tasks

    check_outputs(args)
    variant = bit_keras.get_variant(args.variant)
    weights = weights_option(args.weights)
    if weights == "release":  # refused before any data is read
        weights = finetune.release_name(variant)
    task = tasks.load(args.dataset, data_dir=args.tfds_data_dir, examples_per_class=args.examples_per_class, seed=args.seed)
    print(
        f"[data] {task.name}: {task.train.num_examples} training ({task.splits[0]}), {task.validation.num_examples} "
        f"validation ({task.splits[1]}), {task.test.num_examples} test ({task.splits[2]}) examples, {task.train.num_classes} classes"
    )
    tuner = bit_keras.BiTFineTuner(
        variant,
        weights=weights,
        num_classes=task.train.num_classes,
        batch_size=args.batch_size,
        base_lr=args.base_lr,
        batch_split=args.batch_split,
        mixed_precision=args.mixed_precision,
        checkpoint_dir=args.checkpoint_dir,
        seed=args.seed,
        steps=args.steps,
        sizes=args.sizes,
        flip=args.flip,
        random_crop=args.random_crop,
        **strategy_options(args),
    )
    print(f"[model] {variant.name}, weights from {tuner.model.weights_source or 'random initialisation'}")
    tuner.fit(task.train, validation_data=task.validation)
    top1 = tuner.evaluate(task.test, verbose=0)["accuracy"]
    write_outputs(tuner.model, args)
    print(f"result: dataset={task.name} variant={variant.name} steps={tuner.total_steps} top-1={top1:.4f}")
    return 0


def run_pretrain(args):
    import bit_keras
    from bit_keras import tasks

    check_outputs(args)
    task = tasks.load(args.dataset, data_dir=args.tfds_data_dir, seed=args.seed)
    print(
        f"[data] {task.name}: {task.train.num_examples} training ({task.splits[0]}) and {task.validation.num_examples} "
        f"validation ({task.splits[1]}) examples, {task.train.num_classes} classes"
    )
    variant = bit_keras.get_variant(args.variant)
    weights = weights_option(args.weights)
    print(f"[model] {variant.name}, {'fresh weights' if weights is None else 'weights ' + weights}")
    model_or_variant = variant if weights is None else bit_keras.BiT(variant, weights=weights, num_classes=task.train.num_classes)
    pretrainer = bit_keras.BiTPretrainer(
        model_or_variant,
        num_classes=task.train.num_classes,
        batch_size=args.batch_size,
        base_lr=args.base_lr,
        weight_decay=args.weight_decay,
        epochs=args.epochs,
        steps=args.steps,
        image_size=args.image_size,
        batch_split=args.batch_split,
        mixed_precision=args.mixed_precision,
        checkpoint_dir=args.checkpoint_dir,
        backup_every=args.backup_every,
        seed=args.seed,
        **strategy_options(args),
    )
    history = pretrainer.fit(task.train, validation_data=task.validation)
    del history
    top1 = _evaluate(pretrainer.model, task.validation, args.image_size, args.batch_size // args.batch_split)
    write_outputs(pretrainer.model, args)
    steps = pretrainer.schedule(task.train.num_examples).total_steps
    print(f"result: dataset={task.name} variant={variant.name} steps={steps} top-1={top1:.4f}")
    return 0


def _evaluate(model, source, image_size, batch_size):
    """Top-1 of `model` on `source` at `image_size` (the pre-training resolution)."""
    import keras

    from bit_keras import data

    correct = total = 0
    for images, labels in data.eval_pipeline(source, crop=image_size, batch_size=batch_size):
        logits = model.predict_on_batch(images)
        correct += int(keras.ops.sum(keras.ops.argmax(logits, -1) == keras.ops.argmax(labels, -1)))
        total += int(labels.shape[0])
    return correct / max(total, 1)


def write_outputs(model, args):
    """--save (.keras or .npz) and --export_dir (TF-Hub format, classification flavour)."""
    import bit_keras

    if args.save:
        save = bit_keras.save_official if args.save.endswith(".npz") else bit_keras.checkpoints.save_keras
        save(model, args.save, overwrite=args.overwrite)
        print(f"[save] wrote {args.save}")
    if args.export_dir:
        import hub_export

        hub_export.export(model, args.export_dir, flavor="classification", overwrite=args.overwrite)
        print(f"[export] wrote the TF-Hub-format SavedModel {args.export_dir} (images in [0, 1])")


def _sizes(text):
    try:
        resize, crop = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes takes resize,crop such as 40,32; got {text!r}.") from None
    return resize, crop


if __name__ == "__main__":
    sys.exit(main())
