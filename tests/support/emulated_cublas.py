"""cuBLAS's cublasSgemm, emulated with NumPy on raw addresses, for tests under the CUDA
simulator (whose device arrays live in host memory): the same calls as
``nvmath.bindings.cublas`` (``create``, ``sgemm``, ``sgemm_strided_batched``, their Ex
forms ``gemm_ex`` and ``gemm_strided_batched_ex`` on float32 matrices, ``set_math_mode``,
``get_version``), column-major operands
read through their addresses and leading dimensions, and cuBLAS's checks of its arguments.
archc's cuBLAS path (``runtime.backends.cuda.blas``) runs on it unchanged, so the mapping
of row-major arrays onto column-major calls is tested without a GPU."""

from __future__ import annotations

import ctypes

import numpy as np

OP_N, OP_T = 0, 1


class InvalidValue(RuntimeError):
    """CUBLAS_STATUS_INVALID_VALUE."""


# every call's (transa, transb, m, n, k, lda, ldb, ldc); a strided batch's adds its
# (stride_a, stride_b, stride_c, batch_count)
calls: list[tuple] = []
math_mode = [0]  # CUBLAS_DEFAULT_MATH; 3: CUBLAS_TF32_TENSOR_OP_MATH
# the Ex calls' cublasComputeType_t values emulated: CUBLAS_COMPUTE_32F,
# CUBLAS_COMPUTE_32F_FAST_16BF, CUBLAS_COMPUTE_32F_FAST_TF32; and CUDA_R_32F, the one
# cudaDataType_t of their matrices
COMPUTE_32F, COMPUTE_32F_FAST_16BF, COMPUTE_32F_FAST_TF32 = 68, 75, 77
CUDA_R_32F = 0


def create() -> int:
    math_mode[0] = 0
    return 1


def set_math_mode(handle, mode: int) -> None:
    if handle != 1 or mode not in (0, 3):
        raise InvalidValue(f"set_math_mode({handle}, {mode})")
    math_mode[0] = mode


def tf32(a: np.ndarray) -> np.ndarray:
    """float32 values rounded to TF32 as the tensor cores take them: the 13 low mantissa
    bits dropped, to nearest with ties away from zero (cvt.rna.tf32.f32)."""
    bits = np.ascontiguousarray(a, np.float32).view(np.uint32)
    return ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


def bf16(a: np.ndarray) -> np.ndarray:
    """float32 values rounded to bfloat16 (8 exponent bits, 7 of mantissa, as float32 with
    the 16 low bits zero), to nearest with ties to even (cvt.rn.bf16.f32)."""
    bits = np.ascontiguousarray(a, np.float32).view(np.uint32)
    even = (bits >> np.uint32(16)) & np.uint32(1)
    return ((bits + np.uint32(0x7FFF) + even) & np.uint32(0xFFFF0000)).view(np.float32)


# how each compute type's tensor cores take the operands (None: as they are)
ROUNDING = {COMPUTE_32F: None, COMPUTE_32F_FAST_16BF: bf16, COMPUTE_32F_FAST_TF32: tf32}


def get_version(handle: int) -> int:
    return 120903


def _scalar(pointer: int) -> float:
    return float(ctypes.c_float.from_address(pointer).value)


def _column_major(pointer: int, rows: int, cols: int, ld: int) -> np.ndarray:
    """The column-major (rows, cols) matrix at ``pointer`` with leading dimension ld, as a
    writable NumPy view of that memory."""
    count = ld * (cols - 1) + rows
    buffer = (ctypes.c_float * count).from_address(pointer)
    flat = np.ctypeslib.as_array(buffer)
    return np.lib.stride_tricks.as_strided(flat, shape=(rows, cols), strides=(4, 4 * ld))


def _check(handle, transa, transb, m, n, k, lda, ldb, ldc) -> tuple[int, int]:
    """cuBLAS's checks of a GEMM's arguments; the row counts of A and B as stored."""
    if handle != 1:
        raise InvalidValue("not a handle from create()")
    if transa not in (OP_N, OP_T) or transb not in (OP_N, OP_T) or min(m, n, k) < 0:
        raise InvalidValue(f"sgemm({transa}, {transb}, {m}, {n}, {k})")
    a_rows, b_rows = (m if transa == OP_N else k), (k if transb == OP_N else n)
    if lda < max(1, a_rows) or ldb < max(1, b_rows) or ldc < max(1, m):
        raise InvalidValue(f"leading dimensions {lda}, {ldb}, {ldc} for m={m} n={n} k={k} "
                           f"(transa {transa}, transb {transb})")
    return a_rows, b_rows


