"""RetinaNet's training targets, loss and detections (Lin et al. 2017, as torchvision's
``RetinaNet``): the parts of a single-stage detector over a feature pyramid that are not
layers.

The network gives, per pyramid level, ``class_logits_<level>`` (A x K, H, W) and
``box_regression_<level>`` (4 x A, H, W): for each position its A anchors, each with K
class logits (K counts a background slot, logit 0, never a target: data class c is logit
c + 1, as torchvision's labels) and 4 box deltas. Anchors: at each of three aspect ratios,
three sizes an octave apart in thirds, ``s, int(s * 2^(1/3)), int(s * 2^(2/3))`` with
``s = anchor_scale * 8 * 2^level`` for a finest level of stride 8 (torchvision: 4, i.e.
32 px on P3 up to 512 on P7).

Training: each image's anchors matched to its boxes at IoU 0.5 (0.4 and below:
background; between: ignored; each box keeps its best anchors, torchvision's
low-quality matches); the sigmoid focal loss (alpha 0.25, gamma 2) of every anchor not
ignored against one-hot class targets, plus the L1 loss of the foreground anchors'
deltas (box coder weights 1), each summed and divided by the number of foreground
anchors, then averaged over the images. Inference: per level the scores above 0.05 (the
best 1000), their boxes decoded and clipped, NMS at 0.5 within each class, the best 300
kept.
"""

from __future__ import annotations

import numpy as np

from runtime.train import losses
from runtime.train.boxes import box_iou, nms
from runtime.train.rcnn import (BETWEEN, anchor_maps, anchor_rows, clip, decode, encode,
                                grid_anchors, match)

WEIGHTS = (1.0, 1.0, 1.0, 1.0)


