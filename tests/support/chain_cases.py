"""Inverted-residual blocks as programs, for the tests of chains (conv_chain.py) and of
the layout plan (layout.py): a hypothesis strategy over small blocks and -O2 networks."""

from __future__ import annotations

import dataclasses

from hypothesis import strategies as st

import archc
from layer_cases import one_op
from runtime.program import Program

ACTIVATIONS = [None, ("relu6", ()), ("relu", ()), ("silu", ()),
               ("leaky_relu", (("negative_slope", 0.1),))]


def conv_op(name, attrs, in_shape, inputs, output, act, bias):
    op, program = one_op("conv2d", {**attrs, "in_channels": None, "bias": bias}, [in_shape])
    attrs = dict(op.attrs)
    if act is not None:
        attrs["activation"] = act
    params = {role: f"{name}.{role}" for role in op.params}
    specs = {f"{name}.{role}": spec for role, spec in program.params.items()}
    return dataclasses.replace(op, name=name, attrs=attrs, inputs=inputs, output=output,
                               params=params, in_shapes=(in_shape,) * len(inputs)), specs


@st.composite
def chains(draw):
    """(program, batch): x -> [expand 1x1] -> depthwise -> [project 1x1 (+ x)], at least
    one of the 1x1s."""
    expand, project = draw(st.sampled_from([(True, True), (True, False), (False, True)]))
    c = draw(st.integers(1 if expand else 2, 5))
    ce = draw(st.integers(2, 7)) if expand else c  # (one channel: an ordinary conv)
    k = draw(st.tuples(st.integers(1, 5), st.integers(1, 5)))
    stride = draw(st.tuples(st.integers(1, 3), st.integers(1, 3)))
    padding = draw(st.tuples(st.integers(0, 2), st.integers(0, 2)))
    h = max(1, k[0] - 2 * padding[0]) + draw(st.integers(0, 12))
    w = max(1, k[1] - 2 * padding[1]) + draw(st.integers(0, 12))
    ops, specs = [], {}
    source = "x"
    if expand:
        op, p = conv_op("expand", {"out_channels": ce, "kernel_size": 1}, (c, h, w), ("x",), "e",
                      draw(st.sampled_from(ACTIVATIONS)), draw(st.booleans()))
        ops.append(op), specs.update(p)
        source = "e"
    op, p = conv_op("depthwise", {"out_channels": ce, "kernel_size": k, "stride": stride,
                                "padding": padding, "groups": ce}, (ce, h, w), (source,), "d",
                  draw(st.sampled_from(ACTIVATIONS)), draw(st.booleans()))
    ops.append(op), specs.update(p)
    output = "d"
    if project:
        co = draw(st.integers(1, 6))
        ho, wo = op.out_shape[1:]
        residual = (co, ho, wo) == (c, h, w) and draw(st.booleans())
        op, p = conv_op("project", {"out_channels": co, "kernel_size": 1}, op.out_shape,
                      ("d", "x") if residual else ("d",), "y",
                      draw(st.sampled_from(ACTIVATIONS)), draw(st.booleans()))
        if residual:
            op = dataclasses.replace(op, in_shapes=(op.in_shapes[0], (c, h, w)))
        ops.append(op), specs.update(p)
        output = "y"
    program = Program("chain", {"x": (c, h, w)}, tuple(ops), {"y": output}, specs)
    return program, draw(st.integers(1, 3))


def network(spec: str, **variables):
    from archc.optimize import optimize
    from archc.passes import preset

    graph = archc.load(spec, **variables)
    model = archc.compile(graph, backend="cpu", seed=0)
    result = optimize(graph, preset(2), model.params)
    return result.graph, result.params
