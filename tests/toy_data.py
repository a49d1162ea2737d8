"""Small labelled image sets for training tests; imports nothing heavy, so worker processes can use it."""

import numpy as np


def colour_task(n=64, size=12, seed=0):
    """Two classes a tiny model separates quickly: reddish versus bluish noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.integers(0, 120, (n, size, size, 3))
    images[labels == 0, ..., 0] += 130
    images[labels == 1, ..., 2] += 130
    return images.astype("uint8"), labels
