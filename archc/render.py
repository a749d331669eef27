"""Diagrams of a graph with Graphviz: layers as coloured nodes, tensor shapes on edges,
blocks as clusters (or, collapsed, as single nodes), a legend of the layer kinds used.

:func:`diagram` returns a ``graphviz.Digraph`` (notebooks display it inline);
:func:`write_diagram` renders it to svg, png, pdf or dot. Rendering only reads the graph
and its analysis; it computes no shapes of its own.
"""

from __future__ import annotations

import html
import shutil
from dataclasses import dataclass
from pathlib import Path

import graphviz

from archc.analysis import analyse
from archc.analysis.report import Report
from archc.analysis.table import human
from archc.errors import UsageError, did_you_mean
from archc.ir import Graph, Node
from archc.layers import fmt_shape, get_layer

FORMATS = ("svg", "png", "pdf", "dot")
DETAILS = ("low", "normal", "high")
ANNOTATIONS = ("params", "macs", "rf")

# One colour per layer family (ColorBrewer-like pastels: readable in print and on screen).
FAMILY_COLOURS = {
    "io": "#d9d9d9",
    "conv": "#9ecae1",
    "pool": "#fdd49e",
    "roi": "#fec44f",
    "resample": "#fdae6b",
    "norm": "#c7e9c0",
    "activation": "#fcbba1",
    "linear": "#dadaeb",
    "regularize": "#f0f0f0",
    "reshape": "#e5e5e5",
    "merge": "#ffffff",
    "block": "#deebf7",
}
FAMILY_NAMES = {
    "io": "input", "conv": "convolution", "pool": "pooling", "roi": "region pooling",
    "resample": "up/unpooling",
    "norm": "normalisation", "activation": "activation", "linear": "fully connected",
    "regularize": "dropout", "reshape": "reshape", "merge": "merge (+, \u00d7, concat)",
    "block": "collapsed block",
}
MERGE_SHAPES = {"add": "circle", "multiply": "circle", "concat": "invtrapezium"}


@dataclass(frozen=True)
class _Collapsed:
    """A collapsed block (or a run of identical ones) drawn as one node."""

    id: str
    paths: tuple[str, ...]
    block: str
    count: int
    output: str


def _node_id(name: str) -> str:
    return "n_" + name


def _escape(text: str) -> str:
    return html.escape(str(text), quote=False)


def _local(name: str, scope: tuple[str, ...]) -> str:
    parent = scope[-1] if scope else None
    return name[len(parent) + 1:] if parent and name.startswith(parent + ".") else name


def _levels(graph: Graph) -> dict[str, int]:
    levels = {}
    for node in graph:
        for level, path in enumerate(node.scope):
            levels.setdefault(path, level)
    return levels


def diagram(
    graph: Graph,
    *,
    rankdir: str = "TB",
    collapse: int | str | list[str] | None = None,
    detail: str = "normal",
    annotate: tuple[str, ...] | list[str] = (),
    report: Report | None = None,
) -> graphviz.Digraph:
    """A Graphviz diagram of a shape-inferred graph.

    Parameters
    ----------
    rankdir : ``TB`` (top to bottom) or ``LR`` (left to right).
    collapse : which blocks to draw as single nodes: a nesting depth (1: the top-level
        blocks, as ``archc summary --depth 1`` shows them), or block names (every
        instance of ``basic_conv``, say); None opens every block. Runs of identical
        consecutive collapsed blocks become one node "x N".
    detail : ``low`` (layer kind only), ``normal`` (name and key attributes) or ``high``
        (also output shape and parameters).
    annotate : any of ``params``, ``macs``, ``rf`` to print under each node.
    report : the graph's analysis, if already computed.

    Examples
    --------
    >>> import archc
    >>> dot = diagram(archc.load("specs/lenet5.yaml"))
    >>> sum(1 for line in dot.body if "->" in line)  # one edge per graph edge
    12
    """
    collapse = _check_options(graph, rankdir, collapse, detail, annotate)
    dot = graphviz.Digraph(graph.name, graph_attr={
        "rankdir": rankdir, "fontname": "Helvetica", "fontsize": "11", "nodesep": "0.25",
        "ranksep": "0.3", "newrank": "true", "labeljust": "l", "tooltip": graph.name,
    }, node_attr={
        "fontname": "Helvetica", "fontsize": "10", "shape": "box", "style": "rounded,filled",
        "margin": "0.08,0.03", "height": "0.3", "penwidth": "0.8",
    }, edge_attr={
        "fontname": "Helvetica", "fontsize": "8", "color": "#555555", "fontcolor": "#333333",
        "arrowsize": "0.6", "penwidth": "0.8",
    })
    drawing = _Drawing(graph, report or analyse(graph), detail, tuple(annotate),
                       _collapsed_heads(graph, _levels(graph), collapse))
    drawing.emit(dot, None)
    drawing.edges(dot)
    # The legend is the graph's label: outside the layout, so it never pushes nodes around.
    dot.attr(label=_legend(graph.name, drawing.families), labelloc="b", labeljust="r")
    return dot


