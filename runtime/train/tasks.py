"""What a network is trained to do: the loss of a batch and the metrics of a data set for
classification, segmentation, detection and embeddings. The training loop
(:func:`runtime.train.loop.fit`) is the same for all four; a :class:`Task` supplies each step's
loss and gradient and the evaluation, and names the metric that picks the best
checkpoint (``primary``; higher is better).

A run directory keeps the task in ``task.json`` (its kind, classes and options, and a
detector's grid and anchors), so ``archc eval`` and ``archc predict`` read the outputs as
training did.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from runtime.files import finite_number, read_json
from runtime.train.data import IGNORE, DataError, Dataset, batches
from runtime.train import losses, metrics

KINDS = ("classify", "segment", "detect", "embed")
SEGMENT_LOSSES = ("ce", "dice", "ce+dice")
EMBED_LOSSES = ("triplet-hard", "triplet-all", "contrastive")


class Task:
    kind = ""
    primary = ""
    label = ""  # how the primary metric is printed after each epoch
    name = ""  # and in sentences

    def __init__(self, classes: list[str]):
        self.classes = list(classes)

    def feed(self, x, y=None):
        """What the model is given for images ``x`` (in training with their targets ``y``):
        the images, or a dict of inputs where the task computes some of them."""
        return x

    def stage(self, model, y) -> None:
        """Before a training step's forward pass: send what :meth:`step` will need of the
        targets to the model's device (nothing, unless the task's loss runs there)."""

    def step(self, model, out, y):
        """(loss, gradient of the output, hits, judged): hits / judged is the training
        accuracy where the task has one (judged 0 where it has none). On a device
        backend the loss and hits may still be on the device: ``float`` and ``int`` read
        them (the training loop does, once the step's update is queued)."""
        raise NotImplementedError

    def evaluate(self, model, dataset: Dataset, batch_size: int = 256) -> dict:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"task": self.kind, "classes": self.classes}

    def _outputs(self, model, dataset: Dataset, batch_size: int):
        """Inference-mode outputs of a data set, batch by batch, with the targets."""
        was_training = model.training
        model.eval()
        try:
            for x, y in batches(dataset, batch_size, shuffle=False):
                yield model.predict(self.feed(x)), y
        finally:
            if was_training:
                model.train()


def _host(model, out) -> np.ndarray:
    return model.backend.to_host(out)


class Classification(Task):
    kind, primary, label, name = "classify", "accuracy", "test acc", "accuracy"

    def __init__(self, classes, label_smoothing: float = 0.0):
        super().__init__(classes)
        self.label_smoothing = label_smoothing

    def stage(self, model, y) -> None:
        model.backend.stage_targets(y)

    def step(self, model, out, y):
        # on a device backend the loss runs there; two numbers come back when read
        loss, grad, hits = model.backend.classify(out, y, label_smoothing=self.label_smoothing)
        judged = len(y) if np.issubdtype(y.dtype, np.floating) else y.size
        return loss, grad, hits, judged

    def evaluate(self, model, dataset, batch_size=256):
        return self.evaluated(model, dataset, batch_size)[0]

    def evaluated(self, model, dataset, batch_size=256) -> tuple[dict, np.ndarray]:
        """:meth:`evaluate`'s metrics and counts[true, predicted], from one pass."""
        total, scores = 0.0, []
        for out, y in self._outputs(model, dataset, batch_size):
            total += losses.cross_entropy(out, y)[0] * len(y)
            scores.append(out)
        scores = np.concatenate(scores)
        return ({"loss": total / len(dataset), "accuracy": metrics.accuracy(scores, dataset.y),
                 "top5": metrics.top_k_accuracy(scores, dataset.y, 5)},
                metrics.confusion_matrix(scores, dataset.y))

    def top_classes(self, out: np.ndarray, k: int = 3) -> list[list[tuple[str, float]]]:
        """Per image, its ``k`` most probable classes and their softmax probabilities."""
        p = np.exp(losses.log_softmax(np.asarray(out, np.float64)))
        return [[(self.classes[c], float(row[c])) for c in np.argsort(-row, kind="stable")[:k]]
                for row in p]


