"""Each CPU convolution algorithm against the reference backend (float64), forward with its
fused epilogue and backward, over hypothesis-drawn shapes that the algorithm is chosen
for: strides, asymmetric padding, dilation, channel multipliers, odd sizes, batch 1."""

from __future__ import annotations

from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layer_cases import one_op
from runtime.backends.activations import activation_code
from runtime.backends.cpu import conv, conv_direct, vector
from runtime.backends.reference import KERNELS as REF
from runtime.backends.reference_backward import BACKWARD as REF_BACKWARD
from runtime.context import KernelContext


def _depthwise(draw):
    c = draw(st.integers(2, 6))
    k = draw(st.tuples(st.integers(1, 5), st.integers(1, 5)))
    return c, {"out_channels": c * draw(st.integers(1, 3)), "groups": c, "kernel_size": k}


def _grouped(draw, kernel):
    """Channels and attributes of an ordinary (not depthwise) grouped conv."""
    groups = draw(st.integers(1, 3))
    c = groups * draw(st.integers(1 if groups == 1 else 2, 3))
    return c, {"out_channels": groups * draw(st.integers(1, 3)), "groups": groups,
               "kernel_size": kernel}


def _grid(draw):
    c, attrs = _grouped(draw, draw(st.tuples(st.integers(1, 4), st.integers(2, 4))))
    return c, {**attrs, "stride": (1, 1)}


def _direct(draw):
    # channels enough for whole blocks of 4 (the register tiles' rows) and a partial one
    groups = draw(st.integers(1, 2))
    c = groups * draw(st.integers(1 if groups == 1 else 2, 9))  # not depthwise
    return c, {"out_channels": groups * draw(st.integers(1, 9)), "groups": groups,
               "kernel_size": draw(st.tuples(st.integers(1, 4), st.integers(2, 4))),
               "stride": draw(st.tuples(st.integers(1, 3), st.integers(1, 3)))}


def _im2col(draw):
    c, attrs = _grouped(draw, draw(st.tuples(st.integers(1, 4), st.integers(1, 4))))
    stride = draw(st.sampled_from([(2, 1), (1, 2), (2, 2), (3, 2), (2, 3)]))
    return c, {**attrs, "stride": stride, "padding": draw(
        st.tuples(st.integers(1, 3), st.integers(0, 3)))}


def _pointwise(draw):
    c, attrs = _grouped(draw, (1, 1))
    return c, {**attrs, "padding": (0, 0), "dilation": (1, 1)}


def _winograd(draw):
    # a few channels, or a whole vector of 16 (the transforms' lanes) and a part of one
    channels = st.one_of(st.integers(1, 6), st.integers(16, 19))
    return draw(channels), {"out_channels": draw(channels), "kernel_size": (3, 3),
                            "stride": (1, 1), "dilation": (1, 1), "groups": 1}


CASES = {"depthwise": _depthwise, "direct": _direct, "grid": _grid, "im2col": _im2col,
         "pointwise": _pointwise, "winograd": _winograd}

