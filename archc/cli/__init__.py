"""The ``archc`` command line: a thin layer that calls the pipeline stages and prints.

Exit codes: 0 success; 2 a problem with the user's input (printed as
``FILE:LINE:COL: error: MESSAGE``); 1 an internal error (a bug: one line, no traceback
unless ``ARCHC_DEBUG=1``); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable

from archc.cli import scaling
from runtime.train import distributed
from runtime.train.data import SOURCES
from archc.errors import ArchcError, DataError, InputError, UsageError

EXIT_OK, EXIT_INTERNAL, EXIT_USER = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with a one-line reason (plus usage) on bad flags."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"archc: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USER)


def _add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="path of the network's YAML spec")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
        help="override a variable of the spec (repeatable), e.g. --set width=32",
    )


def _load(args: argparse.Namespace):
    """The spec's graph; for commands with --passes/-O, its optimised view (structure
    only: no weights are needed to see what the passes do to the graph)."""
    from archc import build
    from archc.spec import parse_overrides

    graph = build(args.spec, parse_overrides(args.overrides))
    pipeline = _pipeline(args) if getattr(args, "view_passes", False) else None
    if pipeline:
        from archc.passes import run_passes

        graph, _, _ = run_passes(graph, None, pipeline)
    return graph


def _add_pass_arguments(p: argparse.ArgumentParser, default: str) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("-O", dest="opt_level", type=int, choices=[0, 1, 2], metavar="LEVEL",
                       help="-O0: no passes; -O1: clean-ups and batch-norm folding; -O2: "
                       f"also fusions ({default})")
    group.add_argument("--passes", metavar="LIST",
                       help="the passes to run, in order, comma-separated, each with "
                       ":key=value options, e.g. fold_bn,fuse_activation or "
                       "separable:match='conv*'")


def _pipeline(args: argparse.Namespace) -> list | None:
    from archc.passes import parse_pipeline, preset

    if args.passes:
        return parse_pipeline(args.passes)
    level = args.opt_level if args.opt_level is not None else getattr(args, "default_level", None)
    return preset(level) if level else None


def _cmd_check(args: argparse.Namespace) -> int:
    from archc.layers import fmt_shape

    graph = _load(args)
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
    out_text = ", ".join(f"{k} {fmt_shape(v)}" for k, v in outs.items())
    print(f"{args.spec}: ok: {graph.name}, {len(graph)} nodes, {in_text} -> {out_text}")
    return EXIT_OK


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable]] = {}


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _cmd_summary(args: argparse.Namespace) -> int:
    from archc.analysis import analyse, format_summary, get_device

    graph = _load(args)
    device = get_device(args.device) if args.device else None
    report = analyse(graph, batch=args.batch, device=device)
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(format_summary(report, depth=args.depth))
    return EXIT_OK


def _setup_summary(p: argparse.ArgumentParser) -> None:
    _add_spec_arguments(p)
    _add_pass_arguments(p, "default: -O0, the network as written")
    p.set_defaults(view_passes=True)
    p.add_argument("--batch", type=_positive, default=1, metavar="N",
                   help="batch size for memory, FLOPs and latency (default 1)")
    p.add_argument("--depth", type=_positive, default=None, metavar="D",
                   help="show blocks nested deeper than D as one row (default: all)")
    p.add_argument("--device", metavar="NAME",
                   help="add a roofline latency estimate: cpu (measured here once, cached), "
                   "h100 or h200")
    p.add_argument("--json", action="store_true", help="print the analysis as one JSON object")


def _setup_check(p: argparse.ArgumentParser) -> None:
    _add_spec_arguments(p)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


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

    graph = _load(args)
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
    _add_spec_arguments(p)
    _add_pass_arguments(p, "default: -O0; fused layers show as one node listing what they hold")
    p.set_defaults(view_passes=True)
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


def _cmd_optimize(args: argparse.Namespace) -> int:
    from archc.optimize import initial_params, optimize
    from archc.passes.check import EXACT_TOLERANCE
    from runtime.params import save_params

    from archc.passes import PASSES

    graph = _load(args)
    pipeline = _pipeline(args) or []
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
    _add_spec_arguments(p)
    _add_pass_arguments(p, "default: -O2")
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
    p.add_argument("--batch", type=_positive, default=4, metavar="N",
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


def _cmd_run(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from archc import compile as compile_graph
    from archc.layers import fmt_shape

    graph = _load(args)
    model = compile_graph(graph, backend=args.backend, seed=args.seed)
    if args.weights:
        model.load(args.weights)
    if args.input:
        try:
            x = np.load(args.input, allow_pickle=False)
        except FileNotFoundError:
            raise InputError(f"no such input file: {args.input}") from None
        except (ValueError, OSError) as exc:
            raise InputError(f"{args.input} is not a readable .npy array ({exc})") from None
    else:
        shapes = model.program.inputs
        rng = np.random.default_rng(args.seed)
        x = {name: rng.standard_normal((args.batch,) + shape).astype(np.float32)
             for name, shape in shapes.items()}
        if len(x) == 1:
            x = next(iter(x.values()))
    start = time.perf_counter()
    y = model.predict(x)
    first = time.perf_counter() - start
    start = time.perf_counter()
    y = model.predict(x)  # again, without compiling or loading kernels
    elapsed = time.perf_counter() - start
    outputs = y if isinstance(y, dict) else {next(iter(graph.outputs)): y}
    for key, value in outputs.items():
        print(f"{key}: {value.shape[0]} x {fmt_shape(value.shape[1:])}")
    print(f"forward pass on {args.backend}: {elapsed * 1e3:.1f} ms "
          f"(first call {first * 1e3:.1f} ms, with kernel compilation or cache loading)")
    if args.backend == "cuda":
        ops = model.program.ops
        print(f"{sum(map(model.backend.on_device, ops))} of {len(ops)} layers on the device "
              "(the others through the host)")
    batch = next(iter(outputs.values())).shape[0]
    plan = model.memory_plan(batch)
    print(f"activation memory: {plan.arena_bytes / 2**20:.1f} MiB planned "
          f"(peak {plan.peak_bytes / 2**20:.1f} MiB alive at once, "
          f"{plan.naive_bytes / 2**20:.1f} MiB without reuse); "
          f"{model.last_peak_bytes / 2**20:.1f} MiB alive at most in this run")
    if args.output:
        if len(outputs) == 1:
            np.save(args.output, next(iter(outputs.values())), allow_pickle=False)
        else:
            np.savez(args.output, **outputs)
        print(f"wrote {args.output}")
    return EXIT_OK


def _setup_run(p: argparse.ArgumentParser) -> None:
    _add_spec_arguments(p)
    p.add_argument("--input", metavar="X.npy", help="input batch, NCHW float32 (default: random)")
    p.add_argument("--batch", type=_positive, default=1, metavar="N",
                   help="batch size of the random input (default 1)")
    p.add_argument("--weights", metavar="W.npz",
                   help="parameters (.npz with PyTorch state_dict names; default: initialised)")
    p.add_argument("--backend", choices=["cpu", "reference", "cuda"], default="cpu",
                   help="cpu: Numba kernels (default); reference: plain NumPy, the definition "
                   "the fast backends are tested against; cuda: an NVIDIA GPU (numba.cuda; "
                   "layers without a device kernel yet run on the host)")
    p.add_argument("--seed", type=int, default=0, help="seed for initial weights and random input")
    p.add_argument("-o", "--output", metavar="Y.npy", help="save the output (.npz for several)")


COMMANDS["run"] = (
    "run a spec's forward pass on an input (or a random batch) and print the output shape",
    _setup_run,
    _cmd_run,
)


def _cmd_bench(args: argparse.Namespace) -> int:
    import numpy as np

    from archc import compile as compile_graph
    from archc.analysis import analyse, get_device
    from archc.profile import build_profile, format_profile

    if args.distributed:
        return _bench_distributed(args)
    graph = _load(args)
    model = compile_graph(graph, backend=args.backend, seed=args.seed)
    name = args.device
    if name is None:  # the profile of what runs the kernels
        gpu = model.backend.device_name().upper()
        name = "cpu" if args.backend != "cuda" else "h200" if "H200" in gpu else "h100"
    args.batch, args.repeat = args.batch or 1, args.repeat or 3
    report = analyse(graph, batch=args.batch, device=get_device(name))
    rng = np.random.default_rng(args.seed)
    x = {key: rng.standard_normal((args.batch,) + shape).astype(np.float32)
         for key, shape in model.program.inputs.items()}
    if args.train:
        model.train()
    times = model.profile(x, repeat=args.repeat, backward=args.train)
    profile = build_profile(model, report, times, repeat=args.repeat, profile=name)
    if args.json:
        print(json.dumps(profile.to_dict()))
    else:
        print(format_profile(profile, top=args.top or None))
    return EXIT_OK


def _bench_distributed(args: argparse.Namespace) -> int:
    from archc.analysis import analyse, get_device

    graph = _load(args)  # the spec's errors, before any rank starts
    batch = args.batch or 32
    ranks = sorted(set(args.ranks))
    results = scaling.measure(args.spec, args.overrides, ranks, batch=batch,
                                  steps=args.repeat or 10, backend=args.backend,
                                  bucket_mb=args.bucket_mb, trials=args.trials)
    compute, label = None, ""
    if args.device:  # a training step there: forward + backward ~ 3x the forward pass
        report = analyse(graph, batch=batch, device=get_device(args.device))
        compute = 3 * report.totals["latency_s"]
        label = f"the roofline estimate on {args.device}: 3x its forward pass"
    network = distributed.Link(args.link_latency_us * 1e-6, 8 / (args.link_gbps * 1e9),
                               f"hosts, {args.link_gbps:g} Gb/s (assumed)")
    report = distributed.scaling_report(results, network=network, compute_s=compute,
                                        compute_label=label)
    if args.json:
        print(json.dumps({"runs": results, **report}))
    else:
        print(scaling.format_scaling(report))
    return EXIT_OK


def _ranks(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a list of rank counts (e.g. 1,2)")
    return values


def _setup_bench(p: argparse.ArgumentParser) -> None:
    _add_spec_arguments(p)
    _add_pass_arguments(p, "default: -O0, the network as written")
    p.set_defaults(view_passes=True)
    p.add_argument("--backend", choices=["cpu", "reference", "cuda"], default="cpu",
                   help="where the kernels run (default cpu); cuda times them with CUDA events")
    p.add_argument("--batch", type=_positive, metavar="N",
                   help="batch size (default 1; --distributed: per rank, default 32)")
    p.add_argument("--repeat", type=_positive, metavar="R",
                   help="timed passes after the warm-up pass; times are their mean (default "
                   "3; --distributed: timed training steps, default 10)")
    p.add_argument("--train", action="store_true",
                   help="time a training step: forward in training mode and the backward pass")
    p.add_argument("--device", metavar="NAME",
                   help="the roofline profile to compare with: cpu (measured here once, "
                   "cached), h100 or h200 (default: cpu, or the GPU's own for --backend cuda)")
    p.add_argument("--top", type=int, default=15, metavar="K",
                   help="show the K slowest layers (0: all; default 15)")
    p.add_argument("--seed", type=int, default=0, help="seed for the weights and the input")
    p.add_argument("--json", action="store_true", help="print the profile as one JSON object")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel training steps on 1, 2, ... ranks of this host (one "
                   "mpirun each, one thread per rank): images/s, time in communication, "
                   "scaling efficiency, and a cost model's prediction for more ranks and hosts")
    p.add_argument("--ranks", type=_ranks, default=[1, 2], metavar="LIST",
                   help="--distributed: the rank counts to run (default 1,2)")
    p.add_argument("--bucket-mb", type=float, default=distributed.BUCKET_MB, metavar="MB",
                   help=f"--distributed: gradient bucket size (default {distributed.BUCKET_MB:g})")
    p.add_argument("--trials", type=_positive, default=1, metavar="T",
                   help="--distributed: runs per rank count, taking turns; each keeps its "
                   "median (default 1)")
    p.add_argument("--link-latency-us", type=float, default=10.0, metavar="US",
                   help="--distributed: the cost model's latency between hosts (default 10)")
    p.add_argument("--link-gbps", type=float, default=25.0, metavar="GBPS",
                   help="--distributed: the cost model's bandwidth between hosts in Gb/s "
                   "(default 25, Ethernet)")


COMMANDS["bench"] = (
    "time every layer's kernels on a backend and compare with the analysis' roofline "
    "estimate",
    _setup_bench,
    _cmd_bench,
)


def _cmd_export(args: argparse.Namespace) -> int:
    from archc import compile as compile_graph
    from archc.optimize import optimize
    from runtime.train.checkpoint import best_weights
    from runtime.params import save_params

    graph = _load(args)
    model = compile_graph(graph, backend="reference", seed=args.seed)
    if args.weights:
        model.load(best_weights(args.weights))
    pipeline = _pipeline(args) or []
    graph, params = graph, dict(model.params)
    if pipeline:
        result = optimize(graph, pipeline, params)
        graph, params = result.graph, result.params
    if args.format == "yaml":
        from archc.spec.writer import write_spec

        names = ", ".join(name for name, _ in pipeline) or "none"
        header = (f"{graph.name}: {args.spec} (passes: {names}).\n"
                  "Written by archc export; archc reads it back to the same graph.")
        with open(args.output, "w") as f:
            f.write(write_spec(graph, header))
        print(f"wrote {args.output}: {graph.name} as a spec, {len(graph)} layers")
    elif args.format == "onnx":
        from archc.export import OPSET, to_onnx

        model = to_onnx(graph, params, doc=f"{graph.name} from {args.spec}")
        _write_atomically(args.output, model.SerializeToString())
        print(f"wrote {args.output}: {graph.name} as ONNX (opset {OPSET}, batch dimension "
              f"'batch'), {len(model.graph.node)} operators, {len(model.graph.initializer)} "
              f"initializers ({'trained' if args.weights else 'initialised'} weights)")
    else:
        from archc.naming import torch_names

        names = torch_names(graph)
        save_params(args.output, {names.get(k, k): v for k, v in params.items()})
        print(f"wrote {args.output}: {len(params)} arrays named and laid out as in PyTorch's "
              f"state_dict ({'trained' if args.weights else 'initialised'} weights)")
    return EXIT_OK


def _write_atomically(path: str, data: bytes) -> None:
    """A reader never sees half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _setup_export(p: argparse.ArgumentParser) -> None:
    _add_spec_arguments(p)
    _add_pass_arguments(p, "default: -O0, the network as written")
    p.add_argument("--format", choices=["onnx", "yaml", "state-dict"], required=True,
                   help="onnx: the network and its weights as an ONNX model (opset 17, "
                   "symbolic batch; run it with onnxruntime, read it back with archc import); "
                   "yaml: the graph as a spec archc reads back to the same graph; "
                   "state-dict: the weights as an .npz whose keys and layouts are PyTorch's "
                   "state_dict (load it with torch: {k: torch.from_numpy(v) ...})")
    p.add_argument("--weights", metavar="W",
                   help="weights to export or to optimise with (.npz, a PyTorch .pt state_dict "
                   "or a run directory of archc train; default: initialised)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="where to write")


COMMANDS["export"] = (
    "write a network (optionally optimised) as ONNX or YAML, or its weights as a PyTorch "
    "state_dict",
    _setup_export,
    _cmd_export,
)


def _cmd_import(args: argparse.Namespace) -> int:
    from archc.export import from_onnx
    from archc.spec.writer import write_spec
    from runtime.params import save_params

    if not os.path.isfile(args.model):
        raise UsageError(f"{args.model}: no such file")
    graph, params = from_onnx(args.model)
    weights = args.weights_out or os.path.splitext(args.output)[0] + ".npz"
    header = (f"{graph.name}: imported from {args.model} by archc import.\n"
              f"Its weights: {weights} (archc run {args.output} --weights {weights}).")
    with open(args.output, "w") as f:
        f.write(write_spec(graph, header))
    save_params(weights, params)
    print(f"wrote {args.output}: {graph.name}, {len(graph) - len(graph.inputs)} layers; "
          f"{weights}: {len(params)} arrays")
    return EXIT_OK


def _setup_import(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="an ONNX model (.onnx), e.g. from torch.onnx.export")
    p.add_argument("-o", "--output", required=True, metavar="SPEC", help="the spec to write")
    p.add_argument("--weights-out", metavar="W", help="where to write the weights "
                   "(.npz; default: the spec's name with .npz)")


COMMANDS["import"] = (
    "turn an ONNX model into an archc spec and its weights",
    _setup_import,
    _cmd_import,
)


def _compile_for_data(graph, args, seed: int):
    from archc import compile as compile_graph

    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise UsageError(f"training needs a network with one input and one output; "
                        f"{graph.name} has {len(graph.inputs)} and {len(graph.outputs)}")
    return compile_graph(graph, backend=args.backend, seed=seed)


def _settings(args, graph):
    """The spec's training: section with the flags given over it, as a Python caller of
    ``fit`` gets them (:func:`runtime.train.config.settings`)."""
    from runtime.train.config import KEYS, settings

    merged = settings(graph.training, {key: getattr(args, key, None) for key in KEYS})
    if merged.data is None:
        raise UsageError("no data to train on: give --data (digits, mnist:DIR, ...) or "
                         "'data:' in the spec's training section")
    return merged


def _task_for(settings, split, model, weights=None):
    """The task a run trains or was trained for: a run directory's task.json where the
    weights come from one, else the settings and the data's kind."""
    from runtime.train import tasks

    if weights is not None:
        described = tasks.find_description(weights)
        if described is not None:
            return tasks.restore(described, split, model.program)
    return tasks.make(settings.task, split, model.program, settings.options,
                      seed=settings.config.seed)


def _cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from runtime.train import data
    from runtime.train.checkpoint import best_weights
    from runtime.train.loop import fit

    graph = _load(args)
    settings = _settings(args, graph)
    config, seed = settings.config, settings.config.seed
    world = distributed.World.mpi() if args.distributed else distributed.ALONE
    say = print if world.lead else (lambda *a, **k: None)
    if world.size > 1 and args.backend == "cuda":
        world.pick_gpu()
    model = _compile_for_data(graph, args, seed)
    if args.init:
        kept = model.load_matching(best_weights(args.init))
        say(f"started from {args.init}" + (f"; initialised afresh: {', '.join(kept)}"
                                           if kept else ""))
    shape = next(iter(model.program.inputs.values()))
    split = data.load(settings.data, shape, seed=seed)
    task = _task_for(settings, split, model)
    run = Path(args.resume or args.out)
    say(f"training {model.program.name} on {settings.data} ({task.kind}): "
        f"{len(split.train)} images, {len(split.test)} held out; run directory {run}")
    if world.size > 1:
        lo, hi = distributed.shard(config.batch_size, 0, world.size)
        say(f"data parallel on {world.size} ranks: global batch {config.batch_size}, "
            f"{hi - lo}{'' if config.batch_size % world.size == 0 else ' or fewer'} per "
            f"rank; batch norm {'synchronised' if config.sync_bn else 'per rank'}")
    if task.kind == "detect":
        head = task.head
        say(f"grid {head.grid}x{head.grid}, {head.boxes} anchors per cell (k-means on the "
              f"training boxes, width x height in pixels): " + ", ".join(
                  f"{w * head.size[1]:.1f}x{h * head.size[0]:.1f}" for w, h in head.anchors))
    history = fit(model, split, config, run, task=task, resume=bool(args.resume),
                  progress=sys.stderr.isatty(), world=world)
    if history and world.lead:  # the run directory is rank 0's
        best = max(h[f"test_{task.primary}"] for h in history)
        print(f"done: best test {task.name} {best:.4f}; weights: {best_weights(run)} "
              f"(log: {run / 'log.jsonl'})")
    return EXIT_OK


def _weights_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of numbers "
                                         f"(e.g. 0.2,1,1,1)") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"class weights cannot be negative: '{text}'")
    return values