def _crop_to(masks: np.ndarray, shape) -> np.ndarray:
    """Masks (N, H, W) cut to an output's (h, w) about their centre: an unpadded U-Net
    labels the middle of its input tile."""
    h, w = masks.shape[1:]
    oh, ow = shape
    if (oh, ow) == (h, w):
        return masks
    top, left = (h - oh) // 2, (w - ow) // 2
    return masks[:, top:top + oh, left:left + ow]


class Segmentation(Task):
    kind, primary, label, name = "segment", "miou", "test mIoU", "mean IoU"

    def __init__(self, classes, loss: str = "ce", class_weights=None):
        super().__init__(classes)
        if loss not in SEGMENT_LOSSES:
            raise DataError(f"unknown segmentation loss '{loss}' ({', '.join(SEGMENT_LOSSES)})")
        self.loss_name = loss
        self.class_weights = None if class_weights is None else np.asarray(class_weights,
                                                                          np.float64)
        self._cropped = (None, None)  # the last staged masks, and them cut to the output

    def check(self, output_shape, input_shape) -> None:
        if len(output_shape) != 3:
            raise DataError(f"segmentation needs per-pixel class scores (C, H, W); the "
                            f"network gives {tuple(output_shape)}")
        c, h, w = output_shape
        if c != len(self.classes):
            raise DataError(f"the data has {len(self.classes)} classes "
                            f"({', '.join(self.classes)}) but the network scores {c} per "
                            f"pixel: set its class count (e.g. --set num_classes="
                            f"{len(self.classes)})")
        if self.class_weights is not None and len(self.class_weights) != c:
            raise DataError(f"{len(self.class_weights)} class weights for {c} classes "
                            f"({', '.join(self.classes)})")
        if h > input_shape[1] or w > input_shape[2]:
            raise DataError(f"the network's {h} x {w} output is larger than its "
                            f"{input_shape[1]} x {input_shape[2]} input: masks cannot be "
                            f"cropped to it")

    def _loss(self, out, y):
        parts = []
        if "ce" in self.loss_name.split("+"):
            parts.append(losses.cross_entropy(out, y, weight=self.class_weights))
        if "dice" in self.loss_name.split("+"):
            parts.append(losses.dice_loss(out, y))
        return sum(p[0] for p in parts), sum(p[1] for p in parts)

    def stage(self, model, y) -> None:
        """The masks cut to the network's output size, kept for :meth:`step`, and sent to
        the device where the loss runs there (cross-entropy without class weights)."""
        shape = next(iter(model.program.output_shapes().values()))[1:]
        self._cropped = (y, _crop_to(y, shape))
        if self._on_device:
            model.backend.stage_targets(self._cropped[1])

    @property
    def _on_device(self) -> bool:
        """Whether the backend's own classification loss serves (the device's, on a GPU)."""
        return self.loss_name == "ce" and self.class_weights is None

    def step(self, model, out, y):
        held, cropped = self._cropped
        y = cropped if held is y and cropped.shape[1:] == out.shape[2:] else \
            _crop_to(y, out.shape[2:])
        keep = y != IGNORE
        if self._on_device:
            loss, grad, hits = model.backend.classify(out, y)
            return loss, grad, hits, int(keep.sum())
        host = _host(model, out)
        loss, grad = self._loss(host, y)
        hits = int(((host.argmax(axis=1) == y) & keep).sum())
        return loss, grad, hits, int(keep.sum())

    def evaluate(self, model, dataset, batch_size=256):
        return self.evaluated(model, dataset, batch_size)[0]

    def evaluated(self, model, dataset, batch_size=256) -> tuple[dict, np.ndarray]:
        """:meth:`evaluate`'s metrics and counts[true, predicted] over every judged pixel,
        from one pass."""
        c = len(self.classes)
        confusion = np.zeros((c, c), np.int64)
        total = 0.0
        for out, y in self._outputs(model, dataset, batch_size):
            y = _crop_to(y, out.shape[2:])
            total += self._loss(out, y)[0] * len(y)
            confusion += metrics.confusion_matrix(out, y, ignore_index=IGNORE)
        table = metrics.per_class(confusion)
        judged = confusion.sum()
        return ({"loss": total / len(dataset), "miou": table["mean_iou"],
                 "pixel_accuracy": float(np.trace(confusion) / judged) if judged else
                 float("nan"),
                 "iou": [None if np.isnan(v) else float(v) for v in table["iou"]]}, confusion)

    def describe(self):
        return {**super().describe(), "loss": self.loss_name,
                "class_weights": None if self.class_weights is None else
                self.class_weights.tolist()}


