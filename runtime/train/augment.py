"""Data augmentation for training batches: seeded (one NumPy generator per run), applied
per batch to NCHW float32 images after standardization, so zero is the mean pixel (what a
crop's padding and a cutout fill in).

Each transform takes ``(x, y, rng)`` and returns ``(x, y)``; labels stay integer class
indices except after ``mixup`` and ``cutmix``, which return soft targets (N, classes) that
the cross-entropy takes as class probabilities. ``--augment crop,flip,mixup`` on the
command line composes them in the order given.
"""

from __future__ import annotations

import math

import numpy as np

from runtime.train.data import DataError


def _soft(y: np.ndarray, classes: int) -> np.ndarray:
    if y.ndim == 2:
        return y
    out = np.zeros((len(y), classes), dtype=np.float32)
    out[np.arange(len(y)), y] = 1
    return out


def random_crop(x, y, rng, padding: int = 4):
    """Zero-pad every side by ``padding`` and cut the original size back out at a random
    offset per image."""
    n, c, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    top = rng.integers(0, 2 * padding + 1, n)
    left = rng.integers(0, 2 * padding + 1, n)
    out = np.empty_like(x)
    for i in range(n):
        out[i] = padded[i, :, top[i]:top[i] + h, left[i]:left[i] + w]
    return out, y


def horizontal_flip(x, y, rng, p: float = 0.5):
    flip = rng.random(len(x)) < p
    out = x.copy()
    out[flip] = x[flip, :, :, ::-1]
    return out, y


def color_jitter(x, y, rng, brightness: float = 0.2, contrast: float = 0.2,
                 saturation: float = 0.2):
    """Per image: add a brightness offset, scale the contrast about the image's mean, and
    (colour images) pull the channels toward or away from their grey mean."""
    n = len(x)
    shift = rng.uniform(-brightness, brightness, (n, 1, 1, 1)).astype(x.dtype)
    scale = rng.uniform(1 - contrast, 1 + contrast, (n, 1, 1, 1)).astype(x.dtype)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    out = (x - mean) * scale + mean + shift
    if x.shape[1] == 3:
        grey = out.mean(axis=1, keepdims=True)
        sat = rng.uniform(1 - saturation, 1 + saturation, (n, 1, 1, 1)).astype(x.dtype)
        out = grey + (out - grey) * sat
    return out.astype(x.dtype), y


def rotate(x, y, rng, degrees: float = 15.0):
    """Rotate every image by its own angle in [-degrees, degrees] about its centre
    (bilinear, zeros outside)."""
    n, c, h, w = x.shape
    out = np.zeros_like(x)
    rows, cols = np.meshgrid(np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2,
                             indexing="ij")
    for i, angle in enumerate(np.deg2rad(rng.uniform(-degrees, degrees, n))):
        cos, sin = math.cos(angle), math.sin(angle)
        src_r = cos * rows + sin * cols + (h - 1) / 2  # the inverse rotation of each pixel
        src_c = -sin * rows + cos * cols + (w - 1) / 2
        r0, c0 = np.floor(src_r).astype(int), np.floor(src_c).astype(int)
        fr, fc = src_r - r0, src_c - c0
        for dr, dc, weight in ((0, 0, (1 - fr) * (1 - fc)), (1, 0, fr * (1 - fc)),
                               (0, 1, (1 - fr) * fc), (1, 1, fr * fc)):
            rr, cc = r0 + dr, c0 + dc
            inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
            out[i] += np.where(inside, x[i][:, np.clip(rr, 0, h - 1), np.clip(cc, 0, w - 1)]
                               * weight, 0).astype(x.dtype)
    return out, y


def cutout(x, y, rng, size: int = 8):
    """Zero a size x size square at a random centre of every image (clipped at borders:
    random erasing of DeVries and Taylor)."""
    n, c, h, w = x.shape
    out = x.copy()
    for i, (cy, cx) in enumerate(zip(rng.integers(0, h, n), rng.integers(0, w, n))):
        out[i, :, max(0, cy - size // 2):cy + (size + 1) // 2,
            max(0, cx - size // 2):cx + (size + 1) // 2] = 0
    return out, y


def mixup(x, y, rng, alpha: float = 0.2, classes: int = 10):
    """Mix the batch with a shuffled copy of itself by a Beta(alpha, alpha) weight, images
    and (soft) labels alike (Zhang et al. 2018)."""
    lam = float(rng.beta(alpha, alpha))
    order = rng.permutation(len(x))
    t = _soft(y, classes)
    return (lam * x + (1 - lam) * x[order]).astype(x.dtype), lam * t + (1 - lam) * t[order]


def cutmix(x, y, rng, alpha: float = 1.0, classes: int = 10):
    """Paste a box of a shuffled copy of the batch into each image; labels mix by the box's
    share of the area (Yun et al. 2019)."""
    n, c, h, w = x.shape
    lam = float(rng.beta(alpha, alpha))
    bh, bw = int(round(h * math.sqrt(1 - lam))), int(round(w * math.sqrt(1 - lam)))
    cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
    top, bottom = max(0, cy - bh // 2), min(h, cy + bh - bh // 2)
    left, right = max(0, cx - bw // 2), min(w, cx + bw - bw // 2)
    order = rng.permutation(n)
    out = x.copy()
    out[:, :, top:bottom, left:right] = x[order, :, top:bottom, left:right]
    share = (bottom - top) * (right - left) / (h * w)
    t = _soft(y, classes)
    return out, (1 - share) * t + share * t[order]


def _rand_ops():
    return {
        "crop": lambda x, y, rng, m: random_crop(x, y, rng, padding=max(1, m // 3)),
        "flip": lambda x, y, rng, m: horizontal_flip(x, y, rng, p=1.0),
        "jitter": lambda x, y, rng, m: color_jitter(x, y, rng, m / 30, m / 30, m / 30),
        "rotate": lambda x, y, rng, m: rotate(x, y, rng, degrees=3 * m),
        "cutout": lambda x, y, rng, m: cutout(x, y, rng, size=max(1, m)),
    }


def rand_augment(x, y, rng, n: int = 2, magnitude: int = 9):
    """RandAugment-style (Cubuk et al. 2020): for each batch, ``n`` operations drawn from
    crop, flip, jitter, rotate and cutout, each at strength ``magnitude`` (0-30)."""
    ops = _rand_ops()
    for name in rng.choice(sorted(ops), size=n, replace=False):
        x, y = ops[name](x, y, rng, magnitude)
    return x, y


TRANSFORMS = {"crop": random_crop, "flip": horizontal_flip, "jitter": color_jitter,
              "rotate": rotate, "cutout": cutout, "mixup": mixup, "cutmix": cutmix,
              "randaugment": rand_augment}


def pipeline(names: str | None, classes: int):
    """A comma-separated list of transforms -> a function (x, y, rng) -> (x, y)."""
    if not names:
        return None
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in TRANSFORMS]
    if unknown:
        raise DataError(f"unknown augmentation {', '.join(unknown)} (choose from "
                        f"{', '.join(TRANSFORMS)})")

    def apply(x, y, rng):
        for name in chosen:
            extra = {"classes": classes} if name in ("mixup", "cutmix") else {}
            x, y = TRANSFORMS[name](x, y, rng, **extra)
        return x, y

    return apply
