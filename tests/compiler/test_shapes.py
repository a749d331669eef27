"""Every shape rule against PyTorch: hypothesis draws attributes and input shapes, and
archc must give the output shape PyTorch gives, and refuse exactly what PyTorch refuses."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import torch_twins
from layer_cases import archc_shape, draw_case, pair
from archc.layers import REGISTRY, get_layer

SHAPED_OPS = sorted(op for op, layer in REGISTRY.items() if not layer.internal)

def torch_shape(op: str, attrs: dict, in_shapes: list):
    try:
        shape = torch_twins.run(op, attrs, in_shapes)
    except (RuntimeError, ValueError):
        return None
    return None if min(shape) < 1 else shape


@pytest.mark.parametrize("op", SHAPED_OPS)
@given(data=st.data())
def test_shape_rule_matches_pytorch(op, data):
    attrs, in_shapes = draw_case(data.draw, op)
    ours = archc_shape(op, attrs, in_shapes)
    theirs = torch_shape(op, attrs, in_shapes)
    assert ours == theirs, f"{op} {attrs} on {in_shapes}: archc {ours}, torch {theirs}"


@pytest.mark.parametrize("op", SHAPED_OPS)
@given(data=st.data())
def test_parameter_shapes_match_pytorch(op, data):
    """Names and layouts of parameters and buffers are PyTorch's (for weight exchange)."""
    attrs, in_shapes = draw_case(data.draw, op)
    assume(archc_shape(op, attrs, in_shapes) is not None)
    layer = get_layer(op)
    clean = layer.normalize({k: v for k, v in attrs.items() if not k.startswith("_")})
    params, buffers = torch_twins.parameter_shapes(op, attrs, in_shapes)
    assert layer.parameters(clean, in_shapes) == params
    assert layer.buffers(clean, in_shapes) == buffers


@given(c=st.integers(1, 4), h=st.integers(1, 40), w=st.integers(1, 40), k=pair,
       s=st.tuples(st.integers(1, 4), st.integers(1, 4)), d=st.tuples(st.integers(1, 3), st.integers(1, 3)))
def test_same_padding_with_stride_gives_ceil(c, h, w, k, s, d):
    """'same' with stride > 1 follows TensorFlow: output ceil(H / stride); checked by running
    torch on the input padded as archc pads it."""
    from archc.layers.conv import resolve_padding

    attrs = get_layer("conv2d").normalize(
        {"out_channels": 2, "kernel_size": list(k), "stride": list(s), "dilation": list(d),
         "padding": "same"})
    out = get_layer("conv2d").infer_shape(attrs, [(c, h, w)])
    assert out == (2, math.ceil(h / s[0]), math.ceil(w / s[1]))
    (top, bottom), (left, right) = resolve_padding("same", k, s, d, (h, w))
    assert 0 <= bottom - top <= 1 and 0 <= right - left <= 1
    x = torch.nn.functional.pad(torch.zeros(1, c, h, w), (left, right, top, bottom))
    y = torch.nn.functional.conv2d(x, torch.zeros(2, c, *k), stride=s, dilation=d)
    assert tuple(y.shape[1:]) == out


def test_every_user_layer_has_a_shape_strategy():
    # draw_case covers every op: an op without a branch falls to the element-wise default,
    # which must only be used for layers whose output shape is their input shape.
    from archc.layers.activation import same_shape

    special = {"conv2d", "conv_transpose2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
               "adaptive_max_pool2d", "max_unpool2d", "unpool2d", "upsample", "batchnorm2d",
               "batchnorm1d", "layernorm2d", "layernorm", "local_response_norm", "layer_scale",
               "linear", "flatten", "reshape", "permute", "channel_shuffle", "add", "multiply",
               "slice", "center_crop", "roi_align", "roi_pool", "join",
               "concat", "softmax", "global_avg_pool2d", "global_max_pool2d"}
    for op in SHAPED_OPS:
        if op not in special:
            assert REGISTRY[op].infer_shape is same_shape, op


@given(h=st.integers(1, 64), k=st.integers(1, 7), s=st.integers(1, 4), p=st.integers(0, 3))
def test_transposed_conv_with_output_padding_undoes_a_conv(h, k, s, p):
    """Dumoulin and Visin: output_padding a = (H + 2p - k) mod s restores the input size."""
    assume(h + 2 * p >= k)
    conv = get_layer("conv2d").normalize({"out_channels": 1, "kernel_size": k, "stride": s,
                                          "padding": p})
    (_, h2, _) = get_layer("conv2d").infer_shape(conv, [(1, h, h)])
    a = (h + 2 * p - k) % s
    tconv = get_layer("conv_transpose2d").normalize(
        {"out_channels": 1, "kernel_size": k, "stride": s, "padding": p, "output_padding": a})
    assert get_layer("conv_transpose2d").infer_shape(tconv, [(1, h2, h2)]) == (1, h, h)
