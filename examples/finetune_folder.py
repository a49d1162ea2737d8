"""Fine-tunes BiT on a folder of images with one sub-folder per class.

    python examples/finetune_folder.py --train_dir photos/train --test_dir photos/test --variant BiT-M-R50x1

Corrupt or unsupported files are skipped and counted; grayscale and RGBA images
become RGB. `bit-keras finetune --dataset photos/` does the same with every flag.
"""

import argparse

import bit_keras
from bit_keras import config, data


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train_dir", required=True, help="training images, one sub-folder per class")
    parser.add_argument("--test_dir", help="evaluation images, the same sub-folders")
    parser.add_argument("--variant", default="BiT-M-R50x1", help="e.g. BiT-M-R50x1, or R1-1-1-1x1 for a tiny model")
    parser.add_argument("--weights", default="release", help="'release', 'none', or a checkpoint file")
    config.add_flags(parser, config.RunConfig, seed=0)  # --batch_size, --batch_split, --strategy, --tpu, ...
    config.add_flags(parser, config.FineTuneRecipe)  # --base_lr, --steps, --sizes, --flip, ...
    args = parser.parse_args(argv)

    train = data.from_folder(args.train_dir)
    print(f"[data] {train.num_examples} images in {train.num_classes} classes: {', '.join(train.class_names)}")
    test = data.from_folder(args.test_dir) if args.test_dir else None
    tuner = bit_keras.BiTFineTuner(
        args.variant,
        config.from_flags(args, config.FineTuneRecipe),
        config.from_flags(args, config.RunConfig),
        weights=None if args.weights == "none" else args.weights,
        num_classes=train.num_classes,
    )
    tuner.fit(train, validation_data=test)
    if test is not None:
        print(f"[eval] test top-1 {tuner.evaluate(test, verbose=0)['accuracy']:.4f}")


if __name__ == "__main__":
    main()
