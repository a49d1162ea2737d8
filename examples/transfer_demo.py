"""The embedded demo: fine-tune a BiT with the HyperRule on scikit-learn's digits.

    python -m examples.transfer_demo      # a tiny BiT, a short run, about a minute on 2 CPU cores
    python -m examples.transfer_demo --variant BiT-M-R50x1 --weights BiT-M-R50x1.npz \
        --batch_size 512 --base_lr 0.003 --steps 0 --sizes ''

The digits (1,797 8x8 grayscale images of 10 classes) ship with scikit-learn,
so the demo needs no download. The default run overrides the HyperRule's
length and resolution so that it finishes quickly on a CPU; with a pretrained
checkpoint and the overrides removed it is the full BiT recipe.
"""

import numpy as np
from absl import app, flags

from bit_keras import data
from examples import common

common.define_model_flags(default_variant="tiny")
flags.FLAGS.set_default("batch_size", 64)
flags.FLAGS.set_default("steps", 150)
flags.FLAGS.set_default("sizes", ["40", "32"])
flags.FLAGS.set_default("base_lr", 0.1)  # a model trained from scratch needs more than the HyperRule's 0.003
FLAGS = flags.FLAGS


def digits():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images * (255.0 / 16.0)).astype("uint8")  # 0..16 gray levels -> 0..255
    order = np.random.default_rng(0).permutation(len(images))
    split = len(images) * 4 // 5
    train, test = order[:split], order[split:]
    return data.from_arrays(images[train], bunch.target[train]), data.from_arrays(images[test], bunch.target[test])


def main(argv):
    del argv
    train, test = digits()
    print(f"[data] scikit-learn digits: {train.num_examples} training and {test.num_examples} test images, 10 classes")
    tuner = common.make_tuner(train.num_classes)
    print(f"[model] {tuner.model.name}: {tuner.model.count_params():,} parameters")
    tuner.fit(train, validation_data=test)
    result = tuner.evaluate(test, verbose=0)
    print(f"[eval] test accuracy {result['accuracy']:.3f} (chance 0.100)")
    common.save(tuner.model)


if __name__ == "__main__":
    app.run(main)
