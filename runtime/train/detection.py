"""Single-stage detection on an S x S grid, as the YOLO spec's output is laid out: for
each cell, B boxes of five numbers ``tx, ty, tw, th, to`` and then C class scores, an
(S, S, B * 5 + C) tensor per image (YOLO v1's layout), with YOLOv2's anchored encoding:

- centre ``((col + sigmoid(tx)) / S, (row + sigmoid(ty)) / S)`` of the image, size
  ``(anchor_w * exp(tw), anchor_h * exp(th))`` (anchors as fractions of the image, from
  k-means on the training boxes), objectness ``sigmoid(to)``, class probabilities the
  softmax of the cell's C scores; a box's score is objectness x its best class's
  probability.
- target assignment: a ground-truth box belongs to the cell holding its centre and to the
  anchor whose shape fits it best (IoU with both centred); when two boxes claim the same
  cell and anchor, the later one wins.
- the loss, summed over the batch and divided by its size: coordinates (squared error on
  sigmoid(tx), sigmoid(ty), tw, th against the encoded target, scaled by lambda_coord and
  by 2 - w h so small boxes count more; or 1 - GIoU of the decoded boxes), objectness
  (binary cross-entropy: 1 for assigned anchors, 0 with weight lambda_noobj for the
  others, except unassigned anchors whose box already overlaps a ground-truth box by more
  than ``ignore_iou``; or the sigmoid focal loss) and classes (cross-entropy of each cell
  that holds a box).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.train import losses
from runtime.train.boxes import box_iou, nms
from runtime.train.losses import sigmoid


@dataclass
class YoloHead:
    grid: int
    boxes: int
    classes: int
    anchors: np.ndarray  # (boxes, 2): width, height as fractions of the image
    size: tuple[int, int]  # image height, width in pixels
    lambda_coord: float = 5.0
    lambda_noobj: float = 1.0
    ignore_iou: float = 0.5
    box_loss: str = "mse"  # or "giou"
    objectness: str = "bce"  # or "focal"

    @classmethod
    def fit(cls, output_shape, classes: int, anchors, size, **options) -> "YoloHead":
        """The head for a network output (S, S, B * 5 + C) and C classes; a shape that does
        not fit is explained."""
        shape = tuple(output_shape)
        if len(shape) != 3 or shape[0] != shape[1]:
            raise ValueError(f"a detection network's output must be S x S x (B * 5 + C), a "
                             f"square grid of cells; this one is {shape}")
        s, depth = shape[0], shape[2]
        b, rest = divmod(depth - classes, 5)
        if depth <= classes or rest:
            raise ValueError(f"the output's last axis has {depth} numbers per cell, which is "
                             f"not B * 5 + {classes} for the data's {classes} classes (set the "
                             f"spec's class count, e.g. --set C={classes})")
        anchors = np.asarray(anchors, np.float64).reshape(-1, 2)
        if len(anchors) != b:
            raise ValueError(f"{len(anchors)} anchors for {b} boxes per cell")
        return cls(s, b, classes, anchors, tuple(size), **options)

    def describe(self) -> dict:
        """What a run directory stores to decode the outputs again."""
        return {"grid": self.grid, "boxes": self.boxes, "classes": self.classes,
                "anchors": self.anchors.tolist(), "size": list(self.size),
                "lambda_coord": self.lambda_coord, "lambda_noobj": self.lambda_noobj,
                "ignore_iou": self.ignore_iou, "box_loss": self.box_loss,
                "objectness": self.objectness}

    # ------------------------------------------------------------------ decoding
    def _parts(self, out):
        n, s, b = len(out), self.grid, self.boxes
        out = np.asarray(out, np.float64)
        return out[..., :b * 5].reshape(n, s, s, b, 5), out[..., b * 5:]

    def _decode(self, raw):
        """Box corners as fractions of the image (..., 4) from the raw box numbers."""
        s = self.grid
        cols = np.arange(s).reshape(1, 1, s, 1)
        rows = np.arange(s).reshape(1, s, 1, 1)
        cx = (cols + sigmoid(raw[..., 0])) / s
        cy = (rows + sigmoid(raw[..., 1])) / s
        w = self.anchors[:, 0] * np.exp(np.minimum(raw[..., 2], 10.0))
        h = self.anchors[:, 1] * np.exp(np.minimum(raw[..., 3], 10.0))
        return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)

    def _pixels(self):
        h, w = self.size
        return np.array([w, h, w, h], np.float64)

    def detections(self, out, *, score_threshold: float = 0.01, iou_threshold: float = 0.5,
                   top_k: int = 100) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per image: boxes (k, 4) in pixels, scores (k,) and classes (k,) after
        per-class non-maximum suppression."""
        raw, class_logits = self._parts(out)
        boxes = self._decode(raw) * self._pixels()
        objectness = sigmoid(raw[..., 4])
        z = class_logits - class_logits.max(axis=-1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
        best = probs.argmax(axis=-1)
        scores = objectness * probs.max(axis=-1)[..., None]
        classes = np.broadcast_to(best[..., None], scores.shape)
        results = []
        for i in range(len(raw)):
            b, sc, cl = boxes[i].reshape(-1, 4), scores[i].reshape(-1), classes[i].reshape(-1)
            keep = nms(b, sc, cl, iou_threshold=iou_threshold,
                       score_threshold=score_threshold, top_k=top_k)
            results.append((b[keep], sc[keep], cl[keep]))
        return results

    # ------------------------------------------------------------------ targets
    def targets(self, truth) -> dict:
        """Assign ground-truth boxes (per image a (k, 5) array x1, y1, x2, y2, class in
        pixels) to cells and anchors: the encoded targets and masks."""
        n, s, b = len(truth), self.grid, self.boxes
        scale = self._pixels()
        t = {"mask": np.zeros((n, s, s, b), bool), "box": np.zeros((n, s, s, b, 4)),
             "corners": np.zeros((n, s, s, b, 4)), "cell_class": np.full((n, s, s), -100),
             "truth": []}
        for i, rows in enumerate(truth):
            rows = np.asarray(rows, np.float64).reshape(-1, 5)
            corners = rows[:, :4] / scale
            t["truth"].append(corners)
            for (x1, y1, x2, y2), cls in zip(corners, rows[:, 4].astype(int)):
                w, h = max(x2 - x1, 1e-6), max(y2 - y1, 1e-6)
                cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
                col = min(max(int(cx * s), 0), s - 1)
                row = min(max(int(cy * s), 0), s - 1)
                inter = np.minimum(w, self.anchors[:, 0]) * np.minimum(h, self.anchors[:, 1])
                fit = inter / (w * h + self.anchors.prod(axis=1) - inter)
                a = int(fit.argmax())
                t["mask"][i, row, col, a] = True
                t["box"][i, row, col, a] = (cx * s - col, cy * s - row,
                                            np.log(w / self.anchors[a, 0]),
                                            np.log(h / self.anchors[a, 1]))
                t["corners"][i, row, col, a] = (x1, y1, x2, y2)
                t["cell_class"][i, row, col] = cls
        return t

    # ------------------------------------------------------------------ loss
    def loss(self, out, truth) -> tuple[float, np.ndarray, dict]:
        """The loss of a batch of outputs (N, S, S, B * 5 + C) against its ground truth,
        its gradient with respect to the outputs, and its parts."""
        n, s, b = len(out), self.grid, self.boxes
        raw, class_logits = self._parts(out)
        t = self.targets(truth)
        pos = t["mask"]
        g_raw = np.zeros_like(raw)
        sig_xy = sigmoid(raw[..., :2])
        wh_true = np.exp(t["box"][..., 2:]) * self.anchors  # fractions of the image
        scale = np.where(pos, 2 - wh_true[..., 0] * wh_true[..., 1], 0.0)
        if self.box_loss == "giou":
            pred = self._decode(raw)[pos]
            if len(pred):
                value, g_corner = losses.giou_loss(pred, t["corners"][pos])
                coord = self.lambda_coord * value * len(pred)
                g_corner = g_corner * self.lambda_coord * len(pred)
                w = self.anchors[np.nonzero(pos)[3]] * np.exp(np.minimum(raw[pos][:, 2:4], 10))
                sig = sig_xy[pos]
                g = np.zeros((len(pred), 5))
                g[:, 0] = (g_corner[:, 0] + g_corner[:, 2]) * sig[:, 0] * (1 - sig[:, 0]) / s
                g[:, 1] = (g_corner[:, 1] + g_corner[:, 3]) * sig[:, 1] * (1 - sig[:, 1]) / s
                g[:, 2] = (g_corner[:, 2] - g_corner[:, 0]) / 2 * w[:, 0] * (raw[pos][:, 2] < 10)
                g[:, 3] = (g_corner[:, 3] - g_corner[:, 1]) / 2 * w[:, 1] * (raw[pos][:, 3] < 10)
                g_raw[pos] += g
            else:
                coord = 0.0
        elif self.box_loss == "mse":
            d_xy = sig_xy - t["box"][..., :2]
            d_wh = raw[..., 2:4] - t["box"][..., 2:]
            weight = self.lambda_coord * scale[..., None]
            coord = float((weight * (d_xy ** 2 + d_wh ** 2)).sum())
            g_raw[..., :2] += weight * 2 * d_xy * sig_xy * (1 - sig_xy)
            g_raw[..., 2:4] += weight * 2 * d_wh
        else:
            raise ValueError(f"unknown box loss '{self.box_loss}' (mse, giou)")
        # objectness: anchors whose box already covers a ground-truth box are not pushed
        # to zero
        predicted = self._decode(raw)
        ignore = np.zeros_like(pos)
        for i, corners in enumerate(t["truth"]):
            if len(corners):
                best = box_iou(predicted[i].reshape(-1, 4), corners).max(axis=1)
                ignore[i] = (best > self.ignore_iou).reshape(s, s, b)
        logits = raw[..., 4]
        counted = pos | ~ignore
        target = pos.astype(np.float64)
        if self.objectness == "focal":
            x, y = logits[counted], target[counted]
            value, g = losses.focal_loss(x, y)
            obj = value * x.size
            g_raw[..., 4][counted] += g * x.size
        elif self.objectness == "bce":
            weight = np.where(pos, 1.0, self.lambda_noobj) * counted
            p = sigmoid(logits)
            obj = float((weight * (target * np.logaddexp(0, -logits)
                                   + (1 - target) * np.logaddexp(0, logits))).sum())
            g_raw[..., 4] += weight * (p - target)
        else:
            raise ValueError(f"unknown objectness loss '{self.objectness}' (bce, focal)")
        cells = t["cell_class"] != -100
        g_cls = np.zeros_like(class_logits)
        cls = 0.0
        if cells.any():
            value, g = losses.cross_entropy(class_logits[cells], t["cell_class"][cells])
            cls = value * int(cells.sum())
            g_cls[cells] = g * int(cells.sum())
        grad = np.concatenate([g_raw.reshape(n, s, s, b * 5), g_cls], axis=-1) / n
        total = (coord + obj + cls) / n
        parts = {"coord": coord / n, "objectness": obj / n, "class": cls / n,
                 "assigned": int(pos.sum())}
        return float(total), grad.astype(np.asarray(out).dtype), parts
