"""Losses and their gradients against PyTorch (torch.nn.functional and autograd)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.train import losses


def grad_of(fn, *arrays):
    tensors = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    value = fn(*tensors)
    value.backward()
    return float(value.detach()), [t.grad.numpy() for t in tensors]


@settings(max_examples=40)
@given(data=st.data())
def test_cross_entropy_matches_torch(data):
    n, c = data.draw(st.integers(1, 5)), data.draw(st.integers(2, 6))
    spatial = data.draw(st.sampled_from([(), (3,), (2, 3)]))
    rng = np.random.default_rng(data.draw(st.integers(0, 999)))
    logits = rng.standard_normal((n, c) + spatial) * 3
    target = rng.integers(0, c, (n,) + spatial)
    ignore = data.draw(st.booleans())
    if ignore:
        target[rng.random(target.shape) < 0.3] = -100
    smoothing = data.draw(st.sampled_from([0.0, 0.1, 0.3]))
    weight = rng.uniform(0.2, 2.0, c) if data.draw(st.booleans()) else None
    if ignore and (target == -100).all():
        return
    loss, grad = losses.cross_entropy(logits, target, label_smoothing=smoothing, weight=weight)
    expected, (tgrad,) = grad_of(lambda z: F.cross_entropy(
        z, torch.tensor(target), label_smoothing=smoothing,
        weight=None if weight is None else torch.tensor(weight)), logits)
    assert loss == pytest.approx(expected, rel=1e-10, abs=1e-12)
    np.testing.assert_allclose(grad, tgrad, rtol=1e-8, atol=1e-12)


def test_cross_entropy_errors_are_plain():
    with pytest.raises(ValueError, match="do not fit"):
        losses.cross_entropy(np.zeros((2, 3)), np.zeros(3, int))
    with pytest.raises(ValueError, match="0..2"):
        losses.cross_entropy(np.zeros((2, 3)), np.array([0, 3]))


@pytest.mark.parametrize("pos_weight", [None, [2.0, 0.5, 1.0]])
def test_bce_with_logits_matches_torch(pos_weight):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3)) * 10  # large logits: the stable form matters
    t = rng.uniform(0, 1, (4, 3))
    loss, grad = losses.bce_with_logits(x, t, pos_weight=pos_weight)
    pw = None if pos_weight is None else torch.tensor(pos_weight, dtype=torch.float64)
    expected, (tgrad,) = grad_of(lambda z: F.binary_cross_entropy_with_logits(
        z, torch.tensor(t), pos_weight=pw), x)
    assert loss == pytest.approx(expected, rel=1e-10)
    np.testing.assert_allclose(grad, tgrad, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (-1.0, 2.0), (0.5, 1.0), (0.25, 3.0)])
def test_focal_loss_matches_torchvision_formula(alpha, gamma):
    def torch_focal(z, t):  # torchvision.ops.sigmoid_focal_loss, reduction "mean"
        p = torch.sigmoid(z)
        ce = F.binary_cross_entropy_with_logits(z, t, reduction="none")
        loss = ce * (1 - (p * t + (1 - p) * (1 - t))) ** gamma
        if alpha >= 0:
            loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
        return loss.mean()

    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 4)) * 4
    t = (rng.random((5, 4)) < 0.3).astype(np.float64)
    loss, grad = losses.focal_loss(x, t, alpha=alpha, gamma=gamma)
    expected, (tgrad,) = grad_of(lambda z: torch_focal(z, torch.tensor(t)), x)
    assert loss == pytest.approx(expected, rel=1e-10)
    np.testing.assert_allclose(grad, tgrad, rtol=1e-8, atol=1e-14)


def test_mse_matches_torch():
    rng = np.random.default_rng(2)
    x, t = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    loss, grad = losses.mse(x, t)
    expected, (tgrad,) = grad_of(lambda z: F.mse_loss(z, torch.tensor(t)), x)
    assert loss == pytest.approx(expected)
    np.testing.assert_allclose(grad, tgrad, rtol=1e-12)


def test_triplet_loss_matches_torch():
    rng = np.random.default_rng(3)
    a, p, n = (rng.standard_normal((6, 5)) for _ in range(3))
    loss, grads = losses.triplet_loss(a, p, n, margin=1.5)
    expected, tgrads = grad_of(lambda x, y, z: F.triplet_margin_loss(x, y, z, margin=1.5), a, p, n)
    assert loss == pytest.approx(expected, rel=1e-10)
    for ours, theirs in zip(grads, tgrads):
        np.testing.assert_allclose(ours, theirs, rtol=1e-8, atol=1e-14)


def test_batch_hard_triplet_loss_matches_a_torch_version():
    rng = np.random.default_rng(4)
    e = rng.standard_normal((8, 4))
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 3])  # label 3 has no positive: not an anchor

    def torch_batch_hard(x):
        dist = torch.cdist(x, x)  # the anchors and picks; the loss through pairwise_distance
        same = torch.tensor(labels[:, None] == labels[None, :]) & ~torch.eye(8, dtype=bool)
        other = torch.tensor(labels[:, None] != labels[None, :])
        keep = same.any(1) & other.any(1)
        pos = torch.where(same, dist, -torch.inf).argmax(1)[keep]
        neg = torch.where(other, dist, torch.inf).argmin(1)[keep]
        return F.triplet_margin_loss(x[keep], x[pos], x[neg], margin=0.8)

    loss, grad = losses.batch_hard_triplet_loss(e, labels, margin=0.8)
    expected, (tgrad,) = grad_of(torch_batch_hard, e)
    assert loss == pytest.approx(expected, rel=1e-10)
    np.testing.assert_allclose(grad, tgrad, rtol=1e-8, atol=1e-14)
    with pytest.raises(ValueError, match="batch-hard mining needs"):
        losses.batch_hard_triplet_loss(e[:3], np.array([0, 1, 2]))


@pytest.mark.parametrize("spatial", [(), (3, 2)])
@pytest.mark.parametrize("smoothing, weighted", [(0.0, False), (0.1, False), (0.2, True)])
def test_cross_entropy_with_class_probabilities_matches_torch(spatial, smoothing, weighted):
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((4, 5) + spatial) * 2
    probs = rng.dirichlet(np.ones(5), (4,) + spatial)
    probs = np.moveaxis(probs, -1, 1)
    weight = rng.uniform(0.5, 2, 5) if weighted else None
    loss, grad = losses.cross_entropy(logits, probs, label_smoothing=smoothing, weight=weight)
    expected, (tgrad,) = grad_of(lambda z: F.cross_entropy(
        z, torch.tensor(probs), label_smoothing=smoothing,
        weight=None if weight is None else torch.tensor(weight)), logits)
    assert loss == pytest.approx(expected, rel=1e-10)
    np.testing.assert_allclose(grad, tgrad, rtol=1e-8, atol=1e-14)


def _torch_pair_distances(e, eps=1e-6):
    diff = e[:, None, :] - e[None, :, :] + eps
    return torch.sqrt((diff * diff).sum(2))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_all_triplet_loss_matches_a_torch_version(seed):
    rng = np.random.default_rng(seed)
    e = rng.standard_normal((12, 5))
    labels = rng.integers(0, 3, 12)

    def reference(t):
        d = _torch_pair_distances(t)
        lab = torch.tensor(labels)
        same = lab[:, None] == lab[None, :]
        pos = same & ~torch.eye(12, dtype=torch.bool)
        valid = pos[:, :, None] & ~same[:, None, :]
        hinge = (d[:, :, None] - d[:, None, :] + 1.5) * valid
        active = hinge > 0
        return hinge[active].sum() / active.sum()

    loss, grad, fraction = losses.batch_all_triplet_loss(e, labels, margin=1.5)
    expected, (tgrad,) = grad_of(reference, e)
    assert loss == pytest.approx(expected, rel=1e-10)
    np.testing.assert_allclose(grad, tgrad, atol=1e-10)
    assert 0 < fraction <= 1


def test_batch_all_without_a_valid_triplet_says_so():
    with pytest.raises(ValueError, match="batch-all mining needs"):
        losses.batch_all_triplet_loss(np.zeros((3, 2)), np.array([0, 1, 2]))


@pytest.mark.parametrize("margin", [0.5, 3.0])
def test_contrastive_loss_matches_a_torch_version(margin):
    rng = np.random.default_rng(4)
    e = rng.standard_normal((10, 4))
    labels = rng.integers(0, 3, 10)

    def reference(t):
        d = _torch_pair_distances(t)
        lab = torch.tensor(labels)
        same = (lab[:, None] == lab[None, :]).double()
        per = same * d ** 2 / 2 + (1 - same) * torch.clamp(margin - d, min=0) ** 2 / 2
        upper = torch.triu(torch.ones(10, 10), 1).bool()
        return per[upper].mean()

    loss, grad = losses.contrastive_loss(e, labels, margin=margin)
    expected, (tgrad,) = grad_of(reference, e)
    assert loss == pytest.approx(expected, rel=1e-10)
    np.testing.assert_allclose(grad, tgrad, atol=1e-10)


@pytest.mark.parametrize("ignore", [False, True])
def test_dice_loss_matches_a_torch_version(ignore):
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((2, 4, 5, 6)) * 2
    target = rng.integers(0, 4, (2, 5, 6))
    if ignore:
        target[rng.random(target.shape) < 0.3] = -100

    def reference(z):
        p = torch.softmax(z, 1)
        t = torch.tensor(target)
        keep = (t != -100)[:, None].double()
        onehot = F.one_hot(torch.where(t == -100, 0, t), 4).permute(0, 3, 1, 2).double() * keep
        inter = (p * keep * onehot).sum((0, 2, 3))
        total = (p * keep).sum((0, 2, 3)) + onehot.sum((0, 2, 3)) + 1.0
        return 1 - ((2 * inter + 1.0) / total).mean()

    loss, grad = losses.dice_loss(logits, target)
    expected, (tgrad,) = grad_of(reference, logits)
    assert loss == pytest.approx(expected, rel=1e-10)
    np.testing.assert_allclose(grad, tgrad, atol=1e-12)


def _random_boxes(rng, n):
    xy = rng.uniform(0, 20, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(0.5, 10, (n, 2))], axis=1)


def test_giou_loss_matches_torchvisions_formula():
    rng = np.random.default_rng(6)
    pred, target = _random_boxes(rng, 40), _random_boxes(rng, 40)
    pred[:5] = target[:5] + rng.uniform(-0.3, 0.3, (5, 4))  # overlapping pairs

    def reference(b):  # torchvision.ops.generalized_box_iou_loss, written from torch ops
        g = torch.tensor(target)
        x1, y1, x2, y2 = b.unbind(-1)
        x1g, y1g, x2g, y2g = g.unbind(-1)
        xk1, yk1 = torch.max(x1, x1g), torch.max(y1, y1g)
        xk2, yk2 = torch.min(x2, x2g), torch.min(y2, y2g)
        inter = torch.zeros_like(x1)
        mask = (yk2 > yk1) & (xk2 > xk1)
        inter[mask] = (xk2[mask] - xk1[mask]) * (yk2[mask] - yk1[mask])
        union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
        iou = inter / (union + 1e-7)
        xc1, yc1 = torch.min(x1, x1g), torch.min(y1, y1g)
        xc2, yc2 = torch.max(x2, x2g), torch.max(y2, y2g)
        area_c = (xc2 - xc1) * (yc2 - yc1)
        return (1 - (iou - (area_c - union) / (area_c + 1e-7))).mean()

    loss, grad = losses.giou_loss(pred, target)
    expected, (tgrad,) = grad_of(reference, pred)
    assert loss == pytest.approx(expected, rel=1e-10)
    np.testing.assert_allclose(grad, tgrad, atol=1e-12)