def _check_options(graph: Graph, rankdir: str, collapse, detail: str, annotate):
    """Refuse unknown options with a hint; returns ``collapse`` normalised."""
    if rankdir not in ("TB", "LR"):
        raise UsageError(f"rankdir must be TB or LR, got '{rankdir}'")
    if detail not in DETAILS:
        raise UsageError(f"unknown detail level '{detail}'",
                        did_you_mean(detail, DETAILS) or f"levels: {', '.join(DETAILS)}")
    for item in annotate:
        if item not in ANNOTATIONS:
            raise UsageError(f"unknown annotation '{item}'",
                            did_you_mean(item, ANNOTATIONS) or f"annotations: {', '.join(ANNOTATIONS)}")
    if isinstance(collapse, int) and collapse < 1:
        raise UsageError(f"collapse depth must be 1 or more, got {collapse}")
    if isinstance(collapse, str):
        collapse = [collapse]
    if isinstance(collapse, (list, tuple)):
        kinds = sorted({b.block for b in graph.blocks.values()})
        for name in collapse:
            if name not in kinds:
                raise UsageError(f"--collapse {name}: the network has no block '{name}'",
                                did_you_mean(name, kinds) or
                                f"its blocks: {', '.join(kinds) or 'none'}")
    return collapse


class _Drawing:
    """Which diagram node stands for each layer, and the cluster tree to emit, in spec order."""

    def __init__(self, graph: Graph, report: Report, detail: str, annotate: tuple,
                 heads: set[str]):
        self.graph, self.detail, self.annotate, self.heads = graph, detail, annotate, heads
        self.stats = {n.name: n for n in report.nodes}
        self.block_stats = {b.path: b for b in report.blocks}
        self.outputs = set(graph.outputs.values())
        self.train_outputs = set(graph.train_outputs.values())
        self.families: set[str] = set()
        self.collapsed = _collapsed_blocks(graph, heads)
        self.rep = {}  # layer name -> id of the diagram node that stands for it
        for node in graph:
            holder = next((c for c in self.collapsed.values() if set(node.scope) & set(c.paths)),
                          None)
            self.rep[node.name] = holder.id if holder else _node_id(node.name)
        open_blocks = {p for p in graph.blocks
                       if p not in heads and not set(_scope_of(graph, p)) & heads}
        self.children: dict[str | None, list] = {}  # open block (None: top level) -> items
        placed: set[str] = set()

        def place(parent: str | None, kind: str, item, key: str) -> None:
            if key not in placed:
                placed.add(key)
                self.children.setdefault(parent, []).append((kind, item))

        for node in graph:
            opened = [p for p in node.scope if p in open_blocks]
            for depth, path in enumerate(opened):
                place(opened[depth - 1] if depth else None, "block", path, "block:" + path)
            parent = opened[-1] if opened else None
            if self.rep[node.name] != _node_id(node.name):
                item = self.collapsed[self.rep[node.name]]
                place(parent, "collapsed", item, item.id)
            else:
                place(parent, "node", node, node.name)

    def emit(self, container, key: str | None) -> None:
        for kind, item in self.children.get(key, []):
            if kind == "node":
                self.layer_node(container, item)
            elif kind == "collapsed":
                self.block_node(container, item, key)
            else:
                inst = self.graph.blocks[item]
                title = inst.block + (f" x{inst.count}" if inst.count else "")
                shown = item[len(key) + 1:] if key and item.startswith(key + ".") else item
                with container.subgraph(name="cluster_" + item) as sub:
                    sub.attr(label=f"{shown}: {title}", style="rounded,dashed", color="#7a7a7a",
                             fontsize="10", fontcolor="#333333", tooltip=f"{item}: {title}")
                    self.emit(sub, item)

    def layer_node(self, container, node: Node) -> None:
        layer = get_layer(node.op)
        self.families.add(layer.family)
        attrs = {"fillcolor": FAMILY_COLOURS.get(layer.family, "#ffffff"),
                 "tooltip": f"{node.name} ({node.op}): {fmt_shape(node.shape, node.items)}"}
        lines = _node_lines(node, self.detail, self.annotate, self.stats[node.name])
        if node.op in MERGE_SHAPES:
            attrs.update(shape=MERGE_SHAPES[node.op], style="filled,bold", penwidth="1.4")
            if node.op != "concat":
                attrs.update(fixedsize="true", width="0.32", fontsize="14")
                lines = [layer.short_label(node.attrs)]
        if node.op == "input":
            attrs.update(shape="invhouse")
        if node.name in self.outputs:
            attrs.update(peripheries="2", penwidth="1.4")
            lines.append("<i>output</i>")
        if self.stats[node.name].training_only:  # drawn dashed: not run in inference
            attrs.update(style=attrs.get("style", "rounded,filled") + ",dashed")
        if node.name in self.train_outputs:
            lines.append("<i>training output</i>")
        container.node(_node_id(node.name), "<" + "<br/>".join(lines) + ">", **attrs)

    def block_node(self, container, item: _Collapsed, parent: str | None) -> None:
        self.families.add("block")
        params = sum(self.block_stats[p].params for p in item.paths)
        macs = sum(self.block_stats[p].macs for p in item.paths)
        first, last = (p[len(parent) + 1:] if parent and p.startswith(parent + ".") else p
                       for p in (item.paths[0], item.paths[-1]))
        name = first if len(item.paths) == 1 else f"{first} .. {last}"
        title = item.block + (f" x{item.count}" if item.count > 1 else "")
        shape = fmt_shape(self.graph[item.output].shape, self.graph[item.output].items)
        shared = {n.shares[:len(n.shares) - len(n.name) + len(p)] for p in item.paths
                  for n in self.graph if n.shares and n.name.startswith(p + ".")
                  and n.shares.endswith(n.name[len(p):])}  # the block it shares with
        weights = (f"weights of {', '.join(sorted(shared))}" if shared and not params
                   else f"{params:,} params")
        lines = [f"<b>{_escape(name)}</b>", _escape(title),
                 f'<font point-size="8">{shape}  |  {_escape(weights)}  |  {human(macs)} MACs</font>']
        if item.output in self.outputs:
            lines.append("<i>output</i>")
        if item.output in self.train_outputs:
            lines.append("<i>training output</i>")
        training = all(self.block_stats[p].training_only for p in item.paths)
        container.node(item.id, "<" + "<br/>".join(lines) + ">", shape="box3d",
                       style="filled,dashed" if training else "filled",
                       fillcolor=FAMILY_COLOURS["block"], margin="0.15,0.1",
                       tooltip=f"{name}: {title}, {shape}")

    def edges(self, dot) -> None:
        """One edge per graph edge; between collapsed blocks, one per pair of diagram nodes."""
        seen: set[tuple[str, str]] = set()
        for node in self.graph:
            for source in node.inputs:
                u, v = self.rep[source], self.rep[node.name]
                if u == v or (self.heads and (u, v) in seen):
                    continue
                seen.add((u, v))
                dot.edge(u, v, label=fmt_shape(self.graph[source].shape, self.graph[source].items))


