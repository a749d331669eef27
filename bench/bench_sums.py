"""Which accumulator a GPU reduction needs when its terms cancel (issue 25): the order in
which the CUDA backend's per-channel reduction (``channel_partials_kernel``: a channel's
values split into slices, one block of 256 threads per slice, each thread adding every
256th value of its slice, a shared-memory tree over the block's threads, then the slices'
partial sums in order) adds a channel's values, emulated exactly in NumPy for several
accumulators, and each one's error against the exact sum (``math.fsum``), next to the
CPU backend's order (float32 sums in 16 vector lanes, into float64 totals every 4,096
values).

    python bench/bench_sums.py [--trials 20]

Accuracy, not speed: every operation is rounded as the GPU rounds it (NumPy float32
arithmetic rounds each addition, as the kernels do without fastmath).
"""

from __future__ import annotations

import argparse
import math

import numpy as np

THREADS = 256  # a reduction block's threads (kernels.ELEMENTWISE_BLOCK on a GPU)
LANES, CPU_BLOCK = 16, 4096  # the CPU's vector lanes and float64 flush interval


def _tree(sums: np.ndarray) -> np.ndarray:
    """A block's shared-memory tree: halves added until one value is left."""
    while len(sums) > 1:
        half = len(sums) // 2
        sums = sums[:half] + sums[half:]
    return sums[0]


def _threads(chunk: np.ndarray, dtype, compensated: bool):
    """Thread t's sum of chunk[t], chunk[t + 256], ... in order (Kahan-compensated where
    asked), for every thread at once: one row of 256 values per step."""
    rows = np.zeros((-(-len(chunk) // THREADS), THREADS), np.float32)
    rows.flat[:len(chunk)] = chunk
    total = np.zeros(THREADS, dtype)
    carry = np.zeros(THREADS, dtype)
    for row in rows.astype(dtype):
        if compensated:
            y = row - carry
            t = total + y
            carry = (t - total) - y
            total = t
        else:
            total = total + row
    return total


def gpu_sum(values: np.ndarray, dtype, chunks: int, compensated: bool = False) -> float:
    """The sum the CUDA backend's reduction computes with accumulator ``dtype``."""
    total = dtype(0)
    n = len(values)
    for k in range(chunks):
        chunk = values[k * n // chunks:(k + 1) * n // chunks]
        total = total + _tree(_threads(chunk, dtype, compensated))
    return float(total)


def cpu_sum(values: np.ndarray) -> float:
    """The CPU backend's order: float32 lanes over blocks of 4,096, each block's lanes
    added into a float64 total."""
    total = 0.0
    for start in range(0, len(values), CPU_BLOCK):
        block = values[start:start + CPU_BLOCK]
        lanes = np.zeros((-(-len(block) // LANES), LANES), np.float32)
        lanes.flat[:len(block)] = block
        acc = np.zeros(LANES, np.float32)
        for row in lanes:
            acc = acc + row
        total += float(_tree(acc))
    return total


def chunks_for(channels: int, count: int) -> int:
    """kernels.reduction_chunks on a GPU: about 1,024 blocks in all, 8+ values a thread."""
    return max(1, min(max(1, 1024 // channels), count // (THREADS * 8)))


def _centred(z: np.ndarray) -> np.ndarray:
    """Values whose exact sum is only float32's rounding: what a conv's bias gradient is
    when a batch norm follows it (the norm's input gradient sums to zero per channel)."""
    z = z.astype(np.float32)
    return z - np.float32(z.astype(np.float64).mean())


CASES = {  # name: (channels, values per channel, how to draw one channel's values)
    "bias gradient, 64ch 56x56 b64 (sum cancels)":
        (64, 64 * 56 * 56, lambda rng, n: rng.standard_normal(n)),
    "bias gradient, 512ch 7x7 b64 (sum cancels)":
        (512, 64 * 7 * 7, lambda rng, n: rng.standard_normal(n)),
    "bias gradient into a batch norm, 64ch 56x56 b64 (sums to ~0)":
        (64, 64 * 56 * 56, lambda rng, n: _centred(rng.standard_normal(n))),
    "batch-norm mean, 64ch 112x112 b64 (offset 3)":
        (64, 64 * 112 * 112, lambda rng, n: 3 + rng.standard_normal(n)),
    "squared deviations, 64ch 56x56 b64":
        (64, 64 * 56 * 56, lambda rng, n: rng.standard_normal(n) ** 2),
}

STRATEGIES = {
    "float32, one block a channel": lambda v, chunks: gpu_sum(v, np.float32, 1),
    "float32, split among blocks": lambda v, chunks: gpu_sum(v, np.float32, chunks),
    "float32 Kahan, split": lambda v, chunks: gpu_sum(v, np.float32, chunks, True),
    "float64 accumulators (archc)": lambda v, chunks: gpu_sum(v, np.float64, chunks),
    "CPU backend's order": lambda v, chunks: cpu_sum(v),
}


def measure(trials: int, seed: int = 0) -> dict:
    """{case: {strategy: (median, largest) error relative to |exact sum|, largest error
    relative to the sum of |values|}}; one channel per trial."""
    rng = np.random.default_rng(seed)
    out = {}
    for case, (channels, n, draw) in CASES.items():
        errors: dict[str, list] = {name: [] for name in STRATEGIES}
        chunks = chunks_for(channels, n)
        for _ in range(trials):
            values = draw(rng, n).astype(np.float32)
            exact = math.fsum(values.astype(np.float64))
            scale = math.fsum(np.abs(values.astype(np.float64)))
            for name, strategy in STRATEGIES.items():
                error = abs(strategy(values, chunks) - exact)
                errors[name].append((error / abs(exact), error / scale))
        out[case] = {name: (float(np.median([r for r, _ in e])), max(r for r, _ in e),
                            max(s for _, s in e)) for name, e in errors.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="channels drawn per case")
    args = parser.parse_args()
    results = measure(args.trials)
    width = max(len(name) for name in STRATEGIES)
    print(f"error of a channel's sum over {args.trials} channels: relative to the exact "
          f"sum (median, largest), and the largest relative to the sum of the values' "
          f"magnitudes (float32's own rounding: {np.finfo(np.float32).eps / 2:.1e})")
    for case, rows in results.items():
        print(f"\n{case}")
        print(f"  {'':<{width}}  {'median':>9}  {'largest':>9}  {'of |x|':>9}  vs the CPU")
        cpu = rows["CPU backend's order"][1]
        for name, (median, largest, scaled) in rows.items():
            print(f"  {name:<{width}}  {median:9.1e}  {largest:9.1e}  {scaled:9.1e}  "
                  f"{largest / cpu if cpu else float('inf'):8.2g}x")


if __name__ == "__main__":
    main()
