"""Inverted-residual chains (runtime/backends/cpu/conv_chain.py) against the same ops run
one by one: each network at -O2, inference (``model.predict``), the two ways interleaved
round by round in one process and the median taken, and the peak of activation memory
alive at once (``model.last_peak_bytes``: a chain's inner maps never exist); every chain
the program has is forced on (``conv_chain.worth`` set aside), so that the rows say where
the rule in conv_chain.py should let them run. Ratios below 1: the chains are faster.

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


def row(spec: str, batch: int, repeat: int) -> str:
    model = compiled(spec)
    shape = next(iter(model.program.inputs.values()))
    x = np.random.default_rng(0).standard_normal((batch,) + shape).astype(np.float32)

    peaks = {}

    def run(chains: bool) -> float:
        with patch.object(cpu, "CHAINS", chains):
            model._chains.clear()
            start = time.perf_counter()
            model.predict(x)
            spent = time.perf_counter() - start
        peaks[chains] = model.last_peak_bytes
        return spent

    with patch.object(conv_chain, "worth", lambda *args: True):
        for chains in (True, False, True, False):  # compile, warm up
            run(chains)
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(repeat):
            for chains in (True, False):
                times[chains].append(run(chains))
        count = len(conv_chain.find_chains(model.program, batch, np.float32))
    found = conv_chain.find_chains(model.program, batch, np.float32)  # the rule's
    with_, without = (statistics.median(times[c]) * 1e3 for c in (True, False))
    runs = len(found)
    chained = sum(len(chain.ops) for chain in found)
    return (f"| {spec} | {batch} | {count} | {with_:.2f} | {without:.2f} | "
            f"{with_ / without:.2f}x | {peaks[True] / 1e6:.1f} | {peaks[False] / 1e6:.1f} | "
            f"{runs} ({chained} ops) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--only", nargs="*", help="networks to run")
    args = parser.parse_args()
    import numba

    print(f"archc; {numba.get_num_threads()} threads; BLAS: {blas_kernel()}; median of "
          f"{args.repeat} interleaved rounds; ms")
    print("| network | batch | chains | chained | op by op | ratio | peak MB chained | "
          "peak MB op by op | the rule runs |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for spec, batch in ROWS:
        if args.only and spec not in args.only:
            continue
        print(row(spec, batch, args.repeat), flush=True)


if __name__ == "__main__":
    main()
