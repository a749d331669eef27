"""``archc run`` and ``archc bench``: a network on inputs, and its speed."""

from __future__ import annotations

import argparse
import json


from archc.cli import scaling
from archc.cli.common import (COMMANDS, EXIT_OK, add_pass_arguments, add_precision_argument,
                              add_spec_arguments, apply_precision,
                              add_weights_options, load_graph, load_weights, positive)
from archc.errors import InputError, UsageError
from archc.passes import for_training
from runtime.train import distributed


def _cmd_run(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from archc import compile as compile_graph
    from archc.layers import fmt_shape

    graph = load_graph(args)
    if args.output and len(graph.outputs) > 1 and not args.output.endswith(".npz"):
        raise UsageError(f"{graph.name} has {len(graph.outputs)} outputs "
                         f"({', '.join(graph.outputs)}): -o {args.output} would be one array",
                         "name the file .npz (one array per output, by name)")
    model = compile_graph(graph, backend=args.backend, seed=args.seed)
    if args.weights:
        load_weights(model, args.weights, args)
    if args.input:
        x = _read_input(args.input)
    else:
        shapes = model.program.inputs
        model.check_batch(args.batch)  # before allocating the input
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
            with open(args.output, "wb") as f:  # the name given: numpy would add .npy
                np.save(f, next(iter(outputs.values())), allow_pickle=False)
        else:
            np.savez(args.output, **outputs)
        print(f"wrote {args.output}" + ("" if len(outputs) == 1 else
                                         f" ({len(outputs)} outputs: {', '.join(outputs)})"))
    return EXIT_OK


def _read_input(path: str):
    """``--input``: one .npy array, or an .npz of one array per input (by name)."""
    from runtime.files import read_arrays

    arrays = read_arrays(path, "input file", InputError)
    return arrays[""] if "" in arrays else arrays


def _setup_run(p: argparse.ArgumentParser) -> None:
    add_spec_arguments(p)
    p.add_argument("--input", metavar="X.npy", help="input batch, NCHW float32 (default: random)")
    p.add_argument("--batch", type=positive, default=1, metavar="N",
                   help="batch size of the random input (default 1)")
    p.add_argument("--weights", metavar="W.npz",
                   help="parameters (.npz with PyTorch state_dict names; default: initialised)")
    add_weights_options(p)
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
    graph = load_graph(args)
    if args.train:  # what archc train runs
        graph = for_training(graph)
    if args.kernels and args.backend != "cuda":
        raise UsageError(f"--kernels times each GPU kernel on its own: it needs --backend "
                         f"cuda (this run is on {args.backend}; its layers are timed "
                         f"without it)")
    model = compile_graph(graph, backend=args.backend, seed=args.seed)
    apply_precision(args)
    name = args.device
    if name is None:  # the profile of what runs the kernels
        gpu = model.backend.device_name().upper()
        name = "cpu" if args.backend != "cuda" else "h200" if "H200" in gpu else "h100"
    args.batch, args.repeat = args.batch or 1, args.repeat or 3
    report = analyse(graph, batch=args.batch, device=get_device(name))
    model.check_batch(args.batch, keep=True)
    rng = np.random.default_rng(args.seed)
    x = {key: rng.standard_normal((args.batch,) + shape).astype(np.float32)
         for key, shape in model.program.inputs.items()}
    if args.train:
        model.train()
    times = model.profile(x, repeat=args.repeat, backward=args.train)
    kernels = (model.profile_kernels(x, repeat=args.repeat, backward=args.train)
               if args.kernels else None)
    profile = build_profile(model, report, times, repeat=args.repeat, profile=name,
                            kernels=kernels)
    if args.json:
        print(json.dumps(profile.to_dict()))
    else:
        print(format_profile(profile, top=args.top or None))
    return EXIT_OK


def _bench_distributed(args: argparse.Namespace) -> int:
    from archc.analysis import analyse, get_device

    graph = load_graph(args)  # the spec's errors, before any rank starts
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
    add_spec_arguments(p)
    add_pass_arguments(p, "default: -O0, the network as written")
    p.set_defaults(view_passes=True)
    p.add_argument("--backend", choices=["cpu", "reference", "cuda"], default="cpu",
                   help="where the kernels run (default cpu); cuda times them with CUDA events")
    add_precision_argument(p)
    p.add_argument("--batch", type=positive, metavar="N",
                   help="batch size (default 1; --distributed: per rank, default 32)")
    p.add_argument("--repeat", type=positive, metavar="R",
                   help="timed passes after two warm-up passes; times are their mean (default "
                   "3; --distributed: timed training steps, default 10)")
    p.add_argument("--train", action="store_true",
                   help="time a training step: forward in training mode and the backward pass, "
                   "of the graph archc train runs (batch norms carrying the add and "
                   "activation after them)")
    p.add_argument("--device", metavar="NAME",
                   help="the roofline profile to compare with: cpu (measured here once, "
                   "cached), h100 or h200 (default: cpu, or the GPU's own for --backend cuda)")
    p.add_argument("--kernels", action="store_true",
                   help="--backend cuda: also time each kernel and cuBLAS GEMM on its own "
                   "(separate passes, CUDA events around every launch): which kernels a "
                   "layer's time goes to")
    p.add_argument("--top", type=int, default=15, metavar="K",
                   help="show the K slowest layers and kernels (0: all; default 15)")
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
    p.add_argument("--trials", type=positive, default=1, metavar="T",
                   help="--distributed: runs per rank count, taking turns; each keeps its "
                   "median (default 1)")
    p.add_argument("--link-latency-us", type=float, default=10.0, metavar="US",
                   help="--distributed: the cost model's latency between hosts (default 10)")
    p.add_argument("--link-gbps", type=float, default=25.0, metavar="GBPS",
                   help="--distributed: the cost model's bandwidth between hosts in Gb/s "
                   "(default 25, Ethernet)")


COMMANDS["bench"] = (
    "time every layer's kernels on a backend, say which algorithm each ran and why, and "
    "compare with the analysis' roofline estimate",
    _setup_bench,
    _cmd_bench,
)


def _cmd_tune(args: argparse.Namespace) -> int:
    from archc import compile as compile_graph
    from archc.analysis.table import seconds
    from runtime import tuning
    from runtime.backends.cpu import conv, scope

    graph = load_graph(args)
    if args.train:  # the layers archc train runs
        graph = for_training(graph)
    model = compile_graph(graph, backend="cpu", seed=args.seed)
    model.check_batch(args.batch, keep=args.train)
    cache = tuning.Tuning(tuning.cache_path())
    rows, seen = [], set()
    with scope():
        for op in model.program.ops:
            key = tuning.layer_key(op, args.batch, args.train) if op.kind == "conv2d" else None
            if key is None or key in seen:
                continue
            seen.add(key)
            rule = conv.rule(op, args.batch, args.train)[0]
            times = conv.time_algorithms(op, model.params, args.batch, args.train,
                                         args.repeat, args.seed)
            best = cache.record(op, args.batch, args.train, times)
            rows.append((op.name, "x".join(map(str, op.in_shapes[0])), times, best, rule))
    path = cache.save()
    conv.forget_choices()
    if not rows:
        print(f"{graph.name} has no convolution with a choice of algorithm; nothing to tune")
        return EXIT_OK
    names = sorted({name for _, _, times, _, _ in rows for name in times})
    head = ["layer", "input"] + names + ["chosen", "rules' choice"]
    table = [head] + [[name, shape] + [seconds(times[n]) if n in times else "-" for n in names]
                      + [best, rule] for name, shape, times, best, rule in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    mode = "training steps (forward + backward)" if args.train else "forward passes"
    print(f"{graph.name}, batch {args.batch}: each algorithm's best of {args.repeat} "
          f"{mode}, per layer")
    print("\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table))
    changed = sum(best != rule for _, _, _, best, rule in rows)
    print(f"\nwrote {path}: {len(rows)} layer shapes on {tuning.machine()} "
          f"({changed} differ from the rules); archc run, bench and train use them")
    return EXIT_OK


def _setup_tune(p: argparse.ArgumentParser) -> None:
    add_spec_arguments(p)
    add_pass_arguments(p, "default: -O0, the network as written")
    p.add_argument("--batch", type=positive, default=1, metavar="N",
                   help="batch size to tune for (default 1)")
    p.add_argument("--train", action="store_true",
                   help="tune training steps (forward + backward) instead of inference, on "
                   "the graph archc train runs")
    p.add_argument("--repeat", type=positive, default=5, metavar="R",
                   help="timed runs of each algorithm per layer after a warm-up; the best "
                   "counts (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed for the weights and the input")


COMMANDS["tune"] = (
    "time every algorithm that can run each convolution of a network on this machine and "
    "keep the fastest for later runs (ARCHC_TUNE_CACHE)",
    _setup_tune,
    _cmd_tune,
)
