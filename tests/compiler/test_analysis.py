"""Analysis numbers against references no one here wrote: torchvision's published counts,
PyTorch's own FLOP counter, the Distill receptive-field table, and a brute-force oracle
(the gradient support of one output pixel in a PyTorch twin of the graph)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

import archc
import torch_twins
from archc.analysis import analyse, format_summary, get_device, receptive_fields
from archc.analysis.memory import inference_peak
from archc.analysis.roofline import BUILT_IN, Device
from archc.errors import UsageError
from archc.layers import REGISTRY, get_layer
from conftest import SPECS

# torchvision's model documentation: parameters and GFLOPS (which are GMACs).
PUBLISHED = {
    "resnet18": (11_689_512, 1.81e9),
    "resnet50": (25_557_032, 4.09e9),
    "alexnet": (61_100_840, 0.71e9),
    "vgg16": (138_357_544, 15.47e9),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_parameters_exact_and_macs_within_one_percent(name):
    params, macs = PUBLISHED[name]
    totals = analyse(archc.load(SPECS / f"{name}.yaml")).totals
    assert totals["params"] == params == totals["trainable_params"]
    assert abs(totals["macs"] - macs) / macs < 0.01
    assert totals["flops"] == 2 * totals["macs"] + totals["elementwise_flops"]


def _flop_counter(op: str, attrs: dict, in_shapes: list) -> int:
    mod = torch_twins.module(op, attrs, in_shapes)
    with FlopCounterMode(display=False) as counter:
        mod(torch.zeros((1,) + tuple(in_shapes[0])))
    return counter.get_total_flops()


@settings(max_examples=40)
@given(c=st.integers(1, 4), groups=st.integers(1, 3), out=st.integers(1, 4), k=st.integers(1, 4),
       s=st.integers(1, 3), p=st.integers(0, 2), d=st.integers(1, 2), hw=st.integers(6, 14),
       transposed=st.booleans())
def test_conv_macs_match_pytorch_flop_counter(c, groups, out, k, s, p, d, hw, transposed):
    """torch.utils.flop_counter counts 2 x MACs for convolutions (bias excluded)."""
    op = "conv_transpose2d" if transposed else "conv2d"
    layer = get_layer(op)
    attrs = layer.normalize({"out_channels": out * groups, "kernel_size": k, "stride": s,
                             "padding": p, "dilation": d, "groups": groups})
    in_shapes = [(c * groups, hw, hw)]
    try:
        shape = layer.infer_shape(attrs, in_shapes)
    except Exception:
        assume(False)
    assume(min(shape) >= 1)
    assert 2 * layer.cost.macs(attrs, in_shapes, shape) == _flop_counter(op, attrs, in_shapes)


@given(i=st.integers(1, 50), o=st.integers(1, 50))
def test_linear_macs_match_pytorch_flop_counter(i, o):
    layer = get_layer("linear")
    attrs = layer.normalize({"out_features": o})
    assert 2 * layer.cost.macs(attrs, [(i,)], (o,)) == _flop_counter("linear", attrs, [(i,)])


def test_every_layer_states_its_cost_and_receptive_field():
    for op, layer in REGISTRY.items():
        assert layer.cost is not None and len(layer.cost.doc) > 15, op
        assert layer.receptive_field is not None, op


# ----------------------------------------------------------------------------- receptive fields
def rf_of(text: str, node: str | None = None):
    graph = archc.load("rf.yaml", text=text)
    fields = receptive_fields(graph)
    return fields[node or graph.nodes[-1].name]


def test_distill_table_alexnet_and_vgg16():
    alexnet = receptive_fields(archc.load(SPECS / "alexnet.yaml"))["features.12"]
    assert alexnet.size == (195, 195) and alexnet.stride == (32, 32)
    vgg = receptive_fields(archc.load(SPECS / "vgg16.yaml"))["features.30"]
    assert vgg.size == (212, 212) and vgg.stride == (32, 32)


@given(layers=st.integers(1, 12))
def test_stack_of_3x3_convs(layers):
    text = (f"input: {{channels: 1, height: 64, width: 64}}\nlayers:\n"
            f"  - conv2d: [1, 3, 1, 1]\n    repeat: {layers}\n")
    field = rf_of(text)
    assert field.size == (1 + 2 * layers,) * 2 and field.stride == (1, 1)


@pytest.mark.parametrize("layers, size, stride, start", [
    # the seeds' formula: RF = 1 + sum (k_l - 1) prod_{j<l} s_j
    ("[{conv2d: [1, 3, 2]}, {conv2d: [1, 3, 2]}, {conv2d: [1, 3]}]", 15, 4, 0),
    ("[{conv2d: {out_channels: 1, kernel_size: 3, dilation: 2}}]", 5, 1, 0),
    ("[{conv2d: {out_channels: 1, kernel_size: 3, dilation: 4, padding: 4}}]", 9, 1, -4),
    ("[{conv2d: [1, 7, 2, 3]}, {max_pool2d: [3, 2, 1]}]", 11, 4, -5),
    ("[{max_pool2d: 2}, {avg_pool2d: 2}]", 4, 4, 0),
    # Upsampling layers place an output pixel's field by the continuous coordinate map
    # (pixel centres), so its start may be fractional: output 0 of a 2x2/2 transposed conv
    # sits a quarter of an input pixel before input pixel 0.
    ("[{conv2d: [1, 5]}, {conv_transpose2d: [1, 2, 2]}]", 5, 0.5, -0.25),
    ("[{conv2d: [1, 3]}, {conv2d: [1, 3, 2]}, {upsample: 2}]", 5, 1, -0.5),
    ("[global_avg_pool2d]", None, None, None),
])
def test_hand_derived_fields(layers, size, stride, start):
    field = rf_of(f"input: {{channels: 1, height: 32, width: 32}}\nlayers: {layers}\n")
    if size is None:
        assert field.whole and field.describe() == "whole"
        return
    assert field.size == (size, size) and field.stride == (stride, stride)
    assert field.start == (start, start)


def gradient_support(graph, node: str, size: int) -> tuple[tuple[int, int], tuple[int, int], tuple]:
    """[first, last] input rows and columns that one output pixel of ``node`` depends on
    (positive weights, so nothing cancels), and that pixel's position."""
    twin = torch_twins.TorchGraph(graph).double().eval()
    with torch.no_grad():
        for p in twin.parameters():
            p.copy_(torch.rand_like(p) + 0.5)
    x = torch.ones((1, 1, size, size), dtype=torch.float64, requires_grad=True)
    out = twin(x)[node]
    oh, ow = out.shape[2] // 2, out.shape[3] // 2
    oh, ow = oh - oh % 2, ow - ow % 2  # an even position: transposed convs reach furthest there
    out[0, 0, oh, ow].backward()
    rows = torch.nonzero(x.grad[0, 0].abs().sum(1)).flatten()
    cols = torch.nonzero(x.grad[0, 0].abs().sum(0)).flatten()
    return (int(rows[0]), int(rows[-1])), (int(cols[0]), int(cols[-1])), (oh, ow)