def _product(rows, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
             rounding) -> None:
    """C (m, n) = alpha op(A) @ op(B) + beta C, all column-major, as cuBLAS defines it
    (``rows``: A's and B's stored row counts, from :func:`_check`; ``rounding``: what the
    operands go through first, or None)."""
    if m == 0 or n == 0:
        return
    a_rows, b_rows = rows
    out = _column_major(c, m, n, ldc)
    total = np.zeros((m, n), np.float64)
    if k:
        op_a = _column_major(a, a_rows, (k if transa == OP_N else m), lda)
        op_b = _column_major(b, b_rows, (n if transb == OP_N else k), ldb)
        op_a = op_a if transa == OP_N else op_a.T
        op_b = op_b if transb == OP_N else op_b.T
        if rounding is not None:  # the operands as the tensor cores see them
            op_a, op_b = rounding(op_a), rounding(op_b)
        total = _scalar(alpha) * (op_a.astype(np.float64) @ op_b.astype(np.float64))
    beta = _scalar(beta)
    if beta:
        total += beta * out
    out[...] = total.astype(np.float32)


def _math_mode_rounding():
    """How the Sgemm calls' operands are rounded under the handle's math mode."""
    return tf32 if math_mode[0] == 3 else None


def _ex_rounding(types: tuple, compute_type: int, algo: int):
    """The Ex calls' checks (float32 matrices, an emulated compute type, the default
    algorithm) and the rounding their compute type makes."""
    if any(t != CUDA_R_32F for t in types) or compute_type not in ROUNDING or algo != -1:
        raise InvalidValue(f"data types {types}, compute type {compute_type}, algo {algo}: "
                           "not emulated")
    return ROUNDING[compute_type]


def sgemm(handle, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) -> None:
    """cublasSgemm: one product."""
    _one(handle, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
         _math_mode_rounding())


def gemm_ex(handle, transa, transb, m, n, k, alpha, a, atype, lda, b, btype, ldb, beta, c,
            ctype, ldc, compute_type, algo) -> None:
    """cublasGemmEx on float32 matrices: one product in the compute type's arithmetic."""
    rounding = _ex_rounding((atype, btype, ctype), compute_type, algo)
    _one(handle, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, rounding)


def _one(handle, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, rounding):
    rows = _check(handle, transa, transb, m, n, k, lda, ldb, ldc)
    calls.append((transa, transb, m, n, k, lda, ldb, ldc))
    _product(rows, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, rounding)


def sgemm_strided_batched(handle, transa, transb, m, n, k, alpha, a, lda, stride_a, b, ldb,
                          stride_b, beta, c, ldc, stride_c, batch_count) -> None:
    """cublasSgemmStridedBatched: product i reads A + i stride_a and B + i stride_b and
    writes C + i stride_c (strides in elements; 0 shares an operand). cuBLAS leaves
    overlapping outputs undefined: refused here, as a test should catch them."""
    _batch(handle, transa, transb, m, n, k, alpha, a, lda, stride_a, b, ldb, stride_b, beta,
           c, ldc, stride_c, batch_count, _math_mode_rounding())


def gemm_strided_batched_ex(handle, transa, transb, m, n, k, alpha, a, atype, lda, stride_a,
                            b, btype, ldb, stride_b, beta, c, ctype, ldc, stride_c,
                            batch_count, compute_type, algo) -> None:
    """cublasGemmStridedBatchedEx on float32 matrices, in the compute type's arithmetic."""
    rounding = _ex_rounding((atype, btype, ctype), compute_type, algo)
    _batch(handle, transa, transb, m, n, k, alpha, a, lda, stride_a, b, ldb, stride_b, beta,
           c, ldc, stride_c, batch_count, rounding)


def _batch(handle, transa, transb, m, n, k, alpha, a, lda, stride_a, b, ldb, stride_b, beta,
           c, ldc, stride_c, batch_count, rounding) -> None:
    rows = _check(handle, transa, transb, m, n, k, lda, ldb, ldc)
    if batch_count < 0 or min(stride_a, stride_b, stride_c) < 0:
        raise InvalidValue(f"batch of {batch_count}, strides {stride_a}, {stride_b}, "
                           f"{stride_c}")
    if batch_count > 1 and m and n and stride_c < ldc * (n - 1) + m:
        raise InvalidValue(f"the products' outputs overlap (stride_c {stride_c} for a "
                           f"{m} x {n} C with ldc {ldc})")
    calls.append((transa, transb, m, n, k, lda, ldb, ldc, stride_a, stride_b, stride_c,
                  batch_count))
    for i in range(batch_count):
        _product(rows, transa, transb, m, n, k, alpha, a + 4 * i * stride_a, lda,
                 b + 4 * i * stride_b, ldb, beta, c + 4 * i * stride_c, ldc, rounding)
