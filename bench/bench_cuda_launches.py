"""How many kernels archc's CUDA backend launches for one training step and one inference
pass of a network, kernel by kernel, and how long archc's own Python takes between them,
without a GPU: under Numba's CUDA simulator with every kernel launch and library GEMM
stubbed out (counted, not run), so a full-size ResNet-18 at batch 64 takes seconds. The
GEMMs take the cuBLAS path, as on a GPU with nvmath-python.

Every launch costs the host numba-cuda's argument marshalling (tens of microseconds), so
a step's launch count times that cost is a floor under its time wherever the GPU's work
is short; `bench_cuda.py` measures the real queuing time on a GPU. This script is for
work on fusion away from one: fewer launches, and which kernels they are.

    .venv/bin/python bench/bench_cuda_launches.py [SPEC] [--batch N] [--set NAME=VALUE]...

The host times include the simulator's own allocations (NumPy arrays for device arrays:
large at batch 64), so they are an upper bound on archc's Python.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

os.environ["NUMBA_ENABLE_CUDASIM"] = "1"  # before numba loads: nothing here needs a GPU

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "support"))
sys.path.insert(0, str(ROOT / "bench"))

import archc  # noqa: E402
import emulated_cublas  # noqa: E402
from archc.spec import parse_overrides  # noqa: E402
from cuda_setup import inference_model, training_step  # noqa: E402
from runtime.backends.cuda import blas, kernels, timing  # noqa: E402


def count(fn) -> tuple[Counter, float]:
    """(launches by kernel, host seconds) of fn()'s second call (the first makes the
    optimiser's state and the plans) with every launch and GEMM stubbed: counted by the
    profiler's launch hook, never run."""
    launches: Counter = Counter()

    def stub(name, run):
        launches["cuBLAS" if name.startswith("cuBLAS") else name] += 1

    with timing.launches_hooked(stub):
        fn()
        launches.clear()
        start = time.perf_counter()
        fn()
        return launches, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", nargs="?", default=str(ROOT / "specs" / "resnet18.yaml"))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a spec variable (as archc's --set)")
    parser.add_argument("--top", type=int, default=12, help="kernels listed per pass")
    args = parser.parse_args()
    kernels._GEMM[:] = [(blas.Cublas(emulated_cublas, "cuBLAS (stubbed)"), "cuBLAS")]
    graph = archc.load(args.spec, **parse_overrides(args.set))
    # as written; optimised (batch norms folded, epilogues fused)
    models = {level: inference_model(graph, level) for level in (0, 2)}
    shape = next(iter(models[0].program.inputs.values()))
    x = kernels.to_device(np.zeros((args.batch,) + tuple(shape), np.float32))
    passes = {f"inference -O{level}": count(lambda: model.predict(x))
              for level, model in models.items()}
    step = training_step(graph, x, np.zeros(args.batch, np.int64))
    passes["training step (archc train's graph)"] = count(step)
    print(f"{graph.name}, batch {args.batch}: kernel launches per pass on the CUDA backend "
          f"(simulator, launches stubbed: nothing runs)")
    for label, (launches, host) in passes.items():
        print(f"\n{label}: {sum(launches.values())} launches ({launches['cuBLAS']} cuBLAS "
              f"calls); host {host * 1e3:.1f} ms")
        for name, n in launches.most_common(args.top):
            print(f"  {n:5d}  {name}")


if __name__ == "__main__":
    main()