def _epoch_pattern(text: str) -> tuple[int, str]:
    from runtime.train.config import epoch_pattern

    try:
        return epoch_pattern(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _add_data_arguments(p: argparse.ArgumentParser) -> None:
    """The spec, the data set, the backend and the seed: shared by train and eval."""
    _add_spec_arguments(p)
    p.add_argument("--data", metavar="SOURCE",
                   help=f"{SOURCES} (default: the spec's training section)")
    p.add_argument("--backend", choices=["cpu", "reference", "cuda"], default="cpu",
                   help="cpu: Numba kernels (default); reference: plain NumPy; cuda: an NVIDIA "
                   "GPU (parameters, activations, gradients and optimiser state stay on it; "
                   "checkpoints are the same on every backend)")
    p.add_argument("--seed", type=int,
                   help="seed for weights, the held-out split and batches (default 0; eval: "
                   "the one the run was trained with)")


def _setup_train(p: argparse.ArgumentParser) -> None:
    _add_data_arguments(p)
    p.add_argument("--epochs", type=_positive, help="default 10")
    p.add_argument("--batch-size", type=_positive, help="default 32")
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], help="default sgd")
    p.add_argument("--lr", type=float, help="base learning rate (default 0.05)")
    p.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    p.add_argument("--nesterov", action="store_true", default=None,
                   help="Nesterov momentum (SGD)")
    p.add_argument("--weight-decay", type=float, help="default 5e-4")
    p.add_argument("--schedule", choices=["cosine", "step", "multistep", "constant"],
                   help="learning-rate schedule over the epochs (default cosine)")
    p.add_argument("--warmup", type=int, metavar="EPOCHS",
                   help="linear learning-rate warm-up epochs")
    p.add_argument("--label-smoothing", type=float, help="default 0")
    p.add_argument("--clip", type=float, metavar="NORM", help="clip gradients to this L2 norm")
    p.add_argument("--augment", metavar="LIST",
                   help="augmentations per batch, in order: crop, flip, jitter, rotate, "
                   "cutout, mixup, cutmix, randaugment (e.g. crop,flip)")
    p.add_argument("--init", metavar="W.npz|RUN_DIR",
                   help="start from these weights where names and shapes fit (transfer "
                   "learning: a head with another number of classes starts afresh)")
    p.add_argument("--freeze", action="append", default=[], metavar="PATTERN",
                   help="parameters whose names match do not train (repeatable), e.g. "
                   "'layer1.*'")
    p.add_argument("--unfreeze", action="append", default=[], type=_epoch_pattern,
                   metavar="EPOCH:PATTERN",
                   help="progressive unfreezing: frozen parameters matching PATTERN train "
                   "from epoch EPOCH (1-based) on (repeatable), e.g. 3:'c3.*'")
    p.add_argument("--task", choices=["classify", "segment", "detect", "embed"],
                   help="what to train for (default: what the data is for; embed with an "
                   "embedding loss)")
    p.add_argument("--loss", help="segment: ce (default), dice, ce+dice; embed: "
                   "triplet-hard (default), triplet-all, contrastive; detect: yolo")
    p.add_argument("--margin", type=float, help="embedding losses' margin (default 1.0)")
    p.add_argument("--class-weights", type=_weights_list, metavar="W0,W1,...",
                   help="segment: the cross-entropy's weight of each class, e.g. 0.2,1,1,1 "
                   "to count the background less")
    p.add_argument("--box-loss", choices=["mse", "giou"],
                   help="detect: the box coordinates' loss (default mse)")
    p.add_argument("--objectness", choices=["bce", "focal"],
                   help="detect: the objectness loss (default bce)")
    p.add_argument("--patience", type=_positive, metavar="EPOCHS",
                   help="stop early after this many epochs without a better test accuracy")
    p.add_argument("--out", default="runs/latest", metavar="RUN_DIR",
                   help="run directory: log and checkpoints (default runs/latest)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--checkpoint-every", type=_positive, metavar="STEPS",
                   help="also checkpoint every STEPS optimiser steps, within epochs (a "
                   "resumed run goes on from the next step; default: at the end of each "
                   "epoch only)")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel training on the ranks an MPI launcher started "
                   "(mpirun -n 4 archc train ... --distributed): each rank trains on its "
                   "slice of every global batch and the gradients are averaged (see "
                   "docs/distributed.md)")
    p.add_argument("--sync-bn", action="store_true", default=None,
                   help="--distributed: batch norm's statistics over every rank's batch "
                   "(default: each rank's own)")
    p.add_argument("--bucket-mb", type=float, metavar="MB",
                   help="--distributed: all-reduce the gradients in buckets of this many "
                   "MiB, each sent while the backward pass goes on "
                   f"(default {distributed.BUCKET_MB:g})")


