"""Memory planning: buffers reused by liveness, agreeing with the analysis' figure."""

from __future__ import annotations

import pytest

import archc
from archc.analysis import analyse
from archc.lower import lower
from conftest import SMALL_NETWORKS, SPECS
from runtime.memory import plan_memory


@pytest.mark.parametrize("spec", sorted(p.stem for p in SPECS.glob("*.yaml")))
def test_plan_agrees_with_analysis_and_never_overlaps_live_buffers(spec):
    graph = archc.load(SPECS / f"{spec}.yaml")
    program = lower(graph)
    plan = plan_memory(program, batch=2)
    assert plan.peak_bytes == analyse(graph, batch=2).totals["inference_peak_bytes"]
    assert plan.peak_bytes <= plan.arena_bytes <= plan.naive_bytes
    # liveness intervals, recomputed here independently
    order = list(program.inputs) + [op.output for op in program.ops]
    step = {n: i for i, n in enumerate(order)}
    last = {n: step[n] for n in order}
    for op in program.ops:
        for source in op.inputs:
            last[plan.owner[source]] = max(last[plan.owner[source]], step[op.output])
    for name in program.outputs.values():
        last[plan.owner[name]] = len(order)
    buffers = list(plan.sizes)
    for i, a in enumerate(buffers):
        for b in buffers[i + 1:]:
            alive_together = step[a] <= last[b] and step[b] <= last[a]
            apart = (plan.offsets[a] + plan.sizes[a] <= plan.offsets[b]
                     or plan.offsets[b] + plan.sizes[b] <= plan.offsets[a])
            assert not alive_together or apart, (a, b)


def test_chains_reuse_two_buffers_and_views_share():
    text = "input: {features: 100}\nlayers: [{linear: 100}, relu, identity, {linear: 100}, relu]\n"
    plan = plan_memory(lower(archc.load("c.yaml", text=text)))
    assert plan.arena_bytes == plan.peak_bytes == 2 * 400
    assert plan.offsets["identity"] == plan.offsets["relu"]
    assert plan.naive_bytes == 6 * 400


@pytest.mark.parametrize("spec, variables", SMALL_NETWORKS)
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_predict_frees_by_liveness_and_peaks_where_the_plan_says(spec, variables, backend):
    import numpy as np

    graph = archc.load(SPECS / f"{spec}.yaml", **variables)
    model = archc.compile(graph, backend=backend)
    shape = next(iter(model.program.inputs.values()))
    x = np.random.default_rng(0).standard_normal((2,) + shape).astype(np.float32)
    y = model.predict(x)
    np.testing.assert_array_equal(y, model(x))
    # measured on the arrays the kernels returned: the plan's peak, to the byte
    assert model.last_peak_bytes == model.memory_plan(2).peak_bytes
    with pytest.raises(RuntimeError, match="predict"):
        model.predict(x)
        model.backward(np.ones_like(y))


def test_the_runtime_examples_hold():
    """The runtime package is outside the doctest paths (its CUDA modules must not be
    imported before tests/conftest.py picks the simulator): its examples run here."""
    import doctest

    import runtime.memory

    assert doctest.testmod(runtime.memory).failed == 0
