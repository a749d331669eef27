"""The YOLO head: target assignment by hand, decoding, and the loss and its gradient
against the same loss written with torch ops (autograd)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from runtime.train.detection import YoloHead

ANCHORS = np.array([[0.1, 0.1], [0.3, 0.2]])


def head(**options):
    return YoloHead.fit((4, 4, 2 * 5 + 3), 3, ANCHORS, (64, 64), **options)


def test_assignment_by_hand():
    h = head()
    # a 16x8-pixel box centred at (40, 20): cell column 2, row 1; shape (0.25, 0.125)
    # fits anchor 1 (IoU 0.3125/... ) better than anchor 0
    t = h.targets([np.array([[32, 16, 48, 24, 2]], np.float32)])
    assert np.argwhere(t["mask"]).tolist() == [[0, 1, 2, 1]]
    box = t["box"][0, 1, 2, 1]
    np.testing.assert_allclose(box, [40 / 16 - 2, 20 / 16 - 1, np.log(0.25 / 0.3),
                                     np.log(0.125 / 0.2)])
    assert t["cell_class"][0, 1, 2] == 2 and (t["cell_class"] != -100).sum() == 1


def test_decoding_inverts_the_encoding():
    h = head()
    truth = np.array([[32, 16, 48, 24, 2], [3, 5, 9, 12, 0]], np.float32)
    t = h.targets([truth])
    out = np.full((1, 4, 4, 13), -20.0)
    raw = out[..., :10].reshape(1, 4, 4, 2, 5)
    x = t["box"][..., :2].clip(1e-6, 1 - 1e-6)
    raw[..., :2] = np.log(x / (1 - x))
    raw[..., 2:4] = t["box"][..., 2:]
    raw[..., 4] = np.where(t["mask"], 20.0, -20.0)
    out[..., :10] = raw.reshape(1, 4, 4, 10)
    out[..., 10:] = 0
    out[0, 1, 2, 10 + 2] = out[0, 0, 0, 10] = 10  # the classes of the two cells
    boxes, scores, classes = h.detections(out, score_threshold=0.5)[0]
    order = np.argsort(classes)
    np.testing.assert_allclose(boxes[order], truth[[1, 0], :4], atol=1e-4)
    assert classes[order].tolist() == [0, 2] and (scores > 0.99).all()


def torch_yolo_loss(h, out, truth):
    """The loss written from torch ops, with the targets from the (hand-checked)
    assignment."""
    t = h.targets(truth)
    n, s, b = out.shape[0], h.grid, h.boxes
    raw = out[..., :b * 5].reshape(n, s, s, b, 5)
    cls_logits = out[..., b * 5:]
    pos = torch.tensor(t["mask"])
    box = torch.tensor(t["box"])
    anchors = torch.tensor(h.anchors)
    cols = torch.arange(s).reshape(1, 1, s, 1)
    rows = torch.arange(s).reshape(1, s, 1, 1)
    cx = (cols + torch.sigmoid(raw[..., 0])) / s
    cy = (rows + torch.sigmoid(raw[..., 1])) / s
    w = anchors[:, 0] * torch.exp(raw[..., 2])
    hh = anchors[:, 1] * torch.exp(raw[..., 3])
    pred = torch.stack([cx - w / 2, cy - hh / 2, cx + w / 2, cy + hh / 2], -1)
    if h.box_loss == "mse":
        wh = torch.exp(box[..., 2:]) * anchors
        scale = torch.where(pos, 2 - wh[..., 0] * wh[..., 1], torch.zeros(()))
        per = ((torch.sigmoid(raw[..., :2]) - box[..., :2]) ** 2).sum(-1) + \
            ((raw[..., 2:4] - box[..., 2:]) ** 2).sum(-1)
        coord = h.lambda_coord * (scale * per).sum()
    else:
        p, g = pred[pos], torch.tensor(t["corners"])[pos]
        lt, rb = torch.max(p[:, :2], g[:, :2]), torch.min(p[:, 2:], g[:, 2:])
        inter = (rb - lt).clamp(min=0).prod(-1)
        union = (p[:, 2:] - p[:, :2]).prod(-1) + (g[:, 2:] - g[:, :2]).prod(-1) - inter
        hull = (torch.max(p[:, 2:], g[:, 2:]) - torch.min(p[:, :2], g[:, :2])).prod(-1)
        giou = inter / (union + 1e-7) - (hull - union) / (hull + 1e-7)
        coord = h.lambda_coord * (1 - giou).sum()
    ignore = torch.zeros_like(pos)
    with torch.no_grad():
        for i, rows_ in enumerate(truth):
            if len(rows_) == 0:
                continue
            g = torch.tensor(np.asarray(rows_, np.float64)[:, :4] / 64)
            pb = pred[i].reshape(-1, 4)
            lt = torch.max(pb[:, None, :2], g[None, :, :2])
            rb = torch.min(pb[:, None, 2:], g[None, :, 2:])
            inter = (rb - lt).clamp(min=0).prod(-1)
            union = (pb[:, 2:] - pb[:, :2]).prod(-1)[:, None] + \
                (g[:, 2:] - g[:, :2]).prod(-1)[None] - inter
            ignore[i] = ((inter / union).max(1).values > h.ignore_iou).reshape(s, s, b)
    counted = pos | ~ignore
    logits, target = raw[..., 4], pos.double()
    if h.objectness == "bce":
        weight = torch.where(pos, 1.0, h.lambda_noobj) * counted
        obj = (weight * F.binary_cross_entropy_with_logits(logits, target,
                                                          reduction="none")).sum()
    else:  # torchvision.ops.sigmoid_focal_loss, alpha 0.25, gamma 2, summed
        x, y = logits[counted], target[counted]
        p = torch.sigmoid(x)
        ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
        p_t = p * y + (1 - p) * (1 - y)
        obj = ((0.25 * y + 0.75 * (1 - y)) * ce * (1 - p_t) ** 2).sum()
    cells = torch.tensor(t["cell_class"] != -100)
    cls = F.cross_entropy(cls_logits[cells], torch.tensor(t["cell_class"])[cells],
                          reduction="sum")
    return (coord + obj + cls) / n


@pytest.mark.parametrize("box_loss, objectness", [("mse", "bce"), ("giou", "bce"),
                                                  ("mse", "focal")])
def test_loss_and_gradient_match_torch(box_loss, objectness):
    # a low ignore threshold: random predictions overlap ground truth often enough
    h = head(box_loss=box_loss, objectness=objectness, lambda_noobj=0.5, ignore_iou=0.1)
    rng = np.random.default_rng(0)
    truth = []
    for k in (3, 0, 2):
        xy = rng.uniform(0, 40, (k, 2))
        wh = rng.uniform(4, 24, (k, 2))
        truth.append(np.concatenate([xy, xy + wh, rng.integers(0, 3, (k, 1))], 1))
    out = rng.standard_normal((3, 4, 4, 13))
    t = h.targets(truth)
    loss, grad, parts = h.loss(out, truth)
    tensor = torch.tensor(out, requires_grad=True)
    expected = torch_yolo_loss(h, tensor, truth)
    expected.backward()
    assert loss == pytest.approx(float(expected.detach()), rel=1e-10)
    np.testing.assert_allclose(grad, tensor.grad.numpy(), atol=1e-10)
    assert parts["assigned"] == int(t["mask"].sum()) == 5
    # the ignore rule took some anchors out of the objectness loss
    nothing_ignored = head(box_loss=box_loss, objectness=objectness, lambda_noobj=0.5,
                           ignore_iou=1.0).loss(out, truth)[2]["objectness"]
    assert nothing_ignored > parts["objectness"]


def test_shapes_that_do_not_fit_are_explained():
    with pytest.raises(ValueError, match=r"not B \* 5 \+ 3 .*--set C=3"):
        YoloHead.fit((7, 7, 30), 3, ANCHORS, (448, 448))
    with pytest.raises(ValueError, match="square grid"):
        YoloHead.fit((10,), 3, ANCHORS, (64, 64))