def _scope_of(graph: Graph, path: str) -> tuple[str, ...]:
    """The block paths enclosing block ``path`` (outermost first), itself excluded."""
    for node in graph:
        if path in node.scope:
            return node.scope[: node.scope.index(path)]
    return ()


def _is_automatic(local: str, op: str) -> bool:
    """Names archc made up (``relu``, ``relu_2``) say nothing the label does not."""
    return local == op or (local.startswith(op + "_") and local[len(op) + 1:].isdigit())


def _node_lines(node: Node, detail: str, annotate, stats) -> list[str]:
    layer = get_layer(node.op)
    local = _local(node.name, node.scope)
    label = _escape(fmt_shape(node.shape) if node.op == "input" else layer.short_label(node.attrs))
    lines = [label]
    if detail != "low" and not _is_automatic(local, node.op):
        lines.insert(0, f'<font point-size="8" color="#444444">{_escape(local)}</font>')
    if node.fused and detail != "low":
        merged = ", ".join(_local(f, node.scope) for f in node.fused)
        lines.append(f'<font point-size="8" color="#7a4b00">{_escape("fused: " + merged)}</font>')
    if detail == "high" and node.op != "input":
        extra = fmt_shape(node.shape, node.items)
        if stats.params:
            extra += f"  |  {stats.params:,} params"
        if not node.trainable:
            extra += "  |  frozen"
        lines.append(f'<font point-size="8">{extra}</font>')
    notes = []
    if "params" in annotate and stats.params:
        notes.append(f"{human(stats.params)} params")
    if "macs" in annotate and stats.macs:
        notes.append(f"{human(stats.macs)} MACs")
    if "rf" in annotate:
        notes.append(f"RF {stats.receptive_field.describe()}")
    if notes:
        lines.append(f'<font point-size="8" color="#1f4e79">{_escape("  ".join(notes))}</font>')
    return lines


