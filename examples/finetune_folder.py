"""Fine-tunes BiT on a folder of images with one sub-folder per class.

    python -m examples.finetune_folder --train_dir photos/train --test_dir photos/test --variant BiT-M-R50x1

Corrupt or unsupported files are skipped and counted; grayscale and RGBA are converted to RGB.
"""

from absl import app, flags

from bit_keras import data
from examples import common

flags.DEFINE_string("train_dir", None, "Training images, one sub-folder per class.", required=True)
flags.DEFINE_string("test_dir", None, "Evaluation images, the same sub-folders.")
common.define_model_flags()
FLAGS = flags.FLAGS


def main(argv):
    del argv
    train = data.from_folder(FLAGS.train_dir)
    print(f"[data] {train.num_examples} images in {train.num_classes} classes: {', '.join(train.class_names)}")
    test = data.from_folder(FLAGS.test_dir) if FLAGS.test_dir else None
    print(f"[model] {FLAGS.variant}, weights {FLAGS.weights}")
    tuner = common.make_tuner(train.num_classes)
    tuner.fit(train, validation_data=test)
    if test is not None:
        print(f"[eval] {tuner.evaluate(test, verbose=0)}")
    common.save(tuner.model)


if __name__ == "__main__":
    app.run(main)
