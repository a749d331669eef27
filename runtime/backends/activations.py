"""Every element-wise activation, written once: a scalar function and its derivative.

Each :class:`Formula` holds

- ``forward(x, a)`` and ``derivative(x, y, a)``: scalar Python using only ``math`` and
  arithmetic, compiled by Numba for the CPU kernels (``runtime/backends/cpu/elementwise``)
  and as CUDA device functions for the GPU kernels (``runtime/backends/cuda/kernels``)
  from this same source; ``y`` is the forward output, which gives some derivatives
  directly (sigmoid, tanh), and ``a`` the activation's one number (a slope, a beta);
- ``reference(x, a)`` and ``reference_derivative(x, y, a)``: the same mathematics in
  NumPy over whole arrays, the living definition that the reference backend runs and
  the kernels are tested against (and that PyTorch checks).

The compiler's registry (``archc/layers/activation.py``) names each activation's layer
type; the tests hold the two lists equal. Kernels pick a formula by its index in
:data:`FORMULAS` (its *code*), which :func:`activation_code` gives for a layer's name and
attributes, so one code means one function on every device.

Adding an activation: one entry here, one registry entry, and an ONNX emitter where ONNX
has no operator of the same meaning; then ``python runtime/backends/cpu/activation_scalars.py``
writes the CPU's dispatch again (a test says when it is out of date).

Examples
--------
>>> code, a = activation_code("leaky_relu", {"negative_slope": 0.2})
>>> FORMULAS[code].name, a, FORMULAS[code].forward(-1.0, a)
('leaky_relu', 0.2, -0.2)
>>> FORMULAS[activation_code("gelu", {"approximate": "tanh"})[0]].name
'gelu_tanh'
"""

from __future__ import annotations

import functools

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_TANH_C = math.sqrt(2.0 / math.pi)
_GELU_CUBE = 0.044715
# softplus is linear past this product beta * x (PyTorch's default threshold)
_SOFTPLUS_THRESHOLD = 20.0

NO_ACTIVATION = -1
"""The code of a fused epilogue without an activation (kernels leave the value as is)."""


@dataclass(frozen=True)
class Formula:
    """One activation: scalar forward and derivative for the kernels, NumPy twins for
    the reference. ``op`` is the layer type it computes; ``when`` the attribute values that
    select it among the op's formulas (``gelu`` with ``approximate: tanh``); ``param`` the
    attribute passed as ``a``, with ``default`` when the attributes lack it."""

    name: str
    forward: Callable[[float, float], float]
    derivative: Callable[[float, float, float], float]
    reference: Callable[[np.ndarray, float], np.ndarray]
    reference_derivative: Callable[[np.ndarray, np.ndarray, float], np.ndarray]
    op: str = ""
    when: tuple[tuple[str, str], ...] = ()
    param: str | None = None
    default: float = 0.0

    @property
    def layer(self) -> str:
        return self.op or self.name


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(x).astype(np.asarray(x).dtype,
                                                                   copy=False)


def _np_sigmoid(x):
    return 0.5 + 0.5 * np.tanh(0.5 * x)


def _np_softplus(x, beta):
    bx = beta * x
    return np.where(bx > _SOFTPLUS_THRESHOLD, x,
                    np.log1p(np.exp(np.minimum(bx, _SOFTPLUS_THRESHOLD))) / beta)


# ---------------------------------------------------------------- scalar formulas
# Only math and arithmetic, no calls to one another: each is compiled on its own for
# each device. The logistic sigmoid is written from e = exp(-|x|) (1 / (1 + e) for x >= 0,
# e / (1 + e) below): one libm call, no overflow, and exp is cheaper than tanh.

def relu(x, a):
    return max(x, 0.0)


def relu_grad(x, y, a):
    return 1.0 if x > 0 else 0.0


def relu6(x, a):
    return min(max(x, 0.0), 6.0)


def relu6_grad(x, y, a):
    return 1.0 if 0 < x < 6 else 0.0


def leaky_relu(x, a):
    return x if x > 0 else a * x


def leaky_relu_grad(x, y, a):
    return 1.0 if x > 0 else a


def gelu(x, a):
    return 0.5 * x * (1.0 + math.erf(x * _SQRT_HALF))


def gelu_grad(x, y, a):
    return 0.5 * (1.0 + math.erf(x * _SQRT_HALF)) + x * math.exp(-0.5 * x * x) * _INV_SQRT_2PI


def gelu_tanh(x, a):
    return 0.5 * x * (1.0 + math.tanh(_TANH_C * (x + _GELU_CUBE * x * x * x)))


