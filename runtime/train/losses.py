"""Loss functions: each returns the mean loss and its gradient with respect to the
network's output (what ``Model.backward`` takes), with PyTorch's definitions
(torch.nn.functional.cross_entropy, binary_cross_entropy_with_logits, mse_loss,
triplet_margin_loss; torchvision.ops.sigmoid_focal_loss). Computed in float64 and handed
back in the output's dtype.
"""

from __future__ import annotations

import numpy as np


def log_softmax(z: np.ndarray) -> np.ndarray:
    """log softmax over axis 1 (the classes), stable (the maximum subtracted first)."""
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def cross_entropy(logits: np.ndarray, target: np.ndarray, *, label_smoothing: float = 0.0,
                  ignore_index: int = -100, weight: np.ndarray | None = None):
    """Softmax cross-entropy over the class axis 1: logits (N, C) with target (N,), or per
    pixel, logits (N, C, H, W) with target (N, H, W). Targets equal to ``ignore_index``
    count for nothing; class weights scale each target's term and the mean divides by
    their sum (as PyTorch); label smoothing mixes in the mean over all classes. Targets
    shaped like the logits, of floats, are class probabilities (mixup, cutmix)."""
    z = logits.astype(np.float64)
    c = z.shape[1]
    target = np.asarray(target)
    if target.shape == z.shape and np.issubdtype(target.dtype, np.floating):
        return _soft_cross_entropy(logits, target, label_smoothing, weight)
    if target.shape != (z.shape[0],) + z.shape[2:]:
        raise ValueError(f"targets of shape {target.shape} do not fit logits of shape "
                         f"{logits.shape}: expected {(z.shape[0],) + z.shape[2:]}")
    keep = target != ignore_index
    labels = np.where(keep, target, 0)
    if keep.any() and (labels.min() < 0 or labels.max() >= c):
        raise ValueError(f"class labels must lie in 0..{c - 1} (or be the ignore index "
                         f"{ignore_index}); got {labels.min()}..{labels.max()}")
    w = np.ones(c) if weight is None else np.asarray(weight, dtype=np.float64)
    logp = log_softmax(z)
    # classes to axis 1 -> one row per sample (or pixel): (M, C)
    rows = np.moveaxis(logp, 1, -1).reshape(-1, c)
    flat_labels, flat_keep = labels.reshape(-1), keep.reshape(-1)
    w_target = w[flat_labels] * flat_keep
    denom = w_target.sum()
    if denom == 0:
        return 0.0, np.zeros_like(logits)
    nll = -(w_target * rows[np.arange(len(rows)), flat_labels]).sum() / denom
    smooth = -((rows * w).sum(axis=1) * flat_keep).sum() / denom
    loss = (1 - label_smoothing) * nll + label_smoothing / c * smooth
    p = np.exp(rows)
    onehot = np.zeros_like(rows)
    onehot[np.arange(len(rows)), flat_labels] = 1
    grad = ((1 - label_smoothing) * w_target[:, None] * (p - onehot)
            + label_smoothing / c * flat_keep[:, None] * (p * w.sum() - w)) / denom
    grad = np.moveaxis(grad.reshape(np.moveaxis(logp, 1, -1).shape), -1, 1)
    return float(loss), grad.astype(logits.dtype)


def classification_step(logits: np.ndarray, target: np.ndarray, *,
                        label_smoothing: float = 0.0):
    """What a training step needs from a classifier's output: the mean cross-entropy, its
    gradient with respect to the logits, and how many samples (pixels, for per-pixel
    logits) have their label as top class (for the accuracy; with class probabilities as
    targets, their most likely class). A device backend computes the same on its arrays
    (``Backend.classify``), so only the two numbers cross the bus."""
    loss, grad = cross_entropy(logits, target, label_smoothing=label_smoothing)
    target = np.asarray(target)
    labels = target.argmax(axis=1) if target.shape == logits.shape else target
    return loss, grad, int((logits.argmax(axis=1) == labels).sum())


def _soft_cross_entropy(logits, target, label_smoothing, weight):
    """Cross-entropy against class probabilities (mixup, cutmix), as PyTorch: the mean
    over samples (and pixels) of -sum_c w_c t_c log p_c."""
    c = logits.shape[1]
    t = target.astype(np.float64) * (1 - label_smoothing) + label_smoothing / c
    w = (np.ones(c) if weight is None else np.asarray(weight, np.float64)).reshape(
        (1, c) + (1,) * (logits.ndim - 2))
    logp = log_softmax(logits.astype(np.float64))
    count = logits.size // c
    wt = w * t
    loss = -(wt * logp).sum() / count
    grad = (np.exp(logp) * wt.sum(axis=1, keepdims=True) - wt) / count
    return float(loss), grad.astype(logits.dtype)