def _cmd_eval(args: argparse.Namespace) -> int:
    from runtime.train import data
    from runtime.train.checkpoint import best_weights

    graph = _load(args)
    settings = _settings(args, graph)
    model = _compile_for_data(graph, args, settings.config.seed)
    model.load(best_weights(args.weights))
    shape = next(iter(model.program.inputs.values()))
    split = data.load(settings.data, shape, seed=settings.config.seed)
    task = _task_for(settings, split, model, args.weights)
    result = task.evaluate(model, split.test)
    shown = {"accuracy": "test accuracy", "top5": "top-5", "miou": "mean IoU",
             "pixel_accuracy": "pixel accuracy", "map50": "mAP@0.5", "map": "mAP@[.5:.95]",
             "retrieval": "retrieval accuracy", "roc_auc": "ROC-AUC",
             "verification": "verification accuracy", "loss": "loss"}
    print(f"{model.program.name} on {settings.data} ({len(split.test)} held-out images): "
          + "  ".join(f"{label} {result[key]:.4f}" for key, label in shown.items()
                      if key in result))
    return EXIT_OK


def _setup_eval(p: argparse.ArgumentParser) -> None:
    _add_data_arguments(p)
    p.add_argument("--task", choices=["classify", "segment", "detect", "embed"],
                   help="what the weights were trained for (default: the run's task.json, "
                   "else what the data is for)")
    p.add_argument("--weights", required=True, metavar="W.npz|RUN_DIR",
                   help="trained parameters, or a run directory (its best checkpoint)")


