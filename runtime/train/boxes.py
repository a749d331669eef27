"""Boxes for detection: intersection over union (IoU), generalized IoU (GIoU), greedy
non-maximum suppression per class with a score threshold and a top-k, and k-means anchor
sizes (YOLOv2's, with 1 - IoU as the distance), as Numba kernels.

Boxes are (n, 4) arrays of corners ``x1, y1, x2, y2`` with ``x1 <= x2`` and ``y1 <= y2``
(torchvision's convention). Degenerate boxes (zero width or height) are allowed: where a
union (or, for GIoU, an enclosing box) has zero area, the IoU (GIoU) is taken as 0, where
torchvision's formulas would divide 0 by 0.

>>> import numpy as np
>>> a = np.array([[0.0, 0.0, 2.0, 2.0]]); b = np.array([[1.0, 1.0, 3.0, 3.0]])
>>> float(box_iou(a, b)[0, 0])  # 1 / (4 + 4 - 1)
0.14285714285714285
>>> float(generalized_box_iou(a, b)[0, 0])  # 1/7 - (9 - 7) / 9
-0.07936507936507936
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from runtime.config import PARALLEL


@njit(cache=True)
def _iou_giou(ax1, ay1, ax2, ay2, bx1, by1, bx2, by2):
    iw = min(ax2, bx2) - max(ax1, bx1)
    ih = min(ay2, by2) - max(ay1, by1)
    inter = iw * ih if iw > 0 and ih > 0 else 0.0
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    iou = inter / union if union > 0 else 0.0
    hull = (max(ax2, bx2) - min(ax1, bx1)) * (max(ay2, by2) - min(ay1, by1))
    giou = iou - (hull - union) / hull if hull > 0 else iou
    return iou, giou


@njit(cache=True, **PARALLEL)
def _pairwise(a, b, generalized):
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.float64)
    for i in prange(a.shape[0]):
        for j in range(b.shape[0]):
            iou, giou = _iou_giou(a[i, 0], a[i, 1], a[i, 2], a[i, 3],
                                  b[j, 0], b[j, 1], b[j, 2], b[j, 3])
            out[i, j] = giou if generalized else iou
    return out


def _as_boxes(boxes) -> np.ndarray:
    array = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.ascontiguousarray(array)


def box_iou(a, b) -> np.ndarray:
    """IoU of every box of ``a`` (n, 4) with every box of ``b`` (m, 4): (n, m)."""
    return _pairwise(_as_boxes(a), _as_boxes(b), False)


def generalized_box_iou(a, b) -> np.ndarray:
    """GIoU (Rezatofighi et al. 2019): IoU minus the part of the smallest enclosing box
    that the union leaves empty; in [-1, 1], and informative for boxes that do not
    overlap. (n, m)."""
    return _pairwise(_as_boxes(a), _as_boxes(b), True)


@njit(cache=True)
def _nms(boxes, scores, classes, order, iou_threshold, top_k):
    n = order.shape[0]
    suppressed = np.zeros(n, dtype=np.bool_)
    keep = np.empty(n, dtype=np.int64)
    kept = 0
    for i in range(n):
        if suppressed[i]:
            continue
        a = order[i]
        keep[kept] = a
        kept += 1
        if kept == top_k:
            break
        for j in range(i + 1, n):
            b = order[j]
            if suppressed[j] or classes[a] != classes[b]:
                continue
            iou, _ = _iou_giou(boxes[a, 0], boxes[a, 1], boxes[a, 2], boxes[a, 3],
                               boxes[b, 0], boxes[b, 1], boxes[b, 2], boxes[b, 3])
            if iou > iou_threshold:
                suppressed[j] = True
    return keep[:kept]


def nms(boxes, scores, classes=None, *, iou_threshold: float = 0.5,
        score_threshold: float = -np.inf, top_k: int | None = None) -> np.ndarray:
    """Greedy non-maximum suppression: the indices of the boxes kept, by decreasing score.
    A box is dropped when a kept box of the same class (``classes``; None: one class, as
    torchvision's ``nms``, else its ``batched_nms``) with a higher score overlaps it with
    IoU above ``iou_threshold``. Boxes scoring at or below ``score_threshold`` are left out
    first; at most ``top_k`` are kept. Equal scores keep the order of the input (the
    lower index first).

    >>> boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], float)
    >>> nms(boxes, np.array([0.9, 0.8, 0.7]), iou_threshold=0.5).tolist()
    [0, 2]
    >>> nms(boxes, np.array([0.9, 0.8, 0.7]), np.array([0, 1, 0])).tolist()  # per class
    [0, 1, 2]
    """
    boxes = _as_boxes(boxes)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    classes = (np.zeros(len(boxes), np.int64) if classes is None
               else np.asarray(classes, dtype=np.int64).reshape(-1))
    candidates = np.nonzero(scores > score_threshold)[0]
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    limit = len(order) if top_k is None else int(top_k)
    if limit <= 0 or len(order) == 0:
        return np.zeros(0, dtype=np.int64)
    return _nms(boxes, scores, classes, order.astype(np.int64), float(iou_threshold), limit)


@njit(cache=True)
def _centred_iou(w, h, aw, ah):
    inter = min(w, aw) * min(h, ah)
    union = w * h + aw * ah - inter
    return inter / union if union > 0 else 0.0


@njit(cache=True)
def _kmeans(wh, centres, iterations):
    n, k = wh.shape[0], centres.shape[0]
    assign = np.full(n, -1, dtype=np.int64)
    for _ in range(iterations):
        changed = False
        for i in range(n):
            best, best_iou = 0, -1.0
            for c in range(k):
                iou = _centred_iou(wh[i, 0], wh[i, 1], centres[c, 0], centres[c, 1])
                if iou > best_iou:
                    best, best_iou = c, iou
            if assign[i] != best:
                assign[i] = best
                changed = True
        sums = np.zeros((k, 2))
        counts = np.zeros(k)
        for i in range(n):
            sums[assign[i]] += wh[i]
            counts[assign[i]] += 1
        for c in range(k):
            if counts[c] > 0:
                centres[c] = sums[c] / counts[c]
        if not changed:
            break
    return centres, assign


def kmeans_anchors(wh, k: int, *, seed: int = 0, iterations: int = 300):
    """Anchor sizes as YOLOv2 chose them: k-means on the (width, height) of the training
    boxes with distance 1 - IoU (boxes and centres aligned at a common centre, so only
    the shape counts), seeded by k distinct boxes drawn at random. Returns the centres
    (k, 2) sorted by area and the mean IoU of each box with its best anchor (YOLOv2's
    "Avg IoU")."""
    wh = np.ascontiguousarray(np.asarray(wh, dtype=np.float64).reshape(-1, 2))
    distinct = np.unique(wh, axis=0)
    if len(distinct) < k:
        raise ValueError(f"{k} anchors need at least {k} distinct box sizes; the training "
                         f"boxes have {len(distinct)}")
    rng = np.random.default_rng(seed)
    centres = distinct[rng.choice(len(distinct), k, replace=False)].copy()
    centres, _ = _kmeans(wh, centres, iterations)
    centres = centres[np.argsort(centres[:, 0] * centres[:, 1], kind="stable")]
    best = np.array([max(_centred_iou(w, h, aw, ah) for aw, ah in centres) for w, h in wh])
    return centres, float(best.mean())
