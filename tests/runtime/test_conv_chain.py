"""Inverted-residual chains (runtime/backends/cpu/conv_chain.py): a 1x1 expansion, a
depthwise conv and a 1x1 projection run as one kernel in inference, held to the reference
backend (float64) over hypothesis-drawn shapes, strides, paddings, activations, residuals,
chains lacking either 1x1, and any split of the rows into jobs and sub-bands."""

from __future__ import annotations

import dataclasses
from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import archc
from chain_cases import chains, conv_op, network
from runtime.backends import cpu
from runtime.backends.cpu import conv_chain
from runtime.model import Model
from runtime.program import Program

@pytest.mark.parametrize("last, tiles", [(False, True), (True, True), (True, False)],
                         ids=["planes", "channels-last", "channels-last-blas"])
@settings(max_examples=60, deadline=None)
@given(case=chains(), data=st.data())
def test_chain_matches_reference(last, tiles, case, data):
    """Either layout of the expanded rows (channels-last only with an expansion), its
    expansion in register tiles or by BLAS."""
    program, batch = case
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    params = {name: rng.standard_normal(spec.shape) for name, spec in program.params.items()}
    x = rng.standard_normal((batch,) + program.inputs["x"])
    expected = Model(program, "reference", dtype=np.float64, params=params).predict(x)

    model = Model(program, "cpu", dtype=np.float32, params=params).eval()
    with patch.object(conv_chain, "worth", lambda *args: True):  # on maps of any size
        heads, inside = model.chains(batch)
    assert len(heads) == 1 and len(inside) == len(program.ops) - 1
    (chain,) = heads.values()
    assert [op.name for op in chain.ops] == [op.name for op in program.ops]
    # any number of row chunks per sample and of rows per sub-band
    ho = chain.depthwise.out_shape[1]
    split = (data.draw(st.integers(1, ho + 1)), data.draw(st.integers(1, ho + 1)))
    with patch.object(conv_chain, "plan", lambda *args: split), \
            patch.object(conv_chain, "CHANNELS_LAST", last), \
            patch.object(conv_chain.conv_pointwise, "LAST_TILES", tiles):
        assert conv_chain.channels_last(chain) == (last and chain.expand is not None)
        got = model.predict(x.astype(np.float32))
    scale = max(np.abs(expected).max(), 1e-6)
    # plus the float32 activations' own absolute error (activation_scalars.py: the
    # sigmoid's 6e-8, times the input for SiLU), which tiny outputs do not scale
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * scale + 1e-6)


@pytest.mark.parametrize("spec, variables, chained", [
    ("specs/mobilenet_v2.yaml", {"resolution": 32, "width_mult": 0.25}, 17),
    ("specs/efficientnet.yaml", {"resolution": 33}, 15),  # expansion + depthwise (SE reads it)
    # depthwise, pointwise, depthwise, ...: each depthwise takes the pointwise after it (a
    # pointwise conv in two chains would run twice, and the second chain's input never)
    ("specs/mobilenet_v1.yaml", {"resolution": 32, "alpha": 0.25}, 13),
])
def test_networks_run_their_chains(spec, variables, chained):
    """-O2 MobileNetV2, EfficientNet-B0 and MobileNetV1 run every block as a chain, with
    the result of running their ops one by one and of the reference backend."""
    graph, params = network(spec, **variables)
    model = archc.compile(graph, backend="cpu", params=params).eval()
    x = np.random.default_rng(0).standard_normal((2, 3) + (variables["resolution"],) * 2)
    with patch.object(conv_chain, "worth", lambda *args: True):  # small maps, to be quick
        heads, _ = model.chains(2)
    assert len(heads) == chained
    calls = []
    kernel = model.chain_kernel
    model.chain_kernel = lambda *args: (calls.append(args[0].name), kernel(*args))[1]
    chained_out = model.predict(x)
    assert len(calls) == chained
    with patch.object(cpu, "CHAINS", False):
        alone = archc.compile(graph, backend="cpu", params=params).eval()
        assert alone.chains(2) == ({}, set())
        np.testing.assert_allclose(chained_out, alone.predict(x), rtol=1e-5, atol=1e-6)
    reference = archc.compile(graph, backend="reference", params=params).eval()
    np.testing.assert_allclose(chained_out, reference.predict(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spec, batch, chained, last", [
    # every block: the samples keep the threads busy; channels-last but the first (no
    # expansion: planes)
    ("specs/mobilenet_v2.yaml", 8, 17, 16),
    # one sample: the channels-last blocks (their rows split between the threads), not the
    # first block nor the four 7x7 ones (a few rows per thread: their GEMMs too small)
    ("specs/mobilenet_v2.yaml", 1, 12, 12),
    ("specs/mobilenet_v2.yaml", 2, 17, 16),
    # no projection in the chains (squeeze-excitation reads the depthwise): left to the
    # layout plan (layout.py), which keeps the same maps channels-last
    ("specs/efficientnet.yaml", 8, 0, 0),
    ("specs/efficientnet.yaml", 1, 0, 0),
])
def test_chains_where_they_pay(spec, batch, chained, last):
    graph, params = network(spec)
    model = archc.compile(graph, backend="cpu", params=params).eval()
    found = conv_chain.find_chains(model.program, batch, np.float32, threads=2)
    assert len(found) == chained
    assert sum(conv_chain.channels_last(chain) for chain in found) == last


