"""RoI Align and RoI Pool: the kernels (reference, CPU; CUDA in test_cuda.py) against the
definition written out point by point in float64 (tests/support/roi_naive.py), and their
backward passes against torch's autograd of that very definition, over boxes drawn inside,
on and across the border, degenerate, tiny and reversed; then the layers in a network."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import archc
from runtime.backends import roi
from runtime.backends.cpu import roi as cpu_roi
from runtime.errors import InputError
from tests.support import roi_naive

SCALES = (1.0, 0.5, 0.25, 1 / 3)


@st.composite
def cases(draw, small=False):
    """(x, boxes, batch, scale, pooled, sampling_ratio, aligned)."""
    hi = 5 if small else 7
    n, c = draw(st.integers(1, 2)), 1 if small else draw(st.integers(1, 2))
    h, w = draw(st.integers(1, hi)), draw(st.integers(1, hi))
    scale = draw(st.sampled_from(SCALES))
    k = draw(st.integers(1, 2 if small else 3))

    def coordinate(extent):
        span = extent / scale
        return draw(st.one_of(
            st.floats(0, span),                       # inside
            st.sampled_from([0.0, span, span - 0.5]),  # on the border
            st.floats(-span, 2 * span),                # across it
        ))

    boxes = []
    for _ in range(k):
        x1, y1 = coordinate(w), coordinate(h)
        kind = draw(st.sampled_from(["box", "box", "degenerate", "tiny", "reversed"]))
        if kind == "box":
            x2, y2 = coordinate(w), coordinate(h)
            x1, x2 = min(x1, x2), max(x1, x2)
            y1, y2 = min(y1, y2), max(y1, y2)
        elif kind == "degenerate":
            x2, y2 = x1, y1
        elif kind == "tiny":
            x2, y2 = x1 + 0.01, y1 + 0.02
        else:
            x2, y2 = x1 - 1.5, y1 - 0.5
        boxes.append((x1, y1, x2, y2))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = rng.standard_normal((n, c, h, w))
    batch = rng.integers(0, n, k)
    pooled = (draw(st.integers(1, 2 if small else 3)), draw(st.integers(1, 2 if small else 3)))
    sampling = draw(st.sampled_from([-1, 0, 1, 2] if small else [-1, 0, 1, 2, 3]))
    return x, np.array(boxes), batch, scale, pooled, sampling, draw(st.booleans())


def naive_align(x, boxes, batch, scale, pooled, sampling, aligned, lib=np):
    return roi_naive.stack(roi_naive.roi_align(x, boxes, batch, scale, pooled, sampling,
                                               aligned), lib)


@settings(max_examples=150, deadline=None)
@given(cases())
def test_roi_align_forward_matches_the_definition(case):
    x, boxes, batch, scale, pooled, sampling, aligned = case
    expected = naive_align(x, boxes, batch, scale, pooled, sampling, aligned)
    grid = roi.adaptive_grid(sampling)
    ref = roi.align_forward(x, boxes, batch, scale, pooled, grid, aligned)
    np.testing.assert_allclose(ref, expected, rtol=1e-12, atol=1e-12)
    fast = cpu_roi.align_forward(x.astype(np.float32), boxes, batch, scale, pooled, grid, aligned)
    np.testing.assert_allclose(fast, expected, rtol=1e-5, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(cases(small=True))
def test_roi_align_backward_is_torch_autograd_of_the_definition(case):
    torch = pytest.importorskip("torch")
    x, boxes, batch, scale, pooled, sampling, aligned = case
    xt = torch.tensor(x, requires_grad=True)
    out = naive_align(xt, boxes, batch, scale, pooled, sampling, aligned, lib=torch)
    gy = np.random.default_rng(3).standard_normal(tuple(out.shape))
    if out.requires_grad:  # no sample landed on the map: no path from x
        out.backward(torch.tensor(gy))
    expected = xt.grad.numpy() if xt.grad is not None else np.zeros_like(x)
    grid = roi.adaptive_grid(sampling)
    ref = roi.align_backward(gy, boxes, batch, scale, grid, aligned, x.shape)
    np.testing.assert_allclose(ref, expected, rtol=1e-12, atol=1e-12)
    fast = cpu_roi.align_backward(gy.astype(np.float32), boxes, batch, scale, grid, aligned,
                                  x.shape)
    np.testing.assert_allclose(fast, expected, rtol=1e-5, atol=1e-5)


@settings(max_examples=150, deadline=None)
@given(cases())
def test_roi_pool_forward_matches_the_definition(case):
    x, boxes, batch, scale, pooled, _, _ = case
    expected = roi_naive.stack(roi_naive.roi_pool(x, boxes, batch, scale, pooled), np)
    for pool in (roi.pool_forward, cpu_roi.pool_forward):
        y, where = pool(x, boxes, batch, scale, pooled)
        np.testing.assert_array_equal(y, expected)
        # each position holds the value reported (or -1 where the bin is empty)
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        for k, c, p, q in zip(*np.nonzero(where >= 0)):
            assert flat[batch[k], c, where[k, c, p, q]] == y[k, c, p, q]
        assert (y[where < 0] == 0).all()


@settings(max_examples=40, deadline=None)
@given(cases(small=True))
def test_roi_pool_backward_is_torch_autograd_of_the_definition(case):
    torch = pytest.importorskip("torch")
    x, boxes, batch, scale, pooled, _, _ = case
    xt = torch.tensor(x, requires_grad=True)
    out = roi_naive.stack(roi_naive.roi_pool(xt, boxes, batch, scale, pooled), torch)
    gy = np.random.default_rng(4).standard_normal(tuple(out.shape))
    if out.requires_grad:
        out.backward(torch.tensor(gy))
    expected = xt.grad.numpy() if xt.grad is not None else np.zeros_like(x)
    for pool, back in ((roi.pool_forward, roi.pool_backward),
                       (cpu_roi.pool_forward, cpu_roi.pool_backward)):
        _, where = pool(x, boxes, batch, scale, pooled)
        np.testing.assert_allclose(back(gy, where, batch, x.shape), expected, atol=1e-12)


def test_fpn_levels_follow_the_papers_mapping():
    # k = floor(4 + log2(sqrt(w h) / 224)), clamped to P2..P5
    boxes = np.array([[0, 0, 224, 224], [0, 0, 112, 112], [0, 0, 111, 111], [0, 0, 448, 448],
                      [0, 0, 2000, 2000], [0, 0, 1, 1], [5, 5, 5, 5], [0, 0, 56, 56]], float)
    scales = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
    assert roi.levels(boxes, scales, 224, 4).tolist() == [2, 1, 0, 3, 3, 0, 0, 0]


def test_hostile_boxes_get_a_clear_error():
    x = np.zeros((1, 1, 4, 4), np.float32)
    with pytest.raises(InputError, match="NaN or infinite"):
        cpu_roi.align_forward(x, np.array([[0, 0, np.nan, 1.0]]), np.zeros(1, int), 1.0,
                              (2, 2), 0, False)
    with pytest.raises(InputError, match="samples per bin side"):
        cpu_roi.align_forward(x, np.array([[0, 0, 1e9, 1e9]]), np.zeros(1, int), 1.0,
                              (2, 2), 0, False)
    with pytest.raises(InputError, match="image 3 of a batch of 1"):
        cpu_roi.pool_forward(x, np.array([[0, 0, 1.0, 1.0]]), np.array([3]), 1.0, (2, 2))


FAST_RCNN = """
name: tiny_fast_rcnn
inputs:
  image: {channels: 3, height: 32, width: 32}
  boxes: {shape: [5, 4]}
