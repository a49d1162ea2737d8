"""Procedural glyphs: an embedded upstream data set with as many classes and examples as asked for.

Each class is a fixed random set of two to four pen strokes (quadratic
Bezier curves and elliptic arcs); each example draws that set again with
every stroke shifted a little, under a random rotation, shear and squeeze,
and with a random pen width. The
drawing follows the recipe of scikit-learn's digits (UCI optdigits): a
binary 32x32 bitmap, the glyph scaled to the full height and centred, then
the ink counted in 4x4 blocks, so an example is an 8x8 image with 17 grey
levels, like a digit, yet of none of the digit classes. Pre-training without
natural images on formula-driven data is an established line of work
(fractals, Kataoka et al. 2020; procedural noise and shapes, Baradad et al.
2021).

Generation is vectorised NumPy and deterministic for a seed: the same
`(num_classes, examples_per_class, seed)` gives the same images.

Example:

>>> images, labels = glyphs(num_classes=3, examples_per_class=2, seed=0)
>>> images.shape, images.dtype.name, labels.tolist()
((6, 8, 8), 'uint8', [0, 1, 2, 0, 1, 2])
>>> bool((glyphs(3, 2, seed=0)[0] == images).all())
True
"""

import numpy as np

CANVAS = 32  # the drawing grid, as optdigits' bitmaps
BLOCK = 4  # ink counted in 4x4 blocks: an 8x8 image with values 0-16
MAX_STROKES = 4
SAMPLES = 96  # points per stroke: less than a pixel apart on the canvas, so a drawn stroke has no gaps
PEN_WIDTH = (3.0, 6.0)  # in canvas pixels; the digits' strokes are 1 to 1.5 of their 8 px
REACH = int(PEN_WIDTH[1] // 2)  # the farthest canvas offset a pen reaches from its centre line
ROTATION = 0.25  # radians either way
SHEAR = 0.3
SQUEEZE = (0.75, 1.25)  # width scale against height before the glyph is fitted to the canvas
WOBBLE = 0.12  # each stroke shifts by up to this much either way, in the template's [-1, 1] square
MAX_ASPECT = 0.75  # widest glyph, as a share of its height: digits are taller than wide


def glyphs(num_classes, examples_per_class, seed=0):
    """`(images, labels)`: `examples_per_class` examples of each of `num_classes` glyph classes.

    images: `(num_classes * examples_per_class, 8, 8)` uint8 in [0, 255]
    (the 17 ink counts 0-16 scaled by 255/16, as the demo scales the digits);
    labels: int64 class ids, the classes interleaved (0, 1, ..., 0, 1, ...),
    so any prefix is balanced.
    """
    rng = np.random.default_rng(seed)
    templates, used = class_templates(rng, num_classes)
    labels = np.tile(np.arange(num_classes), examples_per_class)
    points = jitter(rng, templates[labels], used[labels])
    widths = rng.uniform(*PEN_WIDTH, size=len(labels))
    counts = np.concatenate([ink(points[chunk], used[labels[chunk]], widths[chunk]) for chunk in _chunks(len(labels))])
    return np.round(counts * (255.0 / BLOCK**2)).astype("uint8"), labels.astype("int64")


def class_templates(rng, num_classes):
    """`(points, used)`: each class's strokes as polylines in [-1, 1]^2, and which of its `MAX_STROKES` it uses.

    points: `(num_classes, MAX_STROKES, SAMPLES, 2)`; a class uses
    2 to `MAX_STROKES` strokes, each a quadratic Bezier curve or an elliptic
    arc (loops and hooks, as digits have), with the same odds.
    """
    shape = (num_classes, MAX_STROKES)
    t = np.linspace(0.0, 1.0, SAMPLES)[:, None]
    ends = rng.uniform(-1, 1, size=(*shape, 3, 1, 2))
    curves = (1 - t) ** 2 * ends[:, :, 0] + 2 * t * (1 - t) * ends[:, :, 1] + t**2 * ends[:, :, 2]
    centre = rng.uniform(-0.5, 0.5, size=(*shape, 1, 2))
    radii = rng.uniform(0.25, 0.8, size=(*shape, 1, 2))
    start = rng.uniform(0, 2 * np.pi, size=(*shape, 1))
    sweep = rng.uniform(np.pi / 2, 2 * np.pi, size=(*shape, 1))
    angle = start + sweep * t[:, 0]
    arcs = centre + radii * np.stack([np.cos(angle), np.sin(angle)], axis=-1)
    is_arc = rng.random(shape)[:, :, None, None] < 0.5
    used = np.arange(MAX_STROKES) < rng.integers(2, MAX_STROKES + 1, size=num_classes)[:, None]
    return np.where(is_arc, arcs, curves), used


def jitter(rng, points, used):
    """Each example's own drawing of its class: every stroke shifted a little, a random rotation, shear and squeeze, then fitted to the canvas."""
    n = len(points)
    points = points + rng.uniform(-WOBBLE, WOBBLE, size=(n, MAX_STROKES, 1, 2))
    angle = rng.uniform(-ROTATION, ROTATION, size=n)
    shear = rng.uniform(-SHEAR, SHEAR, size=n)
    squeeze = rng.uniform(*SQUEEZE, size=n)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]).transpose(2, 0, 1)
    slant = np.array([[squeeze, shear * squeeze], [np.zeros(n), np.ones(n)]]).transpose(2, 0, 1)
    points = np.einsum("nij,nsvj->nsvi", slant @ rotation, points)
    return fit_to_canvas(points, used)


