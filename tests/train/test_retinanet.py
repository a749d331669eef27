"""RetinaNet (runtime/train/retinanet.py): torchvision's anchors, its loss written out in
torch, gradients by central differences, detections from outputs built by hand, and a
small RetinaNet learning shapes-det through archc train / eval / predict."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import archc
from archc.cli import main
from runtime.train import data, tasks
from runtime.train.rcnn import BETWEEN, encode, match
from runtime.train.boxes import box_iou
from runtime.train.retinanet import RetinaNet
from conftest import SPECS

SMALL = {"resolution": 64, "width": 8, "blocks": [1, 1, 1, 1], "fpn_channels": 16,
         "num_classes": 4}


@pytest.fixture(scope="module")
def model():
    return archc.compile(archc.load(SPECS / "retinanet.yaml", **SMALL), backend="cpu", seed=0)


def _outputs(model, rng, n=2):
    return {k: rng.normal(0, 1, (n, *s)) for k, s in model.program.output_shapes().items()}


TRUTH = [np.array([[10, 12, 30, 34, 1], [40, 5, 60, 20, 2]], float),
         np.array([[5, 5, 25, 25, 0]], float)]


def test_anchors_are_torchvisions(model):
    """retinanet_resnet50_fpn: sizes (x, int(x 2^(1/3)), int(x 2^(2/3))) for x = 32 ... 512
    on P3-P7, three aspect ratios each."""
    head = RetinaNet.from_program(model.program, 4)
    assert [n for n, _, _ in head.levels] == ["p3", "p4", "p5", "p6", "p7"]
    assert [head.sizes(k) for k in range(5)] == [
        [x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3))] for x in (32, 64, 128, 256, 512)]
    assert head.per_position == 9 and len(head.all_anchors) == 9 * (64 + 16 + 4 + 1 + 1)
    with pytest.raises(ValueError, match="num_classes=6"):
        RetinaNet.from_program(model.program, 6)


def test_the_classifier_starts_at_the_focal_loss_prior(model):
    bias = model.params["head_p3.classification_head.cls_logits.bias"]
    np.testing.assert_allclose(bias, -math.log(99), rtol=1e-6)
    assert np.ptp(model.params["head_p3.regression_head.bbox_reg.bias"]) > 0  # PyTorch's draw


def test_loss_is_torchvisions_compute_loss_written_out(model):
    torch = pytest.importorskip("torch")
    head = RetinaNet.from_program(model.program, 4, anchor_scale=2)
    out = _outputs(model, np.random.default_rng(0))
    value, _, parts = head.loss(out, TRUTH)
    cls_total = box_total = 0.0
    for i, rows in enumerate(TRUTH):
        logits, deltas = (torch.as_tensor(a) for a in head._image(out, i))
        matched = match(box_iou(rows[:, :4], head.all_anchors), 0.5, 0.4, True)
        fg = matched >= 0
        target = torch.zeros_like(logits)
        target[torch.as_tensor(np.nonzero(fg)[0]),
               torch.as_tensor(rows[matched[fg], 4].astype(int) + 1)] = 1.0
        valid = torch.as_tensor(matched != BETWEEN)
        x, t = logits[valid], target[valid]  # torchvision.ops.sigmoid_focal_loss, summed
        p = torch.sigmoid(x)
        ce = torch.nn.functional.binary_cross_entropy_with_logits(x, t, reduction="none")
        p_t = p * t + (1 - p) * (1 - t)
        focal = (0.25 * t + 0.75 * (1 - t)) * ce * (1 - p_t) ** 2
        cls_total += focal.sum().item() / max(1, fg.sum())
        goal = torch.as_tensor(encode(rows[matched[fg], :4], head.all_anchors[fg], (1, 1, 1, 1)))
        box_total += torch.nn.functional.l1_loss(deltas[torch.as_tensor(fg)], goal,
                                                 reduction="sum").item() / max(1, fg.sum())
    assert parts["classification"] == pytest.approx(cls_total / 2, rel=1e-10)
    assert parts["box"] == pytest.approx(box_total / 2, rel=1e-10)
    assert value == pytest.approx((cls_total + box_total) / 2, rel=1e-10)


def test_gradients_by_central_differences(model):
    head = RetinaNet.from_program(model.program, 4, anchor_scale=2)
    rng = np.random.default_rng(1)
    out = _outputs(model, rng)
    _, grads, _ = head.loss(out, TRUTH)
    # entries with a gradient (the foreground anchors' deltas among them) and some without
    picks = []
    live = {key: np.argwhere(g != 0) for key, g in grads.items()}
    assert sum(len(v) for k, v in live.items() if k.startswith("box")) >= 8  # foreground
    for key, spots in live.items():
        picks += [(key, tuple(spots[j])) for j in rng.choice(len(spots), min(3, len(spots)),
                                                             replace=False)]
        picks.append((key, tuple(rng.integers(0, d) for d in out[key].shape)))
    eps = 1e-6
    for key, index in picks:
        up = {k: v.copy() for k, v in out.items()}
        down = {k: v.copy() for k, v in out.items()}
        up[key][index] += eps
        down[key][index] -= eps
        numeric = (head.loss(up, TRUTH)[0] - head.loss(down, TRUTH)[0]) / (2 * eps)
        assert grads[key][index] == pytest.approx(numeric, rel=1e-5, abs=1e-8), (key, index)


def test_detections_from_outputs_built_by_hand(model):
    head = RetinaNet.from_program(model.program, 4, anchor_scale=2)
    out = {k: np.full((1, *s), -20.0) if k.startswith("class") else np.zeros((1, *s))
           for k, s in model.program.output_shapes().items()}
    # P4 (stride 16), position (row 1, column 2), anchor 4 (ratio 1, middle size), class 2
    a, k = 4, 4
    out["class_logits_p4"][0, a * k + 2, 1, 2] = 3.0
    out["box_regression_p4"][0, 4 * a:4 * a + 4, 1, 2] = [0.1, 0, 0, 0]
    (boxes, scores, classes), = head.detections(out)
    anchor = head.anchors[1][(1 * 4 + 2) * 9 + a]
    width = anchor[2] - anchor[0]
    moved = anchor + [0.1 * width, 0, 0.1 * width, 0]
    np.testing.assert_allclose(boxes, [np.clip(moved, 0, 64)])  # clipped to the image
    np.testing.assert_allclose(scores, [1 / (1 + math.exp(-3))])
    assert classes.tolist() == [1]  # logit 2 is data class 1 (logit 0: the background)


def test_a_small_retinanet_learns_shapes_on_the_command_line(tmp_path, capsys):
    """Trained from scratch in seconds (measured mAP@0.5 0.20 after 12 epochs, 0.26 after
    20; an untrained one finds nothing above the score threshold); eval and predict read
    the run's task.json."""
    sets = [f"--set={k}={v}".replace(" ", "") for k, v in SMALL.items()]
    common = [str(SPECS / "retinanet.yaml"), *sets, "--data", "shapes-det:256"]
    run = tmp_path / "run"
    assert main(["train", *common, "--epochs", "12", "--batch-size", "8", "--optimizer",
                 "adam", "--lr", "0.003", "--anchor-scale", "2", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "RetinaNet: 9 anchors per position over 5 levels" in out
    history = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert max(h["test_map50"] for h in history) > 0.1
    described = json.loads((run / "task.json").read_text())
    assert described["retinanet"]["anchor_scale"] == 2
    assert main(["eval", *common, "--weights", str(run)]) == 0
    assert "mAP@0.5" in capsys.readouterr().out
    assert main(["predict", *common, "--weights", str(run), "--count", "1", "-o",
                 str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "test-0000.png").is_file()
    split = data.load("shapes-det:32", (3, 64, 64))
    restored = tasks.restore(described, split, archc.compile(
        archc.load(SPECS / "retinanet.yaml", **SMALL)).program)
    assert isinstance(restored, tasks.RetinaNetDetection)
    assert restored.retina.anchor_scale == 2
