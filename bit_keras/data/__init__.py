"""tf.data input pipelines for BiT: labelled-image sources, few-shot subsets,
the BiT-HyperRule training and evaluation pipelines, mixup, and the upstream
(BiT-S/M pre-training) pipeline.

Every pipeline yields `(images, labels)`: float32 images in [-1, 1] (the range
BiT models expect) and one-hot float32 labels, ready for `model.fit` under the
TensorFlow or the JAX Keras backend. This package is TensorFlow-specific by
design; the models themselves are backend-agnostic.

- `sources`: `Source`, `from_tfds`, `from_arrays`, `from_folder`, `as_source`,
  `few_shot`, `digest` and `first_example`: raw labelled examples.
- `augment`: `mixup`, the Inception-style crop box, resize-crop-flip and the
  scaling to [-1, 1], every draw from a seed.
- `pipelines`: `train_pipeline`, `eval_pipeline`, `upstream_pipeline` and the
  seeded example stream and batching they share.
"""

from bit_keras.data.augment import mixup
from bit_keras.data.pipelines import eval_pipeline, train_pipeline, upstream_pipeline
from bit_keras.data.sources import (
    VERIFY_UP_TO,
    Source,
    as_source,
    digest,
    few_shot,
    first_example,
    from_arrays,
    from_folder,
    from_tfds,
)
