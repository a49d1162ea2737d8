"""A small segmentation head on BiT's feature pyramid, trained on synthetic shapes.

    python examples/segmentation_head.py --variant BiT-M-R50x1 --weights BiT-M-R50x1 --steps 200
    python examples/segmentation_head.py --variant R1-1-1-1x1 --weights none --steps 30   # a quick look, no download

`bit_keras.BiT(..., include_top=False, pyramid_outputs=True)` gives the maps
at strides 4, 8, 16 and 32 ("P2" to "P5"); a feature-pyramid head (1x1
projections, upsampled and summed from coarse to fine) predicts a class for
every pixel. The backbone is frozen here, so only the head learns; unfreeze it
(`backbone.trainable = True`) to fine-tune the whole network.
"""

import argparse

import bit_keras  # before keras: it quiets TensorFlow's start-up logs

# isort: split
import keras
import numpy as np

CLASSES = 3  # background, square, disc


def shapes(count, size, seed):
    """Images of one square and one disc on noise, with their per-pixel labels."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 80, (count, size, size, 3)).astype("float32")
    labels = np.zeros((count, size, size), "int32")
    rows, cols = np.mgrid[:size, :size]
    for i in range(count):
        side = rng.integers(size // 6, size // 3)
        top, left = rng.integers(0, size - side, 2)
        images[i, top : top + side, left : left + side, 0] += 170
        labels[i, top : top + side, left : left + side] = 1
        radius = rng.integers(size // 10, size // 5)
        cy, cx = rng.integers(radius, size - radius, 2)
        disc = (rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2
        images[i, disc, 2] += 170
        labels[i, disc] = 2
    return (np.clip(images, 0, 255) - 127.5) / 127.5, labels


def segmenter(backbone, size, width=64):
    """The backbone's pyramid, fused from P5 down to P2 and upsampled to the image: per-pixel logits."""
    images = keras.Input((size, size, 3))
    pyramid = backbone(images)
    x = keras.layers.Conv2D(width, 1)(pyramid["P5"])
    for level in ("P4", "P3", "P2"):
        x = keras.layers.UpSampling2D(2)(x)
        x = keras.layers.Add()([x, keras.layers.Conv2D(width, 1)(pyramid[level])])
        x = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(x)
    x = keras.layers.UpSampling2D(4, interpolation="bilinear")(x)
    return keras.Model(images, keras.layers.Conv2D(CLASSES, 1)(x))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="BiT-M-R50x1", help="e.g. BiT-M-R50x1, or R1-1-1-1x1 for a tiny model")
    parser.add_argument("--weights", default="BiT-M-R50x1", help="a release name, a checkpoint file, or 'none'")
    parser.add_argument("--size", type=int, default=64, help="image side, a multiple of 32")
    parser.add_argument("--steps", type=int, default=200, help="training steps of batch 16")
    args = parser.parse_args(argv)
    if args.size % 32:
        parser.error(f"--size must be a multiple of 32 (the pyramid's coarsest stride), got {args.size}.")

    weights = None if args.weights == "none" else args.weights
    backbone = bit_keras.BiT(args.variant, weights=weights, include_top=False, pyramid_outputs=True)
    backbone.trainable = False
    model = segmenter(backbone, args.size)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    train_images, train_labels = shapes(16 * args.steps, args.size, seed=0)
    test_images, test_labels = shapes(64, args.size, seed=1)
    model.fit(train_images, train_labels, batch_size=16, epochs=1, verbose=2)
    predicted = model.predict(test_images, verbose=0).argmax(-1)
    ious = [np.sum((predicted == c) & (test_labels == c)) / max(1, np.sum((predicted == c) | (test_labels == c))) for c in (1, 2)]
    print(f"[eval] pixel accuracy {np.mean(predicted == test_labels):.3f}, IoU square {ious[0]:.3f}, disc {ious[1]:.3f}")


if __name__ == "__main__":
    main()
