"""A run's plots: curves.png/.svg after every epoch, and `archc train --tensorboard`'s
events read back by TensorBoard's own reader."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from archc.cli import main
from conftest import SPECS
from runtime.train import curves


def history(epochs: int = 3) -> list[dict]:
    return [{"epoch": e, "steps": 5 * e, "lr": 0.1 / e, "train_loss": 1.0 / e,
             "test_loss": 1.1 / e, "test_accuracy": 0.5 + 0.1 * e, "images_per_s": 100.0,
             "loss_steps": [[5 * (e - 1) + k, 1.0 / e] for k in range(1, 6)]}
            for e in range(1, epochs + 1)]


def test_the_curves_have_a_panel_per_quantity_and_every_series(tmp_path):
    fig = curves.figure(history(), "net")
    loss, metrics, lr, speed = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ["Loss", "Metrics", "Learning rate",
                                                  "Training speed"]
    labels = [line.get_label() for line in loss.get_lines()]
    assert labels == ["training loss per step", "training loss (epoch mean)", "test loss"]
    steps = loss.get_lines()[0].get_xdata()
    assert list(steps) == list(range(1, 16))  # every logged step, across the epochs
    assert list(loss.get_lines()[1].get_xdata()) == [5, 10, 15]  # the epoch means at their last step
    assert [line.get_label() for line in metrics.get_lines()] == ["test accuracy"]
    np.testing.assert_allclose(lr.get_lines()[0].get_ydata(), [0.1, 0.05, 0.1 / 3])
    written = curves.write_curves(tmp_path, history())
    assert [p.name for p in written] == ["curves.png", "curves.svg"]
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")
    assert "<svg" in (tmp_path / "curves.svg").read_text()[:500]
    assert curves.write_curves(tmp_path / "none", []) == []  # nothing to draw yet


def test_train_draws_curves_and_writes_tensorboard_events(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, board = tmp_path / "run", tmp_path / "tb"
    assert main(["train", str(SPECS / "lenet5.yaml"), "--data", "digits", "--epochs", "2",
                 "--batch-size", "32", "--out", str(run), "--tensorboard", str(board)]) == 0
    assert f"TensorBoard events in {board}" in capsys.readouterr().out
    assert (run / "curves.png").stat().st_size > 10_000 and (run / "curves.svg").exists()
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(board), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    tags = events.Tags()
    assert {"loss/train_loss", "loss/test_loss", "metrics/test_accuracy", "training/lr",
            "loss/train_step"} <= set(tags["scalars"])
    accuracy = [e.value for e in events.Scalars("metrics/test_accuracy")]
    assert accuracy == pytest.approx([row["test_accuracy"] for row in log])
    per_step = events.Scalars("loss/train_step")
    assert [e.step for e in per_step] == [s for row in log for s, _ in row["loss_steps"]]
    assert "weights/c1.weight" in tags["histograms"]
    assert "gradients/c1.weight" in tags["histograms"]
    assert [e.step for e in events.Histograms("weights/fc3.bias")] == [1, 2]
    # the graph: one node per kernel of the compiled network (activations fused into the
    # layers before them), with its op, inputs and output shape
    graph = events.Graph()
    ops = {node.name: node.op for node in graph.node}
    assert ops["c1"] == "conv2d" and ops["s2"] == "avg_pool2d" and ops["input"] == "input"
    assert all(i in ops for node in graph.node for i in node.input)

    # the report of the run: its best weights on the same held-out images
    page = tmp_path / "report.html"
    assert main(["report", str(SPECS / "lenet5.yaml"), "--run", str(run), "--data", "digits",
                 "-o", str(page)]) == 0
    data = re.search(r'id="archc-data">(.*?)</script>', page.read_text(), re.S).group(1)
    evaluation = json.loads(data)["run"]["evaluation"]
    best = max(row["test_accuracy"] for row in log)
    assert evaluation["metrics"]["accuracy"] == pytest.approx(best, abs=1e-9)
    confusion = np.array(evaluation["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == evaluation["images"]
    assert np.trace(confusion) / confusion.sum() == pytest.approx(best)
    recall = np.diag(confusion) / confusion.sum(axis=1)
    np.testing.assert_allclose(evaluation["per_class"]["recall"], recall)
    assert len(evaluation["pictures"]) == 8
    assert all(p["png"].startswith("data:image/png;base64,") and p["truth"] in "0123456789"
               for p in evaluation["pictures"])
    fc3 = next(node for node in graph.node if node.name == "fc3")
    assert [d.size for d in fc3.attr["_output_shapes"].list.shape[0].dim] == [-1, 10]


def test_blocks_are_name_scopes_of_the_tensorboard_graph():
    import archc

    program = archc.compile(archc.load(SPECS / "resnet18.yaml"), backend="reference").program
    graph = curves.graph_def(program)
    names = {node.name for node in graph.node}
    assert len(graph.node) == len(program.ops) + len(program.inputs)
    assert any(name.startswith("layer1/0/") for name in names)
    assert all(i in names for node in graph.node for i in node.input)


def test_drawing_keeps_under_a_tenth_of_the_training_time(tmp_path):
    plotter = curves.Plotter(tmp_path, "net")
    rows = history(3)
    plotter.epoch(rows[:1])  # the first epoch is always drawn
    assert plotter.drawn == 1 and plotter.cost > 0
    plotter.epoch(rows[:2])  # at once after: ten drawing times have not passed
    assert plotter.drawn == 1
    plotter.drawn_at -= 10 * plotter.cost  # ... now they have
    plotter.epoch(rows[:2])
    assert plotter.drawn == 2
    plotter.epoch(rows, last=True)  # the end of training is always drawn
    assert plotter.drawn == 3
