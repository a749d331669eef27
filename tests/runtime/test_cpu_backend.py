"""The Numba CPU backend against the reference backend: every ported op, forward and
backward, on hypothesis-drawn cases; and whole networks."""

from __future__ import annotations

from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import archc
from conftest import SMALL_NETWORKS, SPECS
from runtime.backends import cpu
from runtime.backends.activations import FORMULAS, attributes_of
from runtime.backends.cpu import conv, elementwise, pool
from runtime.backends.reference import KERNELS as REF
from runtime.backends.reference_backward import BACKWARD as REF_BACKWARD
from runtime.params import init_params
from runtime.program import Op
from runtime.context import KernelContext
from layer_cases import draw_op


@pytest.mark.parametrize("op", cpu.NUMBA_OPS)
@settings(max_examples=30)
@given(data=st.data())
def test_numba_op_matches_reference(op, data):
    attrs, in_shapes, prog_op, program, rng = draw_op(data, op)
    params = {k: v.astype(np.float32) if v.dtype != np.int64 else v
              for k, v in init_params(program, seed=2).items()}
    xs = [(4 * rng.standard_normal((3,) + tuple(s))).astype(np.float32) for s in in_shapes]
    train = op in ("batchnorm2d", "batchnorm1d", "dropout", "stochastic_depth", "join") and \
        data.draw(st.booleans())
    seed = data.draw(st.integers(0, 2**16))  # one random stream each, the same numbers
    ctx_ref = KernelContext(train=train, rng=np.random.default_rng(seed))
    # a pass followed by its backward keeps what backward needs (a max pool's positions)
    ctx_cpu = KernelContext(train=train, rng=np.random.default_rng(seed), keep=True)
    if op == "max_unpool2d":  # the positions a max pool would have recorded: distinct, some -1
        n, c, h, w = xs[0].shape
        ho, wo = prog_op.attrs["out_size"]
        free = np.full(max(h * w, ho * wo), -1)
        spots = []
        for _ in range(n * c):
            free[:ho * wo] = rng.permutation(ho * wo)
            spots.append(np.where(rng.random(h * w) < 0.2, -1, rng.permutation(free)[:h * w]))
        positions = np.array(spots, dtype=np.int64).reshape(n, c, h, w)
        ctx_ref.indices = ctx_cpu.indices = {prog_op.inputs[1]: positions}
    params_cpu = {k: v.copy() for k, v in params.items()}
    # the truth in float64 (the reference's own float32 rounding is not the target: a layer
    # norm over two channels loses half its digits that way)
    params = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in params.items()}
    xs64 = [x.astype(np.float64) for x in xs]
    expected = REF[op](prog_op, xs64, params, ctx_ref)
    gy = rng.standard_normal(expected.shape).astype(np.float32)
    # stride-1 convs run either algorithm (bench/bench_conv.py times both)
    grid = data.draw(st.booleans())
    with patch.object(conv, "GRID_AT_STRIDE_1", grid), \
            patch.object(conv, "GRID_WASTE_LIMIT", float("inf") if grid else 0.0), \
            patch.object(conv, "GRID_FEW_CHANNELS", 1 << 30 if grid else 0):
        got = cpu.KERNELS[op](prog_op, xs, params_cpu, ctx_cpu)
        cpu_gx, cpu_gp = cpu.BACKWARD[op](prog_op, xs, got, gy, params_cpu, ctx_cpu)
        # an inference pass (keeping nothing) may take other kernels: the same values
        inferred = None if train else cpu.KERNELS[op](
            prog_op, xs, params_cpu, KernelContext(rng=np.random.default_rng(seed),
                                                   indices=ctx_cpu.indices))
    for key in params:  # running statistics move the same way
        np.testing.assert_allclose(params_cpu[key], params[key], rtol=1e-5, atol=1e-6)
    scale = max(np.abs(expected).max(), 1e-6)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * scale)
    if inferred is not None:
        np.testing.assert_allclose(inferred, expected, rtol=1e-4, atol=1e-5 * scale)
    ref_gx, ref_gp = REF_BACKWARD[op](prog_op, xs64, expected, gy.astype(np.float64), params,
                                      ctx_ref)
    for a, b in zip(cpu_gx, ref_gx):  # float32: absolute error relative to gy's scale
        if b is None:  # positions or a size reference: no gradient
            assert a is None
            continue
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(np.abs(b).max(), 1.0))
    for key in ref_gp:  # as the inputs': a bias gradient whose terms cancel to 3e-4 is a
        b = ref_gp[key]  # float32 sum of O(1) terms, its error relative to them
        np.testing.assert_allclose(cpu_gp[key], b, rtol=1e-4, atol=1e-5 * max(np.abs(b).max(), 1.0))


