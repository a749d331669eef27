"""Inverted-residual chains (runtime/backends/cpu/conv_chain.py) against the same ops run
one by one: each network at -O2, inference (``model.predict``), interleaved round by round
in one process and the median taken, four ways: the ops one by one (with the layout plan,
runtime/backends/cpu/layout.py, where it applies), every chain forced on
(``conv_chain.worth`` set aside) with its rows on planes, every chain forced on with the
layout conv_chain.channels_last picks, and what the rule in conv_chain.py runs; with the
peak of activation memory alive at once (``model.last_peak_bytes``: a chain's inner maps
never exist). Ratios below 1: faster than the ops one by one.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python bench/bench_chains.py \
        [--repeat N] [--only mobilenet_v2 ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from unittest.mock import patch

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import archc  # noqa: E402
from bench_runtime import blas_kernel  # noqa: E402
from runtime.backends import cpu  # noqa: E402
from runtime.backends.cpu import conv_chain  # noqa: E402

ROWS = [("mobilenet_v2", 1), ("mobilenet_v2", 8), ("efficientnet", 1), ("efficientnet", 8)]


def compiled(spec: str):
    from archc.optimize import optimize
    from archc.passes import preset

    graph = archc.load(ROOT / "specs" / f"{spec}.yaml")
    model = archc.compile(graph, backend="cpu", seed=0)
    result = optimize(graph, preset(2), model.params)
    return archc.compile(result.graph, backend="cpu", params=result.params).eval()


WAYS = {  # (chains on, every chain forced on, conv_chain.CHANNELS_LAST)
    "op by op": (False, False, None),
    "every chain, planes": (True, True, False),
    "every chain": (True, True, None),
    "the rule's": (True, False, None),
}
RULE = "the rule's"


def row(spec: str, batch: int, repeat: int) -> str:
    model = compiled(spec)
    shape = next(iter(model.program.inputs.values()))
    x = np.random.default_rng(0).standard_normal((batch,) + shape).astype(np.float32)
    rule = conv_chain.worth
    peaks = {}

    def run(way: str) -> float:
        chains, forced, layout = WAYS[way]
        with patch.object(cpu, "CHAINS", chains), \
                patch.object(conv_chain, "worth", (lambda *args: True) if forced else rule), \
                patch.object(conv_chain, "CHANNELS_LAST", layout):
            model._chains.clear()
            model._layouts.clear()
            start = time.perf_counter()
            model.predict(x)
            spent = time.perf_counter() - start
        peaks[way] = model.last_peak_bytes
        return spent

    for _ in range(2):  # compile, warm up
        for way in WAYS:
            run(way)
    times: dict[str, list[float]] = {way: [] for way in WAYS}
    for _ in range(repeat):
        for way in WAYS:
            times[way].append(run(way))
    median = {way: statistics.median(spent) * 1e3 for way, spent in times.items()}
    alone = median["op by op"]
    with patch.object(conv_chain, "worth", lambda *args: True):
        count = len(conv_chain.find_chains(model.program, batch, np.float32))
    found = conv_chain.find_chains(model.program, batch, np.float32)  # the rule's
    chained = sum(len(chain.ops) for chain in found)
    last = sum(conv_chain.channels_last(chain) for chain in found)
    cells = " | ".join(f"{median[way]:.2f} ({median[way] / alone:.2f}x)" for way in WAYS
                       if way != "op by op")
    return (f"| {spec} | {batch} | {alone:.2f} | {cells} | {count} | "
            f"{len(found)} ({chained} ops, {last} channels-last) | "
            f"{peaks['op by op'] / 1e6:.1f} | {peaks[RULE] / 1e6:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--only", nargs="*", help="networks to run")
    args = parser.parse_args()
    import numba

    print(f"archc; {numba.get_num_threads()} threads; BLAS: {blas_kernel()}; median of "
          f"{args.repeat} interleaved rounds; ms")
    print("| network | batch | op by op | every chain, planes | every chain | the rule's | "
          "chains | the rule runs | peak MB op by op | peak MB the rule's |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for spec, batch in ROWS:
        if args.only and spec not in args.only:
            continue
        print(row(spec, batch, args.repeat), flush=True)


if __name__ == "__main__":
    main()
