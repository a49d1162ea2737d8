"""Speed of the BiT-HyperRule training input, and start-up cost of `data.from_folder`.

Writes a folder of JPEGs the size of typical ILSVRC photos (500x375 by
default), then measures:

1. `data.from_folder` start-up: the seconds before the first batch can be
   asked for, against a full decode of every file one after another (what
   a start-up that checks every file would cost), in ms per file and
   extrapolated to ILSVRC-2012's 1.28M images.
2. Images per second of `data.train_pipeline` (decode JPEG, resize, random
   crop, flip, mixup, batch, prefetch) at the HyperRule's small (160 -> 128)
   and large (448 -> 384, official 512 -> 480) resolutions, with tf.data held
   to one thread (images/s per core) and with every core.

Compare the images/s with `benchmarks/bench_step.py`'s train step figures to
see whether the input feeds the model.

    python benchmarks/bench_input.py
    python benchmarks/bench_input.py --files 500 --batches 5    # quick
"""

import argparse
import os
import tempfile
import time

import harness
import numpy as np
import tensorflow as tf
from PIL import Image

from bit_keras import data

ILSVRC_TRAIN_IMAGES = 1_281_167
RESOLUTIONS = ((160, 128), (448, 384), (512, 480))


def write_jpegs(root, files, classes, size, seed=0):
    """`files` photo-like JPEGs (smooth colour fields plus noise) over `classes` folders."""
    rng = np.random.default_rng(seed)
    width, height = size
    for i in range(files):
        folder = os.path.join(root, f"class{i % classes:03d}")
        os.makedirs(folder, exist_ok=True)
        coarse = rng.integers(0, 256, (height // 25 + 1, width // 25 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
        pixels = np.asarray(image, np.int16) + rng.integers(-12, 13, (height, width, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(os.path.join(folder, f"{i:06d}.jpg"), quality=90)


def full_decode_seconds(paths):
    """The old start-up: every file decoded once, one after another."""
    start = time.perf_counter()
    for path in paths:
        tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    return time.perf_counter() - start


def pipeline_images_per_second(source, resize, crop, batch_size, batches, threads):
    dataset = data.train_pipeline(source, resize=resize, crop=crop, batch_size=batch_size, mixup_alpha=0.1, seed=0)
    if threads:
        options = tf.data.Options()
        options.threading.private_threadpool_size = threads
        options.threading.max_intra_op_parallelism = 1
        dataset = dataset.with_options(options)
    iterator = iter(dataset)
    for _ in range(3):  # warm-up: fill the shuffle buffer and the prefetch
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=4000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--photo_size", type=int, nargs=2, default=(500, 375), metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--decode_sample", type=int, default=500, help="files decoded to time the old full-decode start-up")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    lines = []
    with tempfile.TemporaryDirectory() as root:
        print(f"writing {args.files} JPEGs of {args.photo_size[0]}x{args.photo_size[1]} ...", flush=True)
        write_jpegs(root, args.files, args.classes, tuple(args.photo_size))

        start = time.perf_counter()
        source = data.from_folder(root, verify=False)  # headers only; verify=True costs the full decode below
        startup = time.perf_counter() - start
        paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)[: args.decode_sample]
        decode = full_decode_seconds(paths) / len(paths)
        print(
            f"\nfrom_folder start-up on {source.num_examples} files: {startup:.2f} s ({startup / args.files * 1e3:.3f} ms/file)"
        )
        print(
            f"  a full decode of every file (start-up with verify=True): {decode * 1e3:.2f} ms/file, "
            f"{decode * args.files:.1f} s here, {decode * ILSVRC_TRAIN_IMAGES / 60:.0f} min for ILSVRC-2012's 1.28M images on one core"
        )
        print(f"  header check extrapolated to 1.28M files: {startup / args.files * ILSVRC_TRAIN_IMAGES:.0f} s")
        lines.append(
            dict(
                kind="startup",
                files=args.files,
                seconds=round(startup, 3),
                ms_per_file=round(startup / args.files * 1e3, 4),
                full_decode_ms_per_file=round(decode * 1e3, 3),
            )
        )

        print(f"\ntrain_pipeline (decode, resize, crop, flip, mixup 0.1, batch {args.batch_size}, prefetch), {cores} cores:")
        print(f"{'resize -> crop':>16} {'img/s, 1 thread':>16} {'img/s, all cores':>17}")
        for resize, crop in RESOLUTIONS:
            one = pipeline_images_per_second(source, resize, crop, args.batch_size, args.batches, threads=1)
            every = pipeline_images_per_second(source, resize, crop, args.batch_size, args.batches, threads=None)
            print(f"{f'{resize} -> {crop}':>16} {one:>16.1f} {every:>17.1f}")
            lines.append(
                dict(
                    kind="pipeline",
                    resize=resize,
                    crop=crop,
                    batch_size=args.batch_size,
                    images_per_s_per_core=round(one, 2),
                    images_per_s_all_cores=round(every, 2),
                    cores=cores,
                )
            )
    harness.print_json_lines(lines)


if __name__ == "__main__":
    main()