@pytest.mark.parametrize("spec, variables", SMALL_NETWORKS + [
    ("convnext_tiny", {"resolution": 64}),
    ("shufflenet_v2", {"resolution": 64}),
])
def test_networks_forward_and_backward_match_reference(spec, variables):
    # float64, so that what is compared is what the kernels compute, not float32 rounding
    # (train-mode batch norm over tiny maps amplifies it, and a ReLU can flip at zero)
    graph = archc.load(SPECS / f"{spec}.yaml", **variables)
    ref = archc.compile(graph, backend="reference", seed=1, dtype="float64").train()
    fast = archc.compile(graph, backend="cpu", seed=1, dtype="float64").train()
    shape = next(iter(ref.program.inputs.values()))
    x = np.random.default_rng(0).standard_normal((2,) + shape)
    a, b = ref(x), fast(x)
    np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-9 * np.abs(a).max())
    gy = np.random.default_rng(1).standard_normal(a.shape)
    ga, gb = ref.backward(gy), fast.backward(gy)
    np.testing.assert_allclose(gb.input, ga.input, rtol=1e-8, atol=1e-9 * np.abs(ga.input).max())
    for name, value in ga.params.items():
        np.testing.assert_allclose(gb.params[name], value, rtol=1e-8,
                                   atol=1e-9 * np.abs(value).max() + 1e-12, err_msg=name)


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        archc.compile(archc.load(SPECS / "lenet5.yaml"), backend="gpu")


@pytest.mark.parametrize("formula", FORMULAS, ids=lambda f: f.name)
def test_every_activation_kernel_matches_the_reference(formula):
    # including the forward kernels that lose to NumPy and are kept for the benchmark
    kind, attrs = formula.layer, attributes_of(formula)
    x = np.random.default_rng(3).standard_normal((2, 3, 5, 7)) * 5
    x[0, 0, 0, :4] = [-3.0, 3.0, 6.0, 0.0]  # the kinks
    x[0, 0, 1, :2] = [25.0, 101.0]  # softplus's linear part (beta 0.2)
    op = Op(name="y", kind=kind, attrs=attrs, inputs=("x",), output="y", params={},
            in_shapes=(x.shape[1:],), out_shape=x.shape[1:])
    y = elementwise.activation_forward(op, [x], {}, KernelContext())
    np.testing.assert_allclose(y, REF[kind](op, [x], {}, KernelContext()), rtol=1e-12,
                               atol=1e-12)
    gy = np.random.default_rng(4).standard_normal(x.shape)
    (gx,), _ = elementwise.activation_backward(op, [x], y, gy, {}, KernelContext())
    (expected,), _ = REF_BACKWARD[kind](op, [x], y, gy, {}, KernelContext())
    np.testing.assert_allclose(gx, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind, dtype", [("relu", np.float32), ("leaky_relu", np.float64),
                                         ("hardswish", np.float32)])
