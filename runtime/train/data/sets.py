"""Data sets in memory: NCHW float32 images and their targets, train/test splits, the
fitting of images to a network's input, standardization, and seeded batches."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.errors import DataError


TASKS = ("classify", "segment", "detect")


@dataclass
class Dataset:
    """Images (N, C, H, W) float32 and their targets: for ``classify``, labels (N,) int64;
    for ``segment``, masks (N, H, W) int64 (``IGNORE``: a pixel that counts for nothing);
    for ``detect``, an object array of (k, 5) float32 arrays ``x1, y1, x2, y2, class`` in
    pixels. ``classes`` names each class index."""

    x: np.ndarray
    y: np.ndarray
    classes: list[str]
    task: str = "classify"

    def __post_init__(self):
        if len(self.x) != len(self.y):
            raise DataError(f"{len(self.x)} images but {len(self.y)} labels: they must pair up")

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Split:
    train: Dataset
    test: Dataset
    # the per-channel statistics ``standardize`` took out (to show images again)
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    @property
    def task(self) -> str:
        return self.train.task

    def pixels(self, x: np.ndarray) -> np.ndarray:
        """Standardized images back to their original range (for pictures)."""
        return x if self.mean is None else x * self.std + self.mean


IGNORE = -100  # a target pixel that counts for nothing (PyTorch's ignore_index)


# ----------------------------------------------------------------------------- fitting
def resize(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of (N, C, H, W) (half-pixel centres, as PyTorch with
    align_corners=False)."""
    n, c, h, w = images.shape
    if (h, w) == (height, width):
        return images

    def weights(size, out):
        src = np.maximum((np.arange(out) + 0.5) * size / out - 0.5, 0.0)
        lo = np.minimum(np.floor(src).astype(int), size - 1)
        hi = np.minimum(lo + 1, size - 1)
        m = np.zeros((out, size))
        np.add.at(m, (np.arange(out), lo), 1 - (src - lo))
        np.add.at(m, (np.arange(out), hi), src - lo)
        return m

    rows, cols = weights(h, height), weights(w, width)
    return np.einsum("yh,nchw,xw->ncyx", rows, images, cols).astype(np.float32)


def fit(images: np.ndarray, shape: tuple[int, int, int], source: str) -> np.ndarray:
    """Fit images (N, C, H, W) to a network input (C, H, W): resize, and repeat a grey
    channel to three; any other channel mismatch is an error."""
    c, h, w = shape
    if images.shape[1] != c:
        if images.shape[1] == 1:
            images = np.repeat(images, c, axis=1)
        else:
            raise DataError(f"{source} has {images.shape[1]}-channel images but the network "
                            f"takes {c} channels")
    return np.ascontiguousarray(resize(images.astype(np.float32), h, w))


def standardize(split: Split) -> Split:
    """Zero mean and unit variance per channel, with the training set's statistics."""
    mean = split.train.x.mean(axis=(0, 2, 3), keepdims=True)
    std = split.train.x.std(axis=(0, 2, 3), keepdims=True) + 1e-6
    for part in (split.train, split.test):
        part.x = ((part.x - mean) / std).astype(np.float32)
    split.mean, split.std = mean[0], std[0]
    return split


def holdout(x, y, classes, test_fraction, seed, task: str = "classify") -> Split:
    order = np.random.default_rng(seed).permutation(len(y))
    cut = int(round(len(y) * (1 - test_fraction)))
    train, test = order[:cut], order[cut:]
    return Split(Dataset(x[train], y[train], classes, task),
                 Dataset(x[test], y[test], classes, task))


# ----------------------------------------------------------------------------- sources


# ----------------------------------------------------------------------------- batches
def batches(dataset: Dataset, batch_size: int, *, shuffle: bool = True, seed: int = 0,
            epoch: int = 0, drop_last: bool = False):
    """Yield (x, y) batches; the order is a permutation drawn from (seed, epoch) alone, so
    a resumed run sees the same batches as an uninterrupted one."""
    for index in batch_order(len(dataset), batch_size, shuffle=shuffle, seed=seed,
                             epoch=epoch, drop_last=drop_last):
        yield dataset.x[index], dataset.y[index]


def batch_order(n: int, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                epoch: int = 0, drop_last: bool = False):
    """The sample indices of each batch of an epoch over ``n`` samples (what
    :func:`batches` reads; data-parallel ranks each read a slice of every one)."""
    if batch_size < 1:
        raise DataError(f"the batch size must be at least 1, got {batch_size}")
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]
