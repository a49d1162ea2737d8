"""Throughput of a BiT-R50x1 against a peer measured in the same run.

The peer is Keras' own `keras.applications.ResNet50V2`: the same pre-activation
ResNet-50 depth with BatchNorm and plain convolutions, so the ratio is the cost
of GroupNorm + Weight Standardisation as implemented here, on this backend and
machine. Reports images/second for inference and for a training step.

    python benchmarks/throughput.py --image_size 128 --batch_size 16
    KERAS_BACKEND=jax python benchmarks/throughput.py
"""

import argparse
import time

import keras
import numpy as np

import bit_keras


def images_per_second(step, batch, repeats):
    step(batch)  # compile / trace
    start = time.perf_counter()
    for _ in range(repeats):
        step(batch)
    return repeats * len(batch[0]) / (time.perf_counter() - start)


def measure(model, batch, repeats):
    model.compile(optimizer=keras.optimizers.SGD(0.001, momentum=0.9), loss=keras.losses.CategoricalCrossentropy(from_logits=True), jit_compile="auto")
    infer = images_per_second(lambda b: model.predict_on_batch(b[0]), batch, repeats)
    train = images_per_second(lambda b: model.train_on_batch(*b), batch, repeats)
    return infer, train


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--num_classes", type=int, default=10)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (args.batch_size, args.image_size, args.image_size, 3)).astype("float32")
    y = np.eye(args.num_classes, dtype="float32")[rng.integers(0, args.num_classes, args.batch_size)]
    shape = (args.image_size, args.image_size, 3)
    candidates = {
        "bit_keras BiT-R50x1": bit_keras.BiT("BiT-M-R50x1", num_classes=args.num_classes, input_shape=shape),
        "keras ResNet50V2 (peer)": keras.applications.ResNet50V2(
            weights=None, input_shape=shape, classes=args.num_classes, classifier_activation=None
        ),
    }
    print(f"backend {keras.backend.backend()}, {args.batch_size} x {args.image_size}px, {args.repeats} repeats")
    results = {name: measure(model, (x, y), args.repeats) for name, model in candidates.items()}
    for name, (infer, train) in results.items():
        print(f"  {name:<26} inference {infer:8.1f} img/s   train {train:8.1f} img/s")
    (bit_infer, bit_train), (peer_infer, peer_train) = results.values()
    print(f"  ratio bit_keras / peer      inference {bit_infer / peer_infer:.2f}x   train {bit_train / peer_train:.2f}x")


if __name__ == "__main__":
    main()