# settings of the CPU backend per algorithm: Winograd on any map and channel count (its
# thresholds only say where it pays), with either tile size
_MODES = [(train, strided) for train in (False, True) for strided in (False, True)]
SETTINGS = {
    # in three passes over the batch, or fused in blocks of any number of tile rows
    "winograd": lambda draw: {"WINOGRAD_TILE": draw(st.sampled_from([2, 4])),
                              "WINOGRAD_MIN_TILES": 1, "WINOGRAD_MIN_CHANNELS": 1,
                              "WINOGRAD_PASS_BYTES": draw(st.sampled_from([0, 1 << 40])),
                              "WINOGRAD_FUSED_FILTER_BYTES": 1 << 40,
                              "WINOGRAD_BLOCK_BYTES": draw(st.integers(0, 1 << 16)),
                              # the weight gradient's blocks of tile rows, 1 to all
                              "WINOGRAD_GRAD_TILES": draw(st.integers(1, 12)),
                              # ... or im2col's, as from 256 channels
                              "WINOGRAD_GRAD_MAX_CHANNELS": draw(st.sampled_from([0, 128]))},
    # direct and grid take the same convs: the rule picks by channel count
    "direct": lambda draw: {"WINOGRAD_TILE": None,
                            "DIRECT_MAX_CHANNELS": dict.fromkeys(_MODES, 10**6),
                            # bands of any height and output channels in chunks
                            "split": lambda *args: (draw(st.integers(1, 4)),
                                                    draw(st.integers(1, 3))),
                            "weight_grad_band": lambda *args: draw(st.integers(1, 4)),
                            # the weight gradient in tiles, or the grid's / im2col's
                            "DIRECT_WEIGHT_GRAD_MAX_CHANNELS": draw(st.sampled_from([0, 10**6]))},
    "grid": lambda draw: {"WINOGRAD_TILE": None, "DIRECT_MAX_CHANNELS": dict.fromkeys(_MODES, 0),
                          "DIRECT_FEW_POSITIONS": 0},
    # the whole batch's matrix, or panel by panel
    "im2col": lambda draw: {"WINOGRAD_TILE": None,
                            "DIRECT_MAX_CHANNELS": dict.fromkeys(_MODES, 0),
                            "DIRECT_FEW_POSITIONS": 0,
                            "WHOLE_BATCH_IM2COL_BYTES": draw(st.sampled_from([0, 64 << 20]))},
}


@st.composite
def conv_case(draw, algorithm):
    c, attrs = CASES[algorithm](draw)
    attrs.setdefault("stride", draw(st.tuples(st.integers(1, 3), st.integers(1, 3))))
    attrs.setdefault("dilation", draw(st.tuples(st.integers(1, 3), st.integers(1, 3))))
    attrs.setdefault("padding", draw(st.one_of(
        st.tuples(st.integers(0, 3), st.integers(0, 3)), st.just("valid"))))
    attrs["bias"] = draw(st.booleans())
    (kh, kw), (dh, dw) = attrs["kernel_size"], attrs["dilation"]
    # maps from just big enough for one output to a few outputs more, odd sizes included
    h = (kh - 1) * dh + 1 + draw(st.integers(0, 9))
    w = (kw - 1) * dw + 1 + draw(st.integers(0, 9))
    if algorithm == "pointwise" and draw(st.booleans()):
        h = w = 1  # squeeze-excitation's convs: conv_pointwise.pointwise_vector_kernel
    return attrs, (c, h, w), draw(st.integers(1, 3))


@pytest.mark.parametrize("algorithm", sorted(CASES))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_algorithm_matches_reference(algorithm, data):
    settings_ = SETTINGS.get(algorithm, lambda draw: {"WINOGRAD_TILE": None})(data.draw)
    # every machine's register tiles (AVX2's 4 x 16, AVX-512's 4 x 32 and 8 x 32), of 4
    # or 8 output channels whatever a group has
    lanes = patch.object(vector, "LANES", data.draw(st.sampled_from([8, 16])))
    rows = patch.object(conv_direct, "WIDE_FROM", data.draw(st.sampled_from([1, 10**6])))
    with patch.multiple(conv, **settings_), lanes, rows:
        _check_algorithm(algorithm, data)


