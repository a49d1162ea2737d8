"""Class names of the released BiT heads, and `decode_predictions`.

The released heads classify ILSVRC-2012 (1000 classes: BiT-S, the
`-ILSVRC2012` and distilled releases) or ImageNet-21k (21843 classes: BiT-M,
in Google's order, the WordNet ids sorted). Both lists ship with the package
as text files beside this module (`ilsvrc2012.txt`, `imagenet21k.txt`: a
WordNet id and the synset's first lemma per line; README.md there gives
their source, timm, and licence). NumPy only: no TensorFlow, any backend.

`bit_keras.BiT(...)` sets `model.class_names`, a tuple with one name per
output of the head, or None where the weights do not say:

- a transformers folder (or `"google/bit-50"`) with an `id2label`: its
  names, as written (`save_transformers(model, path, class_names=...)`
  writes them; by default it writes the model's own `class_names`);
- a release name of the official bucket (`"BiT-M-R50x1"`,
  `"BiT-S-R50x1-ILSVRC2012"`, ...), of timm or Google on the Hugging Face Hub
  (`"timm/resnetv2_50x1_bit.goog_in21k"`) or of Google on Kaggle, whose head
  has 1000 or 21843 classes: the ImageNet names of this module;
- anything else (a local `.npz`, `.h5`, `.safetensors`, `.keras` file, a
  SavedModel, a new head from `num_classes=`, `include_top=False`): None.
  A file alone does not say that its 1000 classes are ImageNet's, and Keras
  does not save a model's Python attributes in `.keras` files.

`model.class_names` is a plain attribute, set on the model `BiT` returns:
`keras.saving.load_model` does not restore it.

Example:

>>> import numpy as np
>>> logits = np.zeros((1, 1000), "float32")
>>> logits[0, [207, 281]] = 5.0, 3.0
>>> decode_predictions(logits, top=2)
[[('n02099601', 'golden retriever', 5.0), ('n02123045', 'tabby', 3.0)]]
"""

import functools
import importlib.resources
import numbers

import numpy as np

from bit_keras import arguments

ILSVRC2012_CLASSES = 1000
IMAGENET21K_CLASSES = 21843
_FILES = {ILSVRC2012_CLASSES: "ilsvrc2012.txt", IMAGENET21K_CLASSES: "imagenet21k.txt"}


@functools.lru_cache(maxsize=None)
def imagenet_labels(num_classes):
    """The (WordNet id, name) of each output of a released head of `num_classes` (1000 or 21843), in head order.

    Example:

    >>> imagenet_labels(1000)[0], len(imagenet_labels(21843))
    (('n01440764', 'tench'), 21843)
    """
    if num_classes not in _FILES:
        raise ValueError(
            f"num_classes must be {ILSVRC2012_CLASSES} (ILSVRC-2012 heads: BiT-S and the -ILSVRC2012 releases) or "
            f"{IMAGENET21K_CLASSES} (ImageNet-21k heads of BiT-M), got {num_classes!r}: no other head was released."
        )
    text = importlib.resources.files(__package__).joinpath(_FILES[num_classes]).read_text(encoding="utf-8")
    labels = tuple(tuple(line.split("\t", 1)) for line in text.splitlines() if line and not line.startswith("#"))
    if len(labels) != num_classes or any(len(label) != 2 for label in labels):
        raise RuntimeError(f"bit_keras/labels/{_FILES[num_classes]} is damaged: reinstall bit-keras.")
    return labels


def imagenet_class_names(num_classes):
    """The name of each output of a released head of `num_classes` (1000 or 21843), in head order."""
    return tuple(name for _, name in imagenet_labels(num_classes))


def decode_predictions(logits, top=5, class_names=None):
    """The `top` classes of each row of `logits`, best first, as `keras.applications` decodes them.

    Args:
        logits: a (batch, classes) array of logits or probabilities (NumPy, a
            list, or any backend's tensor), e.g. `model.predict(images)`.
        top: how many classes per row, a positive integer no larger than classes.
        class_names: None for the heads of the released models: 1000 classes
            (ILSVRC-2012) or 21843 (ImageNet-21k of BiT-M). For any other
            head, one name per class, e.g. `model.class_names` or the names
            the model was fine-tuned on.

    Returns:
        One list per row of `top` tuples `(class_id, name, score)`, by score
        descending (equal scores: the lower index first; NaN last). `class_id`
        is the WordNet id (`"n01440764"`) of an ImageNet class, or the index
        of the class in the head when `class_names` is given; `score` is a
        Python float, the value in `logits`.
    """
    if hasattr(logits, "detach"):  # a torch tensor: those of the torch backend track gradients, which NumPy refuses
        logits = logits.detach().cpu().float()
    try:
        scores = np.asarray(logits, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"logits must be a (batch, classes) array of numbers; the {type(logits).__name__} given is not ({error})."
        ) from None
    if scores.ndim != 2:
        hint = " For one image pass logits[None] (a batch of one)." if scores.ndim == 1 else ""
        raise ValueError(f"logits must be 2-D, (batch, classes), got shape {scores.shape}.{hint}")
    classes = scores.shape[1]
    if class_names is None:
        if classes not in _FILES:
            raise ValueError(
                f"logits has {classes} classes per row, and decode_predictions knows only the heads of the released "
                f"models: {ILSVRC2012_CLASSES} (ILSVRC-2012: BiT-S, the -ILSVRC2012 releases) and {IMAGENET21K_CLASSES} "
                f"(ImageNet-21k: BiT-M). For a fine-tuned model pass class_names=, e.g. class_names=model.class_names "
                f"or the list of names it was trained on."
            )
        ids, names = zip(*imagenet_labels(classes))
    else:
        names = arguments.class_names("class_names", class_names, classes, of=f"logits has {classes} classes per row")
        ids = range(classes)
    if isinstance(top, bool) or not isinstance(top, numbers.Integral) or not 1 <= top <= classes:
        raise ValueError(f"top must be a positive integer no larger than the {classes} classes of logits, got {top!r}.")
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top]  # NaN sorts last
    return [[(ids[i], names[i], float(row[i])) for i in best] for row, best in zip(scores, order)]
