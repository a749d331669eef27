"""Training for segmentation, detection and embeddings end to end on small generated data,
and the commands around them (eval, predict, visualize, stylize) with their errors.

Thresholds (docs/tasks.md): segmentation mean IoU at least 0.3 above the all-background
prediction's; detection mAP@0.5 above 0.3; batch-hard triplet training retrieval accuracy
above 0.97 and verification ROC-AUC above 0.9.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import archc
from runtime.train import data, tasks
from archc.cli import main
from runtime.train.loop import TrainConfig, fit
from conftest import SPECS

# a small fully convolutional single-stage detector with the YOLO spec's output layout
TINY_DETECTOR = """
name: tinydet
variables: {C: 3, B: 2}
input: {channels: 3, height: 64, width: 64}
blocks:
  cbr:
    args: [out]
    layers:
      - conv2d: {out_channels: out, kernel_size: 3, padding: 1, bias: false}
      - batchnorm2d
      - leaky_relu: 0.1
layers:
  - cbr: 16
  - max_pool2d: 2
  - cbr: 32
  - max_pool2d: 2
  - cbr: 64
  - max_pool2d: 2
  - cbr: 64
  - max_pool2d: 2
  - cbr: 128
  - conv2d: {out_channels: B * 5 + C, kernel_size: 1}
  - permute: [0, 2, 3, 1]
    name: detections
