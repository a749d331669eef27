"""Two-stage detection (Faster R-CNN, Mask R-CNN) around a network's outputs, as
torchvision.models.detection does it: anchors over the pyramid levels, the box coder, the
region proposal network's targets and proposals, the RoI heads' sampling and targets, the
losses, and the post-processing of detections and instance masks.

The network (``specs/faster_rcnn.yaml``, ``specs/mask_rcnn.yaml``) computes, per image:
- per pyramid level ``objectness_<level>`` (A, H, W) and ``deltas_<level>`` (4A, H, W):
  one objectness logit and one box delta per anchor, A anchors at each position;
- from the boxes of its ``proposals`` input (R, 4), ``class_logits`` (R, C) and
  ``box_regression`` (R, 4C), C classes with class 0 the background;
- for Mask R-CNN, from the boxes of its ``mask_boxes`` input (M, 4), ``mask_logits``
  (M, C, S, S).

The proposals depend on the RPN's outputs of the same pass, and in training on the ground
truth: :meth:`RCNN.feed` gives the model functions for those inputs, called in the pass
when the RoI Align that reads them is reached (``Model.__call__``). The box counts R and M
are fixed by the spec; where fewer boxes are chosen, the rest repeat the last one and count
for nothing (``valid``).

Boxes are ``x1, y1, x2, y2`` in input pixels; the data's class ``c`` is the network's
class ``c + 1``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from runtime.train import losses
from runtime.train.boxes import box_iou, nms

RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
HEAD_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
DELTA_CLAMP = math.log(1000.0 / 16)  # the largest log-scale a decoded box may take
BELOW, BETWEEN = -1, -2  # a matcher's verdicts for boxes it does not assign


# ----------------------------------------------------------------------------- anchors
def cell_anchors(sizes, ratios) -> np.ndarray:
    """The anchors of one position (A, 4), centred on 0: for each aspect ratio h/w and
    each size (one number or several), a box of area ``size ** 2``, corners rounded to
    whole pixels; ratio by ratio, the sizes inside (torchvision's AnchorGenerator)."""
    ratios = np.asarray(ratios, np.float64)
    h = np.sqrt(ratios)
    w = 1.0 / h
    sizes = np.atleast_1d(np.asarray(sizes, np.float64))
    ws, hs = (w[:, None] * sizes[None]).reshape(-1), (h[:, None] * sizes[None]).reshape(-1)
    return np.round(np.stack([-ws, -hs, ws, hs], axis=1) / 2)


def grid_anchors(sizes, ratios, stride: tuple[int, int], grid: tuple[int, int]):
    """Every anchor of a level (H * W * A, 4): positions row by row, the A anchors of a
    position together (the order the RPN's outputs are read in)."""
    base = cell_anchors(sizes, ratios)
    ys = np.arange(grid[0], dtype=np.float64) * stride[0]
    xs = np.arange(grid[1], dtype=np.float64) * stride[1]
    sy, sx = np.meshgrid(ys, xs, indexing="ij")
    shifts = np.stack([sx, sy, sx, sy], axis=-1).reshape(-1, 1, 4)
    return (shifts + base[None]).reshape(-1, 4)


# ------------------------------------------------------------------ output layouts
def anchor_rows(x, per_position: int) -> np.ndarray:
    """A level's output for one image, (A * D, H, W) with each anchor's D values together
    (torchvision's heads), as rows (H * W * A, D): positions row by row, a position's A
    anchors together (the order of :func:`grid_anchors`)."""
    x = np.asarray(x, np.float64)
    depth = x.shape[0] // per_position
    return x.reshape(per_position, depth, *x.shape[1:]).transpose(2, 3, 0, 1).reshape(-1, depth)


def anchor_maps(rows, per_position: int, grid: tuple[int, int]) -> np.ndarray:
    """:func:`anchor_rows` undone for a batch: (N, H * W * A, D) -> (N, A * D, H, W)."""
    n, _, depth = rows.shape
    h, w = grid
    return rows.reshape(n, h, w, per_position, depth).transpose(0, 3, 4, 1, 2).reshape(
        n, per_position * depth, h, w)


# ----------------------------------------------------------------------------- box coder
def encode(boxes, reference, weights) -> np.ndarray:
    """Deltas (dx, dy, dw, dh) that move ``reference`` boxes (n, 4) onto ``boxes`` (n, 4):
    centre shifts in units of the reference's size, log size ratios, each times its
    weight."""
    boxes, reference = np.asarray(boxes, np.float64), np.asarray(reference, np.float64)
    wx, wy, ww, wh = weights
    rw, rh = reference[:, 2] - reference[:, 0], reference[:, 3] - reference[:, 1]
    rx, ry = reference[:, 0] + 0.5 * rw, reference[:, 1] + 0.5 * rh
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    bx, by = boxes[:, 0] + 0.5 * bw, boxes[:, 1] + 0.5 * bh
    return np.stack([wx * (bx - rx) / rw, wy * (by - ry) / rh,
                     ww * np.log(bw / rw), wh * np.log(bh / rh)], axis=1)


def decode(deltas, reference, weights) -> np.ndarray:
    """The boxes that deltas (n, k * 4) make of ``reference`` boxes (n, 4): (n, k * 4),
    with log sizes clamped at ``DELTA_CLAMP``."""
    deltas = np.asarray(deltas, np.float64)
    reference = np.asarray(reference, np.float64)
    if not deltas.size:
        return deltas.copy()
    d = deltas.reshape(len(deltas), -1, 4) / np.asarray(weights, np.float64)
    rw = (reference[:, 2] - reference[:, 0])[:, None]
    rh = (reference[:, 3] - reference[:, 1])[:, None]
    rx, ry = reference[:, 0][:, None] + 0.5 * rw, reference[:, 1][:, None] + 0.5 * rh
    cx, cy = d[..., 0] * rw + rx, d[..., 1] * rh + ry
    w = np.exp(np.minimum(d[..., 2], DELTA_CLAMP)) * rw
    h = np.exp(np.minimum(d[..., 3], DELTA_CLAMP)) * rh
    return np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h],
                    axis=-1).reshape(deltas.shape)