def test_what_is_not_a_chain(monkeypatch):
    """No chain where the expanded map is read twice, where a 1x1 is padded or strided,
    for a training pass, or where archc tune measured another algorithm faster."""
    monkeypatch.setattr(conv_chain, "worth", lambda *args: True)  # on small maps
    c, h = 4, 9
    ops, specs = [], {}
    for name, attrs, shape, inputs, output in [
            ("expand", {"out_channels": 8, "kernel_size": 1}, (c, h, h), ("x",), "e"),
            ("depthwise", {"out_channels": 8, "kernel_size": 3, "padding": 1, "groups": 8},
             (8, h, h), ("e",), "d"),
            ("project", {"out_channels": c, "kernel_size": 1}, (8, h, h), ("d",), "y")]:
        op, p = conv_op(name, attrs, shape, inputs, output, ("relu6", ()), True)
        ops.append(op), specs.update(p)
    whole = Program("chain", {"x": (c, h, h)}, tuple(ops), {"y": "y"}, specs)
    found = conv_chain.find_chains(whole, 1, np.float32)
    assert [len(chain.ops) for chain in found] == [3]
    # the expanded map is an output too: the depthwise and the projection chain alone
    both = dataclasses.replace(whole, outputs={"y": "y", "e": "e"})
    assert [chain.describe() for chain in conv_chain.find_chains(both, 1, np.float32)] == [
        "depthwise + project"]
    # a padded 1x1 projection: the expansion and the depthwise only
    padded = dict(ops[2].attrs, pads=((1, 1), (1, 1)))
    odd = dataclasses.replace(whole, ops=(ops[0], ops[1], dataclasses.replace(
        ops[2], attrs=padded)))
    assert [chain.describe() for chain in conv_chain.find_chains(odd, 1, np.float32)] == [
        "expand + depthwise"]
    # a measured choice of another algorithm for the depthwise conv: no chain
    def choose(op, batch, train):
        return ("direct" if op.name == "depthwise" else "pointwise"), "measured"
    assert conv_chain.find_chains(whole, 1, np.float32, choose) == []
    # float64 SiLU is computed with NumPy, outside any kernel: not in a chain's epilogue
    silu = tuple(dataclasses.replace(op, attrs=dict(op.attrs, activation=("silu", ())))
                 for op in ops)
    assert conv_chain.find_chains(dataclasses.replace(whole, ops=silu), 1, np.float64) == []
    assert len(conv_chain.find_chains(dataclasses.replace(whole, ops=silu), 1, np.float32)) == 1
    # a training pass runs op by op
    model = Model(whole, "cpu").train()
    x = np.random.default_rng(0).standard_normal((1, c, h, h)).astype(np.float32)
    calls = []
    model.chain_kernel = lambda *args: calls.append(args)
    model.predict(x)
    assert calls == []


def test_bench_names_the_chain(monkeypatch):
    """archc bench (Model.profile) times a chain under its first op and says so."""
    monkeypatch.setattr(conv_chain, "worth", lambda *args: True)  # on small maps
    from archc.analysis import analyse
    from archc.profile import build_profile

    graph, params = network("specs/mobilenet_v2.yaml", resolution=32, width_mult=0.25)
    model = archc.compile(graph, backend="cpu", params=params).eval()
    x = np.zeros((1, 3, 32, 32), np.float32)
    times = model.profile(x, repeat=1)
    heads, inside = model.chains(1)
    for chain in heads.values():
        assert times[chain.name]["forward"] > 0
        assert all(op.name not in times for op in chain.ops[1:])
    profile = build_profile(model, analyse(graph, batch=1), times, repeat=1, profile=None)
    chained = {layer.name: layer.why for layer in profile.layers if layer.algorithm == "chain"}
    head = next(iter(heads.values()))
    assert "as one kernel" in chained[head.name]
    assert chained[head.ops[-1].name] == f"computed in {head.name}'s chain"
