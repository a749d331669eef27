"""Where archc loses to ONNX Runtime, block by block: archc -O2's own profile
(``Model.profile``, each kernel timed in the pass) beside ONNX Runtime's (its session
profiler's per-node kernel times) on archc's ONNX export of the same network and weights,
summed by block (the first ``--depth`` parts of the layer names: ``stage2.0``,
``layer3.1``), medians of ``--repeat`` passes, 2 threads each. ONNX Runtime names a fused
node after one of the layers it fused (``relu_nchwc``: the stem's conv, batch norm and
ReLU), so its names are taken back to the layer that -O2 fused the same ones into
(``conv1``); the totals are exact either way. Rows go by how many microseconds archc
loses there.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python bench/bench_blocks.py \
        mobilenet_v2 [--batch 1] [--repeat 20] [--depth 2] [--set NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import archc  # noqa: E402
from bench_engines import onnx_file  # noqa: E402
from bench_runtime import blas_kernel  # noqa: E402
from archc.spec.expand import parse_overrides  # noqa: E402

ORT_SUFFIXES = ("_nchwc",)  # what ONNX Runtime's layout transformer appends to a node


def block_of(name: str, depth: int) -> str:
    """The block a layer belongs to: the first ``depth`` dotted parts of its name (fewer
    where the name has no more than that: a top-level layer is its own block)."""
    parts = name.split(".")
    return ".".join(parts[:depth]) if len(parts) > depth else ".".join(parts[:max(1, depth - 1)])


def optimised(graph):
    """(archc -O2's model of the graph, {the name of each layer -O2 fused into another:
    that other's name})."""
    from archc.optimize import optimize
    from archc.passes import preset

    model = archc.compile(graph, backend="cpu", seed=0)
    result = optimize(graph, preset(2), model.params)
    into = {name: group[0] for report in result.reports for group in report.groups
            for name in group[1:]}
    for name in into:  # a carrier fused into another in a later pass
        while into[name] in into:
            into[name] = into[into[name]]
    return archc.compile(result.graph, backend="cpu", params=result.params).eval(), into


def archc_blocks(model, x: np.ndarray, repeat: int, depth: int) -> tuple[dict, float]:
    """Block -> seconds of archc -O2's kernels (their medians over ``repeat`` passes), and
    the median time of a whole pass."""
    rounds: dict[str, list[float]] = defaultdict(list)
    for _ in range(repeat):  # one timed pass a profile: medians, as ONNX Runtime's
        sums: dict[str, float] = defaultdict(float)
        for name, entry in model.profile(x, repeat=1).items():
            sums[block_of(name, depth)] += entry["forward"]
        for name, seconds in sums.items():
            rounds[name].append(seconds)
    blocks = {name: statistics.median(seconds) for name, seconds in rounds.items()}
    model.predict(x)
    passes = []
    for _ in range(repeat):
        start = time.perf_counter()
        model.predict(x)
        passes.append(time.perf_counter() - start)
    return blocks, statistics.median(passes)


def ort_blocks(path: str, x: np.ndarray, repeat: int, depth: int, threads: int,
               folder: str, into: dict) -> tuple[dict, float]:
    """Block -> seconds of ONNX Runtime's node kernels (medians over ``repeat`` runs, from
    its profiler; a node named after a layer in ``into`` counts as that layer's carrier),
    and the median time of a whole run."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(folder) / "ort")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    for _ in range(2):
        session.run(None, feed)
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        session.run(None, feed)
        runs.append(time.perf_counter() - start)
    nodes: dict[str, list[float]] = defaultdict(list)
    for event in json.loads(Path(session.end_profiling()).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            nodes[event["name"].removesuffix("_kernel_time")].append(event["dur"] * 1e-6)
    blocks: dict[str, float] = defaultdict(float)
    for name, durations in nodes.items():
        for suffix in ORT_SUFFIXES:
            name = name.removesuffix(suffix)
        blocks[block_of(into.get(name, name), depth)] += statistics.median(durations[-repeat:])
    return blocks, statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("network", help="a spec in specs/ (without .yaml) or a spec's path")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--depth", type=int, default=2, help="name parts that make a block")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a variable of the spec")
    parser.add_argument("--top", type=int, default=0, help="print only the K worst blocks")
    args = parser.parse_args()
    import numba

    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    spec = Path(args.network)
    if not spec.exists():
        spec = ROOT / "specs" / f"{args.network}.yaml"
    graph = archc.load(spec, **parse_overrides(args.set))
    x = np.random.default_rng(0).standard_normal(
        (args.batch,) + tuple(graph[graph.inputs[0]].shape)).astype(np.float32)
    model, into = optimised(graph)
    with tempfile.TemporaryDirectory() as folder:
        theirs, their_pass = ort_blocks(onnx_file(graph, folder), x, args.repeat, args.depth,
                                        args.threads, folder, into)
    ours, our_pass = archc_blocks(model, x, args.repeat, args.depth)
    print(f"{graph.name}, batch {args.batch}, {args.threads} threads; BLAS: {blas_kernel()}; "
          f"a pass: archc -O2 {our_pass * 1e3:.2f} ms, ONNX Runtime {their_pass * 1e3:.2f} ms "
          f"({our_pass / their_pass:.2f}x); kernels by block, medians of {args.repeat}, us")
    print("| block | archc -O2 | ONNX Runtime | ratio | archc loses |")
    print("|---|---:|---:|---:|---:|")
    names = sorted(set(ours) | set(theirs), key=lambda b: theirs.get(b, 0) - ours.get(b, 0))
    for name in names[:args.top or None]:
        a, b = ours.get(name, 0.0) * 1e6, theirs.get(name, 0.0) * 1e6
        ratio = f"{a / b:.2f}x" if a and b else "-"
        print(f"| {name} | {a:.0f} | {b:.0f} | {ratio} | {a - b:.0f} |")
    a, b = sum(ours.values()) * 1e6, sum(theirs.values()) * 1e6
    print(f"| total | {a:.0f} | {b:.0f} | {a / b:.2f}x | {a - b:.0f} |")


if __name__ == "__main__":
    main()