def _check_algorithm(algorithm, data):
    attrs, shape, batch = data.draw(conv_case(algorithm))
    op, _ = one_op("conv2d", {**attrs, "in_channels": None}, [shape])
    assert conv.choose(op, batch)[0] == algorithm
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    x = rng.standard_normal((batch,) + shape)
    params = {"weight": rng.standard_normal(_weight_shape(op, shape))}
    if attrs["bias"]:
        params["bias"] = rng.standard_normal(op.out_shape[0])
    residual = rng.standard_normal((batch,) + op.out_shape) if data.draw(st.booleans()) else None
    act = data.draw(st.sampled_from([None, ("relu6", {}), ("silu", {}),
                                     ("leaky_relu", {"negative_slope": 0.1})]))
    ctx = KernelContext()
    expected = REF["conv2d"](op, [x], params, ctx)
    if residual is not None:
        expected = expected + residual
    code, slope = activation_code(*act) if act else (-1, 0.0)
    if act:
        from runtime.backends.activations import reference_forward
        expected = reference_forward(act[0], act[1], expected)
    x32, p32 = x.astype(np.float32), {k: v.astype(np.float32) for k, v in params.items()}
    xs = [x32] + ([residual.astype(np.float32)] if residual is not None else [])
    # blocks of output rows as a 7x7 map at batch 1 gets them, here at any size; and the
    # 1x1 convs' blocks of columns of any width
    rows_split = patch.object(conv, "_row_blocks",
                              lambda rows, jobs: data.draw(st.integers(1, 4)))
    columns_split = patch.object(conv, "_split", lambda rows, columns, outer: (
        data.draw(st.integers(1, 300)), data.draw(st.integers(1, 4))))
    with rows_split, columns_split:
        got = conv._conv2d(op, xs, p32, ctx, code, slope)
    scale = max(np.abs(expected).max(), 1e-6)
    # relative to the largest value: float32 summation, or F(4x4)'s error (its transforms
    # multiply by up to 8: test_winograd_float32_error_is_measured_and_bounded)
    tol = 3e-5 if algorithm == "winograd" else 1e-5
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=tol * scale)

    gy = rng.standard_normal((batch,) + op.out_shape)
    ref_gx, ref_gp = REF_BACKWARD["conv2d"](op, [x], None, gy, params, ctx)
    with rows_split, columns_split:
        got_gx, got_gp = conv.conv2d_backward(op, [x32], None, gy.astype(np.float32), p32, ctx)
    np.testing.assert_allclose(got_gx[0], ref_gx[0], rtol=1e-4,
                               atol=tol * max(np.abs(ref_gx[0]).max(), 1.0))
    for key, value in ref_gp.items():
        np.testing.assert_allclose(got_gp[key], value, rtol=1e-4,
                                   atol=1e-5 * max(np.abs(value).max(), 1.0), err_msg=key)