def _softplus_neg(x):
    """log(1 + exp(-x)), stable."""
    return np.logaddexp(0.0, -x)


def sigmoid(x):
    """1 / (1 + exp(-x)) without overflow for any x."""
    return np.exp(-np.logaddexp(0.0, -x))


def bce_with_logits(logits: np.ndarray, target: np.ndarray, *, pos_weight=None):
    """Mean binary cross-entropy of sigmoid(logits) against targets in [0, 1]; a positive
    weight scales the positive term (per class, broadcast along the last axes)."""
    x, t = logits.astype(np.float64), np.asarray(target, dtype=np.float64)
    pw = 1.0 if pos_weight is None else np.asarray(pos_weight, dtype=np.float64)
    per = pw * t * _softplus_neg(x) + (1 - t) * _softplus_neg(-x)
    grad = (sigmoid(x) * (pw * t + 1 - t) - pw * t) / x.size
    return float(per.mean()), grad.astype(logits.dtype)


def focal_loss(logits: np.ndarray, target: np.ndarray, *, alpha: float = 0.25,
               gamma: float = 2.0):
    """Sigmoid focal loss (Lin et al. 2017, as torchvision's sigmoid_focal_loss), mean:
    the binary cross-entropy scaled by (1 - p_t)^gamma, and by alpha for positives and
    1 - alpha for negatives (alpha < 0: no weighting)."""
    x, t = logits.astype(np.float64), np.asarray(target, dtype=np.float64)
    p = sigmoid(x)
    ce = t * _softplus_neg(x) + (1 - t) * _softplus_neg(-x)
    p_t = p * t + (1 - p) * (1 - t)
    q = 1 - p_t
    mod = q ** gamma
    # d/dx of (1 - p_t)^gamma, zero where 1 - p_t is 0 (gamma >= 1)
    dmod = -gamma * np.where(q > 0, q ** (gamma - 1), 0.0) * p * (1 - p) * (2 * t - 1)
    a_t = alpha * t + (1 - alpha) * (1 - t) if alpha >= 0 else np.ones_like(t)
    loss = a_t * ce * mod
    grad = a_t * ((p - t) * mod + ce * dmod) / x.size
    return float(loss.mean()), grad.astype(logits.dtype)


def mse(output: np.ndarray, target: np.ndarray):
    """Mean squared error."""
    d = output.astype(np.float64) - np.asarray(target, dtype=np.float64)
    return float((d * d).mean()), (2 * d / d.size).astype(output.dtype)


def _distance(a, b, eps):
    """PyTorch's pairwise_distance: ||a - b + eps||, with its gradient direction."""
    diff = a - b + eps
    norm = np.sqrt((diff * diff).sum(axis=1))
    return norm, diff / np.maximum(norm, 1e-30)[:, None]


def triplet_loss(anchor: np.ndarray, positive: np.ndarray, negative: np.ndarray, *,
                 margin: float = 1.0, eps: float = 1e-6):
    """mean(max(d(a, p) - d(a, n) + margin, 0)) with Euclidean distances, and the
    gradients of anchor, positive and negative."""
    a, p, n = (v.astype(np.float64) for v in (anchor, positive, negative))
    dap, uap = _distance(a, p, eps)
    dan, uan = _distance(a, n, eps)
    active = ((dap - dan + margin) > 0)[:, None] / len(a)
    loss = np.maximum(dap - dan + margin, 0).mean()
    ga, gp, gn = active * (uap - uan), -active * uap, active * uan
    return float(loss), tuple(g.astype(anchor.dtype) for g in (ga, gp, gn))


def batch_hard_triplet_loss(embeddings: np.ndarray, labels: np.ndarray, *,
                            margin: float = 1.0, eps: float = 1e-6):
    """Batch-hard mining (Hermans, Beyer and Leibe 2017): every sample is an anchor, with
    the farthest sample of its label as positive and the nearest of another label as
    negative; anchors without both are left out. Returns the loss and the gradient of the
    embeddings."""
    e = embeddings.astype(np.float64)
    labels = np.asarray(labels)
    diff = e[:, None, :] - e[None, :, :] + eps
    dist = np.sqrt((diff * diff).sum(axis=2))
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    other = labels[:, None] != labels[None, :]
    usable = same.any(axis=1) & other.any(axis=1)
    if not usable.any():
        raise ValueError("batch-hard mining needs, for some sample, another of its label and "
                         "one of a different label in the same batch")
    anchors = np.nonzero(usable)[0]
    pos = np.where(same, dist, -np.inf)[anchors].argmax(axis=1)
    neg = np.where(other, dist, np.inf)[anchors].argmin(axis=1)
    loss, (ga, gp, gn) = triplet_loss(e[anchors], e[pos], e[neg], margin=margin, eps=eps)
    grad = np.zeros_like(e)
    np.add.at(grad, anchors, ga)
    np.add.at(grad, pos, gp)
    np.add.at(grad, neg, gn)
    return loss, grad.astype(embeddings.dtype)


