"""The one input scaling of BiT models: pixels to [-1, 1].

Every path into a model calls it: the training and evaluation pipelines, the
fine-tuner's `predict`, and the exported TF-Hub modules (which take [0, 1] by
default). It is plain arithmetic, so it works on NumPy arrays, tf.data
tensors and every backend's arrays alike.

>>> import numpy as np
>>> to_model_range(np.array([0.0, 127.5, 255.0]))
array([-1.,  0.,  1.])
>>> to_model_range(np.array([0.0, 0.5, 1.0]), input_range=(0, 1))
array([-1.,  0.,  1.])
"""

PIXEL_RANGE = (0, 255)


def to_model_range(images, input_range=PIXEL_RANGE):
    """`images` with values in `input_range` (float), mapped linearly to [-1, 1]: (x - 127.5) / 127.5 for pixels."""
    low, high = input_range
    center, half = (low + high) / 2, (high - low) / 2
    return (images - center) / half
