"""Two things Numba's Python subset cannot say, as intrinsics for the CPU kernels.

- :func:`unit_stride`: a 1-D view known to have unit stride, retyped as contiguous. A row
  sliced out of a 2-D view (``y[b, rows, s:e][r]``) is typed with a run-time stride,
  and LLVM vectorises a loop over it only when the stride is a known constant: the
  fused epilogues ran 3-10x slower than the GEMM before them.
- :func:`stack_buffer`: a small float buffer on the stack, for register tiles. LLVM
  keeps a stack buffer indexed by constants in vector registers; a NumPy array (heap,
  reached through a pointer LLVM cannot prove private) is loaded and stored at every
  step of the loop around it.
"""

from __future__ import annotations

from numba import njit, types
from numba.core import cgutils
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic


@intrinsic
def _retype_contiguous(typingctx, arr):
    if not isinstance(arr, types.Array) or arr.ndim != 1:
        return None
    result = arr.copy(layout="C")

    def codegen(context, builder, signature, args):
        # an array's data model is the same whatever its layout: only the type changes
        return impl_ret_borrowed(context, builder, signature.return_type, args[0])

    return result(arr), codegen


@njit(cache=True, inline="always")
def unit_stride(v):
    """``v`` (1-D) typed as contiguous; it must have unit stride (checked)."""
    if v.size > 1 and v.strides[0] != v.itemsize:
        raise ValueError("unit_stride: the view is not contiguous")
    return _retype_contiguous(v)


@intrinsic
def stack_buffer(typingctx, size, dtype):
    """A buffer of ``size`` (a literal int) elements of ``dtype`` on the stack, as a typed
    pointer (index it like an array: ``buf[i]``; no bounds, no shape). It lives until the
    function that inlined it returns: allocate it once, outside loops."""
    if not isinstance(size, types.IntegerLiteral):
        return None
    if isinstance(dtype, types.NumberClass):  # np.float32 as written in a kernel
        element = dtype.instance_type
    elif isinstance(dtype, types.DType):  # an array's .dtype
        element = dtype.dtype
    else:
        return None
    count = size.literal_value

    def codegen(context, builder, signature, args):
        return cgutils.alloca_once(builder, context.get_value_type(element), size=count)

    return types.CPointer(element)(size, dtype), codegen