class Detection(Task):
    kind, primary, label, name = "detect", "map50", "test mAP@0.5", "mAP@0.5"

    def __init__(self, classes, head):
        super().__init__(classes)
        self.head = head

    def step(self, model, out, y):
        loss, grad, _ = self.head.loss(_host(model, out), _boxes_of(y))
        return loss, grad, 0, 0

    def evaluate(self, model, dataset, batch_size=256):
        total, found, truths = 0.0, [], []
        for out, y in self._outputs(model, dataset, batch_size):
            y = _boxes_of(y)
            total += self.head.loss(out, y)[0] * len(y)
            found += self.head.detections(out)
            truths += [(rows[:, :4], rows[:, 4].astype(np.int64)) for rows in y]
        result = metrics.mean_average_precision(found, truths, len(self.classes))
        return {"loss": total / len(dataset), "map50": result["map50"], "map": result["map"]}

    def describe(self):
        return {**super().describe(), "head": self.head.describe()}


def _boxes_of(y) -> list[np.ndarray]:
    """Per image, the (k, 5) boxes and classes of detection targets (instance targets'
    masks left out)."""
    return [np.asarray(rows)[:, :5] for rows in y]


class BoxDetection(Task):
    """A detector whose boxes come out of :meth:`predictions` (per image boxes, scores,
    data classes and instance masks or None): evaluated by box mAP (COCO matching) and,
    where it gives masks and the data has them, mask mAP."""

    kind, primary, label, name = "detect", "map50", "test mAP@0.5", "mAP@0.5"
    size: tuple[int, int] = (0, 0)

    def evaluate(self, model, dataset, batch_size=256):
        was_training = model.training
        model.eval()
        found, truths, mask_found, mask_truths = [], [], [], []
        try:
            for x, y in batches(dataset, batch_size, shuffle=False):
                for (boxes, scores, classes, masks), rows in zip(self.predictions(model, x), y):
                    rows = np.asarray(rows)
                    found.append((boxes, scores, classes))
                    truths.append((rows[:, :4], rows[:, 4].astype(np.int64)))
                    if masks is not None and rows.shape[1] > 5:
                        from runtime.train.data.synth import split_instances

                        k = len(masks)  # the mask branch's boxes: the best detections
                        mask_found.append((masks, scores[:k], classes[:k]))
                        mask_truths.append((split_instances(rows, self.size)[1],
                                            rows[:, 4].astype(np.int64)))
        finally:
            if was_training:
                model.train()
        result = metrics.mean_average_precision(found, truths, len(self.classes))
        row = {"map50": result["map50"], "map": result["map"]}
        if mask_found:
            masked = metrics.mean_average_precision(mask_found, mask_truths, len(self.classes),
                                                    overlap=metrics.mask_iou)
            row.update(mask_map50=masked["map50"], mask_map=masked["map"])
        return row


class RetinaNetDetection(BoxDetection):
    """RetinaNet (:mod:`runtime.train.retinanet`): the focal loss over every anchor of
    every level and the L1 loss of the foreground anchors' deltas."""

    def __init__(self, classes, retina):
        super().__init__(classes)
        self.retina, self.size = retina, retina.size

    def step(self, model, out, y):
        host = {k: _host(model, v) for k, v in out.items()}
        loss, grads, _ = self.retina.loss(host, _boxes_of(y))
        return loss, grads, 0, 0

    def predictions(self, model, x):
        return [(*d, None) for d in self.retina.detections(model.predict(x))]

    def describe(self):
        return {**super().describe(), "retinanet": self.retina.describe()}


