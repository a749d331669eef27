"""Generated data that ships with archc: seeded, offline, of any size, drawn at the size
of the network's input.

- **shapes**: circles, squares and triangles of random size, colour and position on a
  noisy background of random tint. For segmentation each pixel is labelled 0
  (background), 1 (circle), 2 (square) or 3 (triangle), later shapes covering earlier
  ones; for detection each shape gives a box ``x1, y1, x2, y2`` (pixels, the shape's full
  extent) and a class 0 (circle), 1 (square) or 2 (triangle). Shapes are placed so that no
  two boxes overlap by more than an IoU of 0.2. For instance segmentation
  (``shapes-inst``) shapes may overlap more (box IoU up to 0.5), and each instance has its
  own mask of the pixels left in view.
- **digit mosaics**: 2 to 4 of scikit-learn's handwritten digits, each scaled to a random
  size, pasted without overlap on a dark canvas; the mask labels the digit's ink with
  digit + 1, the box is the tight box around the ink. Training and test mosaics are made
  of disjoint halves of the digits.

Targets: a segmentation :class:`~runtime.train.data.Dataset` holds masks (N, H, W) int64; a
detection one holds an object array of (k, 5) float32 arrays ``x1, y1, x2, y2, class``; an
instance one (task ``instance``) rows of (k, 5 + H * W): the box, the class and the
instance's mask (:func:`split_instances`).
"""

from __future__ import annotations

import math

import numpy as np

from runtime.limits import check_bytes

from runtime.errors import DataError
from runtime.train.data.sets import Dataset, Split, fit, resize

SHAPES = ("circle", "square", "triangle")


