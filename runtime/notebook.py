"""What a notebook shows for a compiled model and a training history (``Model._repr_html_``,
``History._repr_html_``); a graph's and an analysis' are in :mod:`archc.page.notebook`."""

from __future__ import annotations

import html
import io
from collections import Counter

from runtime.files import fmt_shape

STYLE = ("<style>.archc-nb table{border-collapse:collapse;font-size:12px}"
         ".archc-nb td,.archc-nb th{padding:2px 8px;text-align:right;white-space:nowrap}"
         ".archc-nb td:nth-child(-n+2),.archc-nb th:nth-child(-n+2){text-align:left}"
         ".archc-nb .muted{color:#666}</style>")


def escape(text) -> str:
    return html.escape(str(text))


def _facts(rows: list[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>"
                               for k, v in rows) + "</table>"


def model_html(model) -> str:
    """A compiled model: what runs, on which backend, in which mode."""
    program = model.program
    params = sum(int(v.size) for k, v in model.params.items() if not program.params[k].buffer)
    ins = ", ".join(f"{k} {fmt_shape(v)}" for k, v in program.inputs.items())
    outs = ", ".join(f"{k} {fmt_shape(v)}" for k, v in program.output_shapes().items())
    kinds = Counter(op.kind for op in program.ops)
    ops = ", ".join(f"{n} {k}" for k, n in kinds.most_common())
    return (f"<div class='archc-nb'>{STYLE}<b>{escape(program.name)}</b>, compiled" + _facts([
        ("backend", model.backend.name), ("dtype", str(model.dtype)),
        ("mode", "training" if model.training else "inference"),
        ("inputs", ins), ("outputs", outs), ("parameters", f"{params:,}"),
        ("kernels", f"{len(program.ops)}: {ops}")]) + "</div>")


def history_svg(history) -> str | None:
    """A training history's curves as SVG (matplotlib), or None without matplotlib."""
    from runtime.train import curves

    if not history or not curves.have_matplotlib():
        return None
    buffer = io.StringIO()
    curves.figure(list(history)).savefig(buffer, format="svg")
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def history_html(history) -> str:
    """A training history: its curves, and the last epoch's numbers."""
    if not history:
        return "<div class='archc-nb'>no epochs yet</div>"
    last = history[-1]
    numbers = ", ".join(f"{k.replace('_', ' ')} {v:.4g}" for k, v in last.items()
                        if isinstance(v, float))
    svg = history_svg(history) or "<p class='muted'>(curves need matplotlib)</p>"
    epochs = f"{len(history)} epoch" + ("s" if len(history) > 1 else "")
    return f"<div class='archc-nb'>{STYLE}{epochs}; the last: {escape(numbers)}{svg}</div>"