def gelu_tanh_grad(x, y, a):
    t = math.tanh(_TANH_C * (x + _GELU_CUBE * x * x * x))
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _TANH_C * (1.0 + 3.0 * _GELU_CUBE * x * x)


def silu(x, a):
    e = math.exp(-abs(x))  # the logistic sigmoid from exp(-|x|): no overflow, one exp
    return x * (1.0 / (1.0 + e) if x >= 0 else e / (1.0 + e))


def silu_grad(x, y, a):
    e = math.exp(-abs(x))
    s = 1.0 / (1.0 + e) if x >= 0 else e / (1.0 + e)
    return s * (1.0 + x * (1.0 - s))


def hardswish(x, a):
    return x * min(max(x + 3.0, 0.0), 6.0) / 6.0


def hardswish_grad(x, y, a):
    return 0.0 if x < -3 else (1.0 if x > 3 else (2.0 * x + 3.0) / 6.0)


def hardsigmoid(x, a):
    return min(max(x + 3.0, 0.0), 6.0) / 6.0


def hardsigmoid_grad(x, y, a):
    return 1.0 / 6.0 if -3 < x < 3 else 0.0


def sigmoid(x, a):
    e = math.exp(-abs(x))
    return 1.0 / (1.0 + e) if x >= 0 else e / (1.0 + e)


def sigmoid_grad(x, y, a):
    return y * (1.0 - y)


def tanh(x, a):
    return math.tanh(x)


def tanh_grad(x, y, a):
    return 1.0 - y * y


def softplus(x, a):
    """``log(1 + exp(a x)) / a`` (a: beta), linear past ``a x > 20`` as in PyTorch."""
    return x if a * x > _SOFTPLUS_THRESHOLD else math.log1p(math.exp(a * x)) / a


def softplus_grad(x, y, a):
    if a * x > _SOFTPLUS_THRESHOLD:
        return 1.0
    e = math.exp(-abs(a * x))
    return 1.0 / (1.0 + e) if a * x >= 0 else e / (1.0 + e)


def mish(x, a):
    """``x tanh(softplus(x))`` (Misra 2019; YOLOv4)."""
    sp = x if x > _SOFTPLUS_THRESHOLD else math.log1p(math.exp(x))
    return x * math.tanh(sp)


def mish_grad(x, y, a):
    e = math.exp(-abs(x))
    sp = x if x > _SOFTPLUS_THRESHOLD else max(x, 0.0) + math.log1p(e)
    t = math.tanh(sp)
    return t + x * (1.0 - t * t) * (1.0 / (1.0 + e) if x >= 0 else e / (1.0 + e))


def _np_mish_grad(x, y, a):
    t = np.tanh(_np_softplus(x, 1.0))
    return t + x * (1.0 - t * t) * _np_sigmoid(x)