class TwoStageDetection(BoxDetection):
    """Faster R-CNN and Mask R-CNN (:mod:`runtime.train.rcnn`): the proposals (and the mask
    branch's boxes) are computed in the pass from the RPN's outputs; the loss is the
    RPN's, the box head's and the mask branch's. Evaluated by box mAP (COCO matching) and,
    with instance data and a mask branch, mask mAP."""

    def __init__(self, classes, rcnn, seed: int = 0):
        super().__init__(classes)
        self.rcnn, self.size = rcnn, rcnn.size
        self.rng = np.random.default_rng([seed, 5])
        self._state: dict = {}

    def _truth(self, y):
        boxes = _boxes_of(y)
        masks = None
        if self.rcnn.mask_boxes:
            from runtime.train.data.synth import split_instances

            masks = [split_instances(rows, self.rcnn.size)[1] if np.asarray(rows).shape[1] > 5
                     else None for rows in y]
            if any(m is None for m in masks):
                raise DataError("the network has a mask branch but the data has no instance "
                                "masks: use shapes-inst or coco:FILE.json with segmentations")
        return boxes, masks

    def feed(self, x, y=None):
        truth = None if y is None else self._truth(y)[0]
        inputs, self._state = self.rcnn.feed(x, truth, rng=self.rng)
        return inputs

    def step(self, model, out, y):
        boxes, masks = self._truth(y)
        host = {k: _host(model, v) for k, v in out.items()}
        loss, grads, _ = self.rcnn.loss(host, boxes, self._state, masks, self.rng)
        return loss, grads, 0, 0

    def predictions(self, model, x):
        """Per image (boxes, scores, data classes, masks (k, H, W) or None)."""
        out = model.predict(self.feed(x))
        state = self._state
        found = state.get("detections") or self.rcnn.detections(out, state)
        masks = (self.rcnn.instance_masks(out, state) if self.rcnn.mask_boxes
                 else [None] * len(found))
        return [(*d, m) for d, m in zip(found, masks)]

    def describe(self):
        return {**super().describe(), "rcnn": self.rcnn.describe()}


class Embedding(Task):
    kind, primary, label, name = "embed", "retrieval", "test retrieval", "retrieval accuracy"

    def __init__(self, classes, loss: str = "triplet-hard", margin: float = 1.0,
                 gallery: Dataset | None = None):
        super().__init__(classes)
        if loss not in EMBED_LOSSES:
            raise DataError(f"unknown embedding loss '{loss}' ({', '.join(EMBED_LOSSES)})")
        self.loss_name, self.margin, self.gallery = loss, margin, gallery

    def _loss(self, e, y):
        if self.loss_name == "triplet-hard":
            return losses.batch_hard_triplet_loss(e, y, margin=self.margin)
        if self.loss_name == "triplet-all":
            return losses.batch_all_triplet_loss(e, y, margin=self.margin)[:2]
        return losses.contrastive_loss(e, y, margin=self.margin)

    def step(self, model, out, y):
        host = _host(model, out)
        loss, grad = self._loss(host.reshape(len(host), -1), y)
        return loss, grad.reshape(host.shape), 0, 0

    def embed(self, model, dataset, batch_size=256):
        return np.concatenate([out.reshape(len(out), -1) for out, _ in
                               self._outputs(model, dataset, batch_size)])

    def evaluate(self, model, dataset, batch_size=256, pairs: int = 400):
        """Retrieval accuracy of the data set's images against the gallery (the training
        images), and verification (ROC-AUC, best-threshold accuracy) on every pair of the
        first ``pairs`` images."""
        e = self.embed(model, dataset, batch_size)
        labels = dataset.y
        if self.gallery is None:  # leave-one-out within the set
            d = ((e[:, None] - e[None]) ** 2).sum(-1)
            np.fill_diagonal(d, np.inf)
            retrieval = float((labels[d.argmin(1)] == labels).mean())
        else:
            retrieval = metrics.retrieval_accuracy(
                e, labels, self.embed(model, self.gallery, batch_size), self.gallery.y)
        k = min(len(e), pairs)
        i, j = np.triu_indices(k, 1)
        distances = np.sqrt(((e[i] - e[j]) ** 2).sum(-1))
        verified = metrics.verification(distances, labels[i] == labels[j])
        loss = self._loss(e, labels)[0] if len(set(labels.tolist())) > 1 else float("nan")
        return {"loss": loss, "retrieval": retrieval, "roc_auc": verified["roc_auc"],
                "verification": verified["accuracy"]}

    def describe(self):
        return {**super().describe(), "loss": self.loss_name, "margin": self.margin}


