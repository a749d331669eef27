"""Datasets and batches for training: NCHW float32 images with integer labels.

Sources (``--data`` on the command line): ``digits`` (scikit-learn's bundled handwritten
digits: 1,797 real 8x8 scans, offline), ``mnist:DIR`` and ``fashion-mnist:DIR`` (the
standard IDX files, gzipped or not), ``cifar10:DIR`` (the binary version's
``data_batch_*.bin`` / ``test_batch.bin``), ``folder:DIR`` (one sub-folder of images per
class, read with Pillow) and ``npz:FILE`` (arrays ``x``, ``y``, optionally ``x_test``,
``y_test``). Images are fitted to the network's input: resized (bilinear) to its height and
width, and grey images repeated to three channels when it takes colour. Every problem with
the files is a :class:`DataError` that says what was expected.
"""

from __future__ import annotations

from runtime.errors import DataError
from runtime.train.data import synth
from runtime.train.data.readers import (
    cifar10,
    coco,
    digits,
    folder,
    mask_folder,
    mnist,
    npz,
    read_idx,
    read_image,
    read_mask,
)
from runtime.train.data.sets import (
    IGNORE,
    TASKS,
    Dataset,
    Split,
    batch_order,
    batches,
    fit,
    resize,
    standardize,
)

__all__ = ["IGNORE", "SOURCES", "TASKS", "DataError", "Dataset", "Split", "batch_order",
           "batches", "cifar10", "coco", "digits", "fit", "folder", "load", "mask_folder",
           "mnist", "npz", "read_idx", "read_image", "read_mask", "resize", "standardize"]


SOURCES = ("digits, shapes-seg[:N], shapes-det[:N], shapes-inst[:N], mosaic-seg[:N], "
           "mosaic-det[:N], "
           "mnist:DIR, fashion-mnist:DIR, cifar10:DIR, folder:DIR, masks:DIR, coco:FILE.json "
           "or npz:FILE")


def load(spec: str, shape, seed: int = 0) -> Split:
    """A ``--data`` value -> the standardized train/test split fitted to ``shape``."""
    kind, _, where = spec.partition(":")
    sources = {"mnist": lambda: mnist(where, shape),
               "fashion-mnist": lambda: mnist(where, shape, "fashion-mnist"),
               "cifar10": lambda: cifar10(where, shape),
               "folder": lambda: folder(where, shape, seed=seed),
               "masks": lambda: mask_folder(where, shape, seed=seed),
               "coco": lambda: coco(where, shape, seed=seed),
               "npz": lambda: npz(where, shape, seed=seed)}
    if kind == "digits" and not where:
        return standardize(digits(shape, seed=seed))
    if kind in synth.GENERATED:
        return standardize(synth.load(kind, where, shape, seed=seed))
    if kind not in sources or not where:
        raise DataError(f"unknown data '{spec}': use {SOURCES}")
    return standardize(sources[kind]())
