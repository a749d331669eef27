"""archc's runtime: executes lowered programs (kernels, memory plans, training).

The boundary is fixed: the runtime receives a lowered program and parameters from the
compiler and never imports the compiler (``archc``), its YAML front end or networkx.
``tests/compiler/test_boundaries.py`` enforces this.
"""

from runtime.moved import install as _install_moved
from runtime.target import widen as _widen

_widen()  # before any kernel module makes Numba's CPU target: full-width vectors (target.py)

_install_moved()  # the old paths of the modules that moved into runtime/train/ keep working
