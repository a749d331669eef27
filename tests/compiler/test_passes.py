"""Optimisation passes: each pass alone on small graphs, exact passes verified on every
library spec, properties over generated networks, and the factorisations' figures."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import archc
from archc.errors import UsageError
from archc.ir import GraphInvalid
from archc.lower import evaluator
from archc.optimize import initial_params, optimize
from archc.passes import (
    PASSES,
    for_training,
    parse_pipeline,
    preset,
    run_pass,
    run_passes,
    training_preset,
)
from archc.passes.check import EXACT_TOLERANCE, compare, randomize_batchnorm
from archc.passes.fold_bn import fold_weights
from archc.passes.separable import (
    channel_factors,
    depthwise_separable_weights,
    spatial_factors,
)
from conftest import LIBRARY, LIBRARY_SMALL, SPECS
from graphs import assert_same_graph

EXACT = [name for name, p in PASSES.items() if p.exact]


def load(text: str):
    return archc.load("net.yaml", text=text)


def params_for(graph, seed: int = 0):
    return randomize_batchnorm(graph, archc.compile(graph, seed=seed).params, seed)


def outputs_match(graph, params, optimised, new_params, shape=None, batch=3) -> float:
    rng = np.random.default_rng(7)
    x = {n: rng.standard_normal((batch,) + tuple(graph[n].shape)).astype(np.float32)
         for n in graph.inputs}
    return compare(graph, params, optimised, new_params, x if len(x) > 1 else next(iter(x.values())),
                   evaluator("cpu"))


CONV_BN_RELU = """
input: {channels: 3, height: 12, width: 12}
layers:
  - conv2d: {out_channels: 8, kernel_size: 3, padding: 1, bias: false}
  - batchnorm2d
  - relu
  - name: skip
    dropout: 0.3
  - conv2d: {out_channels: 8, kernel_size: 3, padding: 1}
  - batchnorm2d
  - add: [-1, skip]
  - relu6
  - global_avg_pool2d
  - flatten
  - linear: 16
  - batchnorm1d
  - {leaky_relu: 0.1}
  - linear: 4
"""


@pytest.mark.parametrize("name", EXACT)
def test_each_exact_pass_alone_keeps_the_function(name):
    graph = load(CONV_BN_RELU)
    params = params_for(graph)
    before = graph.copy()
    optimised, new_params, report = run_pass(graph, params, name)
    assert outputs_match(graph, params, optimised, new_params) < EXACT_TOLERANCE
    assert_same_graph(graph, before)  # the input graph is left as it was
    assert report.nodes == (len(graph), len(optimised))
    again, again_params, second = run_pass(optimised, new_params, name)  # idempotent
    assert second.changes == () and len(again) == len(optimised)


def test_o2_fuses_the_whole_block():
    graph = load(CONV_BN_RELU)
    params = params_for(graph)
    optimised, new_params, reports = run_passes(graph, params, preset(2))
    assert [n.op for n in optimised] == ["input", "conv2d", "conv2d", "global_avg_pool2d",
                                        "flatten", "linear", "linear"]
    first, second = optimised["conv2d"], optimised["conv2d_1"]
    assert first.attrs["activation"] == ("relu", ()) and first.attrs["bias"]
    assert second.inputs == ["conv2d", "conv2d"] or second.inputs[1] == "conv2d"
    assert second.attrs["activation"] == ("relu6", ())
    assert optimised["linear"].attrs["activation"] == ("leaky_relu", (("negative_slope", 0.1),))
    assert second.fused == ("batchnorm2d_1 (batchnorm2d)", "add (add)", "relu6 (relu6)")
    assert "batchnorm2d.weight" not in new_params and "conv2d.bias" in new_params
    assert outputs_match(graph, params, optimised, new_params) < EXACT_TOLERANCE
    by_name = {r.name: r for r in reports}
    assert by_name["fold_bn"].params[1] < by_name["fold_bn"].params[0]
    assert by_name["eliminate_identity"].changes == (
        "removed skip (dropout: the identity at inference)",)


def test_fold_bn_formula():
    # BN(W x + b) with s = gamma / sqrt(var + eps): weight s W, bias s (b - mean) + beta
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((4, 3, 2, 2)), rng.standard_normal(4)
    bn = {"weight": rng.uniform(0.5, 2, 4), "bias": rng.standard_normal(4),
          "running_mean": rng.standard_normal(4), "running_var": rng.uniform(0.5, 2, 4)}
    fw, fb = fold_weights("conv2d", 1, w, b, bn, 1e-5)
    s = bn["weight"] / np.sqrt(bn["running_var"] + 1e-5)
    np.testing.assert_allclose(fw, w * s[:, None, None, None])
    np.testing.assert_allclose(fb, (b - bn["running_mean"]) * s + bn["bias"])


@pytest.mark.parametrize("groups", [1, 2])
def test_fold_bn_into_a_transposed_conv(groups):
    graph = load(f"""
