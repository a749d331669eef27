"""A caching device allocator, plugged into numba-cuda through its External Memory
Management (EMM) interface: device memory that Python frees goes back to a pool, by block
size, and is handed out again. A training step asks for the same sizes every time, so
after the first steps it takes every temporary from the pool: no ``cuMemAlloc`` (which
costs microseconds to milliseconds) and no ``cuMemFree`` (which waits for the whole
device) while it runs.

Reusing a block at once is safe because archc runs everything in the legacy default
stream: the work that used a freed block is queued before any work that uses it again.

``ARCHC_CUDA_ALLOCATOR=numba`` keeps numba-cuda's own allocator (a cuMemAlloc per array, frees
batched); so does a ``NUMBA_CUDA_MEMORY_MANAGER`` the user set (RMM's, for example). The
pool is installed before archc's first device allocation, for the contexts created after.
"""

from __future__ import annotations

import gc
import os
import weakref

GRANULE = 512  # bytes: blocks up to SMALL are multiples of it
SMALL = 1 << 20
CHOICES = ("pool", "numba")


def block_size(size: int) -> int:
    """The size of the block a request of ``size`` bytes gets: a multiple of 512 bytes up
    to 1 MiB; above, rounded up to an eighth of its power of two (at most 12.5% more),
    so requests that differ a little share blocks.

    Examples
    --------
    >>> block_size(1), block_size(512), block_size(513), block_size((1 << 20) + 1)
    (512, 512, 1024, 1179648)
    """
    if size <= SMALL:
        return max(1, -(-size // GRANULE)) * GRANULE
    step = 1 << (size.bit_length() - 4)
    return -(-size // step) * step


class Pool:
    """Blocks by size: ``take`` hands out a cached block of the request's block size or
    asks ``allocate`` for a new one (on ``MemoryError``: every cached block freed, the
    garbage collected, once more); ``give`` takes one back; ``release`` frees the cached
    ones. ``allocate(nbytes) -> address`` and ``free(address)`` are the driver's."""

    def __init__(self, allocate, free):
        self._allocate, self._free = allocate, free
        self._cached: dict[int, list[int]] = {}
        self.driver_allocations = self.reused = 0
        self.in_use_bytes = self.cached_bytes = self.peak_bytes = 0

    def take(self, size: int) -> tuple[int, int]:
        """(address, block size) of a block for ``size`` bytes."""
        block = block_size(size)
        free = self._cached.get(block)
        if free:
            address = free.pop()
            self.cached_bytes -= block
            self.reused += 1
        else:
            try:
                address = self._allocate(block)
            except MemoryError:  # what is cached may make room: free it and try again
                gc.collect()  # device arrays held only by reference cycles come back
                self.release()
                address = self._allocate(block)
            self.driver_allocations += 1
        self.in_use_bytes += block
        self.peak_bytes = max(self.peak_bytes, self.in_use_bytes + self.cached_bytes)
        return address, block

    def give(self, address: int, block: int) -> None:
        self._cached.setdefault(block, []).append(address)
        self.in_use_bytes -= block
        self.cached_bytes += block

    def release(self) -> None:
        """Free every cached block (blocks in use stay theirs)."""
        for blocks in self._cached.values():
            for address in blocks:
                self._free(address)
        self._cached.clear()
        self.cached_bytes = 0

    def stats(self) -> dict:
        return {"driver_allocations": self.driver_allocations, "reused": self.reused,
                "in_use_bytes": self.in_use_bytes, "cached_bytes": self.cached_bytes,
                "peak_bytes": self.peak_bytes}


# --------------------------------------------------------------------------- numba-cuda
def _driver():
    from numba.cuda.cudadrv import driver
    return driver


def _allocate(nbytes: int) -> int:
    """cuMemAlloc; MemoryError when the device is out of memory."""
    drv = _driver()
    try:
        return int(drv.driver.cuMemAlloc(nbytes))
    except drv.CudaAPIError as exc:
        if exc.code == drv.binding.CUresult.CUDA_ERROR_OUT_OF_MEMORY:
            raise MemoryError(f"the GPU is out of memory ({nbytes:,} bytes asked)") from exc
        raise


def _free(address: int) -> None:
    drv = _driver()
    drv.driver.cuCtxSynchronize()  # nothing queued may still use it
    drv.driver.cuMemFree(drv.binding.CUdeviceptr(address))


def manager_class():
    """The EMM plugin class (numba-cuda's driver imported on first use)."""
    drv = _driver()

    class CachingMemoryManager(drv.GetIpcHandleMixin, drv.HostOnlyCUDAMemoryManager):
        """numba-cuda's device allocations through a :class:`Pool`."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # the module's functions looked up at each call (the tests stand in for them)
            self.pool = Pool(lambda n: _allocate(n), lambda a: _free(a))

        def initialize(self):
            pass

        def memalloc(self, size):
            address, block = self.pool.take(size)
            pool = self.pool

            def finalizer():  # back to the pool, not to the driver
                pool.give(address, block)

            return drv.MemoryPointer(weakref.proxy(self.context),
                                     drv.binding.CUdeviceptr(address), size,
                                     finalizer=finalizer)

        def get_memory_info(self):
            free, total = drv.driver.cuMemGetInfo()
            return drv.MemoryInfo(free=free, total=total)

        def reset(self):
            super().reset()
            self.pool.release()

        @property
        def interface_version(self):
            return 1

    return CachingMemoryManager


_INSTALLED: list = []


def install(choice: str | None = None) -> str:
    """Make numba-cuda allocate through the pool (unless ``ARCHC_CUDA_ALLOCATOR=numba`` or
    a ``NUMBA_CUDA_MEMORY_MANAGER`` of the user's); a line saying which allocator."""
    from runtime.backends.cuda import CudaUnavailable

    choice = (choice or os.environ.get("ARCHC_CUDA_ALLOCATOR") or "pool").strip().lower()
    if choice not in CHOICES:
        raise CudaUnavailable(f"ARCHC_CUDA_ALLOCATOR={choice!r} is not one of "
                              f"{', '.join(CHOICES)}")
    if choice == "numba":
        return "numba-cuda's allocator (ARCHC_CUDA_ALLOCATOR=numba)"
    drv = _driver()
    manager = drv.config.CUDA_MEMORY_MANAGER
    if manager != "default":
        return f"the memory manager NUMBA_CUDA_MEMORY_MANAGER names ({manager})"
    if not _INSTALLED:
        _INSTALLED.append(manager_class())
        drv.set_memory_manager(_INSTALLED[0])
    return "archc's caching pool"


def stats() -> dict | None:
    """The pool's counters in the current context, or None where it does not allocate."""
    from numba import cuda
    manager = getattr(cuda.current_context(), "memory_manager", None)  # none: simulated
    pool = getattr(manager, "pool", None)
    return pool.stats() if isinstance(pool, Pool) else None