def test_activation_chunks_cover_a_tensor_of_several(kind, dtype):
    """The forward kernel's jobs copy and activate a chunk each: a tensor of several
    chunks and a partial last one comes out whole, as the reference computes it."""
    x = np.random.default_rng(5).standard_normal((3, 5, 41, 67)).astype(dtype)
    assert x.size > 2 * elementwise.CHUNK and x.size % elementwise.CHUNK
    op = Op(name="y", kind=kind, attrs={"negative_slope": 0.1} if kind == "leaky_relu" else {},
            inputs=("x",), output="y", params={}, in_shapes=(x.shape[1:],),
            out_shape=x.shape[1:])
    y = elementwise.activation_forward(op, [x], {}, KernelContext())
    assert y.dtype == dtype and y.shape == x.shape
    np.testing.assert_allclose(y, REF[kind](op, [x], {}, KernelContext()), rtol=1e-6,
                               atol=1e-6)


def test_gradients_meeting_at_a_fanned_out_value_add_up():
    """The CPU backend sums two maps' gradients in parallel into a new array (neither
    operand changed: the same array may be another value's gradient too), and anything
    else with NumPy."""
    backend = archc.compile(archc.load(SPECS / "lenet5.yaml"), backend="cpu").backend
    rng = np.random.default_rng(6)
    a, b = (rng.standard_normal((3, 4, 5, 6)).astype(np.float32) for _ in range(2))
    before = a.copy()
    total = backend.add(a, b)
    np.testing.assert_array_equal(total, before + b)
    np.testing.assert_array_equal(a, before)
    assert total is not a and total is not b
    view = rng.standard_normal((3, 4, 5, 12)).astype(np.float32)[..., ::2]  # strided
    np.testing.assert_array_equal(backend.add(view, b), view + b)
    np.testing.assert_array_equal(backend.add(a[:, :1], b), a[:, :1] + b)  # broadcast
    np.testing.assert_array_equal(backend.add(a[0, 0], b[0, 0]), a[0, 0] + b[0, 0])


