"""The CUDA backend, written with ``numba.cuda`` (PyPI package ``numba-cuda``).

Imported lazily: archc works on machines without a GPU or without the package, and
nothing here is imported until a CUDA kernel is asked for. Tests run the kernels under
Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, set before numba is first imported).

Modules: ``kernels.py`` (the GEMM and its fused epilogue, the plane kernels' launch,
activations, reductions, the memory plan's arena), ``blas.py`` (cuBLAS through
nvmath-python), ``conv.py`` (im2col/col2im, the implicit-GEMM conv, convs through the
library), ``strategy.py`` (which way each dense conv runs, and benchmark mode),
``layers.py`` (pooling, depthwise convs, batch and layer norm, LRN), ``tensor.py``
(broadcasting multiply, concat, slices, channel shuffle, softmax), ``resample.py``
(upsampling, unpooling, adaptive pooling, crops), ``roi.py`` (region pooling),
``training.py`` (batch statistics, dropout masks, the cross-entropy step, the optimisers'
updates), ``allocator.py`` (the caching pool), ``timing.py`` (CUDA-event clocks, each
kernel's time), ``ops.py`` and ``backend.py`` (the kernel tables behind
``runtime.Backend``).
"""

from __future__ import annotations

import importlib

import numpy as np

from runtime.errors import DeviceError


def numba_cuda():
    """``numba.cuda``, imported on first use. numba-cuda 0.30 still refers to
    ``np.row_stack``, which NumPy 2.5 removed (it was an alias of ``np.vstack``): the alias
    is restored before the import when it is missing."""
    if not hasattr(np, "row_stack"):
        np.row_stack = np.vstack
    try:
        return importlib.import_module("numba.cuda")
    except ImportError as exc:  # numba-cuda not installed
        raise CudaUnavailable(f"the CUDA backend needs the numba-cuda package ({exc}); "
                              "pip install numba-cuda") from None


# The arithmetic of the GEMMs (``--precision``), each with what it means. Both tensor-core
# formats keep every stored tensor, weight and sum in float32: only the products'
# operands are rounded, inside cuBLAS, as PyTorch's allow_tf32 (tf32) and as the products of
# its bf16 autocast (bf16; autocast also stores activations in bf16, archc does not).
PRECISIONS = {
    "float32": "float32 arithmetic (the default)",
    "tf32": "the matrix products on an NVIDIA GPU's tensor cores, operands rounded to TF32's "
            "10-bit mantissa as PyTorch's allow_tf32 does, sums in float32",
    "bf16": "the matrix products on an NVIDIA GPU's tensor cores, operands rounded to "
            "bfloat16's 7-bit mantissa as under PyTorch's bf16 autocast, sums, activations "
            "and weights in float32",
}


class CudaUnavailable(DeviceError):
    """No CUDA device (or no numba-cuda) on this machine: one line says which."""


def unavailable_reason() -> str | None:
    """Why CUDA cannot run here, or None when it can (a GPU, or the simulator)."""
    try:
        cuda = numba_cuda()
    except CudaUnavailable as exc:
        return str(exc)
    if not cuda.is_available():
        return "no CUDA GPU is available on this machine (numba.cuda found no device)"
    return None
