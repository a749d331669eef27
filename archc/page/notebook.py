"""What a notebook shows for a graph and its analysis: the last line of a cell that is
one displays as HTML (``Graph._repr_html_`` and ``Report._repr_html_`` call these; a
compiled model's and a training history's are in :mod:`runtime.notebook`)."""

from __future__ import annotations

import graphviz

from archc.analysis.table import COLUMNS, human, human_bytes, table_cells
from archc.layers import fmt_shape
from runtime.notebook import STYLE as _STYLE
from runtime.notebook import escape as _e

# a diagram of more nodes than this shows the top-level blocks collapsed
INLINE_NODES = 80


def graph_html(graph) -> str:
    """A graph: one line of totals and its diagram (blocks collapsed when it is large)."""
    from archc.analysis import analyse
    from archc.render import diagram

    report = analyse(graph)
    t = report.totals
    ins = ", ".join(f"{k} {fmt_shape(v)}" for k, v in report.inputs.items())
    outs = ", ".join(f"{k} {fmt_shape(v['shape'], v['items'])}" for k, v in report.outputs.items())
    collapse = 1 if len(graph) > INLINE_NODES and graph.blocks else None
    try:
        svg = diagram(graph, collapse=collapse, report=report).pipe(format="svg").decode()
        svg = svg[svg.index("<svg"):]
    except graphviz.ExecutableNotFound as exc:  # no `dot`: the summary alone, saying why
        svg = f"<p class='muted'>(no diagram: {_e(exc)})</p>"
    note = " (top-level blocks collapsed)" if collapse else ""
    return (f"<div class='archc-nb'>{_STYLE}<b>{_e(graph.name)}</b>: {len(graph)} layers, "
            f"{t['params']:,} parameters, {human(t['macs'])} MACs; {_e(ins)} &rarr; {_e(outs)}"
            f"{note}<div style='max-height:600px;overflow:auto'>{svg}</div></div>")


def report_html(report, depth: int | None = None) -> str:
    """An analysis: the summary table (the rows `archc summary` prints) and its totals."""
    t = report.totals
    head = "".join(f"<th>{_e(title)}</th>" for title, _ in COLUMNS)
    body = "".join(
        f"<tr><td style='padding-left:{8 + 14 * level}px'>{_e(cells[0])}</td>"
        + "".join(f"<td>{_e(c)}</td>" for c in cells[1:]) + "</tr>"
        for level, cells in table_cells(report, depth))
    totals = (f"<tr><td><b>total</b></td><td></td><td></td><td><b>{t['params']:,}</b></td>"
              f"<td><b>{human(t['macs'])}</b></td><td></td></tr>")
    memory = (f"weights {human_bytes(t['param_bytes'])}, activations "
              f"{human_bytes(t['inference_peak_bytes'])} at the inference peak (batch "
              f"{report.batch}); training keeps {human_bytes(t['training_saved_bytes'])}")
    return (f"<div class='archc-nb'>{_STYLE}<b>{_e(report.name)}</b>: {t['params']:,} "
            f"parameters, {human(t['macs'])} MACs, {human(t['flops'])} FLOPs; {_e(memory)}"
            f"<table><tr>{head}</tr>{body}{totals}</table></div>")
