"""``archc report``: one self-contained HTML page about a network.

The page holds archc's own Graphviz diagrams (one per collapse depth, so blocks collapse
and expand without a layout engine in the browser), the analysis that ``archc summary``
prints (the same :class:`~archc.analysis.report.Report`, as JSON), and a script and style
sheet of its own (``report.js``, ``report.css`` beside this file), all inline: opened from a
disk with no network, it needs nothing else.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

from archc import __version__
from archc.analysis import analyse
from archc.analysis.memory import inference_peak
from archc.analysis.report import Report
from archc.analysis.roofline import Device
from archc.errors import UsageError
from archc.ir import Graph
from archc.layers import fmt_shape, get_layer
from archc.render import _collapsed_blocks, _collapsed_heads, _levels, diagram

HERE = Path(__file__).resolve().parent
# the most diagram nodes the first view shows: a deeper network opens collapsed
OPEN_LIMIT = 150


def _jsonable(value: Any) -> Any:
    """Attribute values as JSON: tuples as lists, anything unusual as its text."""
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def _svg(dot) -> str:
    """Graphviz's SVG without its XML prologue, to sit inside the page."""
    text = dot.pipe(format="svg").decode("utf-8")
    return text[text.index("<svg"):]


def views(graph: Graph, report: Report) -> list[dict]:
    """The diagram at every collapse depth: ``depth`` 1 draws the top-level blocks as single
    nodes, the deepest view (``depth`` None) every layer. Each view lists its collapsed
    nodes (diagram id -> the block paths it stands for) and its node count."""
    levels = _levels(graph)
    depths: list[int | None] = [d + 1 for d in sorted(set(levels.values()))] + [None]
    out = []
    for depth in depths:
        heads = _collapsed_heads(graph, levels, depth)
        collapsed = {c.id: list(c.paths) for c in _collapsed_blocks(graph, heads).values()}
        svg = _svg(diagram(graph, collapse=depth, report=report))
        label = "every layer" if depth is None else (
            "top-level blocks" if depth == 1 else f"blocks at depth {depth}")
        out.append({"depth": depth, "label": label, "svg": svg, "collapsed": collapsed,
                    "nodes": svg.count('class="node"')})
    return out


def compared(graph: Graph, report: Report) -> dict:
    """The other network of a comparison: its totals, blocks and layers (name, kind,
    output shape, parameters, MACs)."""
    return {"name": report.name, "spec": report.source, "layers_count": len(graph),
            "variables": _jsonable(report.variables), "totals": report.totals,
            "blocks": [b.to_dict() for b in report.blocks],
            "outputs": report.outputs,
            "layers": [{"name": n.name, "kind": n.kind, "shape": fmt_shape(n.output_shape, n.items),
                        "params": n.params, "macs": n.macs} for n in report.nodes]}


def page_data(graph: Graph, report: Report, run: str | Path | None = None,
              other: tuple[Graph, Report] | None = None, evaluation: dict | None = None
              ) -> dict:
    """Everything the page shows, as one JSON-ready dictionary (with ``run``: that training
    run folder's curves and settings too; with ``other``: a second network to compare
    with)."""
    levels = _levels(graph)
    layers = []
    for node, stats in zip(graph, report.nodes):
        layer = get_layer(node.op)
        layers.append({
            **stats.to_dict(), "kind": stats.kind, "family": layer.family,
            "attrs": _jsonable(node.attrs), "inputs": list(node.inputs),
            "input_shapes": [fmt_shape(graph[i].shape, graph[i].items) for i in node.inputs],
            "shape": fmt_shape(node.shape, node.items), "trainable": node.trainable,
        })
    _, live = inference_peak(graph, report.batch)
    shown = views(graph, report)
    first = next((i for i in range(len(shown) - 1, -1, -1) if shown[i]["nodes"] <= OPEN_LIMIT), 0)
    data = report.to_dict()
    data.update({
        "version": __version__, "layers": layers, "live_bytes": live, "views": shown,
        "first_view": first, "block_levels": levels,
        "variables": _jsonable(report.variables),
        "run": None if run is None else run_data(run, evaluation),
        "compare": None if other is None else compared(*other),
    })
    del data["nodes"]  # `layers` holds each record and more
    return data


