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


# ----------------------------------------------------------------------------- detection
COCO_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2))


def mask_iou(a, b) -> np.ndarray:
    """IoU of every mask of ``a`` (n, H, W) with every mask of ``b`` (m, H, W): (n, m)
    (0 where both are empty)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    a = np.asarray(a, bool).reshape(len(a), -1).astype(np.float64)
    b = np.asarray(b, bool).reshape(len(b), -1).astype(np.float64)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _box_overlap(det, truth) -> np.ndarray:
    from runtime.train.boxes import box_iou

    return box_iou(np.asarray(det, np.float64).reshape(-1, 4),
                   np.asarray(truth, np.float64).reshape(-1, 4))


def _match(detections, truths, cls: int, threshold: float, overlap=_box_overlap):
    """Detections of class ``cls`` over all images, by decreasing score (ties: image, then
    input order), each matched as COCO does to the unmatched ground-truth box of its
    image and class with the highest IoU, if that IoU is at least ``threshold``.
    Returns (true-positive flags in score order, number of ground-truth boxes)."""
    rows, positives = [], 0
    for image, ((boxes, scores, classes), (gt_boxes, gt_classes)) in enumerate(
            zip(detections, truths)):
        positives += int((np.asarray(gt_classes) == cls).sum())
        for index in np.nonzero(np.asarray(classes) == cls)[0]:
            rows.append((-float(scores[index]), image, int(index)))
    rows.sort()
    taken = [np.zeros(int((np.asarray(g) == cls).sum()), dtype=bool) for _, g in truths]
    ious = {}
    hits = np.zeros(len(rows), dtype=bool)
    for k, (_, image, index) in enumerate(rows):
        if image not in ious:
            gt_boxes, gt_classes = truths[image]
            ious[image] = overlap(detections[image][0],
                                  np.asarray(gt_boxes)[np.asarray(gt_classes) == cls])
        row = np.where(taken[image], -1.0, ious[image][index])
        if row.size and row.max() >= threshold:
            best = int(row.argmax())
            taken[image][best] = True
            hits[k] = True
    return hits, positives


def interpolated_ap(hits: np.ndarray, positives: int, points: int = 101) -> float:
    """Average precision from true-positive flags in score order: the precision envelope
    (the best precision at this recall or beyond) read at ``points`` evenly spaced recalls
    from 0 to 1, as COCO's evaluation does (101 points)."""
    if positives == 0:
        return float("nan")
    if len(hits) == 0:
        return 0.0
    tp = np.cumsum(hits)
    recall = tp / positives
    precision = tp / np.arange(1, len(hits) + 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    at = np.searchsorted(recall, np.linspace(0, 1, points), side="left")
    return float(np.where(at < len(hits), envelope[np.minimum(at, len(hits) - 1)], 0.0).mean())


def mean_average_precision(detections, truths, num_classes: int,
                           thresholds=(0.5,) + COCO_THRESHOLDS, overlap=_box_overlap) -> dict:
    """Detection quality over a data set. ``detections``: per image (boxes (n, 4), scores
    (n,), classes (n,)); ``truths``: per image (boxes (m, 4), classes (m,)). For each IoU
    threshold, the AP (101-point interpolation) of each class that has ground truth,
    averaged: ``map50`` at IoU 0.5, ``map`` over 0.5:0.95 in steps of 0.05 (COCO's
    primary metric), ``per_class`` AP at 0.5 (NaN: no ground truth of that class).
    ``overlap`` measures a detection against the ground truth: box IoU, or
    :func:`mask_iou` with masks (n, H, W) in place of boxes (COCO's segm evaluation).

    >>> boxes = np.array([[0, 0, 10, 10.]])
    >>> r = mean_average_precision([(boxes, np.array([0.9]), np.array([0]))],
    ...                            [(boxes, np.array([0]))], num_classes=1)
    >>> r["map50"], r["map"]
    (1.0, 1.0)
    """
    if len(detections) != len(truths):
        raise ValueError(f"detections for {len(detections)} images but ground truth for "
                         f"{len(truths)}")
    table = {}
    for t in sorted(set(float(t) for t in thresholds)):
        table[t] = np.array([interpolated_ap(*_match(detections, truths, c, t, overlap))
                             for c in range(num_classes)])

    def mean(values):
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")

    coco = [table[float(t)] for t in COCO_THRESHOLDS if float(t) in table]
    return {"map50": mean(table[0.5]) if 0.5 in table else float("nan"),
            "map": mean(np.array([mean(v) for v in coco])) if coco else float("nan"),
            "per_class": table.get(0.5)}


# ----------------------------------------------------------------------------- embeddings
def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve: the chance that a random positive scores above a random
    negative (ties count one half), from the ranks (Mann-Whitney U)."""
    from scipy.stats import rankdata

    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def verification(distances: np.ndarray, same: np.ndarray) -> dict:
    """Same/different decisions from pair distances: ROC-AUC (a smaller distance says
    "same") and the accuracy of the best threshold ("same" below it), with the threshold."""
    d, same = np.asarray(distances, np.float64), np.asarray(same, bool)
    order = np.argsort(d, kind="stable")
    ds, ss = d[order], same[order]
    # "same" for the first k pairs, k = 0..n: correct = same among them + different after
    correct = np.concatenate([[0], np.cumsum(ss)]) + np.concatenate(
        [[(~ss).sum()], (~ss).sum() - np.cumsum(~ss)])
    # only cuts between different distances are thresholds
    valid = np.concatenate([[True], ds[1:] != ds[:-1], [True]])
    k = int(np.argmax(np.where(valid, correct, -1)))
    if 0 < k < len(ds):
        threshold = (ds[k - 1] + ds[k]) / 2
    else:  # all "different" or all "same"
        threshold = (ds[0] if k == 0 else ds[-1] + 1.0) if len(ds) else 0.0
    return {"roc_auc": roc_auc(-d, same), "accuracy": float(correct[k] / max(len(d), 1)),
            "threshold": float(threshold)}


def retrieval_accuracy(query: np.ndarray, query_labels, gallery: np.ndarray,
                       gallery_labels) -> float:
    """Nearest-neighbour retrieval: the fraction of queries whose nearest gallery
    embedding (Euclidean) has the query's label (recall@1)."""
    q, g = np.asarray(query, np.float64), np.asarray(gallery, np.float64)
    d = (q * q).sum(1)[:, None] - 2 * q @ g.T + (g * g).sum(1)[None, :]
    nearest = np.asarray(gallery_labels)[d.argmin(axis=1)]
    return float((nearest == np.asarray(query_labels)).mean())
