"""Memory the CPU kernels free stays with the process, for the next pass to reuse.

Every pass allocates its activations afresh (Numba's kernels return new arrays). glibc
hands a large block back to the kernel when it is freed and maps a new one for the next
request: each pass then page-faults and the kernel zeroes every page of every large
activation again (a ResNet-20 pass at batch 128 spent a quarter of its CPU time in the
kernel doing that; ResNet-18 at batch 8, 12%). Raising glibc's thresholds keeps freed
blocks in the heap, as the inference engines' arenas keep theirs: no page faults after
the first pass, at the price of the process keeping its high-water mark of memory.
Blocks over 32 MB (glibc's largest threshold) would still be mapped and unmapped (the
expansion of MobileNetV2's second stage at batch 8 is 38.5 MB: 12.4 ms for a 1x1 conv
of 2.5 ms of arithmetic), so ``mmap`` is switched off for malloc altogether: every
block comes from the heap and goes back to it.

``ARCHC_MALLOC=system`` leaves the allocator as it is. Nothing happens on a C library
without ``mallopt`` (macOS, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
MMAP_THRESHOLD = 32 << 20  # glibc's maximum on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1 << 40

_done: list[bool] = []


def keep_freed_memory() -> bool:
    """Set glibc's thresholds once per process; True if they are set."""
    if _done:
        return _done[0]
    ok = False
    if os.environ.get("ARCHC_MALLOC", "").lower() != "system":
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c"))
            mallopt = libc.mallopt
        except (OSError, AttributeError, TypeError):
            mallopt = None
        if mallopt is not None:
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
                mallopt(M_TRIM_THRESHOLD, min(TRIM_THRESHOLD, 2**31 - 1))) and bool(
                mallopt(M_MMAP_MAX, 0))
    _done.append(ok)
    return ok
