"""Fine-tunes BiT on a tensorflow-datasets task with the BiT-HyperRule.

    python examples/finetune_tfds.py --dataset cifar10 --variant BiT-M-R50x1 --weights BiT-M-R50x1.npz
    python examples/finetune_tfds.py --dataset oxford_iiit_pet --batch_split 8
    python examples/finetune_tfds.py --dataset oxford_flowers102 --examples_per_class 5 --strategy tpu --tpu my-tpu

Splits as the official release: CIFAR trains on train[:98%], validates on
train[98%:] and reports on test; other datasets use their own validation and
test splits (`bit_keras.tasks`). tensorflow-datasets downloads the data on
first use. `bit-keras finetune` does the same with every flag.
"""

import argparse

import bit_keras
from bit_keras import config, tasks


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="cifar10", help="cifar10, cifar100, oxford_iiit_pet, oxford_flowers102, ...")
    parser.add_argument("--examples_per_class", type=int, help="few-shot: train on k examples per class")
    parser.add_argument("--variant", default="BiT-M-R50x1")
    parser.add_argument("--weights", default="release", help="'release', 'none', or a checkpoint file")
    parser.add_argument("--save", help="write the fine-tuned model: .keras, or .npz (official layout)")
    config.add_flags(parser, config.RunConfig, seed=0)  # --batch_size, --batch_split, --strategy, --tpu, ...
    config.add_flags(parser, config.FineTuneRecipe)  # --base_lr, --steps, --sizes, --flip, ...
    args = parser.parse_args(argv)

    task = tasks.load(args.dataset, examples_per_class=args.examples_per_class, seed=args.seed)
    print(
        f"[data] {task.name}: {task.train.num_examples} training, {task.test.num_examples} test examples, {task.train.num_classes} classes"
    )
    tuner = bit_keras.BiTFineTuner(
        args.variant,
        config.from_flags(args, config.FineTuneRecipe),
        config.from_flags(args, config.RunConfig),
        weights=None if args.weights == "none" else args.weights,
        num_classes=task.train.num_classes,
    )
    tuner.fit(task.train, validation_data=task.validation)
    print(f"[eval] test top-1 {tuner.evaluate(task.test, verbose=0)['accuracy']:.4f}")
    if args.save:
        save = bit_keras.save_official if args.save.endswith(".npz") else bit_keras.checkpoints.save_keras
        save(tuner.model, args.save)
        print(f"[save] wrote {args.save}")


if __name__ == "__main__":
    main()
