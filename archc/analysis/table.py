"""The analysis as a table for a terminal (like torchinfo): rows for nodes and blocks,
block rows carrying their totals, collapsible to a block depth, totals at the bottom."""

from __future__ import annotations

import textwrap

from archc.analysis.report import BlockReport, NodeReport, Report
from archc.layers import fmt_shape


def human(n: float, unit: str = "", sep: str = "") -> str:
    """1234567 -> '1.23M' (SI prefixes, three significant digits).

    Examples
    --------
    >>> human(1_814_073_344), human(950), human(61706)
    ('1.81G', '950', '61.7K')
    """
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= factor:
            value = n / factor
            digits = 2 if value < 10 else 1 if value < 100 else 0
            return f"{value:.{digits}f}{sep}{prefix}{unit}"
    return f"{n:g}{sep}{unit}" if isinstance(n, float) else f"{n}{sep}{unit}"


def human_bytes(n: float) -> str:
    """Bytes in binary units: ``human_bytes(44.6 * 2**20) == '44.6 MiB'``."""
    for factor, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{int(n)} B"


WIDTH = 100
COLUMNS = (("Layer", 33), ("Type", 19), ("Output", 13), ("Params", 11), ("MACs", 8), ("RF", 8))


def _row(cells: list[str]) -> str:
    out = []
    for (title, width), cell in zip(COLUMNS, cells):
        if title in ("Layer", "Type"):
            cell = cell if len(cell) <= width else cell[: width - 1] + "~"
            out.append(cell.ljust(width))
        else:
            out.append(cell.rjust(width))
    return " ".join(out).rstrip()


def _local(name: str, parent: str | None) -> str:
    return name[len(parent) + 1:] if parent and name.startswith(parent + ".") else name


def table_rows(report: Report, depth: int | None = None) -> list[str]:
    """One line per shown node or block; ``depth`` hides what is nested deeper than it."""
    return [_row(["  " * level + cells[0], *cells[1:]])
            for level, cells in table_cells(report, depth)]


def table_cells(report: Report, depth: int | None = None) -> list[tuple[int, list[str]]]:
    """The summary table's rows as (nesting level, cells: name, type, output, params, MACs,
    receptive field), one per shown node or block (``archc summary`` and the notebook's
    table both print these)."""
    blocks = {b.path: b for b in report.blocks}
    shown_blocks: set[str] = set()
    rows = []
    for node in report.nodes:
        if node.op == "input":
            continue
        for level, path in enumerate(node.scope):
            if depth is not None and level >= depth:
                break
            if path not in shown_blocks:
                shown_blocks.add(path)
                rows.append((level, _block_cells(blocks[path],
                                                 node.scope[level - 1] if level else None)))
        if depth is not None and len(node.scope) >= depth:
            continue
        rows.append((len(node.scope), _node_cells(node)))
    return rows


def _block_cells(block: BlockReport, parent: str | None) -> list[str]:
    name = _local(block.path, parent) + (" (training)" if block.training_only else "")
    return [name, block.label, fmt_shape(block.output_shape),
            f"{block.params:,}", human(block.macs), block.receptive_field.describe()]


def _node_cells(node: NodeReport) -> list[str]:
    parent = node.scope[-1] if node.scope else None
    params = f"{node.params:,}" if node.params else "shared" if node.shares else "-"
    name = _local(node.name, parent) + (" (training)" if node.training_only else "")
    return [name, node.kind, fmt_shape(node.output_shape, node.items),
            params, human(node.macs) if node.macs else "-", node.receptive_field.describe()]