def _shape_mask(kind: int, cx: float, cy: float, r: float, h: int, w: int) -> np.ndarray:
    """Pixels (centres at +0.5) inside a circle of radius r, a square of half-side r, or an
    upright triangle in the box of half-side r."""
    y, x = np.mgrid[0:h, 0:w] + 0.5
    if kind == 0:
        return (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    if kind == 1:
        return (np.abs(x - cx) <= r) & (np.abs(y - cy) <= r)
    # apex (cx, cy - r), base corners (cx -/+ r, cy + r): inside the base line and the
    # two sides, |x - cx| <= (y - (cy - r)) / 2
    return (y <= cy + r) & (np.abs(x - cx) <= (y - (cy - r)) / 2)


def _iou(a, b) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(iw, 0) * max(ih, 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _place(rng, size_range, h, w, placed, tries: int = 30, overlap: float = 0.2):
    """A centre and half-size whose box lies inside the image and overlaps no placed box
    by more than IoU ``overlap`` (None after ``tries`` draws)."""
    for _ in range(tries):
        r = rng.uniform(*size_range)
        cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
        box = (cx - r, cy - r, cx + r, cy + r)
        if all(_iou(box, other) <= overlap for other in placed):
            return cx, cy, r, box
    return None


def _start(what: str, count: int, shape, smallest: int, channels: int, stream: list):
    """Checks the size and makes the seeded generator and the empty arrays of a generated
    set: images (N, channels, H, W), masks (N, H, W), boxes (an object array)."""
    _, h, w = shape
    if min(h, w) < smallest:
        raise DataError(f"{what} needs images of at least {smallest} x {smallest} pixels; "
                        f"the network takes {h} x {w}")
    return (np.random.default_rng(stream), np.zeros((count, channels, h, w), np.float32),
            np.zeros((count, h, w), np.int64), np.empty(count, dtype=object))


def shapes(count: int, shape, *, seed: int = 0, max_objects: int = 3,
           noise: float = 0.08, instances: bool = False):
    """``count`` images (N, C, H, W) in [0, 1], their masks (N, H, W) and their boxes (an
    object array of (k, 5) arrays). With ``instances``, up to four shapes that may overlap
    (box IoU up to 0.5), later ones hiding earlier ones: each row is the box of a shape's
    visible pixels, its class, then its visible pixels as an H * W mask (k, 5 + H * W);
    a shape with fewer than 8 pixels left in view is left out."""
    c, h, w = shape
    rng, images, masks, boxes = _start("the shapes data", count, shape, 16, 3,
                                       [seed, 13] if instances else [seed, 7])
    size_range = (min(h, w) / 10, min(h, w) / 4)
    if instances:
        max_objects = max(max_objects, 4)
    for i in range(count):
        tint = rng.uniform(0.0, 0.35, 3)
        image = tint[:, None, None] + rng.normal(0, noise, (3, h, w))
        placed, rows = [], []
        owner = np.full((h, w), -1)
        for _ in range(rng.integers(1, max_objects + 1)):
            where = _place(rng, size_range, h, w, placed, overlap=0.5 if instances else 0.2)
            if where is None:
                continue
            cx, cy, r, box = where
            kind = int(rng.integers(0, 3))
            inside = _shape_mask(kind, cx, cy, r, h, w)
            colour = rng.uniform(0.45, 1.0, 3)
            image[:, inside] = colour[:, None] + rng.normal(0, noise, (3, int(inside.sum())))
            masks[i][inside] = kind + 1
            owner[inside] = len(placed)
            placed.append(box)
            rows.append([*box, kind])
        images[i] = np.clip(image, 0, 1)
        if instances:
            rows = [_visible(owner == k, row[4]) for k, row in enumerate(rows)]
            rows = [row for row in rows if row is not None]
        boxes[i] = np.array(rows, np.float32).reshape(-1, 5 + h * w if instances else 5)
    return fit(images if c == 3 else images.mean(axis=1, keepdims=True), shape,
               "shapes"), masks, boxes


def _visible(mask: np.ndarray, kind: int):
    """An instance row: the tight box of a shape's visible pixels, its class and the
    pixels (None when fewer than 8 are in view)."""
    if mask.sum() < 8:
        return None
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1, kind, *mask.ravel()]


def split_instances(rows, size) -> tuple[np.ndarray, np.ndarray]:
    """An instance row array (k, 5 + H * W) as boxes with classes (k, 5) and masks
    (k, H, W) bool."""
    rows = np.asarray(rows)
    h, w = size
    return rows[:, :5], rows[:, 5:].reshape(len(rows), h, w) > 0.5


def digit_mosaics(count: int, shape, digit_images: np.ndarray, digit_labels: np.ndarray, *,
                  seed: int = 0, max_digits: int = 4):
    """``count`` mosaics of the given 8x8 digits (values in [0, 1]), with masks and boxes
    (class = the digit)."""
    c, h, w = shape
    rng, canvas, masks, boxes = _start("digit mosaics", count, shape, 24, 1, [seed, 11])
    for i in range(count):
        placed, rows = [], []
        for _ in range(rng.integers(2, max_digits + 1)):
            where = _place(rng, (min(h, w) / 8, min(h, w) / 5), h, w, placed)
            if where is None:
                continue
            cx, cy, r, _ = where
            side = max(int(round(2 * r)), 4)
            pick = int(rng.integers(0, len(digit_images)))
            tile = resize(digit_images[pick][None, None].astype(np.float32), side, side)[0, 0]
            top, left = int(round(cy - side / 2)), int(round(cx - side / 2))
            top, left = min(max(top, 0), h - side), min(max(left, 0), w - side)
            ink = tile > 0.3
            if not ink.any():
                continue
            region = canvas[i, 0, top:top + side, left:left + side]
            np.maximum(region, tile, out=region)
            masks[i, top:top + side, left:left + side][ink] = int(digit_labels[pick]) + 1
            ys, xs = np.nonzero(ink)
            box = (left + xs.min(), top + ys.min(), left + xs.max() + 1, top + ys.max() + 1)
            placed.append((left, top, left + side, top + side))
            rows.append([*box, int(digit_labels[pick])])
        boxes[i] = np.array(rows, np.float32).reshape(-1, 5)
    canvas += rng.normal(0, 0.03, canvas.shape).astype(np.float32)
    return fit(np.clip(canvas, 0, 1), shape, "digit mosaics"), masks, boxes


GENERATED = {"shapes-seg": ("shapes", "segment"), "shapes-det": ("shapes", "detect"),
             "shapes-inst": ("shapes", "instance"),
             "mosaic-seg": ("mosaic", "segment"), "mosaic-det": ("mosaic", "detect")}


def load(name: str, count: str, shape, seed: int = 0) -> Split:
    """A generated data set by name (``shapes-seg``, ``shapes-det``, ``shapes-inst``, ``mosaic-seg``,
    ``mosaic-det``), ``count`` training images (default 512; a quarter as many more are
    held out), drawn from seeds that make the test images differ from the training ones."""
    family, task = GENERATED[name]
    try:
        n = int(count) if count else 512
    except ValueError:
        n = 0
    if n < 1:
        raise DataError(f"'{name}:{count}': the part after the colon is the number of "
                        f"training images, a positive whole number")
    n_test = max(n // 4, 16)
    # images, masks and their standardized copies
    masks = 4 * 4 * math.prod(shape[1:]) if task == "instance" else 0  # four float32 masks
    check_bytes((3 * 4 * math.prod(shape) + masks) * (n + n_test), f"generating {name}:{count}",
                hint="ask for fewer images")
    if family == "shapes":
        classes = (["background", *SHAPES] if task == "segment" else list(SHAPES))
        parts = [shapes(k, shape, seed=seed * 2 + j, instances=task == "instance")
                 for j, k in enumerate((n, n_test))]
    else:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        order = np.random.default_rng([seed, 3]).permutation(len(bunch.target))
        halves = order[: len(order) // 2], order[len(order) // 2:]
        digits = [str(d) for d in range(10)]
        classes = ["background", *digits] if task == "segment" else digits
        parts = [digit_mosaics(k, shape, bunch.images[half] / 16.0, bunch.target[half],
                               seed=seed * 2 + j)
                 for j, (k, half) in enumerate(zip((n, n_test), halves))]
    made = [Dataset(x, masks if task == "segment" else boxes, classes, task=task)
            for x, masks, boxes in parts]
    return Split(*made)
