"""The layer registry: one :class:`LayerType` per op, looked up by its YAML name.

Adding a layer type means adding one entry in the family module it belongs to
(``conv.py``, ``pool.py``, ...) and listing it in that module's ``LAYERS``: the entry holds
its schema, shape rule, costs, receptive field, diagram label, lowering (``lower``) and
parameter initialisation (``init``), and every stage reads it from here. The runtime adds
its kernels under the same name (an element-wise activation: one formula in
``runtime/backends/activations.py``, which every backend compiles); an ONNX emitter is
needed where ONNX has no operator of the same meaning (``LayerType.onnx``).
``tests/compiler/test_registry.py`` names any piece a layer type lacks.

Examples
--------
>>> get_layer("conv2d").family
'conv'
>>> get_layer("swish").op
'silu'
"""

from __future__ import annotations

from archc.layers import (activation, conv, graph_io, linear, merge, norm, pool, resample,
                          reshape, roi)
from archc.layers.activation import FUSABLE_ACTIVATIONS
from archc.layers.base import (
    Attr,
    AttrError,
    LayerType,
    Shape,
    ShapeError,
    fmt_shape,
)

_MODULES = (graph_io, conv, pool, roi, resample, norm, activation, linear, merge, reshape)

REGISTRY: dict[str, LayerType] = {}
ALIASES: dict[str, str] = {}

for _module in _MODULES:
    for _layer in _module.LAYERS:
        if _layer.op in REGISTRY:
            raise RuntimeError(f"layer type '{_layer.op}' is registered twice")
        REGISTRY[_layer.op] = _layer
        for _alias in _layer.aliases:
            ALIASES[_alias] = _layer.op


def get_layer(op: str) -> LayerType:
    """The registry entry for ``op`` or one of its aliases; KeyError if unknown."""
    return REGISTRY[ALIASES.get(op, op)]


def is_layer(op: str) -> bool:
    return op in REGISTRY or op in ALIASES


def user_layer_names() -> list[str]:
    """Every name a spec may use as a layer type (aliases included)."""
    names = [op for op, layer in REGISTRY.items() if not layer.internal]
    return sorted(names + list(ALIASES))


__all__ = [
    "ALIASES",
    "FUSABLE_ACTIVATIONS",
    "REGISTRY",
    "Attr",
    "AttrError",
    "LayerType",
    "Shape",
    "ShapeError",
    "fmt_shape",
    "get_layer",
    "is_layer",
    "user_layer_names",
]