input: {{channels: 4, height: 5, width: 5}}
layers:
  - conv_transpose2d: {{out_channels: 6, kernel_size: 2, stride: 2, groups: {groups}}}
  - batchnorm2d
""")
    params = params_for(graph)
    optimised, new_params, report = run_pass(graph, params, "fold_bn")
    assert len(optimised) == 2 and report.changes
    assert outputs_match(graph, params, optimised, new_params) < EXACT_TOLERANCE


def test_what_is_not_fused():
    graph = load("""
input: {channels: 3, height: 8, width: 8}
layers:
  - name: c
    conv2d: {out_channels: 4, kernel_size: 3, padding: 1}
  - name: bn
    batchnorm2d: {track_running_stats: false}
  - name: r
    relu:
    input: c
  - name: m
    max_pool2d: 2
    input: c
  - conv2d: {out_channels: 4, kernel_size: 3, padding: 1}
    input: bn
  - add: [-1, r]
outputs: [c, -1, m]
""")
    optimised, _, reports = run_passes(graph, None, preset(2))
    # c feeds three layers and is an output, bn uses batch statistics: nothing to fold or
    # fuse into c; the last conv takes r as its residual
    assert {"c", "bn", "r"} <= set(optimised.nx)
    assert optimised["conv2d"].inputs == ["bn", "r"]
    assert set(optimised.outputs) == set(graph.outputs)


def test_eliminate_dead_and_simplify_reshape():
    graph = load("""
input: {channels: 2, height: 4, width: 6}
layers:
  - name: p1
    permute: [0, 1, 3, 2]
  - permute: [0, 1, 3, 2]
  - flatten
  - reshape: [6, 8]
  - name: unused
    relu:
    input: input
  - name: same
    reshape: [6, 8]
    input: -2
  - flatten
