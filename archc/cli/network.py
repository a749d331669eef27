"""``archc check``, ``archc summary`` and ``archc render``: a spec's shapes, its analysis and
its diagram."""

from __future__ import annotations

import argparse
import json

from archc.cli.common import (COMMANDS, EXIT_OK, add_data_arguments, add_pass_arguments,
                              add_spec_arguments, load_graph, positive)


def _cmd_check(args: argparse.Namespace) -> int:
    from archc.layers import fmt_shape

    graph = load_graph(args)
    ins = {name: graph[name].shape for name in graph.inputs}
    outs = graph.output_shapes()
    if args.json:
        print(json.dumps({
            "spec": args.spec, "name": graph.name, "ok": True, "nodes": len(graph),
            "inputs": {k: list(v) for k, v in ins.items()},
            "outputs": {k: list(v) for k, v in outs.items()},
        }))
        return EXIT_OK
    in_text = ", ".join(f"{k} {fmt_shape(v)}" for k, v in ins.items())
    out_text = ", ".join(f"{k} {fmt_shape(v, graph[graph.outputs[k]].items)}"
                         for k, v in outs.items())
    print(f"{args.spec}: ok: {graph.name}, {len(graph)} nodes, {in_text} -> {out_text}")
    return EXIT_OK


def _setup_check(p: argparse.ArgumentParser) -> None:
    add_spec_arguments(p)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


def _cmd_summary(args: argparse.Namespace) -> int:
    from archc.analysis import analyse, format_summary, get_device

    graph = load_graph(args)
    device = get_device(args.device) if args.device else None
    report = analyse(graph, batch=args.batch, device=device)
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(format_summary(report, depth=args.depth))
    return EXIT_OK


def _add_view_arguments(p: argparse.ArgumentParser, passes_help: str) -> None:
    """The spec, its variables and the passes whose result summary, render and report
    show (structure only: no weights are needed to see what the passes do)."""
    add_spec_arguments(p)
    add_pass_arguments(p, passes_help)
    p.set_defaults(view_passes=True)


def _add_analysis_arguments(p: argparse.ArgumentParser, device_help: str) -> None:
    """--batch and --device, as summary and report take them."""
    p.add_argument("--batch", type=positive, default=1, metavar="N",
                   help="batch size for memory, FLOPs and latency (default 1)")
    p.add_argument("--device", metavar="NAME",
                   help=f"{device_help}: cpu (measured here once, cached), h100 or h200")


def _setup_summary(p: argparse.ArgumentParser) -> None:
    _add_view_arguments(p, "default: -O0, the network as written")
    _add_analysis_arguments(p, "add a roofline latency estimate")
    p.add_argument("--depth", type=positive, default=None, metavar="D",
                   help="show blocks nested deeper than D as one row (default: all)")
    p.add_argument("--json", action="store_true", help="print the analysis as one JSON object")


COMMANDS["check"] = (
    "parse a spec and check every shape; print the input and output shapes",
    _setup_check,
    _cmd_check,
)


COMMANDS["summary"] = (
    "analyse a spec: parameters, MACs/FLOPs, memory, receptive fields, per layer and in total",
    _setup_summary,
    _cmd_summary,
)


def _cmd_render(args: argparse.Namespace) -> int:
    from archc.render import diagram, write_diagram

    graph = load_graph(args)
    annotate = [a.strip() for a in args.annotate.split(",") if a.strip()] if args.annotate else []
    collapse = args.collapse
    if collapse is not None:
        collapse = int(collapse) if collapse.isdigit() else [c for c in collapse.split(",") if c]
    dot = diagram(graph, rankdir=args.rankdir, collapse=collapse, detail=args.detail,
                  annotate=annotate)
    path = write_diagram(dot, args.output, args.format)
    print(f"wrote {path} ({len(graph)} layers)")
    return EXIT_OK


def _setup_render(p: argparse.ArgumentParser) -> None:
    _add_view_arguments(p, "default: -O0; fused layers show as one node listing what they hold")
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="where to write the diagram; the extension picks the format")
    p.add_argument("--format", choices=["svg", "png", "pdf", "dot"],
                   help="svg, png, pdf or dot (default: from the file extension)")
    p.add_argument("--rankdir", choices=["TB", "LR"], default="TB",
                   help="top to bottom (TB, default) or left to right (LR)")
    p.add_argument("--collapse", metavar="DEPTH|BLOCKS",
                   help="draw blocks as single nodes: those at a nesting depth (1: top level), "
                   "or every instance of the named blocks (comma-separated)")
    p.add_argument("--detail", choices=["low", "normal", "high"], default="normal",
                   help="low: layer kinds; normal: names and key attributes; high: also "
                   "shapes and parameters")
    p.add_argument("--annotate", metavar="LIST",
                   help="comma-separated extras under each node: params, macs, rf")


COMMANDS["render"] = (
    "draw a spec as a diagram (svg, png, pdf or dot) with Graphviz",
    _setup_render,
    _cmd_render,
)


def _cmd_report(args: argparse.Namespace) -> int:
    from archc.analysis import get_device
    from archc.page import write_report

    graph = load_graph(args)
    device = get_device(args.device) if args.device else None
    other = None
    if args.compare:
        from pathlib import Path

        from archc import build
        from archc.spec import parse_overrides

        # a variant of the same spec keeps its --set values; another spec has its own
        same = Path(args.compare).resolve() == Path(args.spec).resolve()
        other = build(args.compare, parse_overrides(
            (args.overrides if same else []) + args.compare_set))
    elif args.compare_set:
        from archc.errors import UsageError

        raise UsageError("--compare-set changes the network given by --compare",
                         f"to compare with a variant of {args.spec}: --compare {args.spec} "
                         f"--compare-set {args.compare_set[0]}")
    evaluation = None
    if args.run and (args.data or graph.training.get("data")):
        from archc.cli.looking import run_evaluation

        evaluation = run_evaluation(args, graph)
    path = write_report(graph, args.output, batch=args.batch, device=device, run=args.run,
                        compare=other, evaluation=evaluation)
    size = path.stat().st_size
    print(f"wrote {path} ({len(graph)} layers, {size / 2**20:.1f} MiB): open it in a browser")
    return EXIT_OK


def _setup_report(p: argparse.ArgumentParser) -> None:
    _add_view_arguments(p, "default: -O0, the network as written")
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="where to write the page (.html): self-contained, it opens offline")
    _add_analysis_arguments(p, "draw the roofline of this device and estimate each layer's "
                            "latency")
    p.add_argument("--run", metavar="RUN_DIR",
                   help="add a training run of this network (archc train --out RUN_DIR): "
                   "loss per step and epoch, the task's metrics, learning rate, speed, settings; "
                   "with --data (or the spec's training data), its best weights on the held-out "
                   "images: confusion matrix, per-class numbers, pictures of its predictions")
    add_data_arguments(p, spec=False)
    p.add_argument("--compare", metavar="OTHER.yaml",
                   help="put another network (or the same spec with --compare-set) beside this "
                   "one: what changed in parameters, MACs, memory, per block and per layer")
    p.add_argument("--compare-set", action="append", default=[], metavar="NAME=VALUE",
                   help="override a variable of the --compare network (repeatable); a "
                   "variant of the same spec starts from the --set values")


COMMANDS["report"] = (
    "write an interactive HTML page about a spec: diagram, per-layer table, plots, memory",
    _setup_report,
    _cmd_report,
)