def _weight_shape(op, shape):
    kh, kw = op.attrs["kernel_size"]
    return (op.out_shape[0], shape[0] // op.attrs["groups"], kh, kw)


@pytest.mark.parametrize("shape, stride, kernel, groups, batch, algorithm", [
    ((64, 56, 56), 1, 3, 1, 1, "winograd F(4x4"),
    ((64, 56, 56), 1, 3, 1, 8, "winograd F(4x4"),  # 14 MB of tiles: fused, per block
    ((128, 28, 28), 1, 3, 1, 8, "winograd F(4x4"),
    ((256, 14, 14), 1, 3, 1, 1, "direct"),  # 49 tiles of 2x2: too few
    ((256, 14, 14), 1, 3, 1, 2, "winograd F(2x2"),  # 32 tiles of 4x4 only
    ((128, 56, 56), 1, 3, 1, 8, "direct"),  # 28 MB of tiles, U too big to read per block
    # 16 tiles of 2x2: Winograd's transformed filters (16.8 MB) read for too little work
    ((512, 7, 7), 1, 3, 1, 1, "direct stride 1 with 49 positions"),
    ((512, 7, 7), 1, 3, 1, 8, "winograd F(2x2"),  # 32 tiles of 4x4 (F(4x4) as fast)
    ((16, 32, 32), 1, 3, 1, 128, "direct"),  # too few channels for Winograd
    ((32, 16, 16), 1, 3, 1, 128, "direct"),
    ((64, 8, 8), 1, 3, 1, 128, "winograd F(4x4"),
    ((64, 56, 56), 1, 3, 2, 1, "direct"),  # grouped
    ((64, 56, 56), 1, 5, 1, 1, "direct"),
    ((512, 14, 14), 1, 5, 1, 1, "im2col"),  # many channels: one GEMM of the whole batch
    ((512, 7, 7), 1, 5, 1, 1, "im2col"),
    ((1024, 7, 7), 1, 5, 2, 1, "grid"),  # grouped: no whole-batch im2col
    ((512, 7, 7), 1, 5, 1, 8, "im2col"),  # a grid 1.65x the map (5x5, padding 2: 121/49)
    ((64, 56, 56), 2, 3, 1, 1, "direct"),
    ((3, 224, 224), 2, 7, 1, 8, "direct"),  # a stem
    ((128, 28, 28), 2, 3, 1, 1, "im2col"),
    ((64, 56, 56), 1, 1, 1, 1, "pointwise"),
    ((96, 56, 56), 2, 3, 96, 1, "depthwise"),
])
def test_each_conv_gets_the_measured_algorithm(shape, stride, kernel, groups, batch, algorithm):
    op, _ = one_op("conv2d", {"out_channels": shape[0], "kernel_size": kernel, "stride": stride,
                              "padding": kernel // 2, "groups": groups, "in_channels": None},
                   [shape])
    name, why = conv.choose(op, batch)
    assert f"{name} {why}".startswith(algorithm) and why


def _resnet_layer(rng, c, h):
    """A ResNet 3x3 layer of c channels on an h x h map, batch 2: (op, x, w) in float64,
    unit-variance activations and filters scaled to keep them so."""
    op, _ = one_op("conv2d", {"out_channels": c, "kernel_size": 3, "padding": 1,
                              "in_channels": None}, [(c, h, h)])
    return op, rng.standard_normal((2, c, h, h)), rng.standard_normal((c, c, 3, 3)) / np.sqrt(9 * c)


def test_winograd_straight_line_transforms_are_the_matrices():
    """_bt2/_bt4/_at2/_at4/_a2 (the transforms written out, fewest operations) apply
    exactly B^T, A^T and A of F(2x2, 3x3) and F(4x4, 3x3)."""
    from runtime.backends.cpu import conv_winograd as cw
    two, four, five, eight = 2.0, 4.0, 5.0, 8.0
    cases = [(cw._bt2, cw.BT2, ()), (cw._bt4, cw.BT4, (two, four, five)),
             (cw._at2, cw.AT2, ()), (cw._at4, cw.AT4, (two, four, eight)),
             (cw._a2, cw.AT2.T, ())]
    for fn, matrix, constants in cases:
        for j in range(matrix.shape[1]):
            unit = np.eye(matrix.shape[1])[j]
            np.testing.assert_array_equal(np.array(fn(*unit, *constants)), matrix[:, j])


@pytest.mark.parametrize("m, bound", [(2, 2e-6), (4, 3e-5)])
def test_winograd_float32_error_is_measured_and_bounded(m, bound):
    """Winograd's float32 error against the float64 result, relative to the output's
    largest value, on ResNet's 3x3 layers (unit-variance activations, filters scaled to
    keep them so): F(2x2, 3x3) measured 4-7e-7, F(4x4, 3x3) 6e-6 to 1e-5 (its transforms
    multiply by up to 8 and divide by 24), direct summation 2-4e-7 (docs/performance.md)."""
    rng = np.random.default_rng(0)
    for c, h in [(64, 56), (256, 14)]:
        op, x, w = _resnet_layer(rng, c, h)
        expected = REF["conv2d"](op, [x], {"weight": w}, KernelContext())
        with patch.multiple(conv, WINOGRAD_TILE=m, WINOGRAD_MIN_TILES=1):
            assert conv.choose(op, 2)[0] == "winograd"
            got = conv.conv2d_forward(op, [x.astype(np.float32)], {"weight": w.astype(np.float32)},
                                      KernelContext())
        assert np.abs(got - expected).max() / np.abs(expected).max() < bound


def test_winograd_weight_gradient_error_is_measured_and_bounded():
    """F(3x3, 2x2)'s weight gradient in float32 against float64, relative to its largest
    value, on ResNet's 3x3 layers: measured 1-3e-7, as summing 9 taps directly (its
    transforms only add, subtract and halve)."""
    rng = np.random.default_rng(0)
    for c, h in [(64, 28), (128, 14)]:
        op, x, w = _resnet_layer(rng, c, h)
        gy = rng.standard_normal((2, c, h, h))
        _, expected = REF_BACKWARD["conv2d"](op, [x], None, gy, {"weight": w}, KernelContext())
        with patch.multiple(conv, WINOGRAD_MIN_TILES=1):
            assert conv.choose(op, 2, train=True)[0] == "winograd"
            _, got = conv.conv2d_backward(op, [x.astype(np.float32)], None,
                                          gy.astype(np.float32), {"weight": w.astype(np.float32)},
                                          KernelContext(train=True))
        error = np.abs(got["weight"] - expected["weight"]).max()
        assert error / np.abs(expected["weight"]).max() < 1e-6


@pytest.mark.parametrize("shape, stride, batch, algorithm", [
    ((16, 32, 32), 1, 128, "direct"),  # ResNet-20's stages
    ((32, 16, 16), 1, 128, "direct"),
    ((64, 8, 8), 1, 128, "winograd"),  # its filters transformed at each step: few
    ((128, 28, 28), 1, 8, "winograd"),  # ResNet-18's layer2
    ((256, 14, 14), 1, 8, "winograd"),
    ((256, 28, 28), 1, 8, "im2col"),  # the whole batch's matrix
    ((512, 7, 7), 1, 8, "im2col"),
    ((256, 14, 14), 1, 512, "grid"),  # a matrix over WHOLE_BATCH_IM2COL_BYTES
    ((16, 32, 32), 2, 128, "direct"),
    ((32, 16, 16), 2, 128, "direct"),
    ((64, 56, 56), 2, 8, "im2col"),
    ((3, 224, 224), 2, 8, "direct"),  # a stem (even with im2col)
])
def test_training_gets_the_measured_algorithm(shape, stride, batch, algorithm):
    op, _ = one_op("conv2d", {"out_channels": shape[0] * stride, "kernel_size": 3,
                              "stride": stride, "padding": 1, "in_channels": None}, [shape])
    assert conv.choose(op, batch, train=True)[0] == algorithm


@pytest.mark.parametrize("channels, trains", [(64, True), (128, True), (256, True),
                                             (512, False)])
def test_winograd_trains_only_where_its_filters_are_few(channels, trains):
    """A training step transforms the filters again after every update, twice (for the
    forward pass and the input gradient): worth it up to 256 channels."""
    op, _ = one_op("conv2d", {"out_channels": channels, "kernel_size": 3, "padding": 1,
                              "in_channels": None}, [(channels, 14, 14)])
    assert conv.choose(op, 8)[0] == "winograd"
    assert (conv.choose(op, 8, train=True)[0] == "winograd") == trains
    assert ("winograd" in conv.candidates(op, train=True)) == trains


@pytest.mark.parametrize("attrs", [
    {"out_channels": 8, "kernel_size": 3, "padding": 1},
    {"out_channels": 8, "kernel_size": 3, "padding": 1, "stride": 2},
    {"out_channels": 8, "kernel_size": 1},
    {"out_channels": 8, "kernel_size": 3, "padding": 1, "groups": 4},
])
def test_no_input_gradient_where_none_is_asked(attrs):
    """With ctx.input_grads False (a training step's first layer) every algorithm returns
    None for the input and the same weight gradient."""
    op, _ = one_op("conv2d", {**attrs, "in_channels": None}, [(4, 9, 9)])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 9, 9)).astype(np.float32)
    p = {"weight": rng.standard_normal(_weight_shape(op, (4, 9, 9))).astype(np.float32)}
    gy = rng.standard_normal((2,) + op.out_shape).astype(np.float32)
    for algorithm in conv.candidates(op, train=True):
        full = conv.conv2d_backward(op, [x], None, gy, p, KernelContext(train=True), algorithm)
        ctx = KernelContext(train=True, input_grads=False)
        lean = conv.conv2d_backward(op, [x], None, gy, p, ctx, algorithm)
        assert lean[0] == [None] and full[0][0] is not None, algorithm
        np.testing.assert_allclose(lean[1]["weight"], full[1]["weight"], rtol=1e-6)