@pytest.mark.parametrize("shape, kernel, stride", [
    ((3, 4, 28, 28), 2, 2), ((2, 3, 13, 17), 2, 2), ((2, 3, 13, 17), 3, 3),
    ((2, 3, 13, 17), 3, 2), ((1, 2, 5, 9), (2, 3), (1, 2)),
])
def test_average_pools_with_windows_inside_the_map_take_the_fast_kernels(shape, kernel,
                                                                         stride):
    """Windows inside the map (no padding): rows summed first; where they tile it, the
    gradient written once. The same values as the kernel with a window per output (the
    gradient bit for bit), leftover rows and columns included."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    x = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    ho, wo = (shape[2] - kh) // sh + 1, (shape[3] - kw) // sw + 1
    assert pool._inside(shape[2], shape[3], kh, kw, sh, sw, 0, 0, ho, wo)
    op = Op(name="p", kind="avg_pool2d", attrs={"kernel_size": (kh, kw), "stride": (sh, sw),
                                                "padding": (0, 0), "count_include_pad": True},
            inputs=("x",), output="p", params={}, in_shapes=(shape[1:],),
            out_shape=(shape[1], ho, wo))
    y = pool.avg_pool_forward(op, [x], {}, KernelContext())
    windows = pool.avg_pool_forward_kernel(x, kh, kw, sh, sw, 0, 0, ho, wo, True)
    np.testing.assert_allclose(y, windows, rtol=1e-6, atol=1e-7)
    gy = np.random.default_rng(8).standard_normal(y.shape).astype(np.float32)
    (gx,), _ = pool.avg_pool_backward(op, [x], y, gy, {}, KernelContext())
    np.testing.assert_array_equal(
        gx, pool.avg_pool_backward_kernel(gy, shape[2], shape[3], kh, kw, sh, sw, 0, 0, True))


FUSED_CONVS = {  # the CPU algorithms these few channels get: the epilogue in each one's loops
    "direct": {"out_channels": 6, "kernel_size": 3, "padding": 1},
    "direct_strided": {"out_channels": 6, "kernel_size": 3, "padding": 1, "stride": 2},
    "pointwise": {"out_channels": 6, "kernel_size": 1},
    "pointwise_strided": {"out_channels": 6, "kernel_size": 1, "stride": 2},
    "depthwise": {"out_channels": 4, "kernel_size": 3, "padding": 1, "groups": 4},
    "depthwise_5x5": {"out_channels": 4, "kernel_size": 5, "padding": 2, "groups": 4},
    "pointwise_on_1x1": {"out_channels": 6, "kernel_size": 1},  # a matrix product
}
SIZES = {"pointwise_on_1x1": 1}  # the input's height and width (else 9)


@pytest.mark.parametrize("algorithm", sorted(FUSED_CONVS))
@pytest.mark.parametrize("activation", [None, "relu", {"leaky_relu": 0.2}, "silu",
                                        {"gelu": "tanh"}, "hardswish", "sigmoid"])
@pytest.mark.parametrize("residual", [False, True])
def test_fused_conv_epilogue_matches_reference(algorithm, activation, residual):
    attrs = dict(FUSED_CONVS[algorithm], activation=activation)
    layer = archc.layers.get_layer("conv2d").normalize(attrs)
    size = SIZES.get(algorithm, 9)
    out_shape = archc.infer_shapes(_one_conv(layer, size))["conv"].shape
    graph = _one_conv(layer, size)
    graph.add(archc.Node("skip", "input", {"shape": out_shape}, []))
    graph.inputs.append("skip")
    if residual:
        graph.nx.add_edge("skip", "conv", key=1)
        graph["conv"].inputs.append("skip")
    archc.infer_shapes(graph)
    archc.verify(graph, require_shapes=True)
    ref = archc.compile(graph, backend="reference", seed=3, dtype="float64")
    fast = archc.compile(graph, backend="cpu", seed=3)
    fast.params = {k: v.astype(np.float32) for k, v in ref.params.items()}
    rng = np.random.default_rng(5)
    x = {"input": rng.standard_normal((2, 4, size, size)) * 2,
         "skip": rng.standard_normal((2,) + out_shape)}
    x32 = {k: v.astype(np.float32) for k, v in x.items()}
    expected = ref(x)
    for got in (fast.predict(x32), fast(x32)):  # the fused kernels, and with a tape kept
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    gy = rng.standard_normal(expected.shape)
    ga, gb = ref.backward(gy), fast.backward(gy.astype(np.float32))
    for name in ga.inputs:
        if name == "skip" and not residual:
            continue
        np.testing.assert_allclose(gb.inputs[name], ga.inputs[name], rtol=1e-4,
                                   atol=1e-5 * np.abs(ga.inputs[name]).max())
    for name, value in ga.params.items():
        np.testing.assert_allclose(gb.params[name], value, rtol=1e-4,
                                   atol=1e-5 * np.abs(value).max(), err_msg=name)


def _one_conv(attrs, size: int = 9):
    graph = archc.Graph(name="probe")
    graph.add(archc.Node("input", "input", {"shape": (4, size, size)}, []))
    graph.add(archc.Node("conv", "conv2d", attrs, ["input"]))
    graph.inputs, graph.outputs = ["input"], {"conv": "conv"}
    return graph


@pytest.mark.parametrize("activation", [None, "relu", "tanh", {"gelu": "none"}])
def test_fused_linear_epilogue_matches_reference(activation):
    text = f"""input: {{features: 12}}
layers:
  - linear: {{out_features: 7, activation: {activation if isinstance(activation, str) else
                                            activation and '{gelu: none}' or 'null'}}}