def _images(args, graph, shape, described: dict, count: int):
    """The images a command looks at: ``--image`` files (standardized as the run's
    training data was, when its task.json says how), else the first ``count`` held-out
    images of ``--data`` (or the spec's training data) from ``--index`` on. Returns the
    batch, a function giving pictures' pixel values back, names, and the split (None for
    files)."""
    from pathlib import Path

    import numpy as np

    from runtime.train import data, pictures

    if args.image:
        x = np.stack([pictures.load_image(p, shape) for p in args.image])
        if "mean" not in described:
            return x, (lambda v: v), [Path(p).stem for p in args.image], None
        mean = np.array(described["mean"], np.float32).reshape(-1, 1, 1)
        std = np.array(described["std"], np.float32).reshape(-1, 1, 1)
        return ((x - mean) / std, (lambda v: v * std + mean),
                [Path(p).stem for p in args.image], None)
    settings = _settings(args, graph)
    split = data.load(settings.data, shape, seed=settings.config.seed)
    start = getattr(args, "index", 0)
    if not 0 <= start < len(split.test):
        raise DataError(f"--index {start} is outside the {len(split.test)} held-out images")
    x = split.test.x[start:start + count]
    return x, split.pixels, [f"test-{k:04d}" for k in range(start, start + len(x))], split