def make(kind: str | None, split, program, options: dict, seed: int = 0) -> Task:
    """The task for training ``program`` on ``split``: ``kind`` (None: the data's own, or
    ``embed`` when the loss is an embedding loss) and options (``loss``, ``margin``,
    ``label_smoothing``, ``box_loss``, ``objectness``, ``class_weights``)."""
    loss = options.get("loss")
    if kind is None:
        kind = "embed" if loss in EMBED_LOSSES else (
            "detect" if split.task == "instance" else split.task)
    if kind not in KINDS:
        raise DataError(f"unknown task '{kind}' ({', '.join(KINDS)})")
    if kind in ("classify", "embed") and split.task != "classify":
        raise DataError(f"{kind} needs data with a class label per image; this data is "
                        f"for {split.task}")
    data_kind = "detect" if split.task == "instance" else split.task
    if kind in ("segment", "detect") and data_kind != kind:
        sources = {"segment": "shapes-seg, mosaic-seg or masks:DIR",
                   "detect": "shapes-det, shapes-inst, mosaic-det or coco:FILE"}[kind]
        raise DataError(f"the task is {kind} but the data is for {split.task}: use {sources}")
    output = next(iter(program.output_shapes().values()))
    input_shape = next(iter(program.inputs.values()))
    classes = split.train.classes
    if kind != "segment" and options.get("class_weights") is not None:
        raise DataError("class weights weigh a segmentation's per-pixel cross-entropy; this "
                        f"run is for {kind}")
    if kind == "classify":
        return Classification(classes, options.get("label_smoothing", 0.0))
    if kind == "segment":
        task = Segmentation(classes, loss or "ce", options.get("class_weights"))
        task.check(output, input_shape)
        return task
    if kind == "embed":
        return Embedding(classes, loss or "triplet-hard", options.get("margin", 1.0),
                         gallery=split.train)
    if "proposals" in program.inputs:  # a two-stage detector
        from runtime.train.rcnn import RCNN

        rcnn = _pyramid_detector(RCNN, "a two-stage detector", "rcnn", 8.0, program,
                                 classes, options)
        if rcnn.mask_boxes and split.task != "instance":
            raise DataError("the network has a mask branch but the data has no instance "
                            "masks: use shapes-inst or coco:FILE.json with segmentations")
        return TwoStageDetection(classes, rcnn, seed)
    if any(key.startswith("class_logits_") for key in program.outputs):  # RetinaNet
        from runtime.train.retinanet import RetinaNet

        return RetinaNetDetection(classes, _pyramid_detector(
            RetinaNet, "a RetinaNet", "focal", 4.0, program, classes, options))
    from runtime.train.boxes import kmeans_anchors
    from runtime.train.detection import YoloHead

    if loss not in (None, "yolo"):
        raise DataError(f"unknown detection loss '{loss}' (yolo; --box-loss and "
                        f"--objectness choose its parts)")
    _, h, w = input_shape
    boxes = np.concatenate([rows for rows in _boxes_of(split.train.y) if len(rows)] or
                           [np.zeros((0, 5))])
    depth = output[-1] if len(output) == 3 else 0
    per_cell = (depth - len(classes)) // 5 if depth > len(classes) else 1
    try:
        anchors, _ = kmeans_anchors((boxes[:, 2:4] - boxes[:, :2]) / [w, h], max(per_cell, 1),
                                    seed=seed)
        head = YoloHead.fit(output, len(classes), anchors, (h, w),
                            box_loss=options.get("box_loss", "mse"),
                            objectness=options.get("objectness", "bce"))
    except ValueError as exc:
        raise DataError(str(exc)) from None
    return Detection(classes, head)


def _pyramid_detector(kind, what: str, loss: str, anchor_scale: float, program, classes,
                      options: dict):
    """A pyramid detector's targets and decoding (``kind``: RCNN or RetinaNet) for the
    program, or a DataError saying why the network or the options do not fit."""
    if options.get("loss") not in (None, loss):
        raise DataError(f"unknown loss '{options.get('loss')}' for {what} ({loss})")
    try:
        return kind.from_program(program, len(classes) + 1,
                                 anchor_scale=options.get("anchor_scale", anchor_scale))
    except ValueError as exc:
        raise DataError(str(exc)) from None


def restore(description: dict, split, program) -> Task:
    """A task as a run directory's ``task.json`` describes it (checked by
    :func:`check_description`)."""
    try:
        return _restore(description, split, program)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"the run's task.json does not describe a task archc can restore "
                        f"({type(exc).__name__}: {str(exc)[:80]})") from None


