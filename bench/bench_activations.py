"""Activations on the CPU, forward and backward: the Numba kernels against NumPy's
expressions (the reference backend), per activation, on a MobileNet-sized tensor. The
faster one is what runtime/backends/cpu uses; the ``used`` column says which it uses.

    .venv/bin/python bench/bench_activations.py [--repeat N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from runtime.backends.cpu import BACKWARD as CPU_BACKWARD  # noqa: E402
from runtime.backends.cpu import KERNELS as CPU_FORWARD  # noqa: E402
from runtime.backends.activations import FORMULAS, attributes_of  # noqa: E402
from runtime.backends.cpu.elementwise import activation_backward, activation_forward  # noqa: E402
from runtime.backends.reference import KERNELS as REF_FORWARD  # noqa: E402
from runtime.backends.reference_backward import BACKWARD as REF_BACKWARD  # noqa: E402
from runtime.context import KernelContext  # noqa: E402
from runtime.program import Op  # noqa: E402
from timing import median_time  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 192, 56, 56)).astype(np.float32)
    gy = rng.standard_normal(x.shape).astype(np.float32)
    print(f"tensor 8x192x56x56 float32, median of {args.repeat}")
    print(f"{'activation':<12} {'pass':<8} {'numba ms':>9} {'numpy ms':>9} {'ratio':>6}  used")
    for formula in FORMULAS:
        name, kind, attrs = formula.name, formula.layer, attributes_of(formula, 0.01)
        op = Op(name="y", kind=kind, attrs=attrs, inputs=("x",), output="y", params={},
                in_shapes=(x.shape[1:],),
                out_shape=x.shape[1:])
        y = REF_FORWARD[kind](op, [x], {}, KernelContext())
        cases = [("forward", lambda: activation_forward(op, [x], {}, KernelContext()),
                  lambda: REF_FORWARD[kind](op, [x], {}, KernelContext()), CPU_FORWARD, REF_FORWARD),
                 ("backward", lambda: activation_backward(op, [x], y, gy, {}, KernelContext()),
                  lambda: REF_BACKWARD[kind](op, [x], y, gy, {}, KernelContext()), CPU_BACKWARD,
                  REF_BACKWARD)]
        for label, ours, numpy_, table, reference in cases:
            a = median_time(ours, args.repeat)
            b = median_time(numpy_, 1 if kind == "gelu" else args.repeat)
            used = "numpy" if table[kind] is reference[kind] else "numba"
            print(f"{name:<12} {label:<8} {a * 1e3:>9.1f} {b * 1e3:>9.1f} {a / b:>5.2f}x  {used}")


if __name__ == "__main__":
    main()