"""


def _train(model, split, task, tmp_path, **config):
    settings = dict(epochs=4, batch_size=16, optimizer="adam", lr=0.003, weight_decay=0.0)
    settings.update(config)
    return fit(model, split, TrainConfig(**settings), tmp_path, task=task, report=lambda s: None)


def _chance_miou(split) -> float:
    """The mIoU of calling every pixel background."""
    background = np.zeros((len(split.test), 4, 32, 32), np.float32)
    background[:, 0] = 1
    return tasks.Segmentation(split.test.classes).evaluate(
        type("Fixed", (), {"training": False, "eval": lambda self: self,
                           "predict": lambda self, x: background[:len(x)]})(), split.test,
        batch_size=len(split.test))["miou"]


def test_unet_segments_shapes_well_above_chance(tmp_path):
    graph = archc.load(SPECS / "unet.yaml", in_channels=3, num_classes=4, padding=1,
                       resolution=32, base=8, batch_norm=True)
    model = archc.compile(graph, backend="cpu", seed=0)
    split = data.load("shapes-seg:256", (3, 32, 32))
    task = tasks.make(None, split, model.program, {"loss": "ce+dice"})
    history = _train(model, split, task, tmp_path, epochs=6, batch_size=8)
    chance = _chance_miou(split)
    best = max(h["test_miou"] for h in history)
    assert best > chance + 0.3, (best, chance)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    described = json.loads((tmp_path / "task.json").read_text())
    assert described["task"] == "segment" and described["loss"] == "ce+dice"


@pytest.mark.parametrize("spec, variables, epochs", [
    ("unet_plus_plus", {"dropout": 0.0, "deep_supervision": True}, 8),
    ("attention_unet", {}, 6),
])
def test_unet_variants_segment_shapes_above_chance(spec, variables, epochs, tmp_path):
    """UNet++ (nested skips, the mean of its four heads) and Attention U-Net (gated skips),
    small: they learn shapes-seg in seconds (measured 0.52 and 0.61 mIoU, chance 0.20)."""
    graph = archc.load(SPECS / f"{spec}.yaml", in_channels=3, num_classes=4, resolution=32,
                       base=8, **variables)
    model = archc.compile(graph, backend="cpu", seed=0)
    split = data.load("shapes-seg:256", (3, 32, 32))
    task = tasks.make(None, split, model.program, {"loss": "ce+dice"})
    history = _train(model, split, task, tmp_path, epochs=epochs, batch_size=8)
    chance = _chance_miou(split)
    assert max(h["test_miou"] for h in history) > chance + 0.2, chance
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_detector_learns_shapes_above_the_documented_map(tmp_path):
    model = archc.compile(archc.load("tinydet.yaml", text=TINY_DETECTOR), backend="cpu",
                          seed=0)
    split = data.load("shapes-det:256", (3, 64, 64))
    task = tasks.make(None, split, model.program, {})
    assert task.head.grid == 4 and task.head.boxes == 2
    history = _train(model, split, task, tmp_path, epochs=8, batch_size=8)
    assert max(h["test_map50"] for h in history) > 0.3
    assert all(h["test_map"] <= h["test_map50"] for h in history)
    restored = tasks.restore(json.loads((tmp_path / "task.json").read_text()), split,
                             model.program)
    np.testing.assert_allclose(restored.head.anchors, task.head.anchors)


def test_siamese_triplet_training_separates_digits(tmp_path):
    graph = archc.load(SPECS / "siamese.yaml", resolution=65, width=0.25, embedding=32)
    model = archc.compile(graph, backend="cpu", seed=0)
    split = data.load("digits", (1, 65, 65))
    task = tasks.make(None, split, model.program, {"loss": "triplet-hard", "margin": 0.5})
    assert task.kind == "embed"
    before = task.evaluate(model, split.test)
    # random convolutions already give good nearest neighbours on digits (about 0.95);
    # same/different verification is where training shows (ROC-AUC about 0.83 before)
    history = _train(model, split, task, tmp_path, epochs=1, batch_size=64, lr=2e-4)
    after = history[-1]
    assert after["test_retrieval"] > 0.97 and after["test_retrieval"] > before["retrieval"]
    assert after["test_roc_auc"] > 0.9 and after["test_roc_auc"] > before["roc_auc"] + 0.05


@pytest.mark.parametrize("loss", ["triplet-all", "contrastive"])
def test_other_embedding_losses_train(loss, tmp_path):
    graph = archc.load(SPECS / "siamese.yaml", resolution=65, width=0.25, embedding=16)
    model = archc.compile(graph, backend="cpu", seed=1)
    split = data.load("digits", (1, 65, 65))
    task = tasks.make("embed", split, model.program, {"loss": loss, "margin": 0.5})
    before = task.evaluate(model, split.test)
    history = _train(model, split, task, tmp_path, epochs=1, batch_size=64, lr=1e-3)
    assert history[-1]["test_roc_auc"] > before["roc_auc"] + 0.03
    assert history[-1]["test_loss"] < before["loss"]


def test_detection_commands_end_to_end(tmp_path, capsys):
    spec = tmp_path / "tinydet.yaml"
    spec.write_text(TINY_DETECTOR)
    run = tmp_path / "run"
    common = [str(spec), "--data", "shapes-det:64"]
    assert main(["train", *common, "--epochs", "1", "--optimizer", "adam", "--box-loss",
                 "giou", "--objectness", "focal", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "(detect)" in out and "2 anchors per cell" in out and "test mAP@0.5" in out
    described = json.loads((run / "task.json").read_text())
    assert described["head"]["box_loss"] == "giou" and len(described["mean"]) == 3
    assert main(["eval", *common, "--weights", str(run)]) == 0
    assert "mAP@0.5" in capsys.readouterr().out
    assert main(["predict", *common, "--weights", str(run), "--count", "2", "--score", "0.0",
                 "-o", str(tmp_path / "pictures")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and sorted(p.name for p in (tmp_path / "pictures").iterdir()) == \
        ["test-0000.png", "test-0001.png"]
    from PIL import Image

    assert Image.open(tmp_path / "pictures" / "test-0000.png").size == (256, 256)
    # an image file, standardized with the run's statistics
    image = tmp_path / "mine.png"
    Image.new("RGB", (80, 60), (200, 30, 30)).save(image)
    assert main(["predict", str(spec), "--weights", str(run), "--image", str(image),
                 "-o", str(tmp_path / "mine")]) == 0
    assert (tmp_path / "mine" / "mine.png").is_file()


def test_segmentation_predict_and_visualize_commands(tmp_path, capsys):
    unet = [str(SPECS / "unet.yaml"), "--set", "in_channels=3", "--set", "num_classes=4",
            "--set", "padding=1", "--set", "resolution=32", "--set", "base=4"]
    run = tmp_path / "seg"
    assert main(["train", *unet, "--data", "shapes-seg:32", "--epochs", "1", "--loss", "ce+dice",
                 "--class-weights", "0.2,1,1,1", "--out", str(run)]) == 0
    assert json.loads((run / "task.json").read_text())["class_weights"] == [0.2, 1, 1, 1]
    assert "test mIoU" in capsys.readouterr().out
    assert main(["predict", *unet, "--data", "shapes-seg:32", "--weights", str(run),
                 "--count", "1", "-o", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "test-0000.png").is_file()
    capsys.readouterr()
    lenet = str(SPECS / "lenet5.yaml")
    for what, extra in [("saliency", []), ("smoothgrad", ["--samples", "3"]),
                        ("features", ["--node", "c1"]), ("filters", []),
                        # an activation training's fusion would fold into its conv
                        ("features", ["--node", "tanh"]),
                        ("class-model", ["--class", "3", "--steps", "2"]),
                        ("invert", ["--node", "c3", "--steps", "2"])]:
        target = tmp_path / f"{what}.png"
        assert main(["visualize", lenet, "--data", "digits", "--what", what, *extra,
                     "-o", str(target)]) == 0, what
        assert target.is_file()
    out = capsys.readouterr().out
    assert "c1: 6 maps of 28 x 28" in out and "6 filters of 1 x 5 x 5" in out
    from PIL import Image

    for name in ("content", "style"):
        Image.new("L", (32, 32), 90 if name == "content" else 200).save(tmp_path / f"{name}.png")
    assert main(["stylize", lenet, "--content", str(tmp_path / "content.png"), "--style",
                 str(tmp_path / "style.png"), "--content-node", "tanh_1", "--style-nodes", "c1,tanh",
                 "--steps", "2", "-o", str(tmp_path / "styled.png")]) == 0
    assert "(random weights)" in capsys.readouterr().out


# a small 'same'-padded U-Net for the 4 classes of the shapes data (num_classes added below)
SMALL_UNET = ["specs/unet.yaml", "--set", "in_channels=3", "--set", "padding=1", "--set",
              "resolution=32", "--set", "base=4", "--data", "shapes-seg:8"]
FOUR = ["--set", "num_classes=4"]


@pytest.mark.parametrize("args, message", [
    (["train", "specs/yolo.yaml", "--set", "S=2", "--set", "width=0.0625", "--set",
      "hidden=16", "--data", "shapes-det:8"], "not B \\* 5 \\+ 3 for the data's 3 classes"),
    (["train", *SMALL_UNET], "the data has 4 classes .* --set num_classes=4"),
    (["train", "specs/lenet5.yaml", "--data", "digits", "--task", "segment"],
     "the task is segment but the data is for classify"),
    (["train", *SMALL_UNET, *FOUR, "--augment", "flip"], "--augment works on classification data"),
    (["train", "specs/lenet5.yaml", "--data", "digits", "--task", "embed", "--loss", "cosine"],
     "unknown embedding loss 'cosine'"),
    (["train", "specs/lenet5.yaml", "--data", "digits", "--class-weights", "1,2"],
     "class weights weigh a segmentation's per-pixel cross-entropy"),
    (["train", *SMALL_UNET, *FOUR, "--class-weights", "1,2"], "2 class weights for 4 classes"),
    (["visualize", "specs/lenet5.yaml", "--data", "digits", "--what", "features", "--node",
      "c9"], "lenet5 has no node 'c9'"),
    (["visualize", "specs/lenet5.yaml", "--data", "digits", "--what", "features"],
     "--what features needs --node"),
])
def test_task_errors_are_one_line(args, message, capsys, monkeypatch, tmp_path):
    from conftest import ROOT

    monkeypatch.chdir(ROOT)
    assert main(args + (["--out", str(tmp_path / "run")] if args[0] == "train" else [])) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    import re

    assert re.search(message, err), err


def test_an_unpadded_unet_is_scored_on_the_centre_of_the_mask():
    masks = np.arange(2 * 6 * 8).reshape(2, 6, 8)
    np.testing.assert_array_equal(tasks._crop_to(masks, (2, 4)), masks[:, 2:4, 2:6])
    task = tasks.Segmentation(["a", "b"])
    task.check((2, 4, 4), (3, 8, 8))
    with pytest.raises(data.DataError, match="larger than its 8 x 8 input"):
        task.check((2, 10, 10), (3, 8, 8))
    logits = np.random.default_rng(0).standard_normal((2, 2, 2, 4)).astype(np.float32)
    backend = type("Host", (), {"to_host": staticmethod(lambda v: v),
                                "classify": None})
    model = type("M", (), {"backend": backend})()
    task = tasks.Segmentation(["a", "b"], loss="dice")
    loss, grad, hits, judged = task.step(model, logits, masks % 2)
    assert grad.shape == logits.shape and judged == 16
    from runtime.train import losses

    assert loss == pytest.approx(losses.dice_loss(logits, (masks % 2)[:, 2:4, 2:6])[0])


def test_retrieval_without_a_gallery_is_leave_one_out():
    """Each image's nearest other image of the same set decides (an image never finds
    itself)."""
    x = np.array([[0.0], [0.1], [5.0], [5.2], [9.0]], np.float32)
    dataset = data.Dataset(x[:, :, None, None], np.array([0, 0, 1, 1, 0]), ["a", "b"])
    model = type("Identity", (), {"training": False, "eval": lambda self: self,
                                  "predict": lambda self, v: v.reshape(len(v), -1)})()
    task = tasks.Embedding(["a", "b"], "contrastive")
    result = task.evaluate(model, dataset)
    assert result["retrieval"] == pytest.approx(4 / 5)  # 9.0's nearest is 5.2, class b
    with_gallery = tasks.Embedding(["a", "b"], "contrastive", gallery=dataset)
    assert with_gallery.evaluate(model, dataset)["retrieval"] == 1.0  # finds itself


def test_top_classes_are_softmax_probabilities_in_order():
    import torch

    logits = np.array([[2.0, -1.0, 0.5, 3.0], [0.0, 0.0, 0.0, 0.0], [1e4, 0.0, -1e4, 1.0]])
    top = tasks.Classification(["a", "b", "c", "d"]).top_classes(logits, k=3)
    probs = torch.softmax(torch.tensor(logits), dim=1).numpy()
    assert [label for label, _ in top[0]] == ["d", "a", "c"]
    assert [label for label, _ in top[1]] == ["a", "b", "c"]  # ties keep the class order
    for row, expected in zip(top, probs):
        for label, p in row:
            assert p == pytest.approx(expected["abcd".index(label)], rel=1e-12, abs=1e-300)


def test_predict_names_the_top_classes_of_a_classifier(tmp_path, capsys):
    run = tmp_path / "run"
    spec = str(SPECS / "lenet5.yaml")
    assert main(["train", spec, "--data", "digits", "--epochs", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["predict", spec, "--data", "digits", "--weights", str(run), "--count", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["test-0000", "test-0001"]
    for line in lines:
        shown = [part.split() for part in line.split(": ")[1].split(", ")]
        probs = [float(p) for _, p in shown]
        assert len(shown) == 3 and all(label.isdigit() for label, _ in shown)
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0005