def predicted_interval(field, pixel, axis, size):
    centre = field.centre[axis] + pixel * field.stride[axis]
    lo, hi = centre - (field.size[axis] - 1) / 2, centre + (field.size[axis] - 1) / 2
    return max(math.floor(lo + 1e-9), 0), min(math.ceil(hi - 1e-9), size - 1)


branch = st.lists(st.tuples(st.sampled_from([1, 3, 5]), st.sampled_from([1, 2])),
                  min_size=1, max_size=2)


@settings(max_examples=40)
@given(branches=st.lists(branch, min_size=2, max_size=3), merge=st.sampled_from(["add", "concat"]),
       pool_branch=st.booleans(), stride=st.sampled_from([1, 2]), head=st.sampled_from([1, 3]))
def test_multipath_union_matches_gradient_support(branches, merge, pool_branch, stride, head):
    lines = ["input: {channels: 1, height: 40, width: 40}", "layers:",
             "  - conv2d: [1, 3, 1, 1]", "    name: stem"]
    names = []
    for b, convs in enumerate(branches):
        for n, (k, d) in enumerate(convs):
            lines += [f"  - conv2d: {{out_channels: 1, kernel_size: {k}, dilation: {d}, "
                      f"padding: same, stride: {stride if n == 0 else 1}}}",
                      f"    name: b{b}_{n}"] + (["    input: stem"] if n == 0 else [])
        names.append(f"b{b}_{len(convs) - 1}")
    if pool_branch:
        lines += ["  - avg_pool2d: {kernel_size: 3, stride: %d, padding: 1}" % stride,
                  "    name: pool", "    input: stem"]
        assume(stride == 1)  # a strided 3x3 pool is only 'same' for odd sizes
        names.append("pool")
    lines += [f"  - {merge}: [{', '.join(names)}]", f"  - conv2d: [1, {head}]"]
    graph = archc.load("paths.yaml", text="\n".join(lines) + "\n")
    last = graph.nodes[-1].name
    field = receptive_fields(graph)[last]
    rows, cols, pixel = gradient_support(graph, last, 40)
    assert rows == predicted_interval(field, pixel[0], 0, 40)
    assert cols == predicted_interval(field, pixel[1], 1, 40)


