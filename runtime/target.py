"""What Numba compiles archc's kernels for: this machine's CPU, with its full vector width.

LLVM tunes code for most of Intel's AVX-512 processors to *prefer 256-bit vectors* (a
guard against the clock drop that 512-bit instructions cost on early parts), whatever
the CPU offers. Its vectoriser then fills ymm registers, and a register tile sized for 16
zmm registers of sums (conv_direct's 8 channels x 32 positions) needs 32 ymm ones and
spills. Measured on a 2-core AVX-512 machine (LLVM named it rocketlake): a 128x64x8x8 3x3
conv in 8 x 32 tiles took 8.7 ms with LLVM's default, 4.3 ms with 512-bit vectors;
ResNet-18 at batch 8 went from 171 to 121 ms (bench/bench_engines.py).

So before Numba makes its CPU target (on the first ``@njit`` of the process: ``runtime``
calls :func:`widen` on import, before any kernel module loads), archc asks for the host's
features with ``-prefer-256-bit`` where they include AVX-512. Numba keys its cache by
these features, so caches made either way never mix. ``NUMBA_CPU_FEATURES``, where a user
sets it (portable caches, or to keep LLVM's preference), is left as it is.
"""

from __future__ import annotations

import os
import sys

from llvmlite import binding as llvm

FULL_WIDTH = "-prefer-256-bit"


def _numba_config():
    from numba.core import config  # imported here: it imports yaml (runtime stays light)

    return config


def _target_made() -> bool:
    """Whether Numba has made its CPU target (and with it fixed the features it compiles
    for) in this process."""
    from numba.core.registry import cpu_target

    return "_toplevel_target_context" in vars(cpu_target)


def widen() -> bool:
    """Ask Numba for full-width vectors on an AVX-512 host, where it is still possible:
    NUMBA_CPU_FEATURES unset and no ``@njit`` function made yet. True where it did.
    Before Numba is imported this sets NUMBA_CPU_FEATURES (read by Numba's config, and by
    the compile helpers' processes alike); after, Numba's config itself."""
    if os.environ.get("NUMBA_CPU_FEATURES"):
        return False
    loaded = "numba.core.config" in sys.modules
    if loaded and (_numba_config().CPU_FEATURES is not None or _target_made()):
        return False
    host = llvm.get_host_cpu_features().flatten()
    if "+avx512f" not in host.split(","):
        return False
    if loaded:
        _numba_config().CPU_FEATURES = f"{host},{FULL_WIDTH}"
    else:
        os.environ["NUMBA_CPU_FEATURES"] = f"{host},{FULL_WIDTH}"
    return True


def features() -> set[str]:
    """The features Numba compiles for, as a set of '+name' and '-name' entries
    (NUMBA_CPU_FEATURES or what widen set, else LLVM's reading of the host)."""
    flat = _numba_config().CPU_FEATURES or llvm.get_host_cpu_features().flatten()
    return {f.strip() for f in flat.split(",") if f.strip()}


def vector_bits() -> int:
    """The width of the vectors LLVM's vectoriser fills: 512 with AVX-512 and the
    preference lifted, 256 with AVX (or AVX-512 under LLVM's preference), else 128."""
    have = features()
    if "+avx512f" in have and FULL_WIDTH in have:
        return 512
    if "+avx" in have:
        return 256
    return 128
