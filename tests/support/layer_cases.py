"""Layer cases for the tests: hypothesis draws of each layer type's attributes and input
shapes (:func:`draw_case`), archc's shape for a case or None where archc refuses it
(:func:`archc_shape`), and a one-op program of a case (:func:`one_op`)."""

from __future__ import annotations

import math

from hypothesis import assume
from hypothesis import strategies as st

from archc.layers import AttrError, ShapeError, get_layer
from archc.lower import resolved_attrs
from runtime.program import Op, ParamSpec, Program

small = st.integers(1, 4)
pair = st.tuples(st.integers(1, 4), st.integers(1, 4))
hw = st.tuples(st.integers(1, 18), st.integers(1, 18))


def last_axis(draw):
    """The input of a layer over the last axis: a vector, a sequence of vectors, or a
    channels-last map (H, W, C)."""
    leading = draw(st.lists(st.integers(1, 5), max_size=2))
    return tuple(leading) + (draw(st.integers(1, 9)),)


def fmap(draw, channels=None):
    c = channels if channels is not None else draw(st.integers(1, 6))
    h, w = draw(hw)
    return (c, h, w)


def draw_case(draw, op: str, valid: bool = False) -> tuple[dict, list]:
    """(attrs with every key, input shapes) for one layer type; shapes archc may refuse
    (the shape rules' tests check it refuses what PyTorch refuses), or with ``valid``
    merges whose inputs go together (the kernels' tests)."""
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
    if op in ("roi_align", "roi_pool"):  # small: the torch twin samples point by point
        attrs = {"output_size": draw(st.tuples(st.integers(1, 3), st.integers(1, 3))),
                 "spatial_scale": (draw(st.sampled_from([1.0, 0.5, 0.25])),)}
        if op == "roi_align":
            attrs.update(sampling_ratio=draw(st.sampled_from([-1, 0, 1, 2])),
                         aligned=draw(st.booleans()), canonical_level=4, canonical_size=224)
        channels, size = draw(st.integers(1, 2)), st.integers(1, 6)
        return attrs, [(channels, draw(size), draw(size)), (draw(st.integers(1, 2)), 4)]
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
        shape = fmap(draw) if op == "layernorm2d" else last_axis(draw)
        return {"eps": 1e-5, "elementwise_affine": draw(st.booleans())}, [shape]
    if op == "local_response_norm":
        return {"size": draw(st.integers(1, 5)), "alpha": 1e-4, "beta": 0.75, "k": 1.0}, [fmap(draw)]
    if op == "layer_scale":
        return {"init_value": 1e-6}, [fmap(draw)]
    if op == "linear":
        return ({"out_features": draw(st.integers(1, 9)), "bias": draw(st.booleans()),
                 "in_features": None}, [last_axis(draw)])
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
    if op == "join" and valid:  # columns of one shape; drop-path drawn (training only)
        base = fmap(draw)
        k = draw(st.integers(2, 3))
        attrs = {"drop_path": draw(st.sampled_from([0.0, 0.15, 0.5])),
                 "global_drop": draw(st.sampled_from([0.0, 0.5])), "columns": None,
                 "column_count": None}
        if draw(st.booleans()):  # the network's columns this join reads
            attrs["columns"] = tuple(draw(st.permutations(range(k + 1))))[:k]
            attrs["column_count"] = k + 1
        return attrs, [tuple(base)] * k
    if op == "join":  # sizes that may not go together
        base = fmap(draw)
        return {"drop_path": 0.0, "global_drop": 0.0, "columns": None, "column_count": None}, \
            [base] + [base if draw(st.booleans()) else fmap(draw)
                      for _ in range(draw(st.integers(1, 2)))]
    if op in ("add", "multiply", "concat") and valid:
        # inputs that go together, drawn as such (drawing any sizes and filtering out the
        # ones archc refuses threw away most cases: a failed health check)
        base = fmap(draw)
        dim = draw(st.integers(1, 3))
        shapes = []
        for _ in range(draw(st.integers(2, 3))):
            s = list(base)
            if op == "concat":  # different sizes along the joined dim only
                s[dim - 1] = draw(st.integers(1, base[dim - 1] + 1))
            elif op == "multiply":  # add takes equal shapes only: no broadcast
                change = draw(st.sampled_from(["none", "axis", "gate"]))
                if change == "axis":  # broadcast along one axis
                    s[draw(st.integers(0, 2))] = 1
                elif change == "gate":  # one number per channel (squeeze-excitation)
                    s[1] = s[2] = 1
            shapes.append(tuple(s))
        return ({"dim": dim} if op == "concat" else {}), shapes
    if op in ("add", "multiply", "concat"):  # sizes that may not go together
        base = fmap(draw)
        n = draw(st.integers(2, 3))
        shapes = []
        for _ in range(n):
            s = list(base)
            change = draw(st.sampled_from(["none", "axis", "gate"]))
            if change == "axis":
                axis = draw(st.integers(0, 2))
                s[axis] = draw(st.sampled_from([1, s[axis], s[axis] + 1]))
            elif change == "gate":  # one number per channel (squeeze-excitation)
                s[1] = s[2] = 1
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


def archc_shape(op: str, attrs: dict, in_shapes: list):
    layer = get_layer(op)
    try:
        clean = layer.normalize({k: v for k, v in attrs.items() if not k.startswith("_")})
        shape = layer.infer_shape(clean, in_shapes)
    except (AttrError, ShapeError):
        return None
    return None if min(shape) < 1 else tuple(shape)


def one_op(op: str, attrs: dict, in_shapes: list):
    layer = get_layer(op)
    clean = layer.normalize({k: v for k, v in attrs.items() if not k.startswith("_")})
    out_shape = tuple(layer.infer_shape(clean, in_shapes))
    roles = {**layer.parameters(clean, in_shapes), **layer.buffers(clean, in_shapes)}
    specs = {r: ParamSpec(tuple(s), dtype="int64" if r == "num_batches_tracked" else "float32")
             for r, s in roles.items()}
    prog_op = Op(op, op, resolved_attrs(op, clean, in_shapes, out_shape),
                 tuple(f"x{i}" for i in range(len(in_shapes))), "y", {r: r for r in roles},
                 tuple(map(tuple, in_shapes)), out_shape)
    return prog_op, Program(op, {}, (prog_op,), {"y": "y"}, specs)


def draw_op(data, op: str):
    """A drawn case of ``op`` that archc accepts: (attrs, input shapes, the one-op program's
    op, the program, a generator seeded by the draw)."""
    import numpy as np

    attrs, in_shapes = draw_case(data.draw, op, valid=True)
    assume(archc_shape(op, attrs, in_shapes) is not None)
    prog_op, program = one_op(op, attrs, in_shapes)
    return attrs, in_shapes, prog_op, program, np.random.default_rng(
        data.draw(st.integers(0, 2**16)))


def randomized(params: dict, rng) -> dict:
    """``params`` with every float array drawn afresh: variances uniform in [0.5, 1.5], the
    rest standard normal (so that scales, shifts and statistics are tested too)."""
    return {k: v if v.dtype.kind == "i" else
            rng.uniform(0.5, 1.5, v.shape) if "var" in k else rng.standard_normal(v.shape)
            for k, v in params.items()}