def test_paths_that_disagree_on_alignment_are_reported():
    text = """input: {channels: 1, height: 32, width: 32}
layers:
  - conv2d: {out_channels: 1, kernel_size: 3, stride: 2, padding: same}
    name: a
  - conv2d: {out_channels: 1, kernel_size: 1, stride: 2}
    input: input
  - add: [a, -1]
"""
    field = rf_of(text)
    assert not field.aligned and field.describe().endswith("*")


def test_transposed_and_upsampled_fields_cover_their_gradient_support():
    text = """input: {channels: 1, height: 24, width: 24}
layers:
  - conv2d: [1, 3, 2, 1]
  - conv2d: [1, 3, 1, 1]
  - conv_transpose2d: [1, 3, 2]
  - upsample: {scale_factor: 2, mode: bilinear}
  - conv2d: [1, 3, 1, 1]
"""
    graph = archc.load("up.yaml", text=text)
    last = graph.nodes[-1].name
    field = receptive_fields(graph)[last]
    rows, cols, pixel = gradient_support(graph, last, 24)
    lo, hi = predicted_interval(field, pixel[0], 0, 24)
    assert lo <= rows[0] and rows[1] <= hi


def test_squeeze_excitation_makes_the_field_whole():
    text = """input: {channels: 4, height: 16, width: 16}
layers:
  - conv2d: [4, 3, 1, 1]
    name: x
  - global_avg_pool2d
  - conv2d: [4, 1]
  - sigmoid
  - multiply: [x, -1]
"""
    assert rf_of(text).whole


