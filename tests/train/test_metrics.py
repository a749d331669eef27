"""Metrics, on cases worked out by hand and against brute-force counts."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.train import metrics


def test_accuracy_and_top_k_by_hand():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    labels = np.array([1, 1, 0, 2])
    assert metrics.accuracy(scores, labels) == 0.25
    assert metrics.top_k_accuracy(scores, labels, k=2) == 0.5
    assert metrics.top_k_accuracy(scores, labels, k=3) == 1.0
    assert metrics.top_k_accuracy(scores, labels, k=9) == 1.0
    labels[1] = -100  # ignored
    assert metrics.accuracy(scores, labels) == pytest.approx(1 / 3)


def test_confusion_precision_recall_iou_by_hand():
    # predicted: 1, 0, 2, 0; true: 1, 1, 0, 2
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    cm = metrics.confusion_matrix(scores, np.array([1, 1, 0, 2]))
    assert cm.tolist() == [[0, 0, 1], [1, 1, 0], [1, 0, 0]]
    stats = metrics.per_class(cm)
    np.testing.assert_allclose(stats["precision"], [0, 1, 0])
    np.testing.assert_allclose(stats["recall"], [0, 0.5, 0])
    np.testing.assert_allclose(stats["iou"], [0, 0.5, 0])
    assert stats["mean_iou"] == pytest.approx(0.5 / 3)


def test_per_pixel_metrics_match_brute_force():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((2, 4, 5, 6))
    labels = rng.integers(0, 4, (2, 5, 6))
    labels[0, 0, :3] = 255
    cm = metrics.confusion_matrix(scores, labels, ignore_index=255)
    predicted = scores.argmax(axis=1)
    brute = np.zeros((4, 4), int)
    for t, p in zip(labels.ravel(), predicted.ravel()):
        if t != 255:
            brute[t, p] += 1
    assert (cm == brute).all() and cm.sum() == labels.size - 3
    iou = metrics.per_class(cm)["iou"]
    for k in range(4):
        inter = ((predicted == k) & (labels == k)).sum()
        union = (((predicted == k) | (labels == k)) & (labels != 255)).sum()
        assert iou[k] == pytest.approx(inter / union)
    with pytest.raises(ValueError, match="do not fit"):
        metrics.accuracy(scores, labels[:1])