def _pair_distances(e: np.ndarray, eps: float):
    """d[i, j] = ||e_i - e_j + eps|| (PyTorch's pairwise_distance between rows) and the
    unit directions u[i, j] = (e_i - e_j + eps) / d[i, j]."""
    diff = e[:, None, :] - e[None, :, :] + eps
    dist = np.sqrt((diff * diff).sum(axis=2))
    return dist, diff / np.maximum(dist, 1e-30)[:, :, None]


def _through_distances(g_dist: np.ndarray, unit: np.ndarray) -> np.ndarray:
    """The embeddings' gradient from the gradient of the distance matrix: d[i, j] moves
    with e_i along u[i, j] and with e_j against it."""
    return (g_dist[:, :, None] * unit).sum(axis=1) - (g_dist[:, :, None] * unit).sum(axis=0)


def batch_all_triplet_loss(embeddings: np.ndarray, labels: np.ndarray, *,
                           margin: float = 1.0, eps: float = 1e-6):
    """Batch-all mining (Hermans, Beyer and Leibe 2017): every valid triplet of the batch
    (anchor, another sample of its label, a sample of another label) with its hinge
    max(d(a, p) - d(a, n) + margin, 0); the mean over the triplets whose hinge is
    positive (the "active" ones, so easy triplets do not dilute the loss). Returns the
    loss, the embeddings' gradient and the fraction of active triplets."""
    e = embeddings.astype(np.float64)
    labels = np.asarray(labels)
    dist, unit = _pair_distances(e, eps)
    same = labels[:, None] == labels[None, :]
    positive = same & ~np.eye(len(e), dtype=bool)
    valid = positive[:, :, None] & ~same[:, None, :]  # [anchor, positive, negative]
    if not valid.any():
        raise ValueError("batch-all mining needs a sample with another of its label and one "
                         "of a different label in the same batch")
    hinge = (dist[:, :, None] - dist[:, None, :] + margin) * valid
    active = hinge > 0
    count = int(active.sum())
    if count == 0:
        return 0.0, np.zeros_like(embeddings), 0.0
    loss = hinge[active].sum() / count
    # d(a, p) appears with +1 in each of its active triplets, d(a, n) with -1
    g_dist = (active.sum(axis=2) - active.sum(axis=1)) / count
    grad = _through_distances(g_dist, unit)
    return float(loss), grad.astype(embeddings.dtype), count / int(valid.sum())


def contrastive_loss(embeddings: np.ndarray, labels: np.ndarray, *, margin: float = 1.0,
                     eps: float = 1e-6):
    """Contrastive loss (Hadsell, Chopra and LeCun 2006) over every pair i < j of the
    batch: d^2 / 2 for a pair of one label, max(margin - d, 0)^2 / 2 for a pair of two,
    averaged over the pairs. Returns the loss and the embeddings' gradient."""
    e = embeddings.astype(np.float64)
    labels = np.asarray(labels)
    n = len(e)
    if n < 2:
        raise ValueError("the contrastive loss needs at least two samples in a batch")
    dist, unit = _pair_distances(e, eps)
    upper = np.triu(np.ones((n, n), dtype=bool), 1)
    same = labels[:, None] == labels[None, :]
    pairs = int(upper.sum())
    gap = np.maximum(margin - dist, 0.0)
    per = np.where(same, dist ** 2, gap ** 2) / 2 * upper
    g_dist = np.where(same, dist, -gap) * upper / pairs
    return float(per.sum() / pairs), _through_distances(g_dist, unit).astype(embeddings.dtype)