@pytest.mark.parametrize("rows, columns, outer", [
    (24, 3136, 1), (96, 3136, 1), (32, 784, 1), (192, 784, 1), (96, 196, 1), (24, 3136, 8),
    (1280, 49, 1), (16, 12544, 1), (7, 33, 3),
])
def test_pointwise_jobs_share_the_work_evenly(rows, columns, outer):
    """The 1x1 kernel's jobs (columns per block, blocks of rows) give every thread the
    same work within 15%, or at least eight jobs a thread, and cover every output."""
    with patch.object(conv.numba, "get_num_threads", lambda: 2):
        block, row_blocks = conv._split_for(rows, columns, outer, 2)
    count = -(-columns // block)
    step = -(-rows // row_blocks)
    assert count * block >= columns and row_blocks * step >= rows
    jobs = outer * count * row_blocks
    if jobs >= 16:
        return
    work = [(min(columns, (j % count + 1) * block) - j % count * block)
            * max(0, min(rows, ((j // count) % row_blocks + 1) * step)
                  - (j // count) % row_blocks * step) for j in range(jobs)]
    shares = [sum(work[t * jobs // 2:(t + 1) * jobs // 2]) for t in range(2)]
    assert sum(work) == outer * rows * columns
    assert max(shares) * 2 <= 1.15 * sum(shares), (block, row_blocks, shares)


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 40), p=st.integers(1, 30), o=st.integers(1, 150), data=st.data())
def test_pointwise_register_tiles_match_a_matrix_product(k, p, o, data):
    """conv_pointwise.pointwise_last_tiles (a 1x1 conv's GEMM from planes to channels-last
    rows) over any block of positions and channels: whole tiles of 6 positions x 64
    channels, vectors of 16, the rest one by one."""
    from runtime.backends.cpu.conv_pointwise import pack_last, pointwise_last_tiles

    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    x = rng.standard_normal((k, p)).astype(np.float32)
    w = rng.standard_normal((o, k, 1, 1)).astype(np.float32)
    p_lo = data.draw(st.integers(0, p - 1))
    p_hi = data.draw(st.integers(p_lo + 1, p))
    o_lo = data.draw(st.integers(0, o - 1))
    o_hi = data.draw(st.integers(o_lo + 1, o))
    row0 = data.draw(st.integers(0, 3))
    out = np.full((row0 + p_hi - p_lo + 2, o), 7.0, dtype=np.float32)
    pointwise_last_tiles(x, pack_last(w), out, p_lo, p_hi, o_lo, o_hi, row0)
    expected = x[:, p_lo:p_hi].T.astype(np.float64) @ w[o_lo:o_hi, :, 0, 0].T.astype(np.float64)
    np.testing.assert_allclose(out[row0:row0 + p_hi - p_lo, o_lo:o_hi], expected, rtol=1e-4,
                               atol=1e-4 * max(1.0, np.abs(expected).max()))
    untouched = np.ones(out.shape, bool)
    untouched[row0:row0 + p_hi - p_lo, o_lo:o_hi] = False
    assert np.all(out[untouched] == 7.0)  # nothing written outside the block


@settings(max_examples=60, deadline=None)
@given(c=st.integers(1, 150), kernel=st.tuples(st.integers(1, 5), st.integers(1, 5)),
       stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       padding=st.tuples(st.integers(0, 2), st.integers(0, 2)), data=st.data())
def test_depthwise_channels_last_register_tiles(c, kernel, stride, padding, data):
    """conv_depthwise.depthwise_last_kernel (channels-last in and out) against a float64
    sum over the taps, over any number of channels (blocks of 64, vectors of 16, the rest
    one by one) and maps wide enough for the tiles of positions whose taps lie inside the
    map, and too narrow for any; bias or none, bands of any height."""
    from runtime.backends.cpu.conv_depthwise import depthwise_last_kernel

    (kh, kw), (sh, sw), (pt, pl) = kernel, stride, padding
    h = max(1, kh - 2 * pt) + data.draw(st.integers(0, 12))
    w = max(1, kw - 2 * pl) + data.draw(st.integers(0, 30))
    n = data.draw(st.integers(1, 2))
    ho, wo = (h + 2 * pt - kh) // sh + 1, (w + 2 * pl - kw) // sw + 1
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    wd = rng.standard_normal((kh * kw, c)).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32) if data.draw(st.booleans()) \
        else np.empty(0, np.float32)
    band = data.draw(st.integers(1, ho))
    got = depthwise_last_kernel(x, wd, kh, kw, sh, sw, pt, pl, ho, wo, bias, -1, 0.0, band)
    padded = np.pad(x.astype(np.float64), ((0, 0), (pt, pt), (pl, pl), (0, 0)))
    expected = np.zeros((n, ho, wo, c)) + (bias if bias.size else 0.0)
    for i in range(kh):
        for j in range(kw):
            expected += wd[i * kw + j] * padded[:, i:i + (ho - 1) * sh + 1:sh,
                                                j:j + (wo - 1) * sw + 1:sw]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
