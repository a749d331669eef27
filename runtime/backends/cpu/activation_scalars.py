"""The scalar activations the CPU kernels compile, by code: every formula of
``runtime/backends/activations.py`` (its code is its index in ``FORMULAS``) and, past them,
float32 forms of its own for the activations whose exact forms call ``exp`` or ``tanh``
(``FAST32``). ``activation_dispatch.py`` is generated from this list (``dispatch_source``;
run ``python runtime/backends/cpu/activation_scalars.py`` after changing a formula): one
function per direction with a branch per code, so that a network's first run compiles one
function where a chain of one compiled link per formula took 4-5 times as long."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from numba import njit

from runtime.backends.activations import FORMULAS


def _scalar(fn):
    return njit(cache=True, inline="always")(fn)


# ---- float32 forms without libm calls, for the activations whose exact forms call exp or
# tanh: a libm call per element keeps a loop scalar (llvmlite's wheel has no vector math
# library), so sigmoid, tanh and SiLU ran through NumPy, a pass of their own after the
# conv instead of in its epilogue. tanh as Eigen's rational approximation (odd degree-13
# numerator over even degree-6 denominator on [-7.9, 7.9], where float32 tanh is +-1
# beyond): measured against float64 over [-12, 12], at most 2.6e-7 off (NumPy's float32
# tanh: 6e-8); the sigmoid as 0.5 + 0.5 tanh(x / 2), the reference's own form. Only
# arithmetic, so the loops vectorise; the constants are float32 so they stay float32.
_F = np.float32
_A1, _A3, _A5, _A7 = _F(4.89352455891786e-03), _F(6.37261928875436e-04), \
    _F(1.48572235717979e-05), _F(5.12229709037114e-08)
_A9, _A11, _A13 = _F(-8.60467152213735e-11), _F(2.00018790482477e-13), \
    _F(-2.76076847742355e-16)
_B0, _B2, _B4, _B6 = _F(4.89352518554385e-03), _F(2.26843463243900e-03), \
    _F(1.18534705686654e-04), _F(1.19825839466702e-06)
_CLAMP, _HALF = _F(7.90531110763549805), _F(0.5)


@njit(cache=True, inline="always")
def _tanh32(x):
    x = min(max(x, -_CLAMP), _CLAMP)
    x2 = x * x
    p = x * (_A1 + x2 * (_A3 + x2 * (_A5 + x2 * (_A7 + x2 * (_A9 + x2 * (_A11 + x2 * _A13))))))
    return p / (_B0 + x2 * (_B2 + x2 * (_B4 + x2 * _B6)))


def _fast_tanh(x, a):
    return _tanh32(x)


def _fast_sigmoid(x, a):
    return _HALF + _HALF * _tanh32(_HALF * x)


def _fast_silu(x, a):
    return x * (_HALF + _HALF * _tanh32(_HALF * x))


def _fast_tanh_grad(x, y, a):
    return 1.0 - y * y


def _fast_sigmoid_grad(x, y, a):
    return y * (1.0 - y)


def _fast_silu_grad(x, y, a):
    s = _HALF + _HALF * _tanh32(_HALF * x)
    return s * (1.0 + x * (1.0 - s))


_FAST_FORMS = {"tanh": (_fast_tanh, _fast_tanh_grad),
               "sigmoid": (_fast_sigmoid, _fast_sigmoid_grad),
               "silu": (_fast_silu, _fast_silu_grad)}

FAST32 = {name: len(FORMULAS) + i for i, name in enumerate(_FAST_FORMS)}
"""Activations with a float32 form of their own on the CPU -> its code (past every
formula's code), in the dispatch of both directions."""


FORWARD = tuple(_scalar(f.forward) for f in FORMULAS) + tuple(
    _scalar(forms[0]) for forms in _FAST_FORMS.values())
"""Code -> the compiled scalar forward function ``f(x, a)``."""

DERIVATIVE = tuple(_scalar(f.derivative) for f in FORMULAS) + tuple(
    _scalar(forms[1]) for forms in _FAST_FORMS.values())
"""Code -> the compiled scalar derivative ``f'(x, y, a)`` (y: the forward output)."""

GENERATED = Path(__file__).with_name("activation_dispatch.py")


def _fingerprint() -> str:
    """A hash of the formulas' sources: it changes with any of them, and so does the
    generated file, which makes Numba compile its functions again (its cache is keyed on
    the file, not on what the file calls)."""
    text = (Path(__file__).resolve().parent.parent / "activations.py").read_text()
    return hashlib.sha256((text + Path(__file__).read_text()).encode()).hexdigest()[:16]


def _branches(count: int, statement: str) -> list[str]:
    """``if c == 0: <loop>`` ``elif c == 1: ...``: a loop over ``i`` doing ``statement``
    (with ``{code}`` filled in) for each code."""
    lines = []
    for code in range(count):
        lines += [f"    {'if' if code == 0 else 'elif'} c == {code}:",
                  "        for i in range(n):",
                  "            " + statement.format(code=code)]
    return lines


# The dispatch compiles with two of LLVM's fast-math flags: ``arcp`` lets a division
# become a reciprocal estimate refined by a Newton step, ``contract`` fuses multiplies and
# adds. The float32 forms above divide once per value: SiLU over 64K floats, one thread,
# 0.44 -> 0.29 ns per element (EfficientNet-B0 applies it to 6.2 million values a pass);
# every formula stays within its tests' bounds (the float32 forms: 4e-7 of float64). Loops
# of their own for the float32 forms, with the flags, did as well but added six functions
# to a network's first compile (0.6 s).
FAST_MATH = {"arcp", "contract"}


def dispatch_source() -> str:
    """The text of activation_dispatch.py for the current formulas."""
    count = len(FORWARD)
    lines = ['"""The CPU\'s activation dispatch: one function per direction with a branch per',
             'activation code, each branch a loop over one formula (inlined), so every loop is',
             'branch-free and vectorises. Generated by ``python',
             'runtime/backends/cpu/activation_scalars.py`` from its list: do not edit (a',
             'test holds this file equal to what that writes)."""',
             f"# formulas: {_fingerprint()}",
             "",
             "from numba import njit, uint64",
             "",
             "from runtime.backends.cpu.activation_scalars import DERIVATIVE, FAST_MATH, FORWARD",
             ""]
    for prefix, table in (("_f", "FORWARD"), ("_d", "DERIVATIVE")):
        lines += [f"{prefix}{code} = {table}[{code}]" for code in range(count)]
    lines += ["", "",
              '@njit(cache=True, error_model="numpy", fastmath=FAST_MATH)',
              "def activate(v, c, a):",
              '    """v[i] = f_c(v[i], a) over a contiguous 1-D array, in place; a code of no',
              '    formula (NO_ACTIVATION) leaves it as it is. NumPy\'s error model: a division',
              '    by zero gives inf or nan, where Python\'s test before every division kept',
              '    the loops scalar."""',
              "    n = uint64(v.size)"]
    lines += _branches(count, "v[i] = _f{code}(v[i], a)")
    lines += ["", "",
              '@njit(cache=True, error_model="numpy", fastmath=FAST_MATH)',
              "def derivative(x, y, gy, gx, c, a):",
              '    """gx[i] = gy[i] * f_c\'(x[i], y[i], a) over contiguous 1-D arrays (no',
              '    formula: gx = gy)."""',
              "    n = uint64(gx.size)"]
    lines += _branches(count, "gx[i] = gy[i] * _d{code}(x[i], y[i], a)")
    lines += ["    else:", "        for i in range(n):", "            gx[i] = gy[i]", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    GENERATED.write_text(dispatch_source())
    print(f"wrote {GENERATED}")