"""
    graph = archc.load("lin.yaml", text=text)
    ref = archc.compile(graph, backend="reference", seed=1, dtype="float64")
    fast = archc.compile(graph, backend="cpu", seed=1)
    fast.params = {k: v.astype(np.float32) for k, v in ref.params.items()}
    x = np.random.default_rng(0).standard_normal((5, 12)) * 3
    expected = ref(x)
    for got in (fast.predict(x.astype(np.float32)), fast(x.astype(np.float32))):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    gy = np.random.default_rng(1).standard_normal(expected.shape)
    ga, gb = ref.backward(gy), fast.backward(gy.astype(np.float32))
    np.testing.assert_allclose(gb.input, ga.input, rtol=1e-4, atol=1e-5)


def test_backward_through_a_fused_activation_needs_a_tape():
    graph = archc.load("c.yaml", text="input: {features: 3}\nlayers: [{linear: {out_features: 2, "
                       "activation: silu}}]")
    model = archc.compile(graph, backend="cpu")
    model.predict(np.ones((1, 3), np.float32))
    with pytest.raises(RuntimeError, match="predict\\(\\) keeps nothing"):
        model.backward(np.ones((1, 2), np.float32))
    (op,) = model.program.ops  # a kernel run without a tape kept no pre-activation either
    x, y = np.ones((1, 3), np.float32), np.ones((1, 2), np.float32)
    with pytest.raises(RuntimeError, match="kept no tape"):
        cpu.BACKWARD["linear"](op, [x], y, y, model.params, KernelContext())


@pytest.mark.parametrize("name", sorted(elementwise.FAST32))
def test_float32_forms_of_exp_and_tanh_activations_are_accurate(name):
    """tanh, sigmoid and SiLU run rational forms in float32 (no libm call, so the loops
    vectorise): each within 4e-7 of the float64 truth (times max(1, |x|) for SiLU), and
    so its derivative, over [-12, 12] and around zero."""
    x = np.concatenate([np.linspace(-12, 12, 200001), np.linspace(-1e-3, 1e-3, 2001)])
    x32 = x.astype(np.float32)
    exact = {"tanh": np.tanh(x), "sigmoid": 1 / (1 + np.exp(-x)),
             "silu": x / (1 + np.exp(-x))}[name]
    slope = {"tanh": 1 - np.tanh(x) ** 2, "sigmoid": exact * (1 - exact),
             "silu": (1 + x * np.exp(-x) / (1 + np.exp(-x))) / (1 + np.exp(-x))}[name]
    scale = np.maximum(1.0, np.abs(x)) if name == "silu" else 1.0
    y = elementwise.activation_forward_kernel(x32.copy(), elementwise.FAST32[name], 0.0)
    assert np.max(np.abs(y - exact) / scale) < 4e-7
    gx = elementwise.activation_backward_kernel(x32, y, np.ones_like(x32),
                                                elementwise.FAST32[name], 0.0)
    assert np.max(np.abs(gx - slope) / scale) < 1e-6


def test_a_training_step_skips_the_inputs_gradients():
    """backward(inputs=False): the same parameter gradients, no input gradients, and the
    layers fed by the network's input are told not to compute theirs."""
    graph = archc.load(SPECS / "lenet5.yaml")
    model = archc.compile(graph, backend="cpu", seed=0).train()
    x = np.random.default_rng(0).standard_normal((4, 1, 32, 32)).astype(np.float32)
    gy = np.ones((4, 10), np.float32)
    model(x)
    full = model.backward(gy)
    seen = {}
    kernels = dict(model.backward_kernels)

    def spy(kind):
        def run(op, xs, y, g, p, ctx):
            seen[op.name] = ctx.input_grads
            return kernels[kind](op, xs, y, g, p, ctx)
        return run

    model.backward_kernels = {kind: spy(kind) for kind in kernels}
    model(x)
    lean = model.backward(gy, inputs=False)
    assert lean.inputs == {} and full.inputs
    assert set(lean.params) == set(full.params)
    for name, value in full.params.items():
        np.testing.assert_allclose(lean.params[name], value, rtol=1e-5, atol=1e-6)
    first = model.program.ops[0]
    assert list(first.inputs) == list(model.program.inputs) and seen[first.name] is False
    assert all(seen[op.name] for op in model.program.ops[1:] if op.name in seen)


def test_the_activation_dispatch_is_generated_from_the_formulas():
    """activation_dispatch.py is what activation_scalars.dispatch_source() writes for the
    current formulas (regenerate with `python runtime/backends/cpu/activation_scalars.py`):
    a branch for every code, and a fingerprint that changes with any formula, so Numba's
    cache of the dispatch is rebuilt when one does."""
    from runtime.backends.cpu import activation_scalars

    assert activation_scalars.GENERATED.read_text() == activation_scalars.dispatch_source()
    assert len(activation_scalars.FORWARD) == len(FORMULAS) + len(elementwise.FAST32)


