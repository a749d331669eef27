"""Receptive fields of every node, per axis: size, effective stride (jump) and centre.

The recurrence of Araujo, Norris and Sim, "Computing Receptive Fields of Convolutional
Neural Networks" (Distill, 2019). For a layer whose window on its input spans ``k``
pixels, steps ``s`` pixels and is centred at ``o`` for output pixel 0 (all from the layer
type's registry rule), with ``r``, ``j``, ``c`` the field's size, jump and centre at the
layer's input, measured in pixels of the network input::

    r_out = r_in + (k - 1) * j_in
    j_out = j_in * s
    c_out = c_in + o * j_in

Where paths merge (add, concat, multiply) the field is the union of the inputs' fields;
when the inputs step by different jumps, or their grids are offset by a fraction of a
jump, the union is reported with ``aligned = False`` (Distill: the paths disagree). A
node after global pooling, flattening or a linear layer sees the whole input
(``whole = True``), and has no size to print.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from archc.layers import get_layer

if TYPE_CHECKING:  # the IR's Graph imports the analysis for Graph.summary()
    from archc.ir import Graph


@dataclass(frozen=True)
class ReceptiveField:
    """The input region one output pixel of a node sees, per axis (height, width).

    ``start`` is the input coordinate of the first pixel of output pixel 0's field
    (negative: it reaches into the padding); ``centre`` its centre.

    Examples
    --------
    >>> rf = ReceptiveField(size=(7.0, 7.0), stride=(2.0, 2.0), centre=(0.0, 0.0))
    >>> rf.start
    (-3.0, -3.0)
    """

    size: tuple[float, float] = (1.0, 1.0)
    stride: tuple[float, float] = (1.0, 1.0)
    centre: tuple[float, float] = (0.0, 0.0)
    whole: bool = False
    aligned: bool = True

    @property
    def start(self) -> tuple[float, float]:
        return tuple(c - (r - 1) / 2 for c, r in zip(self.centre, self.size))

    def describe(self) -> str:
        """Short text for tables: ``7``, ``7x11``, ``whole`` (``*`` marks disagreeing paths)."""
        if self.whole:
            return "whole"
        h, w = (_fmt(v) for v in self.size)
        text = h if h == w else f"{h}x{w}"
        return text if self.aligned else text + "*"

    def to_dict(self) -> dict:
        if self.whole:
            return {"whole": True}
        return {"size": [_num(v) for v in self.size], "stride": [_num(v) for v in self.stride],
                "start": [_num(v) for v in self.start], "centre": [_num(v) for v in self.centre],
                "aligned": self.aligned}


WHOLE = ReceptiveField(whole=True)
INPUT_FIELD = ReceptiveField()


def _num(v: float) -> float | int:
    return int(v) if float(v).is_integer() else round(v, 4)


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.1f}"


def _union(fields: list[ReceptiveField]) -> ReceptiveField:
    if any(f.whole for f in fields):
        return WHOLE
    if len(fields) == 1:
        return fields[0]
    sizes, strides, centres, aligned = [], [], [], all(f.aligned for f in fields)
    for axis in range(2):
        lo = min(f.centre[axis] - (f.size[axis] - 1) / 2 for f in fields)
        hi = max(f.centre[axis] + (f.size[axis] - 1) / 2 for f in fields)
        jumps = {f.stride[axis] for f in fields}
        jump = max(jumps)
        phases = {round((f.centre[axis] - fields[0].centre[axis]) / jump, 9) % 1 for f in fields}
        aligned = aligned and len(jumps) == 1 and phases == {0.0}
        sizes.append(hi - lo + 1)
        strides.append(jump)
        centres.append((lo + hi) / 2)
    return ReceptiveField(tuple(sizes), tuple(strides), tuple(centres), False, aligned)


def receptive_fields(graph: Graph) -> dict[str, ReceptiveField]:
    """The receptive field of every node of a shape-inferred graph, by node name.

    Examples
    --------
    >>> import archc
    >>> g = archc.load("s.yaml", text="input: {channels: 1, height: 32, width: 32}\\n"
    ...                "layers: [{conv2d: [1, 3]}, {conv2d: [1, 3]}, {conv2d: [1, 3]}]")
    >>> receptive_fields(g)["conv2d_2"].size  # L stacked 3x3 convs: 1 + 2L
    (7.0, 7.0)
    """
    fields: dict[str, ReceptiveField] = {}
    for node in graph:
        layer = get_layer(node.op)
        if not node.inputs:
            fields[node.name] = INPUT_FIELD if len(node.shape) == 3 else WHOLE
            continue
        in_shapes = [graph[i].shape for i in node.inputs]
        positions = layer.rf_inputs if layer.rf_inputs is not None else range(len(node.inputs))
        sources = [fields[node.inputs[i]] for i in positions]
        step = layer.receptive_field(node.attrs, in_shapes)
        if step is None or len(node.shape) != 3:
            fields[node.name] = WHOLE
            continue
        steps = step if isinstance(step, list) else [step] * len(sources)  # per input
        mapped = []
        for field, step in zip(sources, steps):
            if field.whole:
                mapped.append(WHOLE)
                continue
            mapped.append(ReceptiveField(
                tuple(r + (k - 1) * j for r, k, j in zip(field.size, step.kernel, field.stride)),
                tuple(j * s for j, s in zip(field.stride, step.stride)),
                tuple(c + o * j for c, o, j in zip(field.centre, step.offset, field.stride)),
                False,
                field.aligned,
            ))
        fields[node.name] = _union(mapped)
    return fields


def covers_input(field: ReceptiveField, input_hw: tuple[int, int]) -> bool:
    """Whether output pixel 0's field already spans the whole input (in every axis)."""
    return field.whole or all(
        math.floor(s) <= 0 and math.ceil(s + r - 1) >= n - 1
        for s, r, n in zip(field.start, field.size, input_hw)
    )
