"""Device profiles for the roofline estimate: peak FP32 rate and memory bandwidth.

A node's time is ``max(flops / peak, bytes / bandwidth)`` (Williams, Waterman and
Patterson, "Roofline", CACM 2009); it is compute-bound when the first term is larger.
Built-in GPU profiles use NVIDIA's published numbers; the ``cpu`` profile is measured
once on this machine (a float32 matrix multiply and an array copy through NumPy) and
cached, so the estimate describes the machine the user has.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from archc.errors import UsageError, did_you_mean


@dataclass(frozen=True)
class Device:
    """A device profile: ``peak_flops`` in FLOP/s, ``bandwidth`` in bytes/s."""

    name: str
    peak_flops: float
    bandwidth: float
    source: str

    def time(self, flops: float, bytes_moved: float) -> tuple[float, str]:
        """(seconds, 'compute' | 'memory') for one node."""
        compute, memory = flops / self.peak_flops, bytes_moved / self.bandwidth
        return max(compute, memory), ("compute" if compute >= memory else "memory")

    @property
    def ridge(self) -> float:
        """Arithmetic intensity (FLOP/byte) where the two limits meet."""
        return self.peak_flops / self.bandwidth


BUILT_IN = {
    "h100": Device("h100", 66.9e12, 3.35e12,
                   "NVIDIA H100 SXM5 datasheet: 67 TFLOPS FP32 (non-tensor), 3.35 TB/s HBM3"),
    "h200": Device("h200", 66.9e12, 4.8e12,
                   "NVIDIA H200 SXM datasheet: 67 TFLOPS FP32 (non-tensor), 4.8 TB/s HBM3e"),
}


def cache_dir() -> Path:
    root = os.environ.get("ARCHC_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "archc")
    return Path(root)


def measure_cpu(size: int = 1024, copy_mb: int = 64, repeats: int = 5) -> Device:
    """Measure this machine: best-of-``repeats`` float32 matmul rate and copy bandwidth."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    peak = 2 * size**3 / best
    src = np.ones(copy_mb * 2**20 // 4, dtype=np.float32)
    dst = np.empty_like(src)
    best = min(_timed(lambda: np.copyto(dst, src)) for _ in range(repeats))
    bandwidth = 2 * src.nbytes / best  # read + write
    return Device("cpu", peak, bandwidth,
                  f"measured on {platform.node() or 'this machine'} ({os.cpu_count()} cores, "
                  f"numpy {np.__version__}): {size}x{size} float32 matmul and a "
                  f"{copy_mb} MiB copy")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def get_device(name: str, recalibrate: bool = False) -> Device:
    """A built-in profile, or ``cpu`` (measured on first use, then read from the cache).

    Raises
    ------
    UsageError
        For an unknown device name.
    """
    key = name.lower()
    if key in BUILT_IN:
        return BUILT_IN[key]
    if key != "cpu":
        raise UsageError(f"unknown device '{name}'",
                        did_you_mean(key, ["cpu", *BUILT_IN]) or
                        f"devices: cpu (measured here), {', '.join(BUILT_IN)}")
    path = cache_dir() / "device-cpu.json"
    if not recalibrate and path.is_file():
        try:
            return Device(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            pass  # a damaged cache is measured again and rewritten
    device = measure_cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(device)))
    tmp.replace(path)  # atomic: a reader never sees half a file
    return device
