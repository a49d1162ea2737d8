"""`bit_keras_local_shades`: dark versus light squares, from local arrays only."""

import numpy as np
import tensorflow_datasets as tfds


class BitKerasLocalShades(tfds.core.GeneratorBasedBuilder):
    """A TFDS dataset built from nothing but local arrays: dark versus light squares."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(16, 16, 3)),
                    "label": tfds.features.ClassLabel(names=["dark", "light"]),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(12), "test": self._generate_examples(4)}

    def _generate_examples(self, count):
        for index in range(count):
            shade = 40 if index % 2 == 0 else 200
            yield index, {"image": np.full((16, 16, 3), shade, np.uint8), "label": index % 2}
