"""Every shape rule against PyTorch: hypothesis draws attributes and input shapes, and
archc must give the output shape PyTorch gives, and refuse exactly what PyTorch refuses."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import torch_twins
from archc.layers import REGISTRY, AttrError, ShapeError, get_layer

small = st.integers(1, 4)
pair = st.tuples(st.integers(1, 4), st.integers(1, 4))
hw = st.tuples(st.integers(1, 18), st.integers(1, 18))


def fmap(draw, channels=None):
    c = channels if channels is not None else draw(st.integers(1, 6))
    h, w = draw(hw)
    return (c, h, w)


def draw_case(draw, op: str) -> tuple[dict, list]:
    """(attrs with every key, input shapes) for one layer type."""
    if op == "conv2d":
        groups = draw(st.integers(1, 3))
        c = groups * draw(small)
        k, d = draw(pair), draw(st.tuples(st.integers(1, 3), st.integers(1, 3)))
        padding = draw(st.one_of(st.tuples(st.integers(0, 3), st.integers(0, 3)),
                                 st.sampled_from(["valid", "same", "full"])))
        stride = (1, 1) if padding == "same" else draw(st.tuples(st.integers(1, 3), st.integers(1, 3)))
        return ({"out_channels": groups * draw(small), "kernel_size": k, "stride": stride,
                 "padding": padding, "dilation": d, "groups": groups, "bias": draw(st.booleans()),
                 "in_channels": None}, [fmap(draw, c)])
    if op == "conv_transpose2d":
        groups = draw(st.integers(1, 3))
        s, d = draw(pair), draw(st.tuples(st.integers(1, 2), st.integers(1, 2)))
        out_pad = draw(st.tuples(st.integers(0, 3), st.integers(0, 3)))
        return ({"out_channels": groups * draw(small), "kernel_size": draw(pair), "stride": s,
                 "padding": draw(st.tuples(st.integers(0, 3), st.integers(0, 3))),
                 "output_padding": out_pad, "dilation": d, "groups": groups,
                 "bias": draw(st.booleans()), "in_channels": None},
                [fmap(draw, groups * draw(small))])
    if op in ("max_pool2d", "avg_pool2d"):
        k = draw(pair)
        attrs = {"kernel_size": k, "stride": draw(st.one_of(st.none(), pair)),
                 "padding": draw(st.tuples(st.integers(0, 2), st.integers(0, 2))),
                 "ceil_mode": draw(st.booleans())}
        if op == "max_pool2d":
            attrs["dilation"] = draw(st.tuples(st.integers(1, 2), st.integers(1, 2)))
        else:
            attrs["count_include_pad"] = draw(st.booleans())
        return attrs, [fmap(draw)]
    if op in ("adaptive_avg_pool2d", "adaptive_max_pool2d"):
        return {"output_size": draw(st.tuples(st.integers(1, 7), st.integers(1, 7)))}, [fmap(draw)]
    if op == "max_unpool2d":
        k = draw(pair)
        s = draw(st.one_of(st.none(), pair))
        p = draw(st.tuples(st.integers(0, k[0] // 2), st.integers(0, k[1] // 2)))
        pool_in = fmap(draw)
        ss = s or k
        pooled = (pool_in[0],) + tuple((n + 2 * p[i] - k[i]) // ss[i] + 1
                                       for i, n in enumerate(pool_in[1:]))
        assume(min(pooled) >= 1)
        exact = draw(st.sampled_from(["output_size", "like", "formula"]))
        if exact == "formula":
            # Without a target size, a pool input larger than the formula's output leaves
            # positions the unpooled map cannot hold; PyTorch finds that only while running
            # (an index error), so it is no shape rule. The 'like' input is archc's answer.
            formula = tuple((n - 1) * ss[i] - 2 * p[i] + k[i] for i, n in enumerate(pooled[1:]))
            assume(all(f >= n for f, n in zip(formula, pool_in[1:])))
        return ({"kernel_size": k, "stride": s, "padding": p,
                 "output_size": tuple(pool_in[1:]) if exact == "output_size" else None,
                 "_pool_input": pool_in},
                [pooled, pooled] + ([pool_in] if exact == "like" else []))
    if op == "unpool2d":
        return {"kernel_size": draw(pair), "mode": "nearest"}, [fmap(draw)]
    if op == "slice":
        shape = fmap(draw)
        dim = draw(st.integers(1, 3))
        n = shape[dim - 1]
        return ({"start": draw(st.integers(-n - 1, n + 1)),
                 "end": draw(st.one_of(st.none(), st.integers(-n - 1, n + 1))), "dim": dim},
                [shape])
    if op == "center_crop":
        return {}, [fmap(draw), fmap(draw)]
    if op == "upsample" and draw(st.booleans()):
        mode = draw(st.sampled_from(["nearest", "bilinear"]))
        return ({"scale_factor": None, "size": None, "mode": mode,
                 "align_corners": mode == "bilinear" and draw(st.booleans())},
                [fmap(draw), fmap(draw)])
    if op == "upsample":
        mode = draw(st.sampled_from(["nearest", "bilinear"]))
        by_size = draw(st.booleans())
        return ({"scale_factor": None if by_size else draw(st.sampled_from([(2.0, 2.0), (0.5, 0.5), (1.5, 3.0), (3.0, 3.0)])),
                 "size": draw(pair) if by_size else None, "mode": mode,
                 "align_corners": mode == "bilinear" and draw(st.booleans())}, [fmap(draw)])
    if op in ("batchnorm2d", "batchnorm1d"):
        shape = fmap(draw) if op == "batchnorm2d" else (draw(st.integers(1, 9)),)
        return ({"eps": 1e-5, "momentum": 0.1, "affine": draw(st.booleans()),
                 "track_running_stats": draw(st.booleans()), "num_features": None}, [shape])
    if op in ("layernorm2d", "layernorm"):
        shape = fmap(draw) if op == "layernorm2d" else (draw(st.integers(1, 9)),)
        return {"eps": 1e-5, "elementwise_affine": draw(st.booleans())}, [shape]
    if op == "local_response_norm":
        return {"size": draw(st.integers(1, 5)), "alpha": 1e-4, "beta": 0.75, "k": 1.0}, [fmap(draw)]
    if op == "layer_scale":
        return {"init_value": 1e-6}, [fmap(draw)]
    if op == "linear":
        return ({"out_features": draw(st.integers(1, 9)), "bias": draw(st.booleans()),
                 "in_features": None}, [(draw(st.integers(1, 9)),)])
    if op == "flatten":
        shape = fmap(draw)
        return {"start_dim": draw(st.integers(1, 3))}, [shape]
    if op == "reshape":
        shape = fmap(draw)
        total = math.prod(shape)
        divisors = [d for d in range(1, total + 1) if total % d == 0]
        a = draw(st.sampled_from(divisors))
        target = draw(st.sampled_from([(a, total // a), (a, -1), (-1,), (total,), (a, 2, -1)]))
        return {"shape": target}, [shape]
    if op == "permute":
        rest = draw(st.permutations([1, 2, 3]))
        return {"dims": (0, *rest)}, [fmap(draw)]
    if op == "channel_shuffle":
        return {"groups": draw(st.integers(1, 4))}, [fmap(draw)]
    if op in ("add", "multiply", "concat"):
        base = fmap(draw)
        n = draw(st.integers(2, 3))
        shapes = []
        for _ in range(n):
            s = list(base)
            if draw(st.booleans()):
                axis = draw(st.integers(0, 2))
                s[axis] = draw(st.sampled_from([1, s[axis], s[axis] + 1]))
            shapes.append(tuple(s))
        attrs = {"dim": draw(st.integers(1, 3))} if op == "concat" else {}
        return attrs, shapes
    if op in ("global_avg_pool2d", "global_max_pool2d"):
        return {}, [fmap(draw)]
    if op == "softmax":
        return {"dim": draw(st.integers(1, 3))}, [fmap(draw)]
    # element-wise activations and regularisers
    layer = get_layer(op)
    attrs = {a.name: a.default for a in layer.attrs}
    if op == "stochastic_depth":
        attrs["p"] = 0.2
    if op == "softplus":  # beta * x past 20 (PyTorch's threshold) too, with inputs ~ 4 N(0, 1)
        attrs["beta"] = draw(st.sampled_from([1.0, 0.5, 2.0]))
    return attrs, [draw(st.one_of(st.builds(tuple, st.lists(st.integers(1, 6), min_size=1, max_size=1)),
                                  st.builds(lambda c, h: (c, h[0], h[1]), st.integers(1, 6), hw)))]


SHAPED_OPS = sorted(op for op, layer in REGISTRY.items() if not layer.internal)


def archc_shape(op: str, attrs: dict, in_shapes: list):
    layer = get_layer(op)
    try:
        clean = layer.normalize({k: v for k, v in attrs.items() if not k.startswith("_")})
        shape = layer.infer_shape(clean, in_shapes)
    except (AttrError, ShapeError):
        return None
    return None if min(shape) < 1 else tuple(shape)


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
               "slice", "center_crop",
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