def _cmd_predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from runtime.train import pictures, tasks
    from runtime.train.checkpoint import best_weights

    graph = _load(args)
    model = _compile_for_data(graph, args, 0)
    model.load(best_weights(args.weights))
    shape = next(iter(model.program.inputs.values()))
    described = tasks.find_description(args.weights) or {}
    x, show, names, split = _images(args, graph, shape, described, count=args.count)
    if not described:
        if split is None:
            raise DataError(f"{args.weights} has no task.json beside it (a run directory "
                            f"of archc train has one): give --data to say what it predicts")
        described = tasks.make(None, split, model.program, {}).describe()
    task = tasks.restore(described, split, model.program)
    model.eval()
    out = model.predict(x)
    out_dir = Path(args.out)
    if task.kind == "classify":
        for name, scores in zip(names, out):
            p = np.exp(scores - scores.max())
            p /= p.sum()
            top = np.argsort(-p)[:3]
            print(f"{name}: " + ", ".join(f"{task.classes[k]} {p[k]:.3f}" for k in top))
        return EXIT_OK
    if task.kind == "embed":
        raise DataError("predict draws segmentation masks and detection boxes and names "
                        "classes; for an embedding network use archc eval (retrieval and "
                        "verification)")
    written = []
    for k, name in enumerate(names):
        pixels = pictures.to_uint8(show(x[k]), (0.0, 1.0))
        big = pictures.enlarge(pixels)
        factor = big.shape[0] / pixels.shape[0]
        if task.kind == "segment":
            colours = pictures.palette(len(task.classes))
            mask = out[k].argmax(axis=0)
            panel = pictures.overlay(pixels, mask, colours)
            picture = pictures.side_by_side(big, pictures.enlarge(panel))
            found = ", ".join(f"{task.classes[c]} {int((mask == c).sum())} px"
                              for c in np.unique(mask) if c > 0)
        else:
            boxes, scores, classes = task.head.detections(out[k:k + 1],
                                                          score_threshold=args.score)[0]
            colours = pictures.palette(len(task.classes), background=False)
            labels = [f"{task.classes[c]} {s:.2f}" for c, s in zip(classes, scores)]
            picture = pictures.draw_boxes(big, boxes, labels, colours[classes], factor)
            found = ", ".join(labels)
        written.append(pictures.save(picture, out_dir / f"{name}.png"))
        print(f"{written[-1]}: {found or 'nothing found'}")
    return EXIT_OK