""")
    params = params_for(graph)
    optimised, new_params, reports = run_passes(graph, params, preset(1))
    assert [n.op for n in optimised] == ["input", "flatten"]
    assert outputs_match(graph, params, optimised, new_params) == 0.0
    changes = [c for r in reports for c in r.changes]
    assert "removed unused (no output depends on it)" in changes
    assert any(c.startswith("composed p1 and permute") for c in changes)


def test_pass_errors_are_clear():
    with pytest.raises(UsageError, match="unknown pass 'fuse_relu'"):
        parse_pipeline("fuse_relu")
    with pytest.raises(UsageError, match="has no option 'rank'"):
        run_passes(load(CONV_BN_RELU), None, parse_pipeline("separable:rank=2"))
    with pytest.raises(UsageError, match="budget.*between 0 and 1"):
        run_passes(load(CONV_BN_RELU), {}, parse_pipeline("low_rank:budget=2"))
    with pytest.raises(UsageError, match="works on trained weights"):
        run_passes(load(CONV_BN_RELU), None, parse_pipeline("low_rank"))


def test_a_pass_that_breaks_the_graph_is_named(monkeypatch):
    def broken(graph, params, options):
        from archc.passes import PassResult

        out = graph.copy()
        out.outputs = {"x": "nowhere"}
        return PassResult(out, params)

    monkeypatch.setitem(PASSES, "fold_bn", PASSES["fold_bn"].__class__(
        "fold_bn", broken, "", 1, True))
    with pytest.raises(GraphInvalid, match="pass 'fold_bn' broke the graph.*after: "
                       "eliminate_identity, simplify_reshape, eliminate_dead"):
        run_passes(load(CONV_BN_RELU), None, preset(1))


# --------------------------------------------------------------------- every library spec


@pytest.mark.parametrize("spec", LIBRARY)
def test_exact_passes_keep_every_library_network(spec):
    graph = archc.load(f"specs/{spec}.yaml", **LIBRARY_SMALL.get(spec, {}))
    params = params_for(graph)
    # the fusions also on their own, where batch norms stay between convs and activations
    unfolded, unfolded_params, _ = run_passes(graph, params,
                                              parse_pipeline("fuse_add,fuse_activation"))
    assert outputs_match(graph, params, unfolded, unfolded_params, batch=1) < EXACT_TOLERANCE
    optimised, new_params, reports = run_passes(graph, params, preset(2))
    assert outputs_match(graph, params, optimised, new_params, batch=2) < EXACT_TOLERANCE
    assert set(optimised.outputs) == set(graph.outputs)
    assert not [n for n in optimised if n.op.startswith("batchnorm")
                and optimised[n.inputs[0]].op in ("conv2d", "linear", "conv_transpose2d")
                and n.attrs["track_running_stats"]
                and len(optimised.users(n.inputs[0])) == 1]
    again, _, second = run_passes(optimised, new_params, preset(2))
    assert all(not r.changes for r in second)
    assert_same_graph(again, optimised)


# --------------------------------------------------------------------- generated networks
@st.composite
def networks(draw):
    """A chain of conv/linear layers with batch norms, activations, dropouts and residual
    adds, as spec text."""
    lines = ["input: {channels: 3, height: 6, width: 6}", "layers:"]
    width = 3
    for i in range(draw(st.integers(1, 5))):
        out = draw(st.sampled_from([3, 4]))
        groups = draw(st.sampled_from([1, out])) if out == width else 1
        lines.append(f"  - name: c{i}\n    conv2d: {{out_channels: {out}, kernel_size: "
                     f"{draw(st.sampled_from([1, 3]))}, padding: same, groups: {groups}, "
                     f"bias: {str(draw(st.booleans())).lower()}}}")
        if draw(st.booleans()):
            lines.append("  - batchnorm2d")
        if out == width and i > 0 and draw(st.booleans()):
            other = draw(st.sampled_from((["input"] if out == 3 else []) + [f"c{i - 1}"]))
            lines.append(f"  - add: [-1, {other}]")
        act = draw(st.sampled_from(["", "relu", "silu", "hardswish", "{leaky_relu: 0.2}",
                                    "sigmoid", "tanh", "gelu"]))
        if act:
            lines.append(f"  - {act}")
        if draw(st.booleans()):
            lines.append("  - dropout: 0.1")
        width = out
    lines += ["  - flatten", "  - linear: 5"]
    if draw(st.booleans()):
        lines += ["  - batchnorm1d", "  - relu"]
    return "\n".join(lines) + "\n"


@settings(max_examples=25)
@given(text=networks(), seed=st.integers(0, 100))
def test_passes_on_generated_networks(text, seed):
    graph = load(text)
    params = params_for(graph, seed)
    optimised, new_params, _ = run_passes(graph, params, preset(2))
    # the same outputs, the same function, no foldable batch norm left, idempotent
    assert set(optimised.outputs) == set(graph.outputs)
    assert outputs_match(graph, params, optimised, new_params) < EXACT_TOLERANCE
    for node in optimised:
        if node.op.startswith("batchnorm"):
            source = optimised[node.inputs[0]]
            assert source.op not in ("conv2d", "linear") or len(optimised.users(source.name)) > 1 \
                or source.attrs.get("activation") is not None or len(source.inputs) > 1
    again, _, reports = run_passes(optimised, new_params, preset(2))
    assert not any(r.changes for r in reports)


# --------------------------------------------------------------------- factorisations
def test_separable_factor_is_the_seeds_formula():
    graph = archc.load("specs/vgg16.yaml", resolution=64)
    optimised, _, report = run_pass(graph, None, "separable", {"match": "features.2|features.28"})
    layers = {row["layer"]: row for row in report.layers}
    assert set(layers) == {"features.2", "features.28"}
    for name, c_out in (("features.2", 64), ("features.28", 512)):
        assert layers[name]["macs_ratio"] == pytest.approx(1 / c_out + 1 / 9, abs=1e-6)
    assert report.macs[0] - report.macs[1] == sum(r["macs_before"] - r["macs_after"]
                                                  for r in report.layers)
    depthwise = optimised["features.2_depthwise"]
    assert depthwise.attrs["groups"] == 64 and optimised["features.2"].inputs == [depthwise.name]


def test_separable_weights_are_exact_for_a_separable_bank():
    rng = np.random.default_rng(0)
    w = np.einsum("oc,cij->ocij", rng.standard_normal((5, 3)), rng.standard_normal((3, 3, 3)))
    d, p, err = depthwise_separable_weights(w)
    np.testing.assert_allclose(np.einsum("oc,cij->ocij", p[:, :, 0, 0], d[:, 0]), w, atol=1e-12)
    assert err < 1e-12
    graph = load("input: {channels: 3, height: 7, width: 7}\nlayers: [{conv2d: {out_channels: 5, "
                 "kernel_size: 3, padding: 1, activation: relu}}]")
    params = params_for(graph)
    params["conv2d.weight"] = w.astype(np.float32)
    optimised, new_params, report = run_pass(graph, params, "separable")
    assert outputs_match(graph, params, optimised, new_params) < 1e-5
    assert optimised["conv2d"].attrs["activation"] == ("relu", ())


@pytest.mark.parametrize("mode", ["spatial", "channel"])
def test_low_rank_at_full_rank_is_exact(mode):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 4, 3, 3))
    rank = 12 if mode == "spatial" else 6  # min(C kh, O kw); min(O, C kh kw)
    first, second = (spatial_factors if mode == "spatial" else channel_factors)(w, rank)
    graph = load("input: {channels: 4, height: 9, width: 9}\nlayers: [{conv2d: {out_channels: 6, "
                 "kernel_size: 3, stride: 2, padding: 1}}]")
    params = params_for(graph)
    params["conv2d.weight"] = w.astype(np.float32)
    from archc.passes.separable import _plan, _split

    factored = graph.copy()
    plan = _plan(factored, factored["conv2d"], mode, rank)
    added = _split(factored, factored["conv2d"], *plan)
    archc.infer_shapes(factored)
    new = dict(params, **{f"{added}.weight": first.astype(np.float32),
                          "conv2d.weight": second.astype(np.float32)})
    assert outputs_match(graph, params, factored, new) < 1e-5


def test_low_rank_stays_within_its_budget(tmp_path):
    graph = archc.load("specs/lenet5.yaml")
    params = initial_params(graph, None)
    result = optimize(graph, parse_pipeline("low_rank:mode=channel:budget=0.2"), params,
                      verify=True, data="digits", batch=16)
    (report,) = result.reports
    assert report.layers and all(row["error"] <= 0.2 and row["macs_after"] < row["macs_before"]
                                 and row["measured_on"] == "outputs" for row in report.layers)
    assert report.macs[1] < report.macs[0]
    assert all(v.flags.c_contiguous for v in result.params.values())  # trainable as they are
    assert result.verified is None and result.differences["digits"] > 0  # approximate
    strict = optimize(graph, parse_pipeline("low_rank:budget=0.0001"), params, data="digits")
    assert not strict.reports[0].layers and "left alone" in strict.reports[0].notes[0]


def test_low_rank_without_data_measures_the_weights():
    graph = archc.load("specs/lenet5.yaml")
    params = initial_params(graph, None)
    optimised, new_params, report = run_pass(graph, params, "low_rank",
                                             {"mode": "channel", "budget": "0.5"})
    assert report.notes[0].startswith("no data given")
    assert report.layers and all(r["measured_on"] == "weights" and r["error"] <= 0.5
                                 for r in report.layers)
    for row in report.layers:  # the error the pass reports is the weights' own
        name = row["layer"]
        added = next(g[0] for g in report.groups if g[1] == name)
        w, a, b = params[f"{name}.weight"], new_params[f"{added}.weight"], new_params[f"{name}.weight"]
        approx = b.reshape(b.shape[0], -1) @ a.reshape(a.shape[0], -1)
        measured = np.linalg.norm(approx - w.reshape(w.shape[0], -1)) / np.linalg.norm(w)
        assert measured == pytest.approx(row["error"], abs=1e-5)


def test_training_passes_fuse_batch_norm_epilogues_and_keep_every_parameter():
    """archc train's graph: each batch norm takes the add and relu after it (the main
    branch's, not the 1x1 shortcut's, takes the residual); parameters keep their names, and
    training (batch statistics) computes the same outputs and gradients."""
    graph = archc.load(SPECS / "resnet20.yaml")
    fused = for_training(graph)
    assert [name for name, _ in training_preset()] == ["fuse_add", "fuse_activation"]
    assert {n.op for n in fused} == {"input", "conv2d", "batchnorm2d", "adaptive_avg_pool2d",
                                     "flatten", "linear"}
    block = fused["layer2.0.bn2"]
    assert block.inputs == ["layer2.0.conv2", "layer2.0.downsample.1"]
    assert block.attrs["activation"] == ("relu", ())
    assert fused["layer2.0.bn1"].attrs["activation"] == ("relu", ())
    assert fused["layer2.0.downsample.1"].attrs.get("activation") is None
    plain, fast = (archc.compile(g, backend="cpu", seed=4).train() for g in (graph, fused))
    assert plain.program.params.keys() == fast.program.params.keys()
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(plain(x), fast(x))  # the same sums in the same order
    gy = np.random.default_rng(1).standard_normal((4, 10)).astype(np.float32)
    want, got = plain.backward(gy), fast.backward(gy)
    np.testing.assert_array_equal(got.input, want.input)
    for name, value in want.params.items():
        np.testing.assert_array_equal(got.params[name], value, err_msg=name)


def test_fold_bn_moves_a_fused_batch_norm_epilogue_to_its_conv():
    graph = load(CONV_BN_RELU)
    params = params_for(graph)
    fused, fused_params, _ = run_passes(graph, params, training_preset())
    assert fused["batchnorm2d_1"].inputs == ["conv2d_1", "skip"]
    folded, new_params, report = run_pass(fused, fused_params, "fold_bn")
    conv = folded["conv2d_1"]
    assert conv.inputs[1] == "skip"
    assert conv.attrs["activation"] == ("relu6", ()) and "batchnorm2d_1" not in folded.nx
    assert folded["conv2d"].attrs["activation"] == ("relu", ())
    assert outputs_match(graph, params, folded, new_params) < EXACT_TOLERANCE


def test_fold_bn_leaves_a_batch_norm_whose_epilogue_its_layer_cannot_carry():
    graph = load("""
input: {channels: 4, height: 5, width: 5}
layers:
  - conv_transpose2d: {out_channels: 6, kernel_size: 2, stride: 2}
  - batchnorm2d: {activation: relu}
""")
    params = params_for(graph)
    optimised, _, report = run_pass(graph, params, "fold_bn")
    assert report.changes == () and len(optimised) == len(graph)
