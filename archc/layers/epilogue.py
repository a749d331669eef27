"""Epilogues: what a conv or linear layer may do to its output in the same kernel.

``y = activation(W x + b + residual)``: an optional second input added to the result (a
residual connection, ResNet's ``add``) and an optional activation, both applied while the
output is still in cache instead of in passes of their own. The optimisation passes
(``fuse_activation``, ``fuse_add``) write them; a spec may write them too
(``conv2d: {out_channels: 64, kernel_size: 3, activation: relu}``, as Keras's
``Conv2D(activation='relu')``). This module holds the rules the layer types share: the
attribute, the residual's shape check, the cost of the epilogue and its diagram text.
"""

from __future__ import annotations

from archc.layers.activation import Activation, activation_layer
from archc.layers.base import Attr, Optional, ShapeError, fmt_shape
from archc.layers.costs import FLOAT_BYTES, numel

ACTIVATION_ATTR = Attr(
    "activation", Optional(Activation()), None,
    "an activation applied to the output in the same kernel: relu, "
    "{leaky_relu: 0.2}, ... (fused; null: none)")


def check_residual(inputs: list, out: tuple, op: str) -> None:
    """A residual (second input) must have the output's shape: it is added element-wise."""
    if len(inputs) > 1 and tuple(inputs[1]) != tuple(out):
        raise ShapeError(
            f"the residual input of '{op}' has shape {fmt_shape(inputs[1])} but the output is "
            f"{fmt_shape(out)}; they are added element by element",
            input_index=1,
            hint="a residual must match the layer's output exactly (no broadcasting)")


def epilogue_flops(attrs: dict, inputs: list, out: tuple) -> int:
    """The residual add (one per output element) plus the activation's own FLOPs."""
    flops = numel(out) if len(inputs) > 1 else 0
    fused = activation_layer(attrs)
    if fused is not None:
        layer, act_attrs = fused
        flops += layer.cost.flops(act_attrs, [out], out)
    return flops


def epilogue_saved(attrs: dict, inputs: list, out: tuple) -> int:
    """Backward through a fused activation needs the value before it (float32)."""
    return FLOAT_BYTES * numel(out) if attrs.get("activation") is not None else 0


def epilogue_label(attrs: dict) -> str:
    """`` +relu`` for the diagram: the activation the kernel applies after its product (a
    residual shows as the edge coming in)."""
    return f" +{attrs['activation'][0]}" if attrs.get("activation") is not None else ""


def activation_text(value) -> str | dict | None:
    """The spec form of a normalised activation: ``relu``, or ``{leaky_relu: {...}}`` when
    it has attributes."""
    if value is None:
        return None
    op, items = value
    return {op: dict(items)} if items else op