def _setup_predict(p: argparse.ArgumentParser) -> None:
    _add_data_arguments(p)
    p.add_argument("--weights", required=True, metavar="W.npz|RUN_DIR",
                   help="trained parameters, or a run directory (its best checkpoint; its "
                   "task.json says what the network predicts)")
    p.add_argument("--image", nargs="+", metavar="FILE",
                   help="image files to predict (default: --count held-out images of --data "
                   "from --index on)")
    p.add_argument("--index", type=int, default=0,
                   help="the first held-out image of --data (default 0)")
    p.add_argument("--count", type=_positive, default=8, help="held-out images (default 8)")
    p.add_argument("--score", type=float, default=0.3,
                   help="detection: the lowest score drawn (default 0.3)")
    p.add_argument("-o", "--out", default="out/predict", metavar="DIR",
                   help="folder for the pictures (default out/predict)")


VISUALS = ("saliency", "smoothgrad", "class-model", "features", "filters", "invert")


def _cmd_visualize(args: argparse.Namespace) -> int:
    import numpy as np

    from runtime.train import pictures, tasks, visualize
    from runtime.train.checkpoint import best_weights

    graph = _load(args)
    model = _compile_for_data(graph, args, args.seed or 0)
    if args.weights:
        model.load(best_weights(args.weights))
    described = tasks.find_description(args.weights) if args.weights else None
    classes = (described or {}).get("classes")
    shape = next(iter(model.program.inputs.values()))

    def class_name(k: int) -> str:
        return f"class {k}" + (f" ({classes[k]})" if classes and k < len(classes) else "")

    def image():
        x, show, names, _ = _images(args, graph, shape, described or {}, count=1)
        return x[0], show

    def shown(picture: np.ndarray) -> None:
        path = pictures.save(picture, args.out)
        print(f"wrote {path}")

    what = args.what
    if what in ("features", "invert") and not args.node:
        raise DataError(f"--what {what} needs --node NAME (a layer's name: archc summary "
                        f"lists them)")
    if what in ("saliency", "smoothgrad"):
        x, show = image()
        heat, k = visualize.saliency(model, x, args.target,
                                     samples=args.samples if what == "smoothgrad" else 0,
                                     seed=args.seed or 0)
        pixels = pictures.to_uint8(show(x), (0.0, 1.0))
        print(f"{what} of {class_name(k)}")
        shown(pictures.side_by_side(pictures.enlarge(pixels), pictures.enlarge(
            pictures.heat(heat))))
    elif what == "class-model":
        targets = [args.target] if args.target is not None else range(
            next(iter(model.program.output_shapes().values()))[0])
        tiles = []
        for k in targets:
            x, score = visualize.class_model(model, k, steps=args.steps, seed=args.seed or 0)
            print(f"{class_name(k)}: score {score:.3f}")
            tiles.append(pictures.enlarge(pictures.to_uint8(x), 96))
        shown(pictures.grid(tiles))
    elif what == "features":
        x, _ = image()
        maps = visualize.feature_maps(model, x, args.node)
        if maps.ndim != 3:
            raise DataError(f"node '{args.node}' holds {maps.shape}, not feature maps "
                            f"(channels x height x width)")
        maps = maps[:args.max]
        print(f"{args.node}: {maps.shape[0]} maps of {maps.shape[1]} x {maps.shape[2]}")
        side = max(96 // max(maps.shape[1:]), 1) * max(maps.shape[1:])
        shown(pictures.grid([pictures.enlarge(pictures.to_uint8(m), side) for m in maps]))
    elif what == "filters":
        w = visualize.first_filters(model)[:args.max]
        tiles = [pictures.enlarge(pictures.to_uint8(f if f.shape[0] == 3 else f[:1]), 48)
                 for f in w]
        print(f"{len(tiles)} filters of {w.shape[1]} x {w.shape[2]} x {w.shape[3]}")
        shown(pictures.grid(tiles))
    else:  # invert
        x, show = image()
        y, error = visualize.invert(model, x, args.node, steps=args.steps,
                                    seed=args.seed or 0)
        print(f"reconstructed from {args.node}: relative error of its activations "
              f"{error:.4f}")
        shown(pictures.side_by_side(pictures.enlarge(pictures.to_uint8(show(x), (0.0, 1.0))),
                                    pictures.enlarge(pictures.to_uint8(show(y)))))
    return EXIT_OK


def _add_image_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", nargs=1, metavar="FILE",
                   help="an image file (default: a held-out image of --data)")
    p.add_argument("--index", type=int, default=0,
                   help="which held-out image of --data (default 0)")


