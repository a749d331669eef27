"""Which GEMM the CUDA backend runs: cuBLAS, through nvmath-python's bindings
(``nvmath.bindings.cublas``), when they load and a GPU is there; otherwise archc's own
numba-cuda kernel (``kernels.gemm_kernel``), so a machine without the binding runs every
CUDA path. ``ARCHC_CUDA_GEMM`` chooses: ``auto`` (the default: cuBLAS when it can run),
``cublas`` (cuBLAS or an error saying why not) or ``numba`` (archc's kernel).

archc's arrays are row-major and cuBLAS is column-major: a row-major (r, c) matrix with
row stride ``ld`` is, to cuBLAS, the column-major (c, r) matrix with leading dimension
``ld``, its transpose. So ``C = op(A) @ op(B)`` (row-major) is computed as the
column-major ``C^T = op(B)^T @ op(A)^T``: B first, then A, each with its own transpose
flag, no data moved (:func:`sgemm_arguments`).

cuBLAS gets the raw device addresses and runs in the legacy default stream, as archc's
kernels do, so its GEMMs are ordered with them without a synchronisation. Its default math
mode computes float32 products in float32 (no TF32). The tensor-core precisions keep every
matrix in float32: tf32 through the handle's math mode (cublasSgemm unchanged), bf16
through cublasGemmEx with the compute type that rounds float32 operands to bfloat16 inside
the library (CUBLAS_COMPUTE_32F_FAST_16BF), so no kernel of archc's converts anything.
"""

from __future__ import annotations

import os

import numpy as np

from runtime.backends.cuda import CudaUnavailable

CHOICES = ("auto", "cublas", "numba")

# cuBLAS's cublasOperation_t: CUBLAS_OP_N, CUBLAS_OP_T
OP_N, OP_T = 0, 1

# cuBLAS's cublasMath_t for each precision: CUBLAS_DEFAULT_MATH (float32 products in
# float32), CUBLAS_TF32_TENSOR_OP_MATH (operands rounded to TF32, a 10-bit mantissa, for
# the tensor cores; float32 accumulation)
MATH_MODES = {"float32": 0, "tf32": 3, "bf16": 0}

# the precisions that go through cublasGemmEx, with their cublasComputeType_t:
# CUBLAS_COMPUTE_32F_FAST_16BF (float32 matrices, operands down-converted to bfloat16 for
# the tensor cores, float32 accumulation)
COMPUTE_TYPES = {"bf16": 75}
CUDA_R_32F = 0  # cudaDataType_t of every matrix
GEMM_DEFAULT = -1  # cublasGemmAlgo_t: the library's heuristic

# how an error message names each tensor-core format
TENSOR_CORE_FORMATS = {"tf32": "TF32", "bf16": "bfloat16"}


def address(array) -> int:
    """The device address of an array's first element (the host address of a simulated
    one: the simulator's device arrays are NumPy's); where the memory plan checks that an
    output landed in its room, too."""
    interface = getattr(array, "__cuda_array_interface__", None)
    if interface is None:
        interface = array.__array_interface__
    return interface["data"][0]


