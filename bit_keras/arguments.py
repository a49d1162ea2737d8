"""The one place that checks what users pass: each check names the argument and says what it takes.

Integers of any kind (Python's, NumPy's) are accepted where a count is
expected; floats and booleans are not, so `steps=1.5` or `batch_size=True`
fail here rather than being truncated or read as 1.

>>> positive_int("steps", np.int64(3))
3
>>> positive_int("steps", 1.5)
Traceback (most recent call last):
...
ValueError: steps must be a positive integer, got 1.5.
"""

import argparse
import math
import numbers
import os

import numpy as np


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def positive_int(name, value):
    """`value` as an int, or a ValueError naming `name`."""
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def non_negative_int(name, value):
    """`value` as an int >= 0 (seeds), or a ValueError naming `name`."""
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}.")
    return int(value)


def positive_float(name, value):
    """`value` as a finite float > 0, or a ValueError naming `name`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}.")
    return float(value)


def non_negative_float(name, value):
    """`value` as a finite float >= 0, or a ValueError naming `name`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}.")
    return float(value)


def flag(name, value, also=()):
    """`value` as a bool: True or False only (not the string "False", not 0), or one of the strings `also` as given.

    >>> flag("verify", 1, also=("auto",))
    Traceback (most recent call last):
    ...
    ValueError: verify must be True, False or 'auto', got 1.
    """
    if isinstance(value, str) and value in also:
        return value
    if not isinstance(value, (bool, np.bool_)):
        choices = ["True", "False", *map(repr, also)]
        raise ValueError(f"{name} must be {', '.join(choices[:-1])} or {choices[-1]}, got {value!r}.")
    return bool(value)


def path(name, value):
    """`value` as a str path: a non-empty str or os.PathLike, or a ValueError naming `name`.

    >>> path("checkpoint_dir", 5)
    Traceback (most recent call last):
    ...
    ValueError: checkpoint_dir must be a path (a str or os.PathLike), got int 5.
    """
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError(f"{name} must be a path (a str or os.PathLike), got {type(value).__name__} {value!r:.80}.")
    text = os.fspath(value)
    if not isinstance(text, str) or not text:
        raise ValueError(f"{name} must be a path (a str or os.PathLike), got {value!r:.80}.")
    return text


def class_names(name, value, classes, of=None):
    """`value` as a tuple of `classes` strings, one name per class in class order, or a ValueError naming `name`.

    A string is not a list of names (it would read one name per character),
    nor is an id-to-label dict; `of` says whose classes they must match
    (by default "the head has `classes` classes").

    >>> class_names("class_names", ["cat", "dog"], 2)
    ('cat', 'dog')
    >>> class_names("class_names", ["cat", "dog"], 3)
    Traceback (most recent call last):
    ...
    ValueError: class_names has 2 names but the head has 3 classes; pass one name per class, in class order.
    """
    if isinstance(value, (str, bytes)):
        raise ValueError(
            f"{name} must be a list of strings, one name per class, got the string {value!r:.80}. Pass e.g. ['cat', 'dog']."
        )
    if isinstance(value, dict):
        raise ValueError(
            f"{name} must be a list of strings in class order, got a dict. For an id-to-label dict pass "
            f"[labels[i] for i in range({classes})]."
        )
    try:
        names = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be a list of strings, one name per class, got {value!r:.80}.") from None
    wrong = [item for item in names if not isinstance(item, str)]
    if wrong:
        raise ValueError(f"{name} must be a list of strings, one name per class; {wrong[0]!r} is not a string.")
    if len(names) != classes:
        of = of or f"the head has {classes} classes"
        raise ValueError(f"{name} has {len(names)} names but {of}; pass one name per class, in class order.")
    return names


def crop_area(value):
    """(low, high): the share of the image area a random crop covers, 0 < low <= high <= 1."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"crop_area must be (low, high) fractions of the image area, got {value!r}.") from None
    if not 0 < low <= high <= 1:
        raise ValueError(f"crop_area must satisfy 0 < low <= high <= 1, got {value!r}; the recipe's is (0.08, 1.0).")
    return low, high


def input_range(value):
    """(low, high): two finite floats, low < high, the range of the images an export is given."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"input_range must be two numbers (low, high), got {value!r}.") from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(
            f"input_range must be two finite numbers (low, high), got {value!r}: the module rescales "
            f"images linearly from it to [-1, 1]. Pass e.g. (0, 1) or (0, 255)."
        )
    if not low < high:
        raise ValueError(f"input_range must have low < high, got {value!r}; e.g. (0, 1) or (0, 255).")
    return low, high


def sizes(value, name="sizes"):
    """(resize, crop): two positive integers with crop <= resize."""
    try:
        resize, crop = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (resize, crop), two positive integers such as (160, 128); got {value!r}.") from None
    resize, crop = positive_int(f"{name}[0] (resize)", resize), positive_int(f"{name}[1] (crop)", crop)
    if crop > resize:
        raise ValueError(
            f"{name}: the crop ({crop}) must not exceed the resize ({resize}); the crop is taken from the resized image."
        )
    return resize, crop


def image_size(value, name="image_size"):
    """(height, width), two positive integers, from that pair or from one side length of square images.

    >>> image_size(32)
    (32, 32)
    """
    if _is_int(value):
        side = positive_int(name, value)
        return side, side
    try:
        height, width = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (height, width) or one side length, e.g. (32, 32) or 32; got {value!r}.") from None
    return positive_int(f"{name}[0] (height)", height), positive_int(f"{name}[1] (width)", width)


def comma_pair(kind, name):
    """An argparse `type` reading the flag `--name` as two `kind` values separated by a comma.

    >>> comma_pair(int, "image_size")("224,160")
    (224, 160)
    """

    def parse(text):
        try:
            first, second = (kind(value) for value in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"--{name} takes two numbers separated by a comma; got {text!r}.") from None
        return first, second

    return parse
