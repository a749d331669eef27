"""The one way the benchmarks time things: a warm-up call, then the median of repeats."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def median_time(fn: Callable[[], object], repeat: int, warmup: bool = True) -> float:
    """Median seconds of ``repeat`` calls of ``fn`` (after one untimed call)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