def clip(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Boxes (..., 4) cut to the image (height, width)."""
    h, w = size
    return np.stack([np.clip(boxes[..., 0], 0, w), np.clip(boxes[..., 1], 0, h),
                     np.clip(boxes[..., 2], 0, w), np.clip(boxes[..., 3], 0, h)], axis=-1)


# ----------------------------------------------------------------------------- matching
@njit(cache=True)
def _match(iou, high, low, low_quality):
    """Per column (a box to assign), the row (a ground-truth box) it overlaps most, or
    BELOW (best IoU under ``low``) or BETWEEN (from ``low`` up to ``high``); with
    ``low_quality``, every column that is the best of some row for it keeps its best
    row whatever the IoU (ties included)."""
    rows, cols = iou.shape
    best = np.full(cols, -1, dtype=np.int64)
    value = np.full(cols, -1.0)
    for j in range(cols):
        for i in range(rows):
            if iou[i, j] > value[j]:
                value[j], best[j] = iou[i, j], i
    out = best.copy()
    for j in range(cols):
        if value[j] < low:
            out[j] = BELOW
        elif value[j] < high:
            out[j] = BETWEEN
    if low_quality:
        for i in range(rows):
            top = 0.0
            for j in range(cols):
                top = max(top, iou[i, j])
            if top <= 0.0:  # a box no column touches gives no match
                continue
            for j in range(cols):
                if iou[i, j] == top:
                    out[j] = best[j]
    return out


def match(iou: np.ndarray, high: float, low: float, low_quality: bool) -> np.ndarray:
    """torchvision's Matcher over an IoU matrix (ground truth, boxes): per box, the index
    of its ground truth, or BELOW / BETWEEN. (A ground-truth box that overlaps nothing
    takes no box, where torchvision would give it every box at IoU 0.)"""
    iou = np.ascontiguousarray(iou, dtype=np.float64)
    if iou.shape[0] == 0:
        return np.full(iou.shape[1], BELOW, dtype=np.int64)
    return _match(iou, float(high), float(low), bool(low_quality))


def sample(labels: np.ndarray, count: int, positive_fraction: float, rng):
    """A balanced draw (torchvision's BalancedPositiveNegativeSampler): up to
    ``count * positive_fraction`` of the positives (label >= 1), the rest of ``count``
    from the negatives (label 0), both at random. Returns (positive indices, negative
    indices)."""
    positive = np.nonzero(labels >= 1)[0]
    negative = np.nonzero(labels == 0)[0]
    n_pos = min(int(count * positive_fraction), len(positive))
    n_neg = min(count - n_pos, len(negative))
    return (rng.permutation(positive)[:n_pos], rng.permutation(negative)[:n_neg])


def smooth_l1(diff: np.ndarray, beta: float):
    """Summed smooth L1 of ``diff`` (quadratic under ``beta``, as torch's with
    ``reduction="sum"``; beta 0 is L1) and its gradient."""
    a = np.abs(diff)
    if beta <= 0:
        return float(a.sum()), np.sign(diff)
    small = a < beta
    value = np.where(small, 0.5 * diff ** 2 / beta, a - 0.5 * beta)
    return float(value.sum()), np.where(small, diff / beta, np.sign(diff))


def _pad(rows: np.ndarray, count: int):
    """``rows`` cut or padded to ``count`` by repeating the last (a zero box if none), and
    how many are real."""
    valid = min(len(rows), count)
    if len(rows) == 0:
        rows = np.zeros((1,) + rows.shape[1:], rows.dtype)
    if len(rows) < count:
        rows = np.concatenate([rows, np.repeat(rows[-1:], count - len(rows), axis=0)])
    return rows[:count], valid


def _truth(rows) -> tuple[np.ndarray, np.ndarray]:
    """A (k, 5) ground-truth array as boxes (k, 4) and network classes (k,) (data class
    + 1, 0 being the background)."""
    rows = np.asarray(rows, np.float64).reshape(-1, 5)
    return rows[:, :4], rows[:, 4].astype(np.int64) + 1


def project_masks(masks: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Each ground-truth mask (k, H, W) cut to its box (k, 4) and resampled to size x size
    by RoI Align (torchvision's project_masks_on_boxes: soft targets in [0, 1])."""
    from runtime.backends.roi import align_forward

    if len(boxes) == 0:
        return np.zeros((0, size, size))
    return align_forward(masks[:, None].astype(np.float64), boxes.astype(np.float64),
                         np.arange(len(boxes)), 1.0, (size, size), 0, False)[:, 0]


def paste_masks(probabilities: np.ndarray, boxes: np.ndarray, size: tuple[int, int],
                threshold: float = 0.5) -> np.ndarray:
    """Instance masks (k, H, W) bool of the image: each S x S mask probability map
    resampled bilinearly over its box (a pixel's centre read off the map), thresholded."""
    h, w = size
    out = np.zeros((len(boxes), h, w), bool)
    ys, xs = np.arange(h) + 0.5, np.arange(w) + 0.5
    for k, (m, (x1, y1, x2, y2)) in enumerate(zip(probabilities, boxes)):
        s = m.shape[-1]
        bw, bh = max(x2 - x1, 1e-6), max(y2 - y1, 1e-6)
        u = (xs - x1) / bw * s - 0.5  # map coordinates of the pixel centres
        v = (ys - y1) / bh * s - 0.5
        inside_x, inside_y = (xs >= x1) & (xs < x2), (ys >= y1) & (ys < y2)
        if not inside_x.any() or not inside_y.any():
            continue

        def axis(t):
            t = np.clip(t, 0, s - 1)
            lo = np.floor(t).astype(np.int64)
            hi = np.minimum(lo + 1, s - 1)
            return lo, hi, t - lo

        (x0, x1i, fx), (y0, y1i, fy) = axis(u[inside_x]), axis(v[inside_y])
        top = m[y0][:, x0] * (1 - fx) + m[y0][:, x1i] * fx
        bottom = m[y1i][:, x0] * (1 - fx) + m[y1i][:, x1i] * fx
        value = top * (1 - fy)[:, None] + bottom * fy[:, None]
        out[k][np.ix_(inside_y, inside_x)] = value >= threshold
    return out


# ----------------------------------------------------------------------------- the heads
class RCNN:
    """The parts of a two-stage detector that are not layers: what the RPN and the RoI
    heads are trained towards, and what their outputs mean.

    ``levels``: per pyramid level (its name as in ``objectness_<name>``, stride (sy, sx),
    grid (H, W)); at each aspect ratio of ``ratios``, anchors of size ``anchor_scale *
    stride`` (torchvision: 8, i.e. 32 px on P2 up to 512 px on P6), or with ``octaves``
    sizes per position, ``anchor_scale * 4 * 2**j`` for j < octaves on every level
    (``fasterrcnn_mobilenet_v3_large_fpn``: 5, 32 to 512 px). The settings are
    torchvision's defaults (``fasterrcnn_resnet50_fpn``)."""

    def __init__(self, size, levels, ratios, classes: int, proposals: int,
                 mask_boxes: int = 0, mask_size: int = 0, anchor_scale: float = 8.0,
                 rpn_batch: int = 256, roi_positive: float = 0.25,
                 score_threshold: float = 0.05, detections: int = 100,
                 pre_nms: tuple[int, int] = (2000, 1000),
                 post_nms: tuple[int, int] = (2000, 1000), image: str = "image",
                 octaves: int = 1):
        self.size = tuple(int(v) for v in size)
        self.image = str(image)
        self.levels = [(str(name), tuple(stride), tuple(grid)) for name, stride, grid in levels]
        self.ratios = tuple(float(r) for r in ratios)
        self.classes, self.proposals = int(classes), int(proposals)
        self.mask_boxes, self.mask_size = int(mask_boxes), int(mask_size)
        self.anchor_scale = float(anchor_scale)
        self.rpn_batch, self.roi_positive = int(rpn_batch), float(roi_positive)
        self.score_threshold, self.detections_per_image = float(score_threshold), int(detections)
        self.pre_nms, self.post_nms = tuple(pre_nms), tuple(post_nms)
        self.octaves = int(octaves)
        self.anchors = [grid_anchors(self.sizes(stride), self.ratios, stride, grid)
                        for _, stride, grid in self.levels]
        self.all_anchors = np.concatenate(self.anchors)

    def sizes(self, stride) -> list[float]:
        """The anchor sizes of a level of this stride, in pixels."""
        if self.octaves == 1:
            return [self.anchor_scale * max(stride)]
        return [self.anchor_scale * 4 * 2 ** j for j in range(self.octaves)]

    @property
    def per_position(self) -> int:
        return len(self.ratios) * self.octaves

    @classmethod
    def from_program(cls, program, classes: int | None = None, **settings) -> "RCNN":
        """The detector a program's inputs and outputs describe (checked: a clear error
        for a network that is not one)."""
        shapes = program.output_shapes()
        inputs = program.inputs
        names = list(inputs)
        _, h, w = inputs[names[0]]
        levels = []
        ratios = settings.pop("ratios", (0.5, 1.0, 2.0))
        octaves = set()
        for key, shape in shapes.items():
            if not key.startswith("objectness_"):
                continue
            level = key[len("objectness_"):]
            deltas = shapes.get(f"deltas_{level}")
            if deltas is None or len(shape) != 3 or deltas != (4 * shape[0],) + shape[1:]:
                raise ValueError(f"output objectness_{level} {shape} needs a deltas_{level} "
                                 f"output with four times its channels")
            if len(shape) == 3 and shape[0] % len(ratios):
                raise ValueError(f"objectness_{level} scores {shape[0]} anchors per "
                                 f"position; the anchors have {len(ratios)} aspect ratios "
                                 f"(and one or more sizes each)")
            octaves.add(shape[0] // len(ratios))
            levels.append((level, (h // shape[1], w // shape[2]), shape[1:]))
        for need in ("class_logits", "box_regression"):
            if need not in shapes:
                raise ValueError(f"a two-stage detector has outputs objectness_<level>, "
                                 f"deltas_<level>, class_logits and box_regression; this "
                                 f"network has no '{need}'")
        if len(octaves) > 1:
            raise ValueError(f"the objectness outputs score {sorted(o * len(ratios) for o in octaves)} "
                             f"anchors per position: every level needs the same number")
        if not levels or "proposals" not in inputs:
            raise ValueError("a two-stage detector has outputs objectness_<level> and "
                             "deltas_<level> and an input 'proposals' [R, 4]")
        def per_box(key):  # (boxes per image, shape of one box's output)
            return program.items(program.outputs[key]), shapes[key]

        (r, (c, *rest)), (r2, regression) = per_box("class_logits"), per_box("box_regression")
        if classes is not None and c != classes:
            raise ValueError(f"the data has {classes - 1} classes and the background but "
                             f"the network scores {c}: set its class count (e.g. --set "
                             f"num_classes={classes})")
        if rest or r2 != r or regression != (4 * c,) or inputs["proposals"] != (r, 4):
            raise ValueError(f"class_logits ({r} boxes of {(c, *rest)}), box_regression "
                             f"({r2} boxes of {regression}) and proposals "
                             f"{inputs['proposals']} do not agree on the boxes per image")
        if "mask_logits" in shapes:
            m, mask = per_box("mask_logits")
            if "mask_boxes" not in inputs or inputs["mask_boxes"] != (m, 4) or mask[0] != c:
                raise ValueError(f"mask_logits ({m} boxes of {mask}) needs an input "
                                 f"mask_boxes [{m}, 4] and one mask per class")
            settings.update(mask_boxes=m, mask_size=mask[-1])
        return cls((h, w), levels, ratios, c, r, image=names[0], octaves=octaves.pop(),
                   **settings)

    def describe(self) -> dict:
        return {"size": list(self.size), "levels": [[n, list(s), list(g)]
                                                    for n, s, g in self.levels],
                "ratios": list(self.ratios), "classes": self.classes,
                "proposals": self.proposals, "mask_boxes": self.mask_boxes,
                "mask_size": self.mask_size, "anchor_scale": self.anchor_scale,
                "rpn_batch": self.rpn_batch, "roi_positive": self.roi_positive,
                "score_threshold": self.score_threshold,
                "detections": self.detections_per_image,
                "pre_nms": list(self.pre_nms), "post_nms": list(self.post_nms),
                "image": self.image, "octaves": self.octaves}

    # ------------------------------------------------------------------ RPN
    def _rpn(self, out, i: int):
        """Image i's objectness (total anchors,) and deltas (total anchors, 4), levels in
        order, each position's anchors together."""
        scores, deltas = [], []
        for name, _, _ in self.levels:
            scores.append(anchor_rows(out[f"objectness_{name}"][i], self.per_position)[:, 0])
            deltas.append(anchor_rows(out[f"deltas_{name}"][i], self.per_position))
        return np.concatenate(scores), np.concatenate(deltas)

    def _rpn_grads(self, g_scores, g_deltas, like) -> dict:
        """Gradients (N, total anchors) and (N, total anchors, 4) in the outputs' layouts."""
        grads, start, a = {}, 0, self.per_position
        for (name, _, grid), anchors in zip(self.levels, self.anchors):
            part = slice(start, start + len(anchors))
            start += len(anchors)
            grads[f"objectness_{name}"] = anchor_maps(g_scores[:, part, None], a, grid).astype(like)
            grads[f"deltas_{name}"] = anchor_maps(g_deltas[:, part], a, grid).astype(like)
        return grads

    def proposals_of(self, out, training: bool) -> list[np.ndarray]:
        """Per image, the RPN's proposals, best first: per level the ``pre_nms`` highest
        objectness, decoded and clipped, tiny boxes dropped, NMS at 0.7 within each level,
        the ``post_nms`` best kept."""
        pre, post = self.pre_nms[not training], self.post_nms[not training]
        found = []
        level_of = np.concatenate([np.full(len(a), k) for k, a in enumerate(self.anchors)])
        for i in range(len(next(iter(out.values())))):
            scores, deltas = self._rpn(out, i)
            chosen, start = [], 0
            for anchors in self.anchors:
                part = scores[start:start + len(anchors)]
                top = np.argsort(-part, kind="stable")[:pre]
                chosen.append(start + top)
                start += len(anchors)
            chosen = np.concatenate(chosen)
            boxes = clip(decode(deltas[chosen], self.all_anchors[chosen], RPN_WEIGHTS),
                         self.size)
            keep = ((boxes[:, 2] - boxes[:, 0]) >= 1e-3) & ((boxes[:, 3] - boxes[:, 1]) >= 1e-3)
            boxes, chosen = boxes[keep], chosen[keep]
            kept = nms(boxes, scores[chosen], level_of[chosen], iou_threshold=0.7, top_k=post)
            found.append(boxes[kept])
        return found

    def rpn_loss(self, out, truth, rng):
        """The RPN's loss (objectness BCE over a balanced draw of anchors, smooth L1 with
        beta 1/9 on the positives' deltas, per drawn anchor) and its gradients."""
        n = len(truth)
        total = len(self.all_anchors)
        g_scores, g_deltas = np.zeros((n, total)), np.zeros((n, total, 4))
        picks = []
        for i, rows in enumerate(truth):
            boxes, _ = _truth(rows)
            matched = match(box_iou(boxes, self.all_anchors), 0.7, 0.3, True)
            labels = np.where(matched >= 0, 1, np.where(matched == BELOW, 0, -1))
            pos, neg = sample(labels, self.rpn_batch, 0.5, rng)
            picks.append((pos, neg, matched))
        drawn = max(sum(len(p) + len(q) for p, q, _ in picks), 1)
        obj = box = 0.0
        for i, (pos, neg, matched) in enumerate(picks):
            scores, deltas = self._rpn(out, i)
            both = np.concatenate([pos, neg])
            target = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
            x = scores[both]
            obj += float((target * np.logaddexp(0, -x) + (1 - target) * np.logaddexp(0, x)).sum())
            g_scores[i, both] = (losses.sigmoid(x) - target) / drawn
            if len(pos):
                boxes, _ = _truth(truth[i])
                goal = encode(boxes[matched[pos]], self.all_anchors[pos], RPN_WEIGHTS)
                value, g = smooth_l1(deltas[pos] - goal, 1 / 9)
                box += value
                g_deltas[i, pos] = g / drawn
        like = np.asarray(next(iter(out.values()))).dtype
        return (obj + box) / drawn, self._rpn_grads(g_scores, g_deltas, like), \
            {"rpn_objectness": obj / drawn, "rpn_box": box / drawn}

    # ------------------------------------------------------------------ RoI heads
    def roi_targets(self, proposals: list, truth, rng) -> dict:
        """Training boxes for the box head: per image the proposals and the ground truth,
        matched at IoU 0.5, a draw of ``proposals`` of them with at most a quarter
        positive; their classes and regression targets (and for Mask R-CNN the positives
        the mask branch sees, their classes and ground-truth boxes)."""
        n, r = len(truth), self.proposals
        t = {"boxes": np.zeros((n, r, 4)), "labels": np.zeros((n, r), np.int64),
             "valid": np.zeros((n, r), bool), "goals": np.zeros((n, r, 4)),
             "mask_boxes": np.zeros((n, max(self.mask_boxes, 1), 4)),
             "mask_labels": np.zeros((n, max(self.mask_boxes, 1)), np.int64),
             "mask_truth": [], "mask_valid": np.zeros((n, max(self.mask_boxes, 1)), bool)}
        for i, rows in enumerate(truth):
            gt, classes = _truth(rows)
            boxes = np.concatenate([proposals[i], gt])
            matched = match(box_iou(gt, boxes), 0.5, 0.5, False)
            labels = np.where(matched >= 0, classes[np.maximum(matched, 0)] if len(gt)
                              else 0, 0)
            pos, neg = sample(labels, r, self.roi_positive, rng)
            both = np.concatenate([pos, neg])
            chosen, valid = _pad(both, r)
            t["boxes"][i] = boxes[chosen]
            t["labels"][i, :valid] = labels[both]
            t["valid"][i, :valid] = True
            if len(pos):
                t["goals"][i, :len(pos)] = encode(gt[matched[pos]], boxes[pos], HEAD_WEIGHTS)
            if self.mask_boxes:
                m_chosen, m_valid = _pad(pos, self.mask_boxes)
                t["mask_boxes"][i] = boxes[m_chosen] if len(pos) else 0.0
                t["mask_labels"][i, :m_valid] = labels[pos[:m_valid]]
                t["mask_valid"][i, :m_valid] = True
                t["mask_truth"].append(matched[pos[:m_valid]])
        return t

    def head_loss(self, out, t) -> tuple[float, dict, dict]:
        """The box head's loss: cross-entropy of the class scores over the drawn boxes and
        smooth L1 (beta 1/9) of the positives' deltas for their class, per drawn box."""
        logits = np.asarray(out["class_logits"], np.float64)  # (N, R, C)
        regression = np.asarray(out["box_regression"], np.float64)  # (N, R, 4C)
        valid, labels = t["valid"], t["labels"]
        count = max(int(valid.sum()), 1)
        g_logits = np.zeros_like(logits)
        ce, g = losses.cross_entropy(logits[valid], labels[valid])
        g_logits[valid] = g * valid.sum() / count
        cls = ce * valid.sum() / count
        g_reg = np.zeros(regression.shape[:2] + (self.classes, 4))
        pos = valid & (labels > 0)
        box = 0.0
        if pos.any():
            chosen = regression.reshape(g_reg.shape)[pos, labels[pos]]
            value, g = smooth_l1(chosen - t["goals"][pos], 1 / 9)
            box = value / count
            g_reg[pos, labels[pos]] = g / count
        like = np.asarray(out["class_logits"]).dtype
        return cls + box, {"class_logits": g_logits.astype(like),
                           "box_regression": g_reg.reshape(regression.shape).astype(like)}, \
            {"class": cls, "box": box}

    def mask_loss(self, out, t, masks) -> tuple[float, dict, dict]:
        """Mean BCE of each positive's mask logits for its class against its ground-truth
        mask cut to the box (``masks``: per image (k, H, W), the instances of the truth)."""
        logits = np.asarray(out["mask_logits"], np.float64)  # (N, M, C, S, S)
        grad = np.zeros_like(logits)
        value, elements = 0.0, 0
        targets = []
        for i, matched in enumerate(t["mask_truth"]):
            k = len(matched)
            if k == 0:
                continue
            goal = project_masks(np.asarray(masks[i], np.float64)[matched],
                                 t["mask_boxes"][i, :k], self.mask_size)
            targets.append((i, k, goal))
            elements += goal.size
        for i, k, goal in targets:
            x = logits[i, np.arange(k), t["mask_labels"][i, :k]]
            value += float((goal * np.logaddexp(0, -x) + (1 - goal) * np.logaddexp(0, x)).sum())
            grad[i, np.arange(k), t["mask_labels"][i, :k]] = (losses.sigmoid(x) - goal)
        if elements:
            value, grad = value / elements, grad / elements
        like = np.asarray(out["mask_logits"]).dtype
        return value, {"mask_logits": grad.astype(like)}, {"mask": value}

    # ------------------------------------------------------------------ a pass
    def feed(self, x, truth=None, masks=None, rng=None, state=None):
        """The inputs of a pass over images ``x``: in training (``truth`` given) proposals
        drawn for the RoI heads from the RPN's outputs and the ground truth, else the RPN's
        best proposals (and for Mask R-CNN the detections as the mask branch's boxes).
        ``state`` (a dict) receives what the loss and the post-processing need."""
        state = {} if state is None else state
        training = truth is not None

        def proposals(out):
            found = self.proposals_of(out, training)
            if training:
                state["targets"] = self.roi_targets(found, truth, rng)
                return state["targets"]["boxes"].astype(np.float32)
            padded = [_pad(b, self.proposals) for b in found]
            state["proposals"] = np.stack([p for p, _ in padded])
            state["valid"] = [v for _, v in padded]
            return state["proposals"].astype(np.float32)

        def mask_boxes(out):
            if training:
                return state["targets"]["mask_boxes"].astype(np.float32)
            state["detections"] = self.detections(out, state)
            chosen = [_pad(np.asarray(b, np.float64).reshape(-1, 4), self.mask_boxes)
                      for b, _, _ in state["detections"]]
            return np.stack([b for b, _ in chosen]).astype(np.float32)

        inputs = {self.image: x, "proposals": proposals}
        if self.mask_boxes:
            inputs["mask_boxes"] = mask_boxes
        return inputs, state

    def loss(self, out, truth, state, masks=None, rng=None):
        """The loss of a training pass (RPN + box head (+ mask branch)), its gradients
        by output, and its parts."""
        rng = rng or np.random.default_rng(0)
        value, grads, parts = self.rpn_loss(out, truth, rng)
        head, g, p = self.head_loss(out, state["targets"])
        value += head
        grads.update(g)
        parts.update(p)
        if self.mask_boxes:
            m, g, p = self.mask_loss(out, state["targets"], masks)
            value += m
            grads.update(g)
            parts.update(p)
        return float(value), grads, parts

    def detections(self, out, state):
        """Per image: boxes (k, 4), scores (k,) and data classes (k,): for each proposal
        and class but the background, the decoded box (clipped) and the softmax score;
        those above ``score_threshold``, NMS at 0.5 within each class, the best
        ``detections`` kept."""
        results = []
        logits = np.asarray(out["class_logits"], np.float64)
        regression = np.asarray(out["box_regression"], np.float64)
        for i in range(len(logits)):
            v = state["valid"][i]
            z = logits[i, :v] - logits[i, :v].max(axis=1, keepdims=True)
            p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
            boxes = clip(decode(regression[i, :v], state["proposals"][i, :v], HEAD_WEIGHTS)
                         .reshape(v, self.classes, 4), self.size)[:, 1:].reshape(-1, 4)
            scores = p[:, 1:].reshape(-1)
            classes = np.tile(np.arange(self.classes - 1), v)
            big = ((boxes[:, 2] - boxes[:, 0]) >= 1e-2) & ((boxes[:, 3] - boxes[:, 1]) >= 1e-2)
            scores = np.where(big, scores, -np.inf)
            keep = nms(boxes, scores, classes, iou_threshold=0.5,
                       score_threshold=self.score_threshold, top_k=self.detections_per_image)
            results.append((boxes[keep], scores[keep], classes[keep]))
        return results

    def instance_masks(self, out, state) -> list[np.ndarray]:
        """Per image, the detections' masks (k, H, W) bool: each detection's mask logits
        for its class, through a sigmoid, pasted into the image at its box."""
        logits = np.asarray(out["mask_logits"], np.float64)
        found = []
        for i, (boxes, _, classes) in enumerate(state["detections"]):
            k = min(len(boxes), self.mask_boxes)
            p = losses.sigmoid(logits[i, np.arange(k), np.asarray(classes[:k]) + 1])
            found.append(paste_masks(p, boxes[:k], self.size))
        return found
