"""The CPU backend: Numba kernels (``@njit(cache=True)``, parallel with ``prange``) for the
ops that dominate time, and the reference implementation for the rest until they are
ported. ``NUMBA_OPS`` says which is which; tests hold every op of this backend to the
reference backend."""

from __future__ import annotations

from runtime.backends.cpu import conv, elementwise, norm, pool
from runtime.backends.reference import KERNELS as REFERENCE_FORWARD
from runtime.backends.reference_backward import BACKWARD as REFERENCE_BACKWARD

KERNELS = dict(REFERENCE_FORWARD)
BACKWARD = dict(REFERENCE_BACKWARD)

KERNELS["conv2d"], BACKWARD["conv2d"] = conv.conv2d_forward, conv.conv2d_backward
KERNELS["max_pool2d"], BACKWARD["max_pool2d"] = pool.max_pool_forward, pool.max_pool_backward
KERNELS["avg_pool2d"], BACKWARD["avg_pool2d"] = pool.avg_pool_forward, pool.avg_pool_backward
KERNELS["batchnorm2d"], BACKWARD["batchnorm2d"] = norm.batchnorm_forward, norm.batchnorm_backward
for _kind in elementwise.CODES:
    KERNELS[_kind] = elementwise.activation_forward
    BACKWARD[_kind] = elementwise.activation_backward

NUMBA_OPS = ("conv2d", "max_pool2d", "avg_pool2d", "batchnorm2d") + tuple(elementwise.CODES)
