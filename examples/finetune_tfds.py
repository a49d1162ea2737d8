"""Fine-tunes BiT on a tensorflow-datasets task with the BiT-HyperRule.

    python -m examples.finetune_tfds --dataset cifar10 --variant BiT-M-R50x1 --weights BiT-M-R50x1.npz
    python -m examples.finetune_tfds --dataset oxford_iiit_pet --batch_split 8
    python -m examples.finetune_tfds --dataset oxford_flowers102 --examples_per_class 5

The datasets are downloaded by tensorflow-datasets on first use.
"""

from absl import app, flags

from bit_keras import data
from examples import common

# TFDS name -> (train split, evaluation split)
DATASETS = {
    "cifar10": ("train", "test"),
    "cifar100": ("train", "test"),
    "oxford_iiit_pet": ("train", "test"),
    "oxford_flowers102": ("train", "test"),
}

flags.DEFINE_enum("dataset", "cifar10", sorted(DATASETS), "The downstream task.")
flags.DEFINE_string("data_dir", None, "tensorflow-datasets data folder.")
flags.DEFINE_integer("examples_per_class", None, "Few-shot: train on this many examples per class.")
common.define_model_flags()
FLAGS = flags.FLAGS


def main(argv):
    del argv
    train_split, test_split = DATASETS[FLAGS.dataset]
    print(f"[data] loading {FLAGS.dataset} ({train_split} / {test_split})")
    train = data.from_tfds(FLAGS.dataset, train_split, data_dir=FLAGS.data_dir)
    test = data.from_tfds(FLAGS.dataset, test_split, data_dir=FLAGS.data_dir)
    if FLAGS.examples_per_class:
        train = data.few_shot(train, FLAGS.examples_per_class, seed=FLAGS.seed)
    print(f"[data] {train.num_examples} training and {test.num_examples} test examples, {train.num_classes} classes")
    print(f"[model] {FLAGS.variant}, weights {FLAGS.weights}")
    tuner = common.make_tuner(train.num_classes)
    tuner.fit(train, validation_data=test)
    print(f"[eval] {tuner.evaluate(test, verbose=0)}")
    common.save(tuner.model)


if __name__ == "__main__":
    app.run(main)