def _legend(title: str, families: set[str]) -> str:
    cells = "".join(
        f'<td bgcolor="{FAMILY_COLOURS[f]}"><font point-size="9">{_escape(FAMILY_NAMES[f])}'
        "</font></td>"
        for f in FAMILY_COLOURS if f in families)
    return (f'<<table border="0" cellborder="1" cellspacing="3" cellpadding="3">'
            f'<tr><td border="0"><font point-size="11"><b>{_escape(title)}</b></font></td>'
            f"{cells}</tr></table>>")


def _collapsed_heads(graph: Graph, levels: dict[str, int], collapse) -> set[str]:
    """The outermost blocks to draw as single nodes."""
    if collapse is None:
        return set()
    if isinstance(collapse, int):
        return {p for p in graph.blocks if levels.get(p, 0) == collapse - 1}
    chosen = {p for p, inst in graph.blocks.items() if inst.block in collapse}
    return {p for p in chosen if not set(_scope_of(graph, p)) & chosen}


def _collapsed_blocks(graph: Graph, heads: set[str]) -> dict[str, _Collapsed]:
    """Blocks drawn as single nodes, runs of identical consecutive siblings merged."""
    items: list[_Collapsed] = []
    for path in (p for p in graph.blocks if p in heads):
        inst = graph.blocks[path]
        previous = items[-1] if items else None
        if previous is not None and _continues(graph, previous, path):
            items[-1] = _Collapsed(previous.id, previous.paths + (path,), previous.block,
                                   previous.count + 1, inst.output)
        else:
            items.append(_Collapsed("b_" + path, (path,), inst.block, max(inst.count, 1), inst.output))
    return {item.id: item for item in items}


def _continues(graph: Graph, run: _Collapsed, path: str) -> bool:
    """Whether block ``path`` repeats the run: same block and arguments, same parent, fed
    only by the run's output, which feeds nothing else."""
    first, inst = graph.blocks[run.paths[0]], graph.blocks[path]
    if inst.count or first.count:  # a repeat group is already one node "x N"
        return False
    if (inst.block, inst.args) != (first.block, first.args):
        return False
    if _scope_of(graph, path) != _scope_of(graph, run.paths[0]):
        return False
    inside = {n.name for n in graph if path in n.scope}
    feeds = {s for n in graph if n.name in inside for s in n.inputs if s not in inside}
    users = set(graph.users(run.output))
    return feeds == {run.output} and users <= inside


def write_diagram(dot: graphviz.Digraph, path: str | Path, fmt: str | None = None) -> Path:
    """Write the diagram to ``path`` as svg, png, pdf or dot (default: from the extension).

    Raises
    ------
    UsageError
        For an unknown format, or when Graphviz's ``dot`` program is missing.
    """
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".") or "svg").lower()
    if fmt == "gv":
        fmt = "dot"
    if fmt not in FORMATS:
        raise UsageError(f"unknown diagram format '{fmt}'",
                        did_you_mean(fmt, FORMATS) or f"formats: {', '.join(FORMATS)}")
    if path.parent and not path.parent.exists():
        raise UsageError(f"cannot write {path}: the folder {path.parent} does not exist")
    if fmt == "dot":
        path.write_text(dot.source)
        return path
    if shutil.which("dot") is None:
        raise UsageError("Graphviz's 'dot' program is not installed, so archc cannot draw "
                        f"{fmt.upper()} files",
                        "install it (Debian/Ubuntu: apt-get install graphviz), or write a .dot file")
    try:
        data = dot.pipe(format=fmt)
    except graphviz.ExecutableNotFound:
        raise UsageError("Graphviz's 'dot' program could not be run",
                        "install it (Debian/Ubuntu: apt-get install graphviz)") from None
    except graphviz.CalledProcessError as exc:
        raise UsageError(f"Graphviz failed to draw the diagram: {exc.stderr.decode(errors='replace').strip()}") from None
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path
