"""The CPU's layout plan (runtime/backends/cpu/layout.py): an inference pass keeps a
depthwise conv's input and output channels-last where a 1x1 conv writes the one and only
1x1 convs, global average pools and gate multiplies read the other. Held to the reference
backend (float64) over hypothesis-drawn blocks, with and without squeeze-excitation, and
on whole networks against the same pass on planes."""

from __future__ import annotations

import dataclasses
from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import archc
from runtime.backends import cpu
from runtime.backends.cpu import conv, conv_depthwise, layout
from runtime.model import Model
from chain_cases import chains, conv_op, network


def _one(kind, inputs, output, in_shapes, out_shape):
    from layer_cases import one_op

    op, _ = one_op(kind, {}, list(in_shapes))
    return dataclasses.replace(op, name=output, inputs=inputs, output=output,
                               in_shapes=tuple(in_shapes), out_shape=out_shape)


@st.composite
def blocks(draw):
    """(program, batch): an inverted-residual block, maybe with squeeze-excitation between
    the depthwise conv and the projection (pool, 1x1 squeeze, 1x1 excite, gate multiply)."""
    program, batch = draw(chains())
    dw = program.ops[1] if program.ops[0].name == "expand" else None
    if dw is None or dw.out_shape[1] * dw.out_shape[2] == 1 or not draw(st.booleans()):
        return program, batch  # (a 1x1 map times a gate is not a gated map)
    ce, ho, wo = dw.out_shape
    ops, specs = [program.ops[0], dw], dict(program.params)
    ops.append(_one("global_avg_pool2d", ("d",), "s", [dw.out_shape], (ce, 1, 1)))
    for name, source, out, act in (("squeeze", "s", "q", ("relu", ())),
                                   ("excite", "q", "g", ("sigmoid", ()))):
        op, p = conv_op(name, {"out_channels": ce if name == "excite" else 2, "kernel_size": 1},
                      ops[-1].out_shape, (source,), out, act, True)
        ops.append(op), specs.update(p)
    order = [("d", dw.out_shape), ("g", (ce, 1, 1))][::draw(st.sampled_from([1, -1]))]
    ops.append(_one("multiply", tuple(name for name, _ in order), "m",
                    [shape for _, shape in order], dw.out_shape))
    outputs = {"y": "m"}
    if len(program.ops) == 3:
        project = program.ops[2]
        ops.append(dataclasses.replace(project, inputs=("m",) + project.inputs[1:]))
        outputs = {"y": project.output}
    return dataclasses.replace(program, ops=tuple(ops), outputs=outputs, params=specs), batch


@settings(max_examples=60, deadline=None)
@given(case=blocks(), data=st.data())
def test_channels_last_matches_reference(case, data):
    program, batch = case
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    params = {name: rng.standard_normal(spec.shape) for name, spec in program.params.items()}
    x = rng.standard_normal((batch,) + program.inputs["x"])
    expected = Model(program, "reference", dtype=np.float64, params=params).predict(x)
    # a channels-last 1x1 output split by channels or by positions among the threads
    split_bytes = data.draw(st.sampled_from([0, 1 << 30]))
    with patch.object(cpu, "CHAINS", False), \
            patch.object(conv_depthwise, "CHANNELS_LAST_MAX_WIDTH", 1 << 20), \
            patch.object(conv, "LAST_SPLIT_WEIGHT_BYTES", split_bytes):
        model = Model(program, "cpu", dtype=np.float32, params=params).eval()
        planned = model.channels_last(batch)
        got = model.predict(x.astype(np.float32))
    ops = {op.name: op for op in program.ops}
    dw = ops["depthwise"]
    # kept channels-last exactly where a 1x1 conv writes the depthwise conv's input, unless
    # the block's result is the depthwise output or its gated product (the network's
    # output: planes)
    expected_plan = "expand" in ops and dw.attrs["dilation"] == (1, 1) \
        and program.outputs["y"] not in ("d", "m")
    assert (dw.output in planned) == expected_plan
    if expected_plan:
        assert "e" in planned and program.outputs["y"] not in planned
    scale = max(np.abs(expected).max(), 1e-6)
    # plus the float32 activations' own absolute error (activation_scalars.py: the
    # sigmoid's 6e-8, times the input for SiLU), which tiny outputs do not scale
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * scale + 1e-6)


@pytest.mark.parametrize("spec, batch, planned", [
    # squeeze-excitation blocks: the expansion, depthwise and gate outputs of 15 blocks
    ("specs/efficientnet.yaml", 1, 45),
    # at 64x64, the 11 blocks on maps of 4x4 and 2x2 run no chain at batch 1 (too few
    # positions to split among the threads): the plan keeps their expansion and depthwise
    # outputs channels-last; the chains run the others
    ("specs/mobilenet_v2.yaml", 1, 22),
])
def test_networks_keep_planes_results(spec, batch, planned):
    """-O2 networks give the same results with the layout plan as on planes (and as the
    reference backend), and the plan covers the blocks it should."""
    graph, params = network(spec, resolution=64)
    graph64, params = graph, {k: v.astype(np.float32) for k, v in params.items()}
    model = archc.compile(graph64, backend="cpu", params=params).eval()
    x = np.random.default_rng(0).standard_normal((batch, 3, 64, 64)).astype(np.float32)
    assert len(model.channels_last(batch)) == planned
    got = model.predict(x)
    with patch.object(layout, "LAYOUTS", False):
        planes = archc.compile(graph64, backend="cpu", params=params).eval()
        assert planes.channels_last(batch) == frozenset()
        np.testing.assert_allclose(got, planes.predict(x), rtol=1e-4, atol=1e-5)
    reference = archc.compile(graph, backend="reference", params=params).eval()
    np.testing.assert_allclose(got, reference.predict(x), rtol=1e-4, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(case=blocks(), data=st.data())
def test_kernel_plans_follow_weights_batch_and_layout(case, data):
    """The decisions the depthwise and 1x1 convs make once per op and keep in the model
    (KernelContext.plans, conv._plan) give the results a fresh model gives: at another
    batch size, in the pass that keeps planes (``model(x)``) after the channels-last one,
    and after the weights are replaced (the plans hold no weights)."""
    program, batch = case
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    params = {name: rng.standard_normal(spec.shape).astype(np.float32)
              for name, spec in program.params.items()}
    x1, x3 = (rng.standard_normal((n,) + program.inputs["x"]).astype(np.float32)
              for n in (batch, batch + 2))
    with patch.object(cpu, "CHAINS", False), \
            patch.object(conv_depthwise, "CHANNELS_LAST_MAX_WIDTH", 1 << 20):
        model = Model(program, "cpu", dtype=np.float32, params=params).eval()
        first = model.predict(x1)
        assert any(isinstance(key[0], int) for key in model._kernel_plans)  # conv plans
        assert np.array_equal(model.predict(x1), first)
        fresh = Model(program, "cpu", dtype=np.float32, params=params).eval()
        np.testing.assert_array_equal(model.predict(x3), fresh.predict(x3))
        np.testing.assert_allclose(model(x1), first, rtol=1e-4,
                                   atol=1e-5 * max(np.abs(first).max(), 1.0))
        changed = {k: (v * rng.uniform(0.5, 1.5, v.shape)).astype(np.float32)
                   for k, v in params.items()}
        model.params = changed
        again = Model(program, "cpu", dtype=np.float32, params=changed).eval()
        np.testing.assert_array_equal(model.predict(x1), again.predict(x1))
