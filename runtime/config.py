"""Numba flags shared by every CPU kernel, written ``@njit(cache=True, **PARALLEL)`` so the
on-disk cache is visible at each kernel (STYLE: kernels read no globals and take their
flags from one place). fastmath stays off: the tests compare with PyTorch to float32
precision and fastmath's reassociation would loosen that."""

from __future__ import annotations

PARALLEL = {"nogil": True, "parallel": True}
