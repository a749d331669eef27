"""A BLAS GEMM callable from Numba kernels: ``C = op(A) @ op(B) + beta * C`` on strided
row-major views, for float32 and float64.

NumPy's ``matmul`` cannot accumulate into its output (beta = 1) nor multiply views that
start at an offset without copying them first; a convolution done as one GEMM per filter
tap needs both. This calls the same ``?gemm`` that Numba's own ``np.dot`` calls (SciPy's
BLAS, reached through Numba's helper library by symbol name, so kernels using it stay in
the on-disk cache).
"""

from __future__ import annotations

import numba
import numba.np.linalg as _numba_linalg
import numpy as np
from numba import njit, prange, types
from threadpoolctl import ThreadpoolController

from runtime.config import PARALLEL

_numba_linalg.ensure_blas()  # imports scipy.linalg.cython_blas, or says scipy is missing

_xxgemm = types.ExternalFunction("numba_xxgemm", types.intc(
    types.char, types.char, types.char, types.intp, types.intp, types.intp,
    types.voidptr, types.voidptr, types.intp, types.voidptr, types.intp,
    types.voidptr, types.voidptr, types.intp))


@njit(cache=True)
def gemm(a, b, c, beta, trans_a, trans_b):
    """c (m, n) = op(a) @ op(b) + beta * c, op = transpose where asked. Every operand is a
    2-d view whose rows are contiguous (unit stride along a row); rows may lie anywhere
    (a column slice of a bigger matrix is fine). BLAS is column-major, so this computes
    c.T = op(b).T @ op(a).T."""
    size = a.itemsize
    if a.strides[1] != size or b.strides[1] != size or c.strides[1] != size:
        raise ValueError("gemm: every operand needs contiguous rows")
    m, n = c.shape[0], c.shape[1]
    k = a.shape[0] if trans_a else a.shape[1]
    if m == 0 or n == 0:
        return
    scalars = np.empty(2, dtype=c.dtype)
    scalars[0] = 1.0
    scalars[1] = beta
    if k == 0:
        c *= scalars[1]
        return
    kind = np.int8(ord("s")) if size == 4 else np.int8(ord("d"))
    op_b = np.int8(ord("t")) if trans_b else np.int8(ord("n"))
    op_a = np.int8(ord("t")) if trans_a else np.int8(ord("n"))
    # a leading dimension must be at least the row length, even for a single row
    ldb = max(b.strides[0] // size, b.shape[1])
    lda = max(a.strides[0] // size, a.shape[1])
    ldc = max(c.strides[0] // size, n)
    status = _xxgemm(kind, op_b, op_a, n, m, k, scalars[0:].ctypes, b.ctypes, ldb,
                     a.ctypes, lda, scalars[1:].ctypes, c.ctypes, ldc)
    if status != 0:
        raise RuntimeError("gemm: SciPy's BLAS could not be called")


@njit(cache=True, **PARALLEL)
def parallel_gemm(a, b, c, beta, trans_a, trans_b, parts):
    """gemm with c's columns dealt out to ``parts`` thread jobs, each a single-threaded
    BLAS call on its column block."""
    n = c.shape[1]
    block = (n + parts - 1) // parts
    for job in prange(parts):
        s = job * block
        e = min(n, s + block)
        if s < e:
            part = b[s:e] if trans_b else b[:, s:e]
            gemm(a, part, c[:, s:e], beta, trans_a, trans_b)


def matmul(a, b, trans_a=False, trans_b=False):
    """op(a) @ op(b) as a new C-contiguous array, on every Numba thread."""
    m = a.shape[1] if trans_a else a.shape[0]
    n = b.shape[0] if trans_b else b.shape[1]
    c = np.empty((m, n), dtype=a.dtype)
    parallel_gemm(np.ascontiguousarray(a), np.ascontiguousarray(b), c, 0.0, trans_a, trans_b,
                  numba.get_num_threads())
    return c


_controller: ThreadpoolController | None = None


def single_threaded_blas():
    """A context in which every BLAS library runs on the calling thread only. The CPU
    kernels share the work among Numba's threads themselves and call BLAS from each; BLAS's
    own threads would compete with them, and OpenBLAS's idle threads keep spinning after a
    call, slowing the Numba loops that follow (batch norm ran 8x slower beside them)."""
    global _controller
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")
