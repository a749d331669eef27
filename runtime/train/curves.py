"""Plots of a training run: ``curves.png`` and ``curves.svg`` in the run folder, drawn
again after every epoch from the log (matplotlib, the ``plots`` extra), and the
TensorBoard events of ``archc train --tensorboard DIR`` (tensorboardX, the same extra).

Both only read what the loop already computed: the log's rows, the parameters, and the
last step's gradients of each epoch."""

from __future__ import annotations

import io
import math
import time
import warnings
from pathlib import Path

import numpy as np

from runtime.errors import ArchcWarning, UsageError

PLOTS_HINT = "pip install 'archc[plots]' (matplotlib and tensorboardX)"


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _series(history: list[dict], key: str, x: str = "epoch") -> tuple[list, list]:
    rows = [r for r in history if isinstance(r.get(key), (int, float))]
    return [r[x] for r in rows], [r[key] for r in rows]


def figure(history: list[dict], title: str = ""):
    """A matplotlib figure of the run: loss (per step and per epoch), the task's metrics,
    the learning rate and the speed, one panel each."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 6.4), layout="constrained")
    loss, metrics, lr, speed = fig.subplots(2, 2).ravel()
    steps = [p for r in history for p in r.get("loss_steps", [])]
    per_step = len(steps) > len(history)
    x = "steps" if per_step else "epoch"
    if per_step:
        loss.plot(*zip(*steps), lw=0.8, alpha=0.6, label="training loss per step")
    loss.plot(*_series(history, "train_loss", x), "o-", label="training loss (epoch mean)")
    if any("test_loss" in r for r in history):
        loss.plot(*_series(history, "test_loss", x), "s-", label="test loss")
    loss.set(xlabel=x.rstrip("s") if per_step else "epoch", ylabel="loss", title="Loss")
    keys = sorted({k for r in history for k in r
                   if (k.startswith("test_") and k != "test_loss") or k == "train_accuracy"})
    for key in keys:
        metrics.plot(*_series(history, key), "o-", label=key.replace("_", " "))
    metrics.set(xlabel="epoch", title="Metrics")
    lr.plot(*_series(history, "lr"), "o-")
    lr.set(xlabel="epoch", ylabel="learning rate", title="Learning rate")
    speed.plot(*_series(history, "images_per_s"), "o-")
    speed.set(xlabel="epoch", ylabel="images/s", title="Training speed")
    for ax in (loss, metrics):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in (loss, metrics, lr, speed):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


def write_curves(run: Path, history: list[dict], title: str = "") -> list[Path]:
    """Draw ``curves.png`` and ``curves.svg`` in ``run`` (each replaced whole); nothing
    without matplotlib (training said so when it began)."""
    if not history or not have_matplotlib():
        return []
    from runtime.train.checkpoint import replace_file

    fig = figure(history, title)
    written = []
    for fmt in ("png", "svg"):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=90)
        replace_file(run / f"curves.{fmt}", buffer.getvalue())
        written.append(run / f"curves.{fmt}")
    return written


class Plotter:
    """Draws a run folder's curves after its epochs, keeping the drawing (about half a
    second) under a tenth of the training time: after an epoch when ten times the last
    drawing's time has passed since it, and always at the end of training."""

    def __init__(self, run: Path, title: str = ""):
        self.run, self.title = run, title
        self.drawn_at, self.cost, self.drawn = -math.inf, 0.0, 0
        self.enabled = have_matplotlib()
        if not self.enabled:
            warnings.warn(f"no curves.png in the run folder: matplotlib is not installed "
                          f"({PLOTS_HINT})", ArchcWarning, stacklevel=3)

    def epoch(self, history: list[dict], last: bool = False) -> None:
        now = time.perf_counter()
        due = last or now - self.drawn_at >= 10 * self.cost
        if self.enabled and due and len(history) > self.drawn:
            write_curves(self.run, history, self.title)
            self.drawn_at, self.drawn = time.perf_counter(), len(history)
            self.cost = self.drawn_at - now


class TensorBoard:
    """``--tensorboard DIR``: after every epoch, the log's numbers as scalars (per epoch,
    and the loss per step), histograms of every parameter and of its last gradient, and
    once the network's graph (its layers, their ops and output shapes, blocks as name
    scopes), in TensorBoard's event format."""

    def __init__(self, folder: str | Path, program):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise UsageError("--tensorboard needs tensorboardX", PLOTS_HINT) from None
        self.writer = SummaryWriter(str(folder))
        self.writer._get_file_writer().add_onnx_graph(graph_def(program))
        self.folder = Path(folder)

    def epoch(self, row: dict, model, grads: dict) -> None:
        epoch = row["epoch"]
        for step, loss in row.get("loss_steps", []):
            self.writer.add_scalar("loss/train_step", loss, int(step))
        for key, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and key not in ("epoch", "steps"):
                group = "loss" if key.endswith("loss") else "metrics" if key.startswith(
                    ("test_", "train_acc")) else "training"
                self.writer.add_scalar(f"{group}/{key}", value, epoch)
        for name, value in model.parameters().items():
            if value.size:
                self.writer.add_histogram(f"weights/{name}", np.asarray(value, np.float32), epoch)
        for name, grad in grads.items():
            host = np.asarray(model.backend.to_host(grad), np.float32)
            if host.size and np.all(np.isfinite(host)):
                self.writer.add_histogram(f"gradients/{name}", host, epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def graph_def(program):
    """The compiled network as a TensorBoard GraphDef: one node per input and kernel, named
    by its blocks (``layer1/0/conv1``) so TensorBoard folds blocks, with its op, inputs and
    output shape."""
    from tensorboardX.proto.attr_value_pb2 import AttrValue
    from tensorboardX.proto.graph_pb2 import GraphDef
    from tensorboardX.proto.node_def_pb2 import NodeDef
    from tensorboardX.proto.tensor_shape_pb2 import TensorShapeProto
    from tensorboardX.proto.versions_pb2 import VersionDef

    def dims(shape) -> TensorShapeProto:
        return TensorShapeProto(dim=[TensorShapeProto.Dim(size=-1)] + [
            TensorShapeProto.Dim(size=int(d)) for d in shape])

    def node(name: str, op: str, inputs, shape, attrs: dict) -> NodeDef:
        return NodeDef(name=name.replace(".", "/"), op=op,
                       input=[i.replace(".", "/") for i in inputs], attr={
                           "_output_shapes": AttrValue(list=AttrValue.ListValue(
                               shape=[dims(shape)])),
                           "attributes": AttrValue(s=repr(attrs).encode()[:1000])})

    nodes = [node(name, "input", (), shape, {}) for name, shape in program.inputs.items()]
    nodes += [node(op.output, op.kind, op.inputs, op.out_shape, op.attrs)
              for op in program.ops]
    return GraphDef(node=nodes, versions=VersionDef(producer=22))