def _setup_visualize(p: argparse.ArgumentParser) -> None:
    _add_data_arguments(p)
    p.add_argument("--what", choices=VISUALS, required=True,
                   help="saliency / smoothgrad: what the class score is sensitive to; "
                   "class-model: an input that maximises a class; features: a node's "
                   "activations; filters: the first convolution's weights; invert: an input "
                   "rebuilt from a node's activations")
    p.add_argument("--weights", metavar="W.npz|RUN_DIR",
                   help="trained parameters or a run directory (default: random weights)")
    _add_image_arguments(p)
    p.add_argument("--node", help="the node for features and invert")
    p.add_argument("--class", dest="target", type=int, metavar="K",
                   help="the class (saliency: default the predicted one; class-model: "
                   "default every class)")
    p.add_argument("--samples", type=_positive, default=25,
                   help="smoothgrad: noisy copies averaged (default 25)")
    p.add_argument("--steps", type=_positive, default=200,
                   help="class-model, invert: optimisation steps (default 200)")
    p.add_argument("--max", type=_positive, default=64,
                   help="features, filters: at most this many maps (default 64)")
    p.add_argument("-o", "--out", default="out/visualize.png", metavar="FILE.png")


def _cmd_stylize(args: argparse.Namespace) -> int:
    from runtime.train import pictures, visualize
    from runtime.train.checkpoint import best_weights

    graph = _load(args)
    model = _compile_for_data(graph, args, args.seed)
    if args.weights:
        model.load(best_weights(args.weights))
    shape = next(iter(model.program.inputs.values()))
    content = pictures.load_image(args.content, shape)
    style = pictures.load_image(args.style, shape)
    nodes = [n.strip() for n in args.style_nodes.split(",") if n.strip()]
    image, parts = visualize.stylize(model, content, style, content_node=args.content_node,
                                     style_nodes=nodes, steps=args.steps, lr=args.lr,
                                     style_weight=args.style_weight, tv=args.tv)
    print(f"{args.steps} steps: content loss {parts['content']:.4g}, style loss "
          f"{parts['style']:.4g}, total variation {parts['tv']:.4g}"
          + ("" if args.weights else " (random weights)"))
    path = pictures.save(pictures.side_by_side(
        *(pictures.enlarge(pictures.to_uint8(v, (0.0, 1.0))) for v in (content, style, image))),
        args.out)
    print(f"wrote {path} (content, style, result)")
    return EXIT_OK