def _np_gelu_tanh_grad(x, y, a):
    t = np.tanh(_TANH_C * (x + _GELU_CUBE * x ** 3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _TANH_C * (1 + 3 * _GELU_CUBE * x * x)


FORMULAS: tuple[Formula, ...] = (
    Formula("relu", relu, relu_grad,
            lambda x, a: np.maximum(x, 0),
            lambda x, y, a: (x > 0).astype(x.dtype)),
    Formula("relu6", relu6, relu6_grad,
            lambda x, a: np.clip(x, 0, 6),
            lambda x, y, a: ((x > 0) & (x < 6)).astype(x.dtype)),
    Formula("leaky_relu", leaky_relu, leaky_relu_grad,
            lambda x, a: np.where(x > 0, x, a * x),
            lambda x, y, a: np.where(x > 0, 1.0, a).astype(x.dtype),
            param="negative_slope", default=0.01),
    Formula("silu", silu, silu_grad,
            lambda x, a: x * _np_sigmoid(x),
            lambda x, y, a: _np_sigmoid(x) * (1 + x * (1 - _np_sigmoid(x)))),
    Formula("sigmoid", sigmoid, sigmoid_grad,
            lambda x, a: _np_sigmoid(x),
            lambda x, y, a: y * (1 - y)),
    Formula("tanh", tanh, tanh_grad,
            lambda x, a: np.tanh(x),
            lambda x, y, a: 1 - y * y),
    Formula("hardswish", hardswish, hardswish_grad,
            lambda x, a: x * np.clip(x + 3, 0, 6) / 6,
            lambda x, y, a: np.where(x < -3, 0.0, np.where(x > 3, 1.0, (2 * x + 3) / 6))),
    Formula("hardsigmoid", hardsigmoid, hardsigmoid_grad,
            lambda x, a: np.clip(x + 3, 0, 6) / 6,
            lambda x, y, a: ((x > -3) & (x < 3)) / 6.0),
    Formula("gelu", gelu, gelu_grad,
            lambda x, a: 0.5 * x * (1 + _erf(x * _SQRT_HALF)),
            lambda x, y, a: (0.5 * (1 + _erf(x * _SQRT_HALF))
                             + x * np.exp(-0.5 * x * x) * _INV_SQRT_2PI)),
    Formula("gelu_tanh", gelu_tanh, gelu_tanh_grad,
            lambda x, a: 0.5 * x * (1 + np.tanh(_TANH_C * (x + _GELU_CUBE * x ** 3))),
            _np_gelu_tanh_grad,
            op="gelu", when=(("approximate", "tanh"),)),
    Formula("softplus", softplus, softplus_grad,
            _np_softplus,
            lambda x, y, a: np.where(a * x > _SOFTPLUS_THRESHOLD, 1.0,
                                     _np_sigmoid(a * x)).astype(x.dtype),
            param="beta", default=1.0),
    Formula("mish", mish, mish_grad,
            lambda x, a: x * np.tanh(_np_softplus(x, 1.0)),
            _np_mish_grad),
)
"""Every formula; a formula's index is its code in the kernels."""

ACTIVATIONS: tuple[str, ...] = tuple(dict.fromkeys(f.layer for f in FORMULAS))
"""The layer types these formulas compute (``gelu`` once, for both of its forms)."""


def formula_of(name: str, attrs: dict) -> tuple[int, Formula]:
    """(code, formula) of activation layer ``name`` with attributes ``attrs``: looked up
    once per (name, attributes) (every fused conv asks on every pass: a search of the
    formulas took 0.1-0.2 ms of a MobileNetV2 pass at batch 1)."""
    key = tuple(sorted(attrs.items()))
    try:
        return _formula_cached(name, key)
    except TypeError:  # an unhashable attribute value: search
        return _find_formula(name, attrs)


@functools.lru_cache(maxsize=1024)
def _formula_cached(name: str, key: tuple) -> tuple[int, Formula]:
    return _find_formula(name, dict(key))


def _find_formula(name: str, attrs: dict) -> tuple[int, Formula]:
    fallback = None
    for code, formula in enumerate(FORMULAS):
        if formula.layer != name:
            continue
        if all(attrs.get(key) == value for key, value in formula.when):
            if formula.when:
                return code, formula
            fallback = fallback or (code, formula)
    if fallback is None:
        raise KeyError(f"no formula for activation '{name}'")
    return fallback


def attributes_of(formula: Formula, a: float = 0.2) -> dict:
    """Layer attributes that select ``formula`` with the number ``a`` (where it takes one):
    what tests and benchmarks run each formula with."""
    return {**dict(formula.when), **({formula.param: a} if formula.param else {})}


def _number(formula: Formula, attrs: dict) -> float:
    return float(attrs.get(formula.param, formula.default)) if formula.param else 0.0


def activation_code(name: str, attrs: dict) -> tuple[int, float]:
    """(kernel code, the number ``a``) of activation ``name`` with ``attrs``."""
    code, formula = formula_of(name, attrs)
    return code, _number(formula, attrs)


def reference_forward(name: str, attrs: dict, x: np.ndarray) -> np.ndarray:
    """The activation of ``x`` by its NumPy definition, in ``x``'s dtype."""
    _, formula = formula_of(name, attrs)
    return formula.reference(x, _number(formula, attrs)).astype(x.dtype, copy=False)


def reference_derivative(name: str, attrs: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """f'(x) by the NumPy definition (``y``: the forward output), in ``x``'s dtype."""
    _, formula = formula_of(name, attrs)
    return np.asarray(formula.reference_derivative(x, y, _number(formula, attrs)),
                      dtype=x.dtype)


def dispatch_chain(link: Callable, last: Callable, compile_scalar: Callable) -> Callable:
    """One device's dispatcher over every formula, built from the same scalar source.

    ``link(code, f, rest)`` returns a compiled function that runs formula ``f`` when its
    code argument equals ``code`` and calls ``rest`` otherwise; ``last`` is the end of the
    chain (the identity, for NO_ACTIVATION); ``compile_scalar(formula)`` compiles the
    formula's scalar function that the chain applies (its forward or its derivative) for
    the device. The chain tests the code once per call, outside any loop, so
    the CPU's loops stay branch-free and vectorise."""
    chain = last
    for code in reversed(range(len(FORMULAS))):
        chain = link(code, compile_scalar(FORMULAS[code]), chain)
    return chain
