"""archc's runtime against PyTorch eager on the CPU: forward and forward+backward, same
process, median of repeated runs, ratios printed (above 1: archc is slower), achieved
GFLOP/s next to the sgemm rate measured in the same run, the BLAS kernel that ran.

    .venv/bin/python bench/bench_runtime.py [--repeat N] [--backend cpu|reference] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "oracles"))  # the PyTorch twins
sys.path.insert(0, str(ROOT / "tests" / "support"))
sys.path.insert(0, str(ROOT / "bench"))

import archc  # noqa: E402
from timing import median_time  # noqa: E402
import torch_twins  # noqa: E402
from archc.analysis import analyse  # noqa: E402

ROWS = [("lenet5", {}, 256), ("resnet20", {}, 128), ("resnet18", {}, 8), ("mobilenet_v2", {}, 8)]
START = """
import time, numpy as np
start = time.perf_counter()
import archc
model = archc.compile(archc.load({spec!r}), backend="cpu")
model(np.zeros((1,) + next(iter(model.program.inputs.values())), np.float32))
print(time.perf_counter() - start)
"""


def start_times(spec: str) -> tuple[float, float]:
    """Seconds from `import archc` to the first result in a fresh process: with an empty
    Numba cache (everything compiles) and then with the cache that run left."""
    import os
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        code = START.format(spec=str(ROOT / "specs" / f"{spec}.yaml"))
        runs = [float(subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                     capture_output=True, text=True).stdout) for _ in range(2)]
    return runs[0], runs[1]
QUICK = [("lenet5", {}, 8)]


def sgemm_rate(n: int = 1024) -> float:
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    a @ a
    return 2 * n**3 / median_time(lambda: a @ a, 5) / 1e9


def blas_kernel() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (threadpoolctl not installed)"
    info = [f"{Path(i['filepath']).name} ({i['internal_api']} {i.get('architecture', '?')})"
            for i in threadpool_info() if i["user_api"] == "blas"]
    return ", ".join(info) or "none found"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--backend", default="cpu", choices=["cpu", "reference"])
    parser.add_argument("--quick", action="store_true", help="one tiny row (a smoke test)")
    parser.add_argument("--only", nargs="+", metavar="NETWORK", help="run these rows only")
    parser.add_argument("--start", action="store_true",
                        help="also time a fresh process to resnet18's first result, with the "
                        "Numba cache cold and warm")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.backend == "cpu":
        import runtime.backends.cpu  # noqa: F401  (loads the BLAS its kernels call, to report it)
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), archc "
          f"{archc.__version__} backend {args.backend}; BLAS: {blas_kernel()}; "
          f"sgemm {sgemm_rate():.0f} GFLOP/s; median of {args.repeat}")
    print(f"{'network':<13} {'batch':>5} {'pass':<8} {'archc ms':>9} {'torch ms':>9} "
          f"{'ratio':>6} {'archc GFLOP/s':>14}")
    rows = QUICK if args.quick else ROWS
    if args.only:
        unknown = set(args.only) - {spec for spec, _, _ in rows}
        if unknown:
            parser.error(f"no row named {', '.join(sorted(unknown))}")
        rows = [row for row in rows if row[0] in args.only]
    for spec, variables, batch in rows:
        graph = archc.load(ROOT / "specs" / f"{spec}.yaml", **variables)
        flops = analyse(graph, batch=batch).totals["flops"]
        start = time.perf_counter()
        model = archc.compile(graph, backend=args.backend).train()
        shape = next(iter(model.program.inputs.values()))
        x = np.random.default_rng(0).standard_normal((batch,) + shape).astype(np.float32)
        y = model(x)
        first = time.perf_counter() - start
        gy = np.ones_like(y)
        twin = torch_twins.TorchGraph(graph).train()
        tx = torch.as_tensor(x)
        (out_name,) = graph.outputs.values()

        def torch_forward():
            with torch.no_grad():
                twin(tx)

        def torch_both():
            twin.zero_grad()
            twin(tx.requires_grad_(True))[out_name].backward(torch.as_tensor(gy))

        def archc_both():
            model(x)
            model.backward(gy)

        rows = [("forward", lambda: model(x), torch_forward, flops),
                ("fwd+bwd", archc_both, torch_both, 3 * flops)]
        for label, ours, theirs, work in rows:
            a = median_time(ours, args.repeat)
            b = median_time(theirs, args.repeat)
            print(f"{spec:<13} {batch:>5} {label:<8} {a * 1e3:>9.1f} {b * 1e3:>9.1f} "
                  f"{a / b:>5.2f}x {work / a / 1e9:>14.1f}")
        print(f"{'':<13} {'':>5} first call (compile, or load the Numba cache): {first:.2f} s")
    if args.start:
        cold, warm = start_times("resnet18")
        print(f"fresh process to resnet18's first result: {cold:.1f} s with the Numba cache "
              f"cold, {warm:.1f} s warm")


if __name__ == "__main__":
    main()
