"""Activation gradients on the CPU: the one-pass Numba kernel against NumPy's expression
(the reference backward), per activation, on a MobileNet-sized tensor; the faster one is
what runtime/backends/cpu uses.

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
from timing import median_time  # noqa: E402
from runtime.backends.cpu.elementwise import CODES, activation_backward_kernel  # noqa: E402
from runtime.backends.reference import ACTIVATIONS  # noqa: E402
from runtime.backends.reference_backward import BACKWARD as REF_BACKWARD  # noqa: E402
from runtime.backends.reference_backward import DERIVATIVES  # noqa: E402




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 192, 56, 56)).astype(np.float32)
    gy = rng.standard_normal(x.shape).astype(np.float32)
    attrs = {"negative_slope": 0.01, "approximate": "none"}
    print(f"tensor 8x192x56x56 float32, median of {args.repeat}")
    print(f"{'activation':<12} {'numba ms':>9} {'numpy ms':>9} {'ratio':>6}  used")
    for name, code in CODES.items():
        y = ACTIVATIONS[name](x, attrs).astype(np.float32)
        numba = median_time(lambda: activation_backward_kernel(x, y, gy, code, 0.01), args.repeat)
        numpy = median_time(lambda: gy * DERIVATIVES[name](x, y, attrs).astype(np.float32), args.repeat)
        used = "numba" if CPU_BACKWARD[name] is not REF_BACKWARD[name] else "numpy"
        print(f"{name:<12} {numba * 1e3:>9.1f} {numpy * 1e3:>9.1f} {numba / numpy:>5.2f}x  {used}")


if __name__ == "__main__":
    main()