@pytest.mark.parametrize("shape", [(2, 3, 67, 71), (5, 4, 3, 3)])  # rows past FLUSH, and short
def test_batch_norm_sums_keep_float32_honest(shape):
    """Batch norm's per-channel sums run in vector lanes of float32 blocks (norm.py:
    lane_sums) with float64 totals: on channels with a mean 1000x their spread, over rows
    longer than a block, the statistics and gradients stay within float32's reach of the
    float64 truth."""
    from runtime.backends.cpu import norm

    rng = np.random.default_rng(3)
    x = (1000.0 + rng.standard_normal(shape)).astype(np.float32)
    x[:, 1] = rng.standard_normal(shape[:1] + shape[2:]) * 1e-3  # a tiny spread too
    gy = rng.standard_normal(shape).astype(np.float32)
    x64, gy64 = x.astype(np.float64), gy.astype(np.float64)
    mean, var = norm.batch_stats_kernel(x)
    spread = x64.std(axis=(0, 2, 3))  # the mean to a millionth of the spread
    assert np.all(np.abs(mean - x64.mean(axis=(0, 2, 3))) <= 1e-6 * spread)
    np.testing.assert_allclose(var, x64.var(axis=(0, 2, 3)), rtol=1e-5)
    invstd = 1.0 / np.sqrt(var + 1e-5)
    weight = np.linspace(0.5, 2.0, shape[1])
    gx, gw, gb = norm.batchnorm_backward_kernel(x, gy, mean, invstd, weight)
    axes, count = (0, 2, 3), x.size // shape[1]
    c = (slice(None), None, None)
    xhat = (x64 - mean[c]) * invstd[c]
    np.testing.assert_allclose(gb, gy64.sum(axis=axes), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(gw, (gy64 * xhat).sum(axis=axes), rtol=1e-5, atol=1e-4)
    want = (weight * invstd)[c] / count * (count * gy64 - gb[c] - xhat * gw[c])
    np.testing.assert_allclose(gx, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_max_pool_records_positions_only_where_they_are_read():
    """An inference pass writes a max pool's positions only for a max unpooling that reads
    them; the maxima are the same either way, and a training pass keeps them for backward."""
    text = """input: {channels: 3, height: 9, width: 9}
layers:
  - max_pool2d: {kernel_size: 3, stride: 2, padding: 1}
    name: pool
  - max_unpool2d: {kernel_size: 3, stride: 2, padding: 1, output_size: [9, 9]}
    inputs: [-1, pool, input]
    name: unpool
  - max_pool2d: {kernel_size: 2, stride: 2}
    name: again
"""
    graph = archc.load("u.yaml", text=text)
    cpu_model = archc.compile(graph, backend="cpu").eval()
    reference = archc.compile(graph, backend="reference").eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 9)).astype(np.float32)
    np.testing.assert_array_equal(cpu_model.predict(x), reference.predict(x))
    ctx = cpu_model._context(keep=False)
    assert ctx.positions == {"pool"}
    op = {op.name: op for op in cpu_model.program.ops}["again"]
    cpu.KERNELS["max_pool2d"](op, [x], {}, ctx)
    assert "again" not in ctx.indices  # nothing reads them, nothing is written
    kept = cpu_model._context(keep=True)
    y = cpu.KERNELS["max_pool2d"](op, [x], {}, kept)
    assert kept.indices["again"].shape == y.shape