def dice_loss(logits: np.ndarray, target: np.ndarray, *, ignore_index: int = -100,
              smooth: float = 1.0):
    """Soft Dice loss for segmentation (Milletari et al. 2016): with p the softmax over
    the classes (axis 1) and t the one-hot targets, 1 - the mean over classes of
    (2 sum p t + smooth) / (sum p + sum t + smooth), the sums over the batch and every
    pixel not labelled ``ignore_index``. Returns the loss and the gradient of the logits."""
    z = logits.astype(np.float64)
    c = z.shape[1]
    target = np.asarray(target)
    if target.shape != (z.shape[0],) + z.shape[2:]:
        raise ValueError(f"targets of shape {target.shape} do not fit logits of shape "
                         f"{logits.shape}: expected {(z.shape[0],) + z.shape[2:]}")
    keep = (target != ignore_index)[:, None].astype(np.float64)
    p = np.exp(log_softmax(z))
    t = (np.where(target == ignore_index, -1, target)[:, None]
         == np.arange(c).reshape((1, c) + (1,) * (z.ndim - 2))).astype(np.float64)
    axes = (0,) + tuple(range(2, z.ndim))
    pk = p * keep
    inter = (pk * t).sum(axis=axes)
    total = pk.sum(axis=axes) + t.sum(axis=axes) + smooth
    dice = (2 * inter + smooth) / total
    shape = (1, c) + (1,) * (z.ndim - 2)
    g_p = -(2 * t * total.reshape(shape) - (2 * inter + smooth).reshape(shape)) / (
        total.reshape(shape) ** 2) / c * keep
    grad = p * (g_p - (g_p * p).sum(axis=1, keepdims=True))  # through the softmax
    return float(1 - dice.mean()), grad.astype(logits.dtype)


def giou_loss(pred: np.ndarray, target: np.ndarray, *, eps: float = 1e-7):
    """Mean of 1 - GIoU over pairs of boxes (n, 4), ``x1, y1, x2, y2`` (torchvision's
    generalized_box_iou_loss with reduction "mean"), and the gradient of ``pred``."""
    b = pred.astype(np.float64).reshape(-1, 4)
    g = np.asarray(target, np.float64).reshape(-1, 4)
    n = max(len(b), 1)
    ix1, iy1 = np.maximum(b[:, 0], g[:, 0]), np.maximum(b[:, 1], g[:, 1])
    ix2, iy2 = np.minimum(b[:, 2], g[:, 2]), np.minimum(b[:, 3], g[:, 3])
    iw, ih = ix2 - ix1, iy2 - iy1
    overlap = (iw > 0) & (ih > 0)
    inter = np.where(overlap, iw * ih, 0.0)
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    area_g = (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1])
    union = area_b + area_g - inter
    iou = inter / (union + eps)
    cx1, cy1 = np.minimum(b[:, 0], g[:, 0]), np.minimum(b[:, 1], g[:, 1])
    cx2, cy2 = np.maximum(b[:, 2], g[:, 2]), np.maximum(b[:, 3], g[:, 3])
    hull = (cx2 - cx1) * (cy2 - cy1)
    loss = 1 - iou + (hull - union) / (hull + eps)
    # backward: loss = 1 - I/(U+e) + (H - U)/(H+e) = 2 - I/(U+e) - (U+e)/(H+e) + e/(H+e)
    d_inter = -1 / (union + eps)
    d_union = inter / (union + eps) ** 2 - 1 / (hull + eps)
    d_hull = (union + eps) / (hull + eps) ** 2
    d_inter = d_inter - d_union  # union = areas - inter
    grad = np.zeros_like(b)
    w_b, h_b = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    # area of pred
    grad[:, 0] -= d_union * h_b
    grad[:, 2] += d_union * h_b
    grad[:, 1] -= d_union * w_b
    grad[:, 3] += d_union * w_b
    # intersection: only where the boxes overlap, through pred's own corners
    di = np.where(overlap, d_inter, 0.0)
    grad[:, 0] -= np.where(b[:, 0] >= g[:, 0], di * ih, 0.0)
    grad[:, 2] += np.where(b[:, 2] <= g[:, 2], di * ih, 0.0)
    grad[:, 1] -= np.where(b[:, 1] >= g[:, 1], di * iw, 0.0)
    grad[:, 3] += np.where(b[:, 3] <= g[:, 3], di * iw, 0.0)
    # enclosing box
    ch, cw = cy2 - cy1, cx2 - cx1
    grad[:, 0] -= np.where(b[:, 0] <= g[:, 0], d_hull * ch, 0.0)
    grad[:, 2] += np.where(b[:, 2] >= g[:, 2], d_hull * ch, 0.0)
    grad[:, 1] -= np.where(b[:, 1] <= g[:, 1], d_hull * cw, 0.0)
    grad[:, 3] += np.where(b[:, 3] >= g[:, 3], d_hull * cw, 0.0)
    return float(loss.sum() / n), (grad / n).astype(pred.dtype).reshape(pred.shape)


LOSSES = {"cross_entropy": cross_entropy, "bce_with_logits": bce_with_logits,
          "focal": focal_loss, "mse": mse, "dice": dice_loss, "giou": giou_loss}