def run_data(run: str | Path, evaluation: dict | None = None) -> dict:
    """A training run folder's log, settings and task, checked: every epoch's numbers (and
    its per-step losses), the settings of ``config.json``, ``task.json``'s task and
    classes. A damaged file is refused with a :class:`RunFolderError` that names it."""
    from runtime.errors import RunFolderError
    from runtime.files import finite_number, json_lines, read_json
    from runtime.train.checkpoint import is_loss_curve

    run = Path(run)
    if not run.is_dir():
        raise RunFolderError(f"{run} is not a run folder (archc train --out writes one)")
    rows = []
    for number, row in enumerate(json_lines(run / "log.jsonl", "training log",
                                            RunFolderError), 1):
        if not (isinstance(row.get("epoch"), int) and not isinstance(row["epoch"], bool)):
            raise RunFolderError(f"training log {run / 'log.jsonl'}, line {number}, has no "
                                 "epoch number")
        steps = row.get("loss_steps", [])
        if not is_loss_curve(steps):
            raise RunFolderError(f"training log {run / 'log.jsonl'}, line {number}: "
                                 "loss_steps is not a list of [step, loss] pairs")
        rows.append({**{k: v for k, v in row.items() if finite_number(v)}, "loss_steps": steps})
    config = read_json(run / "config.json", "run settings", RunFolderError)
    task = read_json(run / "task.json", "run task", RunFolderError)
    classes = task.get("classes")
    if evaluation is not None:
        evaluation = {**evaluation, "pictures": [
            {**p, "png": "data:image/png;base64," + base64.b64encode(p["png"]).decode()}
            for p in evaluation["pictures"]]}
    return {"folder": str(run), "epochs": rows, "evaluation": evaluation,
            "settings": {str(k): _jsonable(v) for k, v in config.items()},
            "task": str(task.get("task", "classify")),
            "classes": [str(c) for c in classes] if isinstance(classes, list) else []}


def _inline(text: str) -> str:
    """JSON inside a <script> element: nothing in it may close the element (``<`` only
    occurs inside JSON strings, where ``\\u003c`` means the same)."""
    return text.replace("<", "\\u003c")


def report_page(graph: Graph, *, batch: int = 1, device: Device | None = None,
                report: Report | None = None, run: str | Path | None = None,
                compare: Graph | None = None, evaluation: dict | None = None) -> str:
    """The HTML text of the report on ``graph`` (analysed at ``batch``, with a roofline of
    ``device`` when given, the training run folder ``run``'s curves with ``evaluation``,
    its best weights on held-out data (:func:`archc.cli.looking.run_evaluation`), and
    ``compare``, a second network, side by side).

    Examples
    --------
    >>> import archc
    >>> page = report_page(archc.load("specs/lenet5.yaml"))
    >>> page.startswith("<!DOCTYPE html>") and "61,706" in page
    True
    """
    report = report or analyse(graph, batch=batch, device=device)
    other = None if compare is None else (compare, analyse(compare, batch=batch, device=device))
    data = page_data(graph, report, run, other, evaluation)
    title = f"{graph.name}: archc report"
    t = report.totals
    # a first line readable before (or without) the script: the totals
    summary = (f"{t['params']:,} parameters, {t['macs']:,} MACs, {len(graph)} layers")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<link rel=\"icon\" href=\"data:,\">"
        f"<title>{html.escape(title)}</title>"
        f"<style>{(HERE / 'report.css').read_text()}</style></head>\n<body>"
        f"<noscript><p>{html.escape(summary)} (the interactive page needs JavaScript)</p></noscript>"
        f"<div id=\"app\" data-summary=\"{html.escape(summary)}\"></div>\n"
        f"<script type=\"application/json\" id=\"archc-data\">{_inline(json.dumps(data))}</script>\n"
        f"<script>{(HERE / 'report.js').read_text()}</script>\n</body></html>\n"
    )


def write_report(graph: Graph, path: str | Path, *, batch: int = 1,
                 device: Device | None = None, run: str | Path | None = None,
                 compare: Graph | None = None, evaluation: dict | None = None) -> Path:
    """Write the report page to ``path`` (an .html file)."""
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"the report is an HTML page: name it .html, not '{path.name}'")
    if path.parent and not path.parent.exists():
        raise UsageError(f"cannot write {path}: the folder {path.parent} does not exist")
    path.write_text(report_page(graph, batch=batch, device=device, run=run, compare=compare,
                                evaluation=evaluation), encoding="utf-8")
    return path