class RetinaNet:
    """``levels``: per pyramid level (its name as in ``class_logits_<name>``, stride
    (sy, sx), grid (H, W)); ``classes`` logits per anchor (the background slot
    included)."""

    def __init__(self, size, levels, classes: int, ratios=(0.5, 1.0, 2.0),
                 anchor_scale: float = 4.0, alpha: float = 0.25, gamma: float = 2.0,
                 score_threshold: float = 0.05, candidates: int = 1000,
                 detections: int = 300, image: str = "image"):
        self.size = tuple(int(v) for v in size)
        self.levels = [(str(n), tuple(s), tuple(g)) for n, s, g in levels]
        self.classes, self.ratios = int(classes), tuple(float(r) for r in ratios)
        self.anchor_scale, self.alpha, self.gamma = float(anchor_scale), float(alpha), float(gamma)
        self.score_threshold, self.candidates = float(score_threshold), int(candidates)
        self.detections_per_image, self.image = int(detections), str(image)
        self.anchors = [grid_anchors(self.sizes(k), self.ratios, stride, grid)
                        for k, (_, stride, grid) in enumerate(self.levels)]
        self.all_anchors = np.concatenate(self.anchors)

    def sizes(self, level: int) -> list[float]:
        """The three anchor sizes of level ``level`` (0: the finest), in pixels: from
        ``anchor_scale`` times the finest level's stride, doubling level by level (as
        torchvision's fixed 32 ... 512, also where a small image leaves the coarsest
        levels at one position)."""
        s = self.anchor_scale * max(self.levels[0][1]) * 2 ** level
        return [s, float(int(s * 2 ** (1 / 3))), float(int(s * 2 ** (2 / 3)))]

    @property
    def per_position(self) -> int:
        return 3 * len(self.ratios)

    @classmethod
    def from_program(cls, program, classes: int | None = None, **settings) -> "RetinaNet":
        """The detector a program's outputs describe (a clear error for one that is not)."""
        shapes = program.output_shapes()
        name, (_, h, w) = next(iter(program.inputs.items()))
        levels, per_position, k = [], 9, None
        for key, shape in shapes.items():
            if not key.startswith("class_logits_"):
                continue
            level = key[len("class_logits_"):]
            boxes = shapes.get(f"box_regression_{level}")
            if len(shape) != 3 or boxes is None or boxes != (4 * per_position,) + shape[1:] \
                    or shape[0] % per_position:
                raise ValueError(f"output class_logits_{level} {shape} needs a "
                                 f"box_regression_{level} output of 4 x {per_position} anchors "
                                 f"per position at the same size")
            k = shape[0] // per_position
            levels.append((level, (h // shape[1], w // shape[2]), shape[1:]))
        if not levels:
            raise ValueError("a RetinaNet has outputs class_logits_<level> and "
                             "box_regression_<level>")
        if classes is not None and k != classes:
            raise ValueError(f"the data has {classes - 1} classes and the background slot "
                             f"but the network scores {k}: set its class count (e.g. --set "
                             f"num_classes={classes})")
        return cls((h, w), levels, k, image=name, **settings)

    def describe(self) -> dict:
        return {"size": list(self.size), "levels": [[n, list(s), list(g)]
                                                    for n, s, g in self.levels],
                "classes": self.classes, "anchor_scale": self.anchor_scale,
                "alpha": self.alpha, "gamma": self.gamma,
                "score_threshold": self.score_threshold,
                "detections": self.detections_per_image}

    # ------------------------------------------------------------------ layouts
    def _image(self, out, i: int):
        """Image i's logits (total anchors, K) and deltas (total anchors, 4), levels in
        order, each position's anchors together (torchvision's layout)."""
        logits, deltas = [], []
        for name, _, _ in self.levels:
            logits.append(anchor_rows(out[f"class_logits_{name}"][i], self.per_position))
            deltas.append(anchor_rows(out[f"box_regression_{name}"][i], self.per_position))
        return np.concatenate(logits), np.concatenate(deltas)

    def _grads(self, g_logits, g_deltas, like) -> dict:
        """Gradients (N, anchors, K) and (N, anchors, 4) in the outputs' layouts."""
        grads, start, a = {}, 0, self.per_position
        for (name, _, grid), anchors in zip(self.levels, self.anchors):
            part = slice(start, start + len(anchors))
            start += len(anchors)
            grads[f"class_logits_{name}"] = anchor_maps(g_logits[:, part], a, grid).astype(like)
            grads[f"box_regression_{name}"] = anchor_maps(g_deltas[:, part], a, grid).astype(like)
        return grads

    # ------------------------------------------------------------------ training
    def loss(self, out, truth) -> tuple[float, dict, dict]:
        """The loss of a training pass over images whose boxes are ``truth`` (per image,
        rows x1 y1 x2 y2 class), its gradients by output, and its parts."""
        n, total = len(truth), len(self.all_anchors)
        g_logits, g_deltas = np.zeros((n, total, self.classes)), np.zeros((n, total, 4))
        cls_total = box_total = 0.0
        for i, rows in enumerate(truth):
            rows = np.asarray(rows, np.float64)
            rows = rows if rows.size else np.zeros((0, 5))
            boxes, labels = rows[:, :4], rows[:, 4].astype(np.int64)
            logits, deltas = self._image(out, i)
            matched = (match(box_iou(boxes, self.all_anchors), 0.5, 0.4, True) if len(boxes)
                       else np.full(total, -1))
            fg = np.nonzero(matched >= 0)[0]
            scale = 1.0 / (max(1, len(fg)) * n)
            target = np.zeros((total, self.classes))
            target[fg, labels[matched[fg]] + 1] = 1.0
            valid = matched != BETWEEN
            x, t = logits[valid], target[valid]
            if x.size:
                value, grad = losses.focal_loss(x, t, alpha=self.alpha, gamma=self.gamma)
                cls_total += value * x.size * scale  # the mean, back to a sum
                g_logits[i, valid] = grad * x.size * scale
            if len(fg):
                goal = encode(boxes[matched[fg]], self.all_anchors[fg], WEIGHTS)
                diff = deltas[fg] - goal
                box_total += float(np.abs(diff).sum()) * scale
                g_deltas[i, fg] = np.sign(diff) * scale
        like = np.asarray(next(iter(out.values()))).dtype
        return cls_total + box_total, self._grads(g_logits, g_deltas, like), \
            {"classification": cls_total, "box": box_total}

    # ------------------------------------------------------------------ inference
    def detections(self, out) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per image: boxes (k, 4), scores (k,) and data classes (k,)."""
        results = []
        for i in range(len(next(iter(out.values())))):
            logits, deltas = self._image(out, i)
            boxes, scores, classes, start = [], [], [], 0
            for anchors in self.anchors:
                part = slice(start, start + len(anchors))
                start += len(anchors)
                p = losses.sigmoid(logits[part][:, 1:]).reshape(-1)  # the background slot out
                keep = np.nonzero(p > self.score_threshold)[0]
                keep = keep[np.argsort(-p[keep], kind="stable")[:self.candidates]]
                which, cls = keep // (self.classes - 1), keep % (self.classes - 1)
                boxes.append(clip(decode(deltas[part][which], anchors[which], WEIGHTS),
                                  self.size))
                scores.append(p[keep])
                classes.append(cls)
            boxes, scores = np.concatenate(boxes), np.concatenate(scores)
            classes = np.concatenate(classes)
            keep = nms(boxes, scores, classes, iou_threshold=0.5,
                       score_threshold=self.score_threshold, top_k=self.detections_per_image)
            results.append((boxes[keep], scores[keep], classes[keep]))
        return results
