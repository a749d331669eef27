"""``archc optimize``: passes over a spec and its weights, verified."""

from __future__ import annotations

import argparse
import json
import sys

from archc.cli.common import (COMMANDS, EXIT_INTERNAL, EXIT_OK, add_pass_arguments,
                              add_spec_arguments, load_graph, pipeline_of, positive)
from archc.errors import UsageError


def _cmd_optimize(args: argparse.Namespace) -> int:
    from archc.optimize import initial_params, optimize
    from archc.passes.check import EXACT_TOLERANCE
    from runtime.params import save_params

    from archc.passes import PASSES

    graph = load_graph(args)
    pipeline = pipeline_of(args) or []
    for name, _ in pipeline:
        if PASSES[name].needs_params and not args.weights:
            raise UsageError(f"pass '{name}' works on trained weights: give them with --weights "
                            "(a .npz or a run directory of archc train)")
    params = initial_params(graph, args.weights, args.seed)
    result = optimize(graph, pipeline, params, verify=args.verify, data=args.data,
                      batch=args.batch, seed=args.seed)
    if args.output:
        from archc.spec.writer import write_spec

        names = ", ".join(name for name, _ in pipeline) or "none"
        header = (f"{graph.name}: {args.spec} optimised by archc (passes: {names}).\n"
                  "Written by archc optimize; archc reads it back to the same graph.")
        with open(args.output, "w") as f:
            f.write(write_spec(result.graph, header))
    if args.weights_out:
        save_params(args.weights_out, result.params)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(_format_optimised(result, args))
    if result.verified is False:
        print(f"archc: internal error: the exact passes changed the outputs by more than "
              f"{EXACT_TOLERANCE:g} (a bug in archc; please report it with this spec)",
              file=sys.stderr)
        return EXIT_INTERNAL
    return EXIT_OK


def _format_optimised(result, args) -> str:
    from archc.analysis.table import human

    def span(pair, fmt=lambda v: human(v)):
        return f"{fmt(pair[0])} -> {fmt(pair[1])}" if pair[0] != pair[1] else fmt(pair[0])

    lines = [f"{result.graph.name}: {len(result.original)} -> {len(result.graph)} layers"]
    rows = [("pass", "layers", "params", "MACs", "FLOPs", "rewrites")]
    for r in result.reports:
        rows.append((r.name + ("" if r.exact else " (approx.)"), span(r.nodes, str),
                     span(r.params), span(r.macs), span(r.flops), str(len(r.changes))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    for r in result.reports:
        shown = r.changes if args.verbose else r.changes[:3]
        for change in shown:
            lines.append(f"  {r.name}: {change}")
        if len(r.changes) > len(shown):
            lines.append(f"  {r.name}: ... {len(r.changes) - len(shown)} more (-v lists them)")
        for note in r.notes:
            lines.append(f"  {r.name}: {note}")
    for name, diff in result.differences.items():
        verdict = ("" if not result.exact else
                   "  ok" if diff < 1e-5 else "  FAILED (exact passes must stay below 1e-05)")
        lines.append(f"verify on {name} inputs ({args.batch} images): max relative output "
                     f"difference {diff:.2e}{verdict}")
    if args.output:
        lines.append(f"wrote {args.output}")
    if args.weights_out:
        lines.append(f"wrote {args.weights_out}")
    return "\n".join(lines)


def _setup_optimize(p: argparse.ArgumentParser) -> None:
    add_spec_arguments(p)
    add_pass_arguments(p, "default: -O2")
    p.set_defaults(default_level=2)
    p.add_argument("--weights", metavar="W.npz|RUN_DIR",
                   help="trained parameters to rewrite (default: a seeded initialisation with "
                   "random batch-norm statistics)")
    p.add_argument("--verify", action="store_true",
                   help="run the network before and after on random and real inputs and print "
                   "the largest relative output difference (exact passes: below 1e-5)")
    p.add_argument("--data", default="digits", metavar="SOURCE",
                   help="real inputs for --verify and for passes that measure their error "
                   "(default digits; as archc train's --data)")
    p.add_argument("--batch", type=positive, default=4, metavar="N",
                   help="inputs per verification batch (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and random inputs")
    p.add_argument("-o", "--output", metavar="OUT.yaml",
                   help="write the optimised network as a spec")
    p.add_argument("--weights-out", metavar="W2.npz",
                   help="write the rewritten parameters (names fit the written spec)")
    p.add_argument("-v", "--verbose", action="store_true", help="list every rewrite")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")


COMMANDS["optimize"] = (
    "optimise a spec (fusion, batch-norm folding, factorisation) and report what changed",
    _setup_optimize,
    _cmd_optimize,
)