layers:
  - conv2d: [8, 3, 1, 1]
    input: image
  - relu:
    name: c2
  - max_pool2d: 2
  - conv2d: [8, 3, 1, 1]
    name: c3
  - max_pool2d: 2
    name: c4
  - roi_align: {output_size: 3, spatial_scale: [1/2, 1/4], sampling_ratio: 2}
    inputs: [c3, c4, boxes]
    name: pooled
  - roi_pool: {output_size: 2, spatial_scale: 1/2}
    inputs: [c3, boxes]
    name: coarse
  - flatten:
    input: pooled
  - linear: 16
  - relu
  - linear: 4
    name: cls
outputs: {cls: cls, coarse: coarse}
"""


def _inputs(seed=0, n=2, r=5):
    rng = np.random.default_rng(seed)
    boxes = rng.uniform(0, 24, (n, r, 4)).astype(np.float32)
    boxes[..., 2:] = boxes[..., :2] + rng.uniform(1, 40, (n, r, 2))
    return {"image": rng.standard_normal((n, 3, 32, 32)).astype(np.float32), "boxes": boxes}


def test_region_layers_run_per_box_and_agree_across_backends():
    graph = archc.load("fast.yaml", text=FAST_RCNN)
    assert graph["pooled"].items == 5 and graph["cls"].items == 5 and graph["c4"].items == 1
    x = _inputs()
    results = {}
    for backend in ("reference", "cpu"):
        model = archc.compile(graph, backend=backend, seed=1).train()
        y = model(x)
        assert y["cls"].shape == (2, 5, 4) and y["coarse"].shape == (2, 5, 8, 2, 2)
        grads = model.backward({"cls": np.ones((2, 5, 4), np.float32),
                                "coarse": np.ones((2, 5, 8, 2, 2), np.float32)})
        results[backend] = y, grads
    (ya, ga), (yb, gb) = results["reference"], results["cpu"]
    for key in ya:
        np.testing.assert_allclose(yb[key], ya[key], rtol=1e-4, atol=1e-5)
    for name in ga.params:
        np.testing.assert_allclose(gb.params[name], ga.params[name], rtol=1e-3, atol=1e-4)
    assert np.abs(ga.params["conv2d.weight"]).sum() > 0  # gradients reach the backbone


def test_a_pyramid_pools_each_box_from_its_level():
    graph = archc.load("fast.yaml", text=FAST_RCNN)
    model = archc.compile(graph, backend="cpu", seed=1).eval()
    x = _inputs(seed=2)
    values = model.intermediates(x)
    boxes, batch = roi.regions(x["boxes"])
    # at FPN's canonical 224 these boxes all map to the finest level: 20 spreads them
    attrs = dict(graph["pooled"].attrs, canonical_size=20)
    level = roi.levels(boxes, (1 / 2, 1 / 4), 20, 4)
    assert set(level.tolist()) == {0, 1}
    from runtime.program import Op

    op = Op("pooled", "roi_align", attrs, ("c3", "c4", "boxes"), "pooled", {}, (), (8, 3, 3))
    y = roi.align_layer(op, [values["c3"], values["c4"], x["boxes"]], roi.NUMPY)
    for i, scale, name in ((0, 1 / 2, "c3"), (1, 1 / 4, "c4")):
        rows = level == i
        alone = roi.align_forward(values[name], boxes[rows], batch[rows], scale, (3, 3), 2, False)
        np.testing.assert_allclose(y[rows], alone, rtol=1e-6)


def test_analysis_counts_every_box():
    graph = archc.load("fast.yaml", text=FAST_RCNN)
    report = graph.summary()
    by_name = {n.name: n for n in report.nodes}
    # the box head's first linear layer runs once per box: 5 x (72 x 16)
    assert by_name["linear"].macs == 5 * 72 * 16
    assert by_name["pooled"].activation_bytes == 4 * 5 * 8 * 3 * 3
    assert by_name["pooled"].items == 5
    from archc.analysis.table import format_summary

    assert "5 x 8x3x3" in format_summary(report)


def test_mixing_values_per_box_and_per_image_is_refused():
    text = FAST_RCNN.replace("  - flatten:\n    input: pooled",
                             "  - adaptive_avg_pool2d: 2\n    input: c4\n    name: small\n"
                             "  - add: [coarse, small]\n  - flatten")
    with pytest.raises(archc.SpecError, match="different numbers of items per image"):
        archc.load("bad.yaml", text=text)


def test_boxes_must_be_a_list_of_four_coordinates():
    text = FAST_RCNN.replace("boxes: {shape: [5, 4]}", "boxes: {shape: [5, 5]}")
    with pytest.raises(archc.SpecError, match="boxes as its last input"):
        archc.load("bad.yaml", text=text)


@pytest.mark.parametrize("options", ["sampling_ratio: 2", "sampling_ratio: 0, aligned: true, "
                                     "canonical_size: 10, canonical_level: 1"])
def test_onnx_runtime_computes_the_exported_region_layers_alike(options):
    ort = pytest.importorskip("onnxruntime")
    from archc.export.onnx import to_onnx

    text = FAST_RCNN.replace("sampling_ratio: 2", options)
    graph = archc.load("fast.yaml", text=text)
    model = archc.compile(graph, backend="cpu", seed=1).eval()
    x = _inputs(seed=3)
    if "canonical_size" in options:  # both pyramid levels hold boxes
        assert len(set(roi.levels(roi.regions(x["boxes"])[0], (1 / 2, 1 / 4), 10, 1))) == 2
    expected = model.predict(x)
    session = ort.InferenceSession(to_onnx(graph, model.params).SerializeToString())
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, x)))
    assert got.keys() == expected.keys()
    for key in got:
        assert got[key].shape == expected[key].shape
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-4, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(c=st.integers(1, 4), h=st.integers(1, 9), w=st.integers(1, 9), r=st.integers(1, 6),
       out=st.tuples(st.integers(1, 4), st.integers(1, 4)), op=st.sampled_from(["roi_align",
                                                                              "roi_pool"]))
def test_shape_rule_is_what_the_kernels_give(c, h, w, r, out, op):
    from archc.layers import get_layer

    layer = get_layer(op)
    attrs = layer.normalize({"output_size": list(out), "spatial_scale": 0.5})
    assert layer.infer_shape(attrs, [(c, h, w), (r, 4)]) == (c, *out)
    assert layer.items(attrs, [(c, h, w), (r, 4)]) == r
    x = np.ones((2, c, h, w), np.float32)
    boxes = np.tile(np.array([0, 0, 2 * w, 2 * h], np.float32), (2, r, 1))
    from runtime.program import Op

    run = roi.align_layer if op == "roi_align" else (
        lambda o, xs, impl: roi.pool_layer(o, xs, impl, {}))
    y = run(Op("n", op, attrs, ("x", "b"), "n", {}, (), (c, *out), items=r), [x, boxes], roi.NUMPY)
    assert y.shape == (2 * r, c, *out)
    for bad in ([(c, h, w), (r, 5)], [(c, h, w), (c, h, w)], [(h * w,), (r, 4)]):
        with pytest.raises(Exception, match="boxes|feature map|expects"):
            layer.infer_shape(attrs, bad)


SMALL_DETECTOR = {"resolution": 64, "width": 8, "blocks": [1, 1, 1, 1], "fpn_channels": 16,
                  "representation": 32, "proposals": 6, "num_classes": 4, "frozen_bn": True}


def test_a_small_faster_rcnn_runs_learns_and_exports():
    """specs/faster_rcnn.yaml thinned: the RPN head shared over five levels, a frozen
    backbone norm, the box head over a four-level RoI Align; a gradient step lowers the
    box head's loss, and ONNX Runtime computes what archc does."""
    from conftest import SPECS

    graph = archc.load(SPECS / "faster_rcnn.yaml", **SMALL_DETECTOR)
    model = archc.compile(graph, backend="cpu", seed=0).train()
    rng = np.random.default_rng(0)
    boxes = rng.uniform(0, 40, (2, 6, 4)).astype(np.float32)
    boxes[..., 2:] = boxes[..., :2] + rng.uniform(4, 24, (2, 6, 2))
    x = {"image": rng.standard_normal((2, 3, 64, 64)).astype(np.float32), "proposals": boxes}
    target = rng.standard_normal((2, 6, 16)).astype(np.float32)

    def loss_and_grads():
        y = model(x)
        diff = y["box_regression"] - target
        objectness = {f"objectness_p{k}": np.full_like(y[f"objectness_p{k}"], 1e-3)
                      for k in range(2, 7)}  # the RPN head learns from every level
        grads = model.backward({"box_regression": diff / diff.size, **objectness})
        return float((diff ** 2).mean() / 2), grads

    before, grads = loss_and_grads()
    assert np.abs(grads.params["rpn_p2.conv.weight"]).sum() > 0
    assert not any(k.startswith("backbone.body.bn1") for k in grads.params)  # frozen
    params = model.params
    for name, g in grads.params.items():
        params[name] = params[name] - 0.5 * g
    model.params = params
    after, _ = loss_and_grads()
    assert after < before
    ort = pytest.importorskip("onnxruntime")
    from archc.export.onnx import to_onnx

    model.eval()
    expected = model.predict(x)
    session = ort.InferenceSession(to_onnx(graph, model.params).SerializeToString())
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, x)))
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-3, atol=1e-4, err_msg=key)
