"""Numba flags for every kernel, in one place (STYLE: kernels read no globals and take
their flags from here). fastmath stays off: the tests compare with PyTorch to float32
precision and fastmath's reassociation would loosen that."""

from __future__ import annotations

SERIAL = {"cache": True, "nogil": True}
PARALLEL = {"cache": True, "nogil": True, "parallel": True}