def _layout(array, name: str) -> tuple[int, int]:
    """(leading dimension, batch stride), in elements, of a row-major matrix whose rows are
    contiguous, or of a stack of them (3-d: the first axis numbers the matrices; a 2-d
    matrix shared by every product of a batch has batch stride 0). The row stride is what
    cuBLAS calls the leading dimension of the column-major transpose."""
    size = array.dtype.itemsize
    rows, cols = tuple(array.shape)[-2:]  # (the simulator's shapes take no negative index)
    row_stride, col_stride = (s // size for s in tuple(array.strides)[-2:])
    if cols > 1 and col_stride != 1:
        raise ValueError(f"gemm: {name}'s rows are not contiguous (strides {array.strides})")
    batch = array.strides[0] // size if array.ndim == 3 else 0
    return max(row_stride if rows > 1 else cols, cols, 1), batch


def sgemm_arguments(a, b, c, trans_a: bool, trans_b: bool) -> tuple:
    """cublasSgemmStridedBatched's (transa, transb, m, n, k, A, lda, strideA, B, ldb,
    strideB, C, ldc, strideC, count) for the row-major ``c[i] = op(a[i]) @ op(b[i])``: the
    column-major ``c^T = op(b)^T @ op(a)^T``, for 2-d operands (one product, count 1) or
    stacks (3-d, the batch first; a 2-d ``a`` or ``b`` is shared by every product)."""
    m, n = tuple(c.shape)[-2:]
    k = tuple(a.shape)[-2 if trans_a else -1]
    (lda, sa), (ldb, sb), (ldc, sc) = _layout(a, "A"), _layout(b, "B"), _layout(c, "C")
    count = c.shape[0] if c.ndim == 3 else 1
    return (OP_T if trans_b else OP_N, OP_T if trans_a else OP_N, n, m, k,
            address(b), ldb, sb, address(a), lda, sa, address(c), ldc, sc, count)


class Cublas:
    """cuBLAS's float32 GEMM through a binding with cublasSgemm's signature
    (``nvmath.bindings.cublas``, or a stand-in with the same calls in the tests)."""

    def __init__(self, binding, name: str):
        self.binding, self.name = binding, name
        self.handle = binding.create()
        # alpha and beta are read from host memory (cuBLAS's default pointer mode)
        self._one = np.ones(1, np.float32)
        self._zero = np.zeros(1, np.float32)
        self.compute_type = None  # cublasGemmEx's, for a precision that needs it

    def set_precision(self, precision: str) -> None:
        """float32 (cuBLAS's default math), tf32 (its TF32 tensor-core math mode) or bf16
        (cublasGemmEx computing in bfloat16 on float32 matrices)."""
        self.binding.set_math_mode(self.handle, MATH_MODES[precision])
        self.compute_type = COMPUTE_TYPES.get(precision)

    def gemm(self, a, b, c, trans_a: bool = False, trans_b: bool = False) -> None:
        """c = op(a) @ op(b), every operand a float32 device array with contiguous rows (row
        slices of larger matrices included): 2-d, one cublasSgemm; or a batch (3-d ``c``,
        its products one cublasSgemmStridedBatched, a 2-d operand shared by all; a batch
        of one is one cublasSgemm). In bf16, their Ex forms with its compute type."""
        (transa, transb, m, n, k, pb, ldb, sb, pa, lda, sa, pc, ldc, sc,
         count) = sgemm_arguments(a, b, c, trans_a, trans_b)
        if m == 0 or n == 0 or count == 0:
            return
        one, zero = self._one.ctypes.data, self._zero.ctypes.data
        compute, f32 = self.compute_type, CUDA_R_32F
        if compute is not None and count == 1:
            self.binding.gemm_ex(self.handle, transa, transb, m, n, k, one, pb, f32, ldb, pa,
                                 f32, lda, zero, pc, f32, ldc, compute, GEMM_DEFAULT)
        elif compute is not None:
            self.binding.gemm_strided_batched_ex(
                self.handle, transa, transb, m, n, k, one, pb, f32, ldb, sb, pa, f32, lda, sa,
                zero, pc, f32, ldc, sc, count, compute, GEMM_DEFAULT)
        elif count == 1:
            self.binding.sgemm(self.handle, transa, transb, m, n, k, one, pb, ldb, pa, lda,
                               zero, pc, ldc)
        else:
            self.binding.sgemm_strided_batched(self.handle, transa, transb, m, n, k, one, pb,
                                               ldb, sb, pa, lda, sa, zero, pc, ldc, sc, count)


def _binding():
    """nvmath-python's cuBLAS bindings (imported on first use)."""
    from nvmath.bindings import cublas
    return cublas


def _nvmath() -> Cublas:
    """cuBLAS through nvmath-python, or CudaUnavailable saying why it cannot run here."""
    try:
        binding = _binding()
    except ImportError as exc:
        raise CudaUnavailable(f"cuBLAS needs the nvmath-python package ({exc}); "
                              "pip install nvmath-python") from None
    try:
        library = Cublas(binding, "cuBLAS")
        version = binding.get_version(library.handle)
    except Exception as exc:  # no driver, no libcublas, no device: nvmath says which
        raise CudaUnavailable(f"cuBLAS cannot run here ({type(exc).__name__}: "
                              f"{exc})") from None
    library.name = f"cuBLAS {version // 10000}.{version // 100 % 100} (nvmath-python)"
    return library


def choose(simulated: bool, choice: str | None = None):
    """(the GEMM library or None for archc's kernel, a line saying which GEMM runs and why)
    for ``ARCHC_CUDA_GEMM`` (or ``choice``)."""
    choice = (choice or os.environ.get("ARCHC_CUDA_GEMM") or "auto").strip().lower()
    if choice not in CHOICES:
        raise CudaUnavailable(f"ARCHC_CUDA_GEMM={choice!r} is not one of "
                              f"{', '.join(CHOICES)}")
    own = "archc's numba-cuda GEMM"
    if choice == "numba":
        return None, f"{own} (ARCHC_CUDA_GEMM=numba)"
    if simulated:
        if choice == "cublas":
            raise CudaUnavailable("ARCHC_CUDA_GEMM=cublas: cuBLAS does not run under the "
                                  "CUDA simulator")
        return None, f"{own} (the simulator has no cuBLAS)"
    try:
        library = _nvmath()
    except CudaUnavailable as exc:
        if choice == "cublas":
            raise
        return None, f"{own} ({exc})"
    return library, library.name