# ----------------------------------------------------------------------------- memory
def test_liveness_frees_tensors_after_their_last_use():
    text = """input: {features: 100}
layers:
  - linear: 10
    name: a
  - linear: 20
    name: b
  - linear: 30
    input: a
    name: c
  - concat: [b, c]
"""
    graph = archc.load("m.yaml", text=text)
    peak, trace = inference_peak(graph)
    # input 100 | +a 10 | +b 20 (input freed after a) | +c 30 | +concat 50
    assert [t // 4 for t in trace] == [100, 110, 30, 60, 100]
    assert peak == 4 * 110


def test_views_share_memory_and_batch_scales_activations():
    graph = archc.load("v.yaml", text="input: {channels: 2, height: 4, width: 4}\n"
                       "layers: [flatten, {linear: 8}, {reshape: [2, 4]}, identity]\n")
    assert inference_peak(graph)[0] == 4 * (32 + 8)
    one, four = analyse(graph), analyse(graph, batch=4)
    assert four.totals["inference_peak_bytes"] == 4 * one.totals["inference_peak_bytes"]
    assert four.totals["macs"] == 4 * one.totals["macs"]
    assert four.totals["params"] == one.totals["params"]


def test_training_memory_and_optimizer_state():
    text = """input: {channels: 3, height: 8, width: 8}
layers:
  - conv2d: [4, 3, 1, 1]
  - batchnorm2d
  - relu
  - max_pool2d: 2
  - flatten
  - linear: 10
    trainable: false
"""
    t = analyse(archc.load("t.yaml", text=text), batch=2).totals
    conv_in, map_ = 3 * 64, 4 * 64
    expected = (conv_in + (map_ + 8) + map_ + (map_ + 2 * 64) + 64) * 4 * 2
    # conv saves its input; bn its input + mean/std; relu its output; max pool its input
    # (float) and positions (int64); linear its input
    assert t["training_saved_bytes"] == expected
    assert t["frozen_params"] == 64 * 10 + 10
    trainable = t["trainable_params"]
    assert t["gradient_bytes"] == 4 * trainable
    assert t["optimizer_state_bytes"] == {"sgd": 0, "sgd_momentum": 4 * trainable,
                                          "adam": 8 * trainable}


# ----------------------------------------------------------------------------- roofline
def test_roofline_bound_and_devices():
    d = Device("toy", peak_flops=100.0, bandwidth=10.0, source="test")
    assert d.time(1000, 10) == (10.0, "compute")
    assert d.time(10, 1000) == (100.0, "memory")
    assert d.ridge == 10.0
    assert BUILT_IN["h200"].bandwidth > BUILT_IN["h100"].bandwidth
    report = analyse(archc.load(SPECS / "resnet18.yaml"), device=BUILT_IN["h100"])
    conv = report.node("layer1.0.conv1")
    relu = report.node("layer1.0.relu")
    assert conv.bound == "compute" and relu.bound == "memory"
    assert report.totals["latency_s"] == pytest.approx(sum(n.latency_s for n in report.nodes))


def test_cpu_profile_is_measured_once_and_cached(tmp_path, monkeypatch):
    import archc.analysis.roofline as roofline

    monkeypatch.setenv("ARCHC_CACHE_DIR", str(tmp_path))
    first = get_device("cpu")
    assert first.peak_flops > 1e8 and first.bandwidth > 1e8
    monkeypatch.setattr(roofline, "measure_cpu", lambda: pytest.fail("measured twice"))
    assert get_device("cpu") == first
    (tmp_path / "device-cpu.json").write_text("{broken")
    monkeypatch.setattr(roofline, "measure_cpu", lambda: first)
    assert get_device("cpu") == first


def test_unknown_device_is_a_user_error():
    with pytest.raises(UsageError, match="unknown device 'h1000'"):
        get_device("h1000")


# ----------------------------------------------------------------------------- report and table
def test_table_fits_100_columns_and_collapses():
    report = archc.load(SPECS / "resnet18.yaml").summary(device="h100")
    full = format_summary(report)
    assert max(len(line) for line in full.splitlines()) <= 100
    collapsed = format_summary(report, depth=1)
    table, _, slowest = collapsed.partition("Slowest layers on h100:")
    assert "layer1.0" not in table and "basic_block x2" in table
    assert slowest.count("conv2d") == 8 and "compute" in slowest
    assert len(collapsed.splitlines()) < len(full.splitlines()) - 50
    assert "11,689,512" in collapsed and "1.81G" in collapsed
    assert "435 px, stride 32, at layer4.1.relu_1" in collapsed.replace("\n  ", " ")


def test_json_schema():
    data = json.loads(json.dumps(analyse(archc.load(SPECS / "lenet5.yaml")).to_dict()))
    for key in ("params", "trainable_params", "macs", "flops", "activation_bytes", "param_bytes",
                "inference_peak_bytes", "training_saved_bytes", "gradient_bytes",
                "optimizer_state_bytes", "elementwise_flops"):
        assert key in data["totals"]
    node = next(n for n in data["nodes"] if n["name"] == "c3")
    assert node["output_shape"] == [16, 10, 10] and node["params"] == 2416
    assert node["macs"] == 16 * 10 * 10 * 6 * 25 and node["flops"] == 2 * node["macs"] + 1600
    assert node["receptive_field"] == {"size": [14, 14], "stride": [2, 2], "start": [0, 0],
                                       "centre": [6.5, 6.5], "aligned": True}
    assert data["outputs"]["fc3"]["receptive_field"] == {"whole": True}


def test_training_outputs_are_left_out_of_inference_but_not_of_training():
    """GoogLeNet with its auxiliary classifiers: torchvision's googlenet(aux_logits=True)
    has 13,004,888 parameters; inference runs 6,624,904 of them, at the cost of the
    network without the classifiers."""
    plain = analyse(archc.load(SPECS / "googlenet.yaml"), device=get_device("cpu"))
    aux = analyse(archc.load(SPECS / "googlenet.yaml", aux_logits=True), device=get_device("cpu"))
    t, p = aux.totals, plain.totals
    assert (t["params"], t["inference_params"]) == (13_004_888, 6_624_904)
    assert p["params"] == p["inference_params"] == 6_624_904
    for key in ("macs", "flops", "inference_peak_bytes", "param_bytes", "activation_bytes",
                "bytes_moved", "latency_s"):
        assert t[key] == p[key], key
    assert t["gradient_bytes"] == 4 * 13_004_888  # training trains them all
    assert t["training_saved_bytes"] > p["training_saved_bytes"]
    assert t["training_outputs"] == ["aux2", "aux1"] and "training_outputs" not in p
    flagged = {n.name for n in aux.nodes if n.training_only}
    assert flagged and all(name.startswith(("aux1.", "aux2.")) for name in flagged)
    assert {b.path for b in aux.blocks if b.training_only} == {"aux1", "aux1.conv", "aux2",
                                                               "aux2.conv"}
    text = format_summary(aux)
    assert "Training outputs aux2, aux1: 6,379,984 parameters of training-only layers" in text
    assert "aux1 (training)" in text
