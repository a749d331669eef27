"""The time each CUDA kernel and each library GEMM takes while a block of code runs: the
level under a layer profile, to see which kernels a layer's time goes to (im2col, the
GEMM, the epilogue, a reduction) and so which to tune.

While :func:`kernel_times` is active, every kernel launch (numba-cuda's launch entry, so
every kernel of the backend, whatever module launches it) and every cuBLAS GEMM is
bracketed by two marks of the backend's clock (:class:`EventClock`: CUDA events
in the default stream on a GPU, so a kernel's time is its own and not its launch's; the
host's clock under the simulator, which runs kernels synchronously). The launch entry is
put back on leaving. GEMMs are told apart by shape: ``cuBLAS sgemm 64x3136x576`` is C
(64 x 3136) with inner dimension 576, ``x64`` a strided batch of 64 such products.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

from runtime.backends.cuda import blas
from runtime.backends.cuda import kernels as K

cuda = K.cuda


class EventClock:
    """Profiling marks as CUDA events in the default stream: the time between two is the
    GPU's, whatever the host did meanwhile. The simulator's events carry no time, so
    there the host's clock stands in (after waiting for the simulated device)."""

    name = "host clock (simulated GPU)" if K.SIMULATED else "CUDA events"

    def mark(self):
        if K.SIMULATED:
            return time.perf_counter()
        event = cuda.event()
        event.record()
        return event

    def sync(self) -> None:
        cuda.synchronize()

    def seconds(self, start, end) -> float:
        if K.SIMULATED:
            return end - start
        return cuda.event_elapsed_time(start, end) / 1e3


@dataclass
class KernelTimes:
    """Marks recorded under :func:`kernel_times`, turned into seconds by :meth:`rows`."""

    clock: object
    marks: list = field(default_factory=list)  # (name, start mark, end mark)

    def rows(self, passes: int = 1) -> list[tuple[str, float, float]]:
        """(kernel, calls per pass, seconds per pass), the most time first, over
        ``passes`` passes (the device waited for first)."""
        self.clock.sync()
        totals: dict[str, list] = {}
        for name, start, end in self.marks:
            entry = totals.setdefault(name, [0, 0.0])
            entry[0] += 1
            entry[1] += self.clock.seconds(start, end)
        rows = [(name, calls / passes, seconds / passes)
                for name, (calls, seconds) in totals.items()]
        return sorted(rows, key=lambda row: (-row[2], row[0]))


def _gemm_name(a, b, c, trans_a: bool) -> str:
    m, n = tuple(c.shape)[-2:]
    k = tuple(a.shape)[-2 if trans_a else -1]
    batch = f" x{c.shape[0]}" if c.ndim == 3 and c.shape[0] > 1 else ""
    return f"cuBLAS sgemm {m}x{n}x{k}{batch}"


def _launch_entry():
    """(the class whose ``__call__`` launches a configured kernel, a kernel's name from
    it): numba-cuda's launch configuration, or the simulator's kernel."""
    if K.SIMULATED:
        from numba.cuda.simulator import kernel as simulated

        def name(launch):
            # a device function called from a kernel also goes through __call__
            if launch._device or simulated._kernel_context:
                return None
            return launch.fn.__name__
        return simulated.FakeCUDAKernel, name
    from numba.cuda.dispatcher import _LaunchConfiguration
    return _LaunchConfiguration, lambda launch: launch.dispatcher.py_func.__name__


@contextlib.contextmanager
def launches_hooked(hook):
    """Until the block ends, every kernel launch and every cuBLAS GEMM goes through
    ``hook(name, run)``: ``run()`` does the real launch or product, and a hook that never
    calls it stubs it out (``bench/bench_cuda_launches.py`` counts launches that way). The
    launch entry and the GEMM are put back on leaving."""
    entry, name_of = _launch_entry()
    launch, gemm = entry.__call__, blas.Cublas.gemm

    def hooked_launch(self, *args):
        name = name_of(self)
        if name is None:
            return launch(self, *args)
        return hook(name, lambda: launch(self, *args))

    def hooked_gemm(self, a, b, c, trans_a=False, trans_b=False):
        hook(_gemm_name(a, b, c, trans_a), lambda: gemm(self, a, b, c, trans_a, trans_b))

    entry.__call__, blas.Cublas.gemm = hooked_launch, hooked_gemm
    try:
        yield
    finally:
        entry.__call__, blas.Cublas.gemm = launch, gemm


@contextlib.contextmanager
def kernel_times(clock):
    """Time every kernel launch and cuBLAS GEMM until the block ends: yields the
    :class:`KernelTimes` that fills meanwhile."""
    times = KernelTimes(clock)

    def timed(name, run):
        start = clock.mark()
        out = run()
        times.marks.append((name, start, clock.mark()))
        return out

    with launches_hooked(timed):
        yield times
