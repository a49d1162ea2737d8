"""Fine-tunes BiT on a folder of images with one sub-folder per class.

    python examples/finetune_folder.py --train_dir photos/train --test_dir photos/test --variant BiT-M-R50x1

Corrupt or unsupported files are skipped and counted; grayscale and RGBA images
become RGB. `bit-keras finetune --dataset photos/` does the same with every flag.
"""

import argparse

import bit_keras
from bit_keras import data


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train_dir", required=True, help="training images, one sub-folder per class")
    parser.add_argument("--test_dir", help="evaluation images, the same sub-folders")
    parser.add_argument("--variant", default="BiT-M-R50x1", help="e.g. BiT-M-R50x1, or R1-1-1-1x1 for a tiny model")
    parser.add_argument("--weights", default="release", help="'release', 'none', or a checkpoint file")
    parser.add_argument("--batch_size", type=int, default=512)
    parser.add_argument("--batch_split", type=int, default=1, help="micro-batches per update, to fit in memory")
    parser.add_argument("--base_lr", type=float, help="peak LR as given; by default the HyperRule's 0.003 x batch/512")
    parser.add_argument("--steps", type=int, help="override the HyperRule's steps (quick runs)")
    parser.add_argument("--sizes", help="override the HyperRule's resize,crop (quick runs), e.g. 40,32")
    parser.add_argument("--strategy", help="auto, default, mirrored, multi_worker or tpu (the tuner's default: auto)")
    parser.add_argument("--tpu", help="TPU name or address, with --strategy tpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    train = data.from_folder(args.train_dir)
    print(f"[data] {train.num_examples} images in {train.num_classes} classes: {', '.join(train.class_names)}")
    test = data.from_folder(args.test_dir) if args.test_dir else None
    distribution = {key: value for key, value in (("strategy", args.strategy), ("tpu", args.tpu)) if value is not None}
    tuner = bit_keras.BiTFineTuner(
        args.variant,
        weights=None if args.weights == "none" else args.weights,
        num_classes=train.num_classes,
        batch_size=args.batch_size,
        batch_split=args.batch_split,
        base_lr=args.base_lr,
        steps=args.steps,
        sizes=tuple(int(s) for s in args.sizes.split(",")) if args.sizes else None,
        seed=args.seed,
        **distribution,
    )
    tuner.fit(train, validation_data=test)
    if test is not None:
        print(f"[eval] test top-1 {tuner.evaluate(test, verbose=0)['accuracy']:.4f}")


if __name__ == "__main__":
    main()
