"""Box kernels (IoU, GIoU, NMS, k-means anchors) and detection/embedding metrics against
torchvision's formulas written from torch ops, hand-computed cases and brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.train import metrics
from runtime.train.boxes import box_iou, generalized_box_iou, kmeans_anchors, nms


def torch_iou(a, b):
    """torchvision.ops.box_iou / generalized_box_iou, from torch ops."""
    a, b = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    iou = inter / union
    lt = torch.min(a[:, None, :2], b[None, :, :2])
    rb = torch.max(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    hull = wh[..., 0] * wh[..., 1]
    return iou.numpy(), (iou - (hull - union) / hull).numpy(), hull.numpy(), union.numpy()


coordinate = st.integers(0, 12).map(float)


@st.composite
def box_sets(draw, max_size=8):
    n = draw(st.integers(0, max_size))
    rows = []
    for _ in range(n):
        x1, y1 = draw(coordinate), draw(coordinate)
        rows.append([x1, y1, x1 + draw(st.integers(0, 6)), y1 + draw(st.integers(0, 6))])
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


@settings(max_examples=150, deadline=None)
@given(a=box_sets(), b=box_sets())
def test_iou_and_giou_match_torchvision_including_degenerate_boxes(a, b):
    iou, giou = box_iou(a, b), generalized_box_iou(a, b)
    t_iou, t_giou, hull, union = torch_iou(a, b)
    assert iou.shape == giou.shape == (len(a), len(b))
    # torchvision divides 0 by 0 where a union (an enclosing box) has no area: there archc
    # takes the IoU as 0 (and the GIoU as that IoU less the empty part of the hull)
    np.testing.assert_allclose(iou, np.nan_to_num(t_iou, nan=0.0), atol=1e-12)
    with np.errstate(invalid="ignore", divide="ignore"):
        defined = np.where(hull > 0, iou - (hull - union) / hull, iou)
    np.testing.assert_allclose(giou, np.where(np.isnan(t_giou), defined, t_giou), atol=1e-12)
    assert (iou >= 0).all() and (iou <= 1).all() and (giou >= -1).all() and (giou <= iou).all()


def test_iou_hand_computed():
    a = np.array([[0, 0, 4, 4], [0, 0, 0, 5]], float)  # the second has no width
    b = np.array([[2, 2, 6, 6], [0, 0, 4, 4], [10, 10, 12, 12]], float)
    np.testing.assert_allclose(box_iou(a, b), [[4 / 28, 1, 0], [0, 0, 0]])
    # disjoint: 0 - (hull - union) / hull = -(144 - 20) / 144
    assert generalized_box_iou(a[:1], b[2:])[0, 0] == pytest.approx(-(144 - 20) / 144)


def torch_nms(boxes, scores, classes, threshold, score_threshold, top_k):
    """Greedy NMS written from torch ops: sort by score (stable), keep the best, drop what
    overlaps it (same class) above the threshold, repeat."""
    s = torch.tensor(scores)
    order = torch.argsort(-s, stable=True)
    order = order[s[order] > score_threshold]
    keep = []
    alive = order.tolist()
    while alive and len(keep) < top_k:
        best = alive.pop(0)
        keep.append(best)
        if not alive:
            break
        iou = torch_iou(boxes[[best]], boxes[alive])[0]
        alive = [j for j, v in zip(alive, iou[0]) if not (v > threshold and
                                                          classes[j] == classes[best])]
    return keep


@settings(max_examples=150, deadline=None)
@given(boxes=box_sets(12), data=st.data())
def test_nms_matches_a_torch_reference_with_ties_classes_and_limits(boxes, data):
    n = len(boxes)
    # scores from a small set: ties are common
    scores = np.array(data.draw(st.lists(st.sampled_from([0.1, 0.3, 0.5, 0.9]), min_size=n,
                                         max_size=n)), dtype=np.float64)
    classes = np.array(data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)),
                       dtype=np.int64)
    threshold = data.draw(st.sampled_from([0.0, 0.3, 0.5, 0.7]))
    score_threshold = data.draw(st.sampled_from([-1.0, 0.2, 0.6]))
    top_k = data.draw(st.sampled_from([1, 3, 100]))
    kept = nms(boxes, scores, classes, iou_threshold=threshold,
               score_threshold=score_threshold, top_k=top_k)
    assert kept.tolist() == torch_nms(boxes, scores, classes, threshold, score_threshold,
                                      top_k)


def test_nms_edge_cases():
    assert nms(np.zeros((0, 4)), np.zeros(0)).tolist() == []
    boxes = np.array([[0, 0, 1, 1], [0, 0, 1, 1]], float)
    assert nms(boxes, [0.5, 0.5]).tolist() == [0]  # a tie: the first
    assert nms(boxes, [0.5, 0.5], iou_threshold=1.0).tolist() == [0, 1]  # IoU 1 is not > 1
    assert nms(boxes, [0.5, 0.5], score_threshold=0.5).tolist() == []
    with pytest.raises(ValueError, match="2 boxes but 1 scores"):
        nms(boxes, [0.5])


def test_kmeans_anchors_find_the_clusters_of_box_shapes():
    rng = np.random.default_rng(0)
    shapes = np.array([[0.1, 0.3], [0.4, 0.1], [0.5, 0.5]])
    wh = np.concatenate([s * rng.uniform(0.95, 1.05, (50, 2)) for s in shapes])
    anchors, mean_iou = kmeans_anchors(wh, 3, seed=1)
    order = np.argsort(shapes.prod(1))
    np.testing.assert_allclose(anchors, shapes[order], rtol=0.03)
    assert mean_iou > 0.9
    with pytest.raises(ValueError, match="at least 4 distinct"):
        kmeans_anchors(shapes, 4)


# ----------------------------------------------------------------------------- mAP
def brute_force_ap(detections, truths, cls, threshold):
    """AP from the definition: for every cut-off k, match the top-k detections afresh and
    read precision and recall; the interpolated precision at recall r is the best
    precision of any cut-off reaching r; the mean over 101 recalls."""
    rows = sorted((-float(s), i, j) for i, (b, sc, c) in enumerate(detections)
                  for j, s in enumerate(sc) if c[j] == cls)
    positives = sum(int((np.asarray(c) == cls).sum()) for _, c in truths)
    if positives == 0:
        return float("nan")
    points = []
    for k in range(1, len(rows) + 1):
        taken, tp = set(), 0
        for _, i, j in rows[:k]:
            gt = [(g, box) for g, (box, c) in enumerate(zip(*truths[i])) if c == cls]
            best, best_iou = None, threshold
            for g, box in gt:
                if (i, g) in taken:
                    continue
                iou = box_iou(detections[i][0][j], box)[0, 0]
                if iou >= best_iou and (best is None or iou > best_iou):
                    best, best_iou = g, iou
            if best is not None:
                taken.add((i, best))
                tp += 1
        points.append((tp / positives, tp / k))
    return float(np.mean([max([p for r_k, p in points if r_k >= r - 1e-12], default=0.0)
                          for r in np.linspace(0, 1, 101)]))


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_map_matches_brute_force_on_random_boxes(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 10_000)))
    images = data.draw(st.integers(1, 3))
    detections, truths = [], []
    for _ in range(images):
        gt = np.round(rng.uniform(0, 20, (rng.integers(0, 4), 2)))
        gt = np.concatenate([gt, gt + rng.integers(1, 8, gt.shape)], axis=1)
        truths.append((gt, rng.integers(0, 2, len(gt))))
        n = rng.integers(0, 6)
        # near a ground-truth box, or anywhere in an image without one
        base = gt[rng.integers(0, len(gt), n)] if len(gt) else np.round(
            rng.uniform(0, 20, (n, 4)))
        near = base + rng.integers(-2, 3, (n, 4))
        near = np.concatenate([near[:, :2], np.maximum(near[:, 2:], near[:, :2] + 1)], axis=1)
        detections.append((near, rng.choice([0.2, 0.5, 0.9], n), rng.integers(0, 2, n)))
    result = metrics.mean_average_precision(detections, truths, num_classes=2)
    for t in (0.5, 0.75):
        expected = [brute_force_ap(detections, truths, c, t) for c in range(2)]
        got = [metrics.interpolated_ap(*metrics._match(detections, truths, c, t))
               for c in range(2)]
        np.testing.assert_allclose(got, expected, atol=1e-12)
    if np.isfinite(result["per_class"]).any():
        assert 0 <= result["map"] <= result["map50"] <= 1


def test_map_hand_computed_cases():
    gt = (np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), np.array([0, 0]))
    # a hit, a miss above it in score: precision 1/2 at recall 1/2, then nothing
    det = (np.array([[0, 0, 10, 10], [50, 50, 60, 60]], float), np.array([0.5, 0.9]),
           np.array([0, 0]))
    r = metrics.mean_average_precision([det], [gt], num_classes=1)
    assert r["map50"] == pytest.approx(51 / 101 * 0.5)  # recalls 0..0.5: 51 of 101 points
    # a duplicate of a matched box is a false positive
    dup = (np.array([[0, 0, 10, 10], [0, 0, 10, 10]], float), np.array([0.9, 0.8]),
           np.array([0, 0]))
    assert metrics.mean_average_precision([dup], [gt], 1)["map50"] == pytest.approx(51 / 101)
    # no predictions at all: AP 0; a class without ground truth is left out of the mean
    empty = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, int))
    r = metrics.mean_average_precision([empty], [gt], num_classes=3)
    assert r["map50"] == 0.0 and np.isnan(r["per_class"][1:]).all()
    # a box off by a little: matched at 0.5, not at 0.95
    off = (np.array([[0, 0, 10, 9]], float), np.array([0.9]), np.array([0]))
    r = metrics.mean_average_precision([off], [(gt[0][:1], gt[1][:1])], num_classes=1)
    assert r["map50"] == 1.0 and r["map"] == pytest.approx(0.9)  # IoU 0.9: 9 of 10


def test_roc_auc_and_verification():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    same = rng.random(200) < 0.4
    d = rng.random(200) + np.where(same, 0.0, 0.5)
    assert metrics.roc_auc(-d, same) == pytest.approx(roc_auc_score(same, -d))
    v = metrics.verification(d, same)
    brute = max(((d < t) == same).mean() for t in np.concatenate([d, d + 1e-9, [d.max() + 1]]))
    assert v["accuracy"] == pytest.approx(brute)
    assert ((d < v["threshold"]) == same).mean() == pytest.approx(v["accuracy"])
    assert metrics.retrieval_accuracy(np.eye(3), [0, 1, 2], np.eye(3) * 2, [0, 1, 2]) == 1.0