def fit_to_canvas(points, used):
    """Each glyph scaled to the canvas height and centred, in canvas pixels; one wider than `MAX_ASPECT` of it is narrowed."""
    drawn = used[:, :, None, None]
    low = np.where(drawn, points, np.inf).min(axis=(1, 2))
    high = np.where(drawn, points, -np.inf).max(axis=(1, 2))
    extent = np.maximum(high - low, 1e-6)
    height = CANVAS - PEN_WIDTH[1]  # the pen's half width spare at either edge
    scale_y = height / extent[:, 1]
    scale_x = np.minimum(scale_y, height * MAX_ASPECT / extent[:, 0])
    scale = np.stack([scale_x, scale_y], -1)[:, None, None]
    return (points - ((low + high) / 2)[:, None, None]) * scale + CANVAS / 2


def ink(points, used, widths):
    """8x8 ink counts (0-16) of the strokes `points` drawn with pens of `widths` on the 32x32 canvas.

    The pen's centre line is marked pixel by pixel (the strokes are sampled
    densely enough to leave no gaps), then widened by every canvas offset
    within half the pen's width: a round pen.
    """
    n = len(points)
    cells = np.clip(np.floor(points), 0, CANVAS - 1).astype(np.int64)
    image = np.broadcast_to(np.arange(n)[:, None, None], cells.shape[:3])
    keep = np.broadcast_to(used[:, :, None], cells.shape[:3])
    centre = np.zeros((n, CANVAS + 2 * REACH, CANVAS + 2 * REACH), bool)
    centre[image[keep], cells[..., 1][keep] + REACH, cells[..., 0][keep] + REACH] = True
    drawn = np.zeros((n, CANVAS, CANVAS), bool)
    for dy in range(-REACH, REACH + 1):
        for dx in range(-REACH, REACH + 1):
            within = dx * dx + dy * dy <= (widths / 2) ** 2
            shifted = centre[:, REACH + dy : REACH + dy + CANVAS, REACH + dx : REACH + dx + CANVAS]
            drawn |= shifted & within[:, None, None]
    size = CANVAS // BLOCK
    return drawn.reshape(n, size, BLOCK, size, BLOCK).sum(axis=(2, 4))


def _chunks(total, size=256):
    # Slices of `size` examples: the drawing's arrays stay a few megabytes whatever the total.
    return [slice(start, min(start + size, total)) for start in range(0, total, size)]
