"""Classification and segmentation metrics from outputs and integer labels: accuracy,
top-k accuracy, the confusion matrix and what it gives (per-class precision and recall,
intersection over union and its mean). Class scores lie along axis 1, as the outputs of
the networks do; per-pixel outputs (N, C, H, W) with labels (N, H, W) count every pixel.
Labels equal to ``ignore_index`` count for nothing."""

from __future__ import annotations

import numpy as np


def _flat(scores: np.ndarray, labels: np.ndarray, ignore_index: int):
    c = scores.shape[1]
    rows = np.moveaxis(scores, 1, -1).reshape(-1, c)
    flat = np.asarray(labels).reshape(-1)
    if len(flat) != len(rows):
        raise ValueError(f"labels of shape {np.shape(labels)} do not fit scores of shape "
                         f"{scores.shape}")
    keep = flat != ignore_index
    return rows[keep], flat[keep]


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1,
                   ignore_index: int = -100) -> float:
    """The fraction of samples (pixels) whose label is among their k highest scores."""
    rows, flat = _flat(scores, labels, ignore_index)
    if len(flat) == 0:
        return float("nan")
    k = min(k, rows.shape[1])
    top = np.argpartition(-rows, k - 1, axis=1)[:, :k]
    return float((top == flat[:, None]).any(axis=1).mean())


def accuracy(scores: np.ndarray, labels: np.ndarray, ignore_index: int = -100) -> float:
    rows, flat = _flat(scores, labels, ignore_index)
    return float((rows.argmax(axis=1) == flat).mean()) if len(flat) else float("nan")


def confusion_matrix(scores: np.ndarray, labels: np.ndarray, ignore_index: int = -100):
    """counts[true, predicted]."""
    rows, flat = _flat(scores, labels, ignore_index)
    c = rows.shape[1]
    return np.bincount(flat * c + rows.argmax(axis=1), minlength=c * c).reshape(c, c)


def per_class(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall and IoU per class from a confusion matrix (NaN for a class that
    never occurs in the denominators), and their means over the classes that do."""
    tp = np.diag(confusion).astype(np.float64)
    predicted, actual = confusion.sum(axis=0), confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / predicted
        recall = tp / actual
        iou = tp / (predicted + actual - tp)
    return {"precision": precision, "recall": recall, "iou": iou,
            "mean_iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")}