def _restore(description: dict, split, program) -> Task:
    kind = description["task"]
    classes = description["classes"]
    if kind == "classify":
        return Classification(classes)
    if kind == "segment":
        return Segmentation(classes, description.get("loss", "ce"),
                            description.get("class_weights"))
    if kind == "embed":
        return Embedding(classes, description.get("loss", "triplet-hard"),
                         description.get("margin", 1.0),
                         gallery=split.train if split is not None else None)
    if "rcnn" in description:  # the geometry is the program's; the settings the run's
        from runtime.train.rcnn import RCNN

        settings = {key: description["rcnn"][key] for key, _, _ in RCNN_SETTINGS}
        return TwoStageDetection(classes, RCNN.from_program(program, len(classes) + 1,
                                                            **settings))
    if "retinanet" in description:
        from runtime.train.retinanet import RetinaNet

        settings = {key: description["retinanet"][key] for key, _, _ in RETINANET_SETTINGS}
        return RetinaNetDetection(classes, RetinaNet.from_program(program, len(classes) + 1,
                                                                  **settings))
    from runtime.train.detection import YoloHead

    spec = dict(description["head"])
    return Detection(classes, YoloHead(spec.pop("grid"), spec.pop("boxes"), spec.pop("classes"),
                                       np.array(spec.pop("anchors")), tuple(spec.pop("size")),
                                       **spec))


def find_description(weights: str | Path) -> dict | None:
    """The ``task.json`` of the run a weights path belongs to (the run directory itself, or
    a checkpoint's folder inside it), if any; checked (:func:`check_description`)."""
    path = Path(weights)
    for folder in (path, path.parent, path.parent.parent):
        candidate = folder / "task.json"
        if candidate.exists():
            return check_description(read_json(candidate, "task file", DataError), candidate)
    return None


RCNN_SETTINGS = (("anchor_scale", 0.01, 1000), ("rpn_batch", 1, 100_000),
                 ("roi_positive", 0, 1), ("score_threshold", 0, 1),
                 ("detections", 1, 100_000))
"""A two-stage detector's settings a task.json gives, and their bounds."""

RETINANET_SETTINGS = (("anchor_scale", 0.01, 1000), ("alpha", 0, 1), ("gamma", 0, 10),
                      ("score_threshold", 0, 1), ("detections", 1, 100_000))
"""A RetinaNet's settings a task.json gives, and their bounds."""


def check_description(described: dict, path) -> dict:
    """A task.json as :meth:`Task.describe` writes it, or a DataError naming what is
    wrong."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise DataError(f"task file {path}: {what}",
                            hint="it is written by archc train; train again, or remove it "
                            "to evaluate as the data's default task")

    kind = described.get("task")
    need(kind in KINDS, f"'task' must be one of {', '.join(KINDS)}, got "
         f"{json.dumps(kind)[:40]}")
    classes = described.get("classes")
    need(isinstance(classes, list) and all(isinstance(c, str) for c in classes) and classes,
         "'classes' must be a list of class names")
    for key in ("mean", "std"):
        value = described.get(key, [0.0])
        need(isinstance(value, list) and value and all(map(finite_number, value)),
             f"'{key}' must be a list of numbers")
    dense = [(name, settings) for name, settings in (("rcnn", RCNN_SETTINGS),
                                                     ("retinanet", RETINANET_SETTINGS))
             if name in described]
    if kind == "detect" and dense:
        name, settings = dense[0]
        block = described[name]
        need(isinstance(block, dict), f"'{name}' must describe the detector's settings")
        for key, low, high in settings:
            value = block.get(key)
            need(finite_number(value) and low <= value <= high,
                 f"{name}'s '{key}' must be a number from {low} to {high}")
    elif kind == "detect":
        head = described.get("head")
        need(isinstance(head, dict) and {"grid", "boxes", "classes", "anchors", "size"} <=
             set(head), "'head' must describe the detector (grid, boxes, classes, anchors, "
             "size)")
    return described


def primary_metric(kind: str) -> tuple[str, str]:
    """The log key and the name of the metric that picks a ``kind`` run's best epoch."""
    task = {t.kind: t for t in (Classification, Segmentation, Detection, Embedding)}.get(kind)
    if task is None:
        raise DataError(f"'{kind}' is not a task archc trains ({', '.join(KINDS)})")
    return f"test_{task.primary}", task.name