@pytest.mark.parametrize("kernel, stride, padding, dilation, ceil_mode", [
    ((3, 3), (2, 2), (1, 1), (1, 1), False),  # ResNet's stem pool
    ((2, 2), (2, 2), (0, 0), (1, 1), False),
    ((3, 2), (2, 1), (1, 0), (2, 1), True),
    ((3, 3), (3, 3), (1, 1), (2, 2), True),
    ((1, 3), (1, 3), (0, 1), (1, 1), True),
])
def test_max_pool_picks_the_first_maximum_of_ties_as_pytorch_does(kernel, stride, padding,
                                                                 dilation, ceil_mode):
    """After a ReLU most windows hold several zeros: the position recorded (where the
    gradient goes) is the first maximum in row-major order, PyTorch's, in the training
    kernel; the inference kernel's maxima are the same."""
    torch = pytest.importorskip("torch")
    x = np.maximum(np.random.default_rng(3).integers(-2, 3, (2, 3, 11, 13)), 0).astype(np.float32)
    want, positions = torch.nn.functional.max_pool2d(
        torch.as_tensor(x), kernel, stride, padding, dilation, ceil_mode, return_indices=True)
    text = f"""input: {{channels: 3, height: 11, width: 13}}
layers:
  - max_pool2d: {{kernel_size: {list(kernel)}, stride: {list(stride)}, padding: {list(padding)},
                  dilation: {list(dilation)}, ceil_mode: {str(ceil_mode).lower()}}}
    name: pool
"""
    model = archc.compile(archc.load("p.yaml", text=text), backend="cpu")
    np.testing.assert_array_equal(model(x), want.numpy())  # a pass kept for backward
    np.testing.assert_array_equal(model._tape[1].indices["pool"], positions.numpy())
    np.testing.assert_array_equal(model.eval().predict(x), want.numpy())  # positions unkept


@pytest.mark.parametrize("kind, shape", [("batchnorm2d", (5, 4, 3)), ("batchnorm1d", (6,))])
@pytest.mark.parametrize("activation", [None, "relu", {"leaky_relu": 0.2}, "silu", "mish"])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("train", [False, True])
def test_fused_batchnorm_epilogue_matches_reference(kind, shape, activation, residual, train):
    """activation(bn(x) + residual) in the batch norm's pass: batch or running
    statistics, forward and backward (relu's derivative from the output, the others' from
    the value kept before them), against the float64 reference."""
    graph = archc.Graph(name="probe")
    graph.add(archc.Node("input", "input", {"shape": shape}, []))
    graph.add(archc.Node("skip", "input", {"shape": shape}, []))
    attrs = archc.layers.get_layer(kind).normalize({"activation": activation})
    graph.add(archc.Node("bn", kind, attrs, ["input", "skip"] if residual else ["input"]))
    graph.inputs, graph.outputs = ["input", "skip"], {"bn": "bn"}
    for n, source in enumerate(graph["bn"].inputs):
        graph.nx.add_edge(source, "bn", key=n)
    archc.infer_shapes(graph)
    archc.verify(graph, require_shapes=True)
    ref = archc.compile(graph, backend="reference", seed=3, dtype="float64")
    fast = archc.compile(graph, backend="cpu", seed=3)
    rng = np.random.default_rng(6)
    for model in (ref, fast):
        model.params["bn.running_mean"][...] = 0.3
        model.params["bn.running_var"][...] = 2.0
        model.params["bn.weight"][...] = np.linspace(-1.5, 2, shape[0])
        model.params["bn.bias"][...] = np.linspace(0.5, -0.5, shape[0])
        model.train() if train else model.eval()
    x = {"input": rng.standard_normal((3,) + shape) * 2 + 1,
         "skip": rng.standard_normal((3,) + shape)}
    x32 = {k: v.astype(np.float32) for k, v in x.items()}
    expected = ref(x)
    if not train:
        np.testing.assert_allclose(fast.predict(x32), expected, rtol=1e-4, atol=1e-5)
    got = fast(x32)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    gy = rng.standard_normal(expected.shape)
    ga, gb = ref.backward(gy), fast.backward(gy.astype(np.float32))
    for name in ("input", "skip") if residual else ("input",):
        np.testing.assert_allclose(gb.inputs[name], ga.inputs[name], rtol=1e-4,
                                   atol=1e-4 * np.abs(ga.inputs[name]).max(), err_msg=name)
    for name, value in ga.params.items():
        np.testing.assert_allclose(gb.params[name], value, rtol=1e-4,
                                   atol=1e-4 * np.abs(value).max(), err_msg=name)