def format_summary(report: Report, depth: int | None = None) -> str:
    """The summary table and totals as text, at most 100 columns wide."""
    t = report.totals
    header = _row([title for title, _ in COLUMNS])
    rule = "-" * len(header)
    inputs = ", ".join(f"{k} {fmt_shape(v)}" for k, v in report.inputs.items())
    rows = table_rows(report, depth)
    lines = []
    frozen = f", {t['frozen_params']:,} frozen" if t["frozen_params"] else ""
    lines.append(f"Parameters: {t['params']:,} ({t['trainable_params']:,} trainable{frozen}); "
                 f"buffers: {t['buffer_elements']:,} values")
    if t.get("training_outputs"):
        lines.append(f"Training outputs {', '.join(t['training_outputs'])}: "
                     f"{t['params'] - t['inference_params']:,} parameters of training-only "
                     f"layers; inference: {t['inference_params']:,} parameters, and the "
                     "numbers below leave those layers out")
    lines.append(f"MACs: {human(t['macs'])} (multiply-accumulates of conv and linear layers)")
    lines.append(f"FLOPs: {human(t['flops'])} = 2 x MACs + {human(t['elementwise_flops'])} "
                 "element-wise (activations, norms, pools, adds, biases)")
    opt = t["optimizer_state_bytes"]
    lines.append(f"Inference memory: weights {human_bytes(t['param_bytes'])}, activations "
                 f"{human_bytes(t['inference_peak_bytes'])} at the peak")
    lines.append(f"Training memory: {human_bytes(t['training_saved_bytes'])} saved for backward, "
                 f"gradients {human_bytes(t['gradient_bytes'])}, optimizer state "
                 f"{human_bytes(opt['sgd_momentum'])} (SGD momentum) or "
                 f"{human_bytes(opt['adam'])} (Adam)")
    for key, out in report.outputs.items():
        rf = out["receptive_field"]
        if rf.get("whole"):
            where = "the whole input"
            last = out.get("last_spatial")
            if last:
                where += (f" (largest spatial field before it: {_fmt_rf(last['size'])} px, "
                          f"stride {_fmt_rf(last['stride'])}, at {last['node']})")
        else:
            where = f"{_fmt_rf(rf['size'])} px, stride {_fmt_rf(rf['stride'])}"
            where += "" if rf["aligned"] else " (paths disagree on stride or alignment)"
        lines.append(f"Output {key} {fmt_shape(out['shape'])}: receptive field {where}")
    if report.device is not None:
        d = report.device
        lines.append(f"Roofline estimate on {d.name} ({human(d.peak_flops, 'FLOP/s', ' ')}, "
                     f"{human(d.bandwidth, 'B/s', ' ')}): {seconds(t['latency_s'])}; "
                     f"{_plural(t['compute_bound_nodes'], 'node')} compute-bound, "
                     f"{t['memory_bound_nodes']} memory-bound")
    wrapped = [textwrap.fill(line, WIDTH, subsequent_indent="  ", break_on_hyphens=False)
               for line in lines]
    if report.device is not None:
        wrapped += slowest_nodes(report)
    title = f"{report.name}: {inputs}, batch {report.batch}"
    return "\n".join([title, rule, header, rule, *rows, rule, *wrapped])


def slowest_nodes(report: Report, count: int = 8) -> list[str]:
    """The nodes the roofline estimate spends most time in, with what bounds them."""
    ranked = sorted((n for n in report.nodes if n.latency_s), key=lambda n: -n.latency_s)
    total = report.totals["latency_s"] or 1.0
    lines = [f"Slowest layers on {report.device.name}:",
             f"  {'layer':<40} {'type':<19} {'time':>9} {'share':>6} {'FLOP/B':>7}  bound"]
    for n in ranked[:count]:
        name = n.name if len(n.name) <= 40 else n.name[:39] + "~"
        lines.append(f"  {name:<40} {n.op:<19} {seconds(n.latency_s):>9} "
                     f"{n.latency_s / total:>6.1%} {n.intensity:>7.1f}  {n.bound}")
    return lines


def seconds(t: float) -> str:
    """A duration in s, ms or us with three significant digits."""
    for factor, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "us")):
        if t >= factor:
            return f"{t / factor:.3g} {unit}"
    return f"{t / 1e-9:.3g} ns"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _fmt_rf(values: list) -> str:
    a, b = values
    return str(a) if a == b else f"{a}x{b}"