def _setup_stylize(p: argparse.ArgumentParser) -> None:
    _add_spec_arguments(p)
    p.add_argument("--content", required=True, metavar="FILE", help="the content image")
    p.add_argument("--style", required=True, metavar="FILE", help="the style image")
    p.add_argument("--content-node", required=True, metavar="NODE",
                   help="the node whose activations keep the content")
    p.add_argument("--style-nodes", required=True, metavar="A,B,...",
                   help="the nodes whose Gram matrices carry the style")
    p.add_argument("--weights", metavar="W.npz|RUN_DIR",
                   help="trained parameters (default: random weights, seeded; random "
                   "convolutions already carry textures)")
    p.add_argument("--backend", choices=["cpu", "reference", "cuda"], default="cpu")
    p.add_argument("--steps", type=_positive, default=200, help="Adam steps (default 200)")
    p.add_argument("--lr", type=float, default=0.03,
                   help="Adam's step on the pixels (default 0.03; pixels lie in 0..1)")
    p.add_argument("--style-weight", type=float, default=10.0,
                   help="the style loss's weight against the content's, both relative to "
                   "their targets' size (default 10)")
    p.add_argument("--tv", type=float, default=1e-4,
                   help="total-variation weight: smoothness (default 1e-4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", default="out/stylized.png", metavar="FILE.png")


COMMANDS["train"] = ("train a spec on a data set, with a log and checkpoints",
                     _setup_train, _cmd_train)
COMMANDS["eval"] = ("evaluate trained weights on a data set's held-out images",
                    _setup_eval, _cmd_eval)
COMMANDS["visualize"] = ("look inside a network: saliency maps, class models, feature maps, "
                         "filters, inversions (PNG)", _setup_visualize, _cmd_visualize)
COMMANDS["stylize"] = ("neural style transfer: an image with one image's content and "
                       "another's style (PNG)", _setup_stylize, _cmd_stylize)
COMMANDS["predict"] = ("draw what trained weights see: segmentation overlays and detection "
                       "boxes as PNG files, or the top classes", _setup_predict, _cmd_predict)


def build_parser() -> argparse.ArgumentParser:
    from archc import __version__

    parser = _Parser(
        prog="archc",
        description="archc: compile, check, analyse and run convolutional networks written in YAML.",
    )
    parser.add_argument("--version", action="version", version=f"archc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, (help_text, setup, _) in COMMANDS.items():
        setup(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code = _dispatch(args)
    if code != EXIT_OK and getattr(args, "distributed", False):
        distributed.stop_job(code)  # the other ranks must not wait for this one forever
    return code


def _dispatch(args: argparse.Namespace) -> int:
    try:
        return COMMANDS[args.command][2](args)
    except ArchcError as exc:
        print(distributed.where() + exc.format(), file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("archc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        sys.stderr.close()
        return EXIT_OK
    except Exception as exc:  # an archc bug: one line, not a traceback
        if os.environ.get("ARCHC_DEBUG"):
            raise
        print(
            f"{distributed.where()}archc: internal error: {type(exc).__name__}: {exc} "
            "(this is a bug in archc; rerun with ARCHC_DEBUG=1 for the traceback and report it)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
