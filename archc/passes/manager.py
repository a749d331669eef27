"""The pass manager: named passes, opt levels, pipelines and their reports.

A pass is a pure function ``(graph, params, options) -> PassResult``: it returns a new graph
(and new parameters, when it was given some) and never changes its input (STYLE: TVM's
``Sequential`` and ``PassContext``, torch.fx passes). ``params`` maps PyTorch-style names
to arrays, or is None for a structural view (``archc summary -O2``): a pass then rewrites
the graph alone. The manager re-infers shapes and verifies the IR after every pass, naming
the pass (and those before it) when one breaks it, and measures what each pass changed.

Opt levels are data attached to passes: ``-O1`` runs the exact clean-ups and batch-norm
folding, ``-O2`` adds the fusions; approximate passes (``separable``, ``low_rank``) never
run unless named.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from archc.errors import SpecError, UsageError, did_you_mean
from archc.ir import Graph, GraphInvalid, verify
from archc.passes.rewrite import prune_blocks
from archc.shapes import infer_shapes

Params = dict[str, np.ndarray]


@dataclass
class PassResult:
    """What one pass returns: the new graph and parameters, and what it did."""

    graph: Graph
    params: Params | None
    changes: list[str] = field(default_factory=list)  # one line per rewrite
    groups: list[tuple[str, ...]] = field(default_factory=list)  # node names merged into one
    notes: list[str] = field(default_factory=list)  # measurements, skipped candidates
    layers: list[dict] = field(default_factory=list)  # per-layer figures (factorisations)


@dataclass(frozen=True)
class Option:
    """One option of a pass: its parser (text -> value), default and meaning."""

    parse: Callable[[str], Any]
    default: Any
    doc: str


@dataclass(frozen=True)
class Pass:
    """A named graph transformation.

    ``level``: the lowest ``-O`` level that runs it (None: only when named); ``exact``: it
    computes the same function (up to float rounding); ``needs_params``: it cannot run
    without weights (weight-level approximations); ``training``: it is exact in training
    mode too (batch statistics, dropout) and keeps every parameter's name and shape, so
    ``archc train`` runs it.
    """

    name: str
    run: Callable[[Graph, Params | None, dict], PassResult]
    doc: str
    level: int | None
    exact: bool
    options: dict[str, Option] = field(default_factory=dict)
    needs_params: bool = False
    training: bool = False


@dataclass(frozen=True)
class PassReport:
    """What one pass changed, measured on the graph before and after it."""

    name: str
    exact: bool
    nodes: tuple[int, int]
    params: tuple[int, int]
    macs: tuple[int, int]
    flops: tuple[int, int]
    changes: tuple[str, ...]
    groups: tuple[tuple[str, ...], ...]
    notes: tuple[str, ...]
    layers: tuple[dict, ...]
    options: dict

    def to_dict(self) -> dict:
        return {
            "name": self.name, "exact": self.exact, "options": self.options,
            "nodes_before": self.nodes[0], "nodes_after": self.nodes[1],
            "params_before": self.params[0], "params_after": self.params[1],
            "macs_before": self.macs[0], "macs_after": self.macs[1],
            "flops_before": self.flops[0], "flops_after": self.flops[1],
            "changes": list(self.changes), "groups": [list(g) for g in self.groups],
            "notes": list(self.notes), "layers": list(self.layers),
        }


PASSES: dict[str, Pass] = {}
PIPELINE_ORDER: list[str] = []  # the order presets run passes in


def register(p: Pass) -> Pass:
    if p.name in PASSES:
        raise RuntimeError(f"pass '{p.name}' is registered twice")
    PASSES[p.name] = p
    PIPELINE_ORDER.append(p.name)
    return p


OPT_LEVELS = (0, 1, 2)


def preset(level: int) -> list[tuple[str, dict]]:
    """The passes ``-O<level>`` runs, in order, with default options.

    Examples
    --------
    >>> [name for name, _ in preset(1)]
    ['eliminate_identity', 'simplify_reshape', 'eliminate_dead', 'fold_bn']
    """
    return [(name, {}) for name in PIPELINE_ORDER
            if PASSES[name].level is not None and PASSES[name].level <= level]


def training_preset() -> list[tuple[str, dict]]:
    """The passes a network is trained with (those exact in training mode), in order.

    Examples
    --------
    >>> [name for name, _ in training_preset()]
    ['fuse_add', 'fuse_activation']
    """
    return [(name, {}) for name in PIPELINE_ORDER if PASSES[name].training]


def parse_pipeline(text: str) -> list[tuple[str, dict]]:
    """Parse ``--passes``: comma-separated pass names, each with ``:key=value`` options.

    Examples
    --------
    >>> parse_pipeline("fold_bn,separable:match=c3")
    [('fold_bn', {}), ('separable', {'match': 'c3'})]
    """
    pipeline = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, *pairs = item.split(":")
        if name not in PASSES:
            raise UsageError(f"unknown pass '{name}'",
                            did_you_mean(name, list(PASSES)) or f"passes: {', '.join(PASSES)}")
        options = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep:
                raise UsageError(f"pass option '{pair}' of '{name}' is not KEY=VALUE",
                                f"e.g. {name}:{next(iter(PASSES[name].options), 'key')}=...")
            options[key] = value
        _options(PASSES[name], options)  # refuse a bad option now, before any work
        pipeline.append((name, options))
    if not pipeline:
        raise UsageError("--passes names no pass", f"passes: {', '.join(PASSES)}")
    return pipeline


def _options(p: Pass, given: dict) -> dict:
    values = {key: option.default for key, option in p.options.items()}
    for key, value in given.items():
        if key not in p.options:
            known = ", ".join(p.options) or "none"
            raise UsageError(f"pass '{p.name}' has no option '{key}' (its options: {known})",
                             did_you_mean(key, list(p.options)))
        try:
            values[key] = p.options[key].parse(value) if isinstance(value, str) else value
        except ValueError as exc:
            raise UsageError(f"pass '{p.name}' option '{key}': {exc}",
                            p.options[key].doc) from None
    return values


def _measure(graph: Graph) -> tuple[int, int, int, int]:
    from archc.analysis import analyse

    totals = analyse(graph, 1).totals
    return len(graph), totals["params"], totals["macs"], totals["flops"]


def run_pass(graph: Graph, params: Params | None, name: str, options: dict | None = None,
             context: dict | None = None, before: tuple | None = None
             ) -> tuple[Graph, Params | None, PassReport]:
    """Run one pass and report what it changed. ``context`` carries what approximate
    passes may measure on (``data``: a batch of inputs); ``before`` is the graph's
    measurement when the caller has it (a pipeline: the previous pass's "after")."""
    p = PASSES[name]
    values = _options(p, options or {})
    if p.needs_params and params is None:
        raise UsageError(f"pass '{name}' works on trained weights: give them with --weights")
    before = before or _measure(graph)
    result = p.run(graph, params, {**values, **(context or {})})
    out = result.graph
    prune_blocks(out)
    try:
        verify(infer_shapes(out), require_shapes=True)
    except (GraphInvalid, SpecError) as exc:
        raise GraphInvalid(f"pass '{name}' broke the graph: {exc}") from exc
    after = _measure(out)
    report = PassReport(name, p.exact, (before[0], after[0]), (before[1], after[1]),
                        (before[2], after[2]), (before[3], after[3]), tuple(result.changes),
                        tuple(result.groups), tuple(result.notes), tuple(result.layers),
                        {k: v for k, v in values.items()})
    return out, result.params, report


def run_passes(graph: Graph, params: Params | None, pipeline: list[tuple[str, dict]],
               context: dict | None = None) -> tuple[Graph, Params | None, list[PassReport]]:
    """Run a pipeline (from :func:`preset` or :func:`parse_pipeline`) in order.

    Examples
    --------
    >>> import archc
    >>> g = archc.load("specs/resnet18.yaml")
    >>> opt, _, reports = run_passes(g, None, preset(2))
    >>> len(g), len(opt), [r.name for r in reports if r.changes]
    (70, 25, ['fold_bn', 'fuse_add', 'fuse_activation'])
    """
    reports: list[PassReport] = []
    for name, options in pipeline:
        last = reports[-1] if reports else None
        before = last and (last.nodes[1], last.params[1], last.macs[1], last.flops[1])
        try:
            graph, params, report = run_pass(graph, params, name, options, context, before)
        except GraphInvalid as exc:
            done = [r.name for r in reports]
            raise GraphInvalid(f"{exc} (after: {', '.join(done) or 'nothing'})") from exc
        reports.append(report)
    return graph, params, reports


def for_training(graph: Graph) -> Graph:
    """The graph a network trains as (``archc train``): :func:`training_preset`'s passes,
    which keep every parameter's name and shape (a batch norm's residual add and
    activation fused into its own pass, for one).

    Examples
    --------
    >>> import archc
    >>> g = archc.load("specs/resnet20.yaml")
    >>> len(g), len(for_training(g))
    (74, 46)
    """
    return run_passes(graph, None, training_preset())[0]


def matches(name: str, pattern: str | None) -> bool:
    """Whether a node name matches a pass's ``match`` option (glob patterns separated by
    ``|``; None matches every name)."""
    return pattern is None or any(fnmatch.fnmatchcase(name, p) for p in pattern.split("|"))
