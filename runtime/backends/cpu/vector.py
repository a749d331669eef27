"""The host's vector unit, which the register-tiled kernels size their tiles by.

A register tile keeps its sums in vector registers: as many as fit in half the register
file, so that the loads and broadcast weights feeding them have registers too. That
depends on the machine: AVX-512 has 32 registers of 16 float32 lanes, AVX2 16 registers of
8 lanes. A tile sized for one spills on the other: the AVX-512 tiles (8 output channels x
32 positions, 16 zmm registers of sums) ran at 17-41 GFLOP/s on a 2-core AVX2 machine
(AMD EPYC, Zen), tiles of 4 x 16 (8 ymm registers) at 49-58 (bench/bench_conv.py).

The kernels take the tile's width as an argument (one compiled kernel serves every
geometry; the tests run each one on any machine) and Python picks it here, from the
width of the vectors LLVM fills with the features Numba compiles for (runtime/target.py:
512 bits on an AVX-512 host, where archc lifts LLVM's preference for 256).
"""

from __future__ import annotations

import os

from runtime import target
from runtime.errors import UsageError


def host_lanes() -> int:
    """float32 lanes of the vectors Numba's code fills on this host: 16 with AVX-512 at
    full width, 8 with AVX (or AVX-512 held to 256 bits), else 4 (SSE, NEON).
    ``ARCHC_VECTOR_LANES`` overrides it (a machine whose features LLVM misreads)."""
    forced = os.environ.get("ARCHC_VECTOR_LANES", "").strip()
    if forced:
        if forced not in ("4", "8", "16"):
            raise UsageError(f"ARCHC_VECTOR_LANES must be 4, 8 or 16, got '{forced[:40]}'",
                             hint="16 for AVX-512, 8 for AVX2, 4 for SSE or NEON; or unset "
                                  "it to read the machine's features")
        return int(forced)
    return target.vector_bits() // 32


LANES: int | None = None  # None until lanes() first reads the host (tests set it)


def lanes() -> int:
    """The host's float32 lanes per vector register (host_lanes, read once)."""
    global LANES
    if LANES is None:
        LANES = host_lanes()
    return LANES


# The kernels take their tile geometry as arguments, so one compiled kernel serves every
# geometry, and the tests run each on any machine by setting LANES.


def tile_width() -> int:
    """Output positions per register tile of the direct convs: two vectors (32 with
    AVX-512, 16 with AVX2 and narrower)."""
    return 32 if lanes() >= 16 else 16


def registers() -> int:
    """Vector registers the tiles may count on: 32 with AVX-512, else 16 (AVX2 and SSE
    have 16; NEON's 32 hold 4 lanes, so a 16-wide tile row takes 4 of them)."""
    return 32 if lanes() >= 16 else 16


def weight_grad_lanes() -> int:
    """16 with AVX-512, else 8: the direct weight gradient (conv_direct) then keeps its
    sums for two vectors of 16 output channels at once (18 of the 32 registers), else for
    one."""
    return 16 if lanes() >= 16 else 8
