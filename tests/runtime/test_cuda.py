"""The CUDA kernels against NumPy and the CPU kernels, under Numba's CUDA simulator
(tests/conftest.py sets NUMBA_ENABLE_CUDASIM=1 unless ARCHC_CUDA=real): tiny shapes, few
cases, as the simulator runs every GPU thread as a Python thread. `pytest -m cuda`
selects them; on a machine with a GPU, `ARCHC_CUDA=real pytest -m cuda` runs them for
real."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.backends import cuda as cuda_backend
from runtime.backends.cpu import elementwise as cpu
from runtime.backends.activations import FORMULAS, attributes_of
from runtime.backends.epilogue import FROM_OUTPUT
from runtime.context import KernelContext

from cuda_networks import CHANNELS_LAST

pytestmark = pytest.mark.cuda

kernels = pytest.importorskip("runtime.backends.cuda.kernels")
cuda_conv = pytest.importorskip("runtime.backends.cuda.conv")
cuda = kernels.cuda


def device(x):
    return cuda.to_device(np.ascontiguousarray(x, dtype=np.float32))


def agree(gpu, host, x, *, rtol=1e-4, atol=1e-6, seed=1):
    """One forward pass (keeping the tape) and its backward pass on both models: the
    outputs, the input gradient and every parameter gradient agree."""
    expected = host(x)
    np.testing.assert_allclose(gpu(x), expected, rtol=rtol / 10, atol=atol)
    gy = np.random.default_rng(seed).standard_normal(expected.shape).astype(np.float32)
    a, b = host.backward(gy), gpu.backward(gy)
    np.testing.assert_allclose(b.input, a.input, rtol=rtol, atol=atol)
    assert set(b.params) == set(a.params)
    for name in a.params:
        np.testing.assert_allclose(b.params[name], a.params[name], rtol=rtol, atol=atol,
                                   err_msg=name)


@pytest.mark.parametrize("m, n, k, trans_a, trans_b, bias_mode, activation", [
    (5, 7, 3, False, False, 0, None),
    (70, 66, 20, True, False, 1, ("relu", {})),            # edge tiles on both axes, 2x2 blocks
    (9, 70, 17, False, True, 2, ("gelu", {"approximate": "tanh"})),
    (3, 4, 40, True, True, 1, ("leaky_relu", {"negative_slope": 0.2})),  # 3 panels of K
])
def test_gemm_with_epilogue_matches_numpy(m, n, k, trans_a, trans_b, bias_mode, activation):
    rng = np.random.default_rng(m * n + k)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    bias = rng.standard_normal(m if bias_mode == 1 else n).astype(np.float32)
    expected = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b)
    if bias_mode == 1:
        expected += bias[:, None]
    elif bias_mode == 2:
        expected += bias[None, :]
    if activation is not None:
        code, slope = cpu.activation_code(*activation)
        expected = cpu.activation_forward_kernel(expected, code, slope)
    got = kernels.gemm(device(a), device(b), trans_a=trans_a, trans_b=trans_b,
                       bias=device(bias) if bias_mode else None, bias_mode=bias_mode,
                       activation=activation).copy_to_host()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_gemm_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="inner dimensions differ"):
        kernels.gemm(device(np.ones((2, 3))), device(np.ones((4, 2))))


@pytest.mark.parametrize("formula", FORMULAS, ids=lambda f: f.name)
def test_activation_kernels_match_the_cpu_kernels(formula):
    kind, attrs = formula.layer, attributes_of(formula)
    x = (np.random.default_rng(3).standard_normal((2, 3, 5)) * 4).astype(np.float32)
    x.flat[:3] = [-3.0, 3.0, 6.0]  # the kinks
    code, slope = cpu.activation_code(kind, attrs)
    y_cpu = cpu.activation_forward_kernel(x, code, slope)
    y = kernels.activation_forward(device(x), kind, attrs)
    np.testing.assert_allclose(y.copy_to_host(), y_cpu, rtol=1e-5, atol=1e-6)
    gy = np.random.default_rng(4).standard_normal(x.shape).astype(np.float32)
    gx = kernels.activation_backward(device(x), y, device(gy), kind, attrs).copy_to_host()
    np.testing.assert_allclose(gx, cpu.activation_backward_kernel(x, y_cpu, gy, code, slope),
                               rtol=1e-5, atol=1e-6)


def test_add():
    a, b = np.arange(600, dtype=np.float32).reshape(2, 300), np.ones((2, 300), np.float32)
    np.testing.assert_array_equal(kernels.add(device(a), device(b)).copy_to_host(), a + b)
    with pytest.raises(ValueError, match="shapes differ"):
        kernels.add(device(a), device(b[:1]))


def test_import_restores_numpys_row_stack(monkeypatch):
    # numba-cuda 0.30 refers to np.row_stack, which numpy 2.5 removed
    monkeypatch.delattr(np, "row_stack", raising=False)
    cuda_backend.numba_cuda()
    assert np.row_stack is np.vstack


def test_unavailable_reasons(monkeypatch):
    assert cuda_backend.unavailable_reason() is None  # the simulator counts as a device
    monkeypatch.setitem(sys.modules, "numba.cuda", None)  # as if numba-cuda were missing
    reason = cuda_backend.unavailable_reason()
    assert reason.startswith("the CUDA backend needs the numba-cuda package")
    assert "\n" not in reason


@pytest.mark.parametrize("kernel_size, stride, padding, dilation, activation, residual", [
    (3, 1, 1, 1, ("relu", {}), True),
    (3, 2, 1, 1, None, False),
    (2, 1, 0, 2, ("silu", {}), False),
])
def test_conv2d_forward_and_backward_match_the_reference(kernel_size, stride, padding, dilation,
                                                         activation, residual):
    """The implicit-GEMM forward with its epilogue act(conv + bias + residual), and the
    backward passes."""
    import archc
    from runtime.backends.reference import KERNELS
    from runtime.backends.reference_backward import BACKWARD

    act = None if activation is None else (activation[0], tuple(activation[1].items()))
    graph = archc.load("c.yaml", text=(
        "input: {channels: 3, height: 6, width: 5}\nlayers: [{conv2d: {out_channels: 4, "
        f"kernel_size: {kernel_size}, stride: {stride}, padding: {padding}, dilation: "
        f"{dilation}}}}}]"))
    model = archc.compile(graph, dtype="float64")
    (op,) = model.program.ops
    op.attrs["activation"] = act  # the same op, fused
    rng = np.random.default_rng(kernel_size * 10 + stride)
    x = rng.standard_normal((2, 3, 6, 5))
    p = {role: model.params[full].astype(np.float64) for role, full in op.params.items()}
    ctx = KernelContext(keep=True)
    expected = KERNELS["conv2d"](op, [x], p, ctx)
    a = op.attrs
    res = rng.standard_normal(expected.shape) if residual else None
    y = cuda_conv.conv2d_forward(device(x), device(p["weight"]), device(p["bias"]),
                               stride=a["stride"], dilation=a["dilation"], pads=a["pads"],
                               out_hw=op.out_shape[1:], activation=activation,
                               residual=None if res is None else device(res))
    want = expected
    if residual:  # act(conv + residual): the reference's op with the residual as input 2
        ref_ctx = KernelContext(keep=True)
        want = KERNELS["conv2d"](op, [x, res], p, ref_ctx)
    np.testing.assert_allclose(y.copy_to_host(), want, rtol=1e-5, atol=1e-5)
    gy = rng.standard_normal(expected.shape)
    (gx_ref,), grads = BACKWARD["conv2d"](op, [x], expected, gy, p, ctx)
    if act is not None:  # relu's derivative comes from its output: nothing kept before it
        pre = expected if act[0] in FROM_OUTPUT else ctx.pre_activation[op.output]
    g_pre = gy if act is None else cpu.activation_grad(
        activation[0], activation[1], pre, expected, gy)
    # the op's backward kernel before its epilogue: the conv's gradients and its bias's
    from runtime.backends.cuda import ops as cuda_ops

    (gx,), got = cuda_ops._conv2d_core_backward(
        op, [device(x)], None, device(g_pre), {k: device(v) for k, v in p.items()},
        KernelContext())
    gw, gb = got["weight"], got["bias"]
    np.testing.assert_allclose(gx.copy_to_host(), gx_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gw.copy_to_host(), grads["weight"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gb.copy_to_host(), grads["bias"], rtol=1e-4, atol=1e-5)


TINY = """
input: {channels: 2, height: 6, width: 6}
layers:
  - name: c1
    conv2d: {out_channels: 3, kernel_size: 3, padding: 1, activation: relu}
  - name: c2
    conv2d: {out_channels: 3, kernel_size: 3, padding: 1}
  - add: [-1, c1]
  - tanh
  - layernorm2d
  - avg_pool2d: 2
  - dropout: 0.2
  - flatten
  - linear: {out_features: 4, activation: silu}
  - linear: 3
"""


def test_a_network_runs_forward_and_backward_on_the_device():
    import archc

    graph = archc.load("tiny.yaml", text=TINY)
    gpu = archc.compile(graph, backend="cuda", seed=2)
    host = archc.compile(graph, backend="cpu", seed=2)
    assert all(gpu.backend.on_device(op) for op in gpu.program.ops)
    x = np.random.default_rng(0).standard_normal((2, 2, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(gpu.predict(x), host.predict(x), rtol=1e-5, atol=1e-6)
    agree(gpu, host, x)
    # new parameters reach the device at the next pass
    gpu.params = {k: v * 0.5 for k, v in host.params.items()}
    host.params = dict(gpu.params)
    np.testing.assert_allclose(gpu.predict(x), host.predict(x), rtol=1e-5, atol=1e-6)


def test_run_on_cuda_from_the_command_line(tmp_path, capsys, monkeypatch):
    from archc.cli import main

    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    assert main(["run", str(spec), "--backend", "cuda", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "forward pass on cuda" in out and "10 of 10 layers on the device" in out
    monkeypatch.setattr(cuda_backend, "unavailable_reason",
                        lambda: "no CUDA GPU is available on this machine")
    assert main(["run", str(spec), "--backend", "cuda"]) == 2
    assert capsys.readouterr().err == "error: no CUDA GPU is available on this machine\n"


@pytest.mark.parametrize("kind, attrs, shape", [
    ("max_pool2d", {"kernel_size": 3, "stride": 2, "padding": 1}, (2, 3, 7, 7)),
    ("max_pool2d", {"kernel_size": 2, "stride": 2, "ceil_mode": True, "dilation": 1}, (1, 2, 5, 5)),
    ("avg_pool2d", {"kernel_size": 3, "stride": 2, "padding": 1}, (2, 3, 7, 6)),
    ("avg_pool2d", {"kernel_size": 3, "stride": 2, "padding": 1, "count_include_pad": False,
                    "ceil_mode": True}, (1, 2, 6, 6)),
    ("global_avg_pool2d", {}, (2, 3, 5, 4)),
    ("adaptive_avg_pool2d", {"output_size": 1}, (2, 3, 4, 4)),
    ("batchnorm2d", {}, (2, 3, 4, 5)),
    ("batchnorm2d", {"affine": False}, (2, 3, 2, 2)),
    ("batchnorm1d", {}, (4, 5)),
    ("layernorm2d", {}, (2, 3, 2, 3)),
    ("layernorm", {}, (3, 5)),
    ("local_response_norm", {"size": 3, "alpha": 0.5, "beta": 0.75, "k": 2.0}, (2, 5, 2, 2)),
    ("local_response_norm", {"size": 4, "alpha": 0.3, "beta": 0.5, "k": 1.0}, (1, 6, 1, 2)),
    ("upsample", {"scale_factor": 2, "mode": "bilinear"}, (1, 2, 3, 4)),
    ("upsample", {"size": [5, 3], "mode": "bilinear", "align_corners": True}, (1, 1, 3, 4)),
    ("upsample", {"size": [5, 7], "mode": "nearest"}, (1, 2, 2, 3)),
    ("unpool2d", {"kernel_size": 2, "mode": "bed_of_nails"}, (1, 2, 2, 3)),
    ("unpool2d", {"kernel_size": [2, 3], "mode": "nearest"}, (1, 2, 2, 2)),
    ("adaptive_avg_pool2d", {"output_size": [2, 3]}, (1, 2, 5, 7)),  # overlapping bins
    ("adaptive_max_pool2d", {"output_size": [2, 2]}, (1, 2, 5, 5)),
    ("global_max_pool2d", {}, (2, 2, 3, 3)),
    ("conv_transpose2d", {"out_channels": 2, "kernel_size": 3, "stride": 2, "padding": 1,
                          "output_padding": 1}, (1, 3, 3, 3)),
    ("conv_transpose2d", {"out_channels": 2, "kernel_size": 2, "stride": 2, "dilation": 2},
     (2, 2, 2, 2)),
    ("conv_transpose2d", {"out_channels": 4, "kernel_size": 3, "stride": 2, "groups": 2},
     (1, 4, 2, 3)),
])
def test_layer_kernels_match_the_cpu_backend(kind, attrs, shape):
    import archc
    from runtime.backends import cpu as host
    from runtime.backends.cuda.backend import BACKEND

    text = "input: {" + (f"channels: {shape[1]}, height: {shape[2]}, width: {shape[3]}"
                         if len(shape) == 4 else f"features: {shape[1]}") + "}\n"
    text += "layers: [{" + kind + ": " + (str(attrs).replace("'", "") if attrs else "{}") + "}]"
    model = archc.compile(archc.load("l.yaml", text=text), backend="cpu", seed=1)
    (op,) = model.program.ops
    rng = np.random.default_rng(len(shape))
    p = {role: model.params[full] for role, full in op.params.items()}
    if "running_var" in p:  # non-trivial statistics and affine parameters
        p = {k: (rng.uniform(0.5, 2.0, v.shape) if k in ("running_var", "weight")
                 else rng.standard_normal(v.shape)).astype(v.dtype) if v.dtype != np.int64 else v
             for k, v in p.items()}
    assert BACKEND.on_device(op)
    x = rng.standard_normal(shape).astype(np.float32)
    if len(shape) == 4:  # ties in a max-pool window pick the first, as PyTorch does
        x[0, 0, 0, :2] = 3.0
    ctx_h, ctx_d = KernelContext(keep=True), KernelContext(keep=True)
    expected = host.KERNELS[kind](op, [x], p, ctx_h)
    dp = {k: device(v) if v.dtype != np.int64 else cuda.to_device(v) for k, v in p.items()}
    y = BACKEND.kernels[kind](op, [device(x)], dp, ctx_d)
    np.testing.assert_allclose(y.copy_to_host(), expected, rtol=1e-5, atol=1e-6)
    gy = rng.standard_normal(expected.shape).astype(np.float32)
    (gx_h,), gp_h = host.BACKWARD[kind](op, [x], expected, gy, p, ctx_h)
    (gx_d,), gp_d = BACKEND.backward[kind](op, [device(x)], y, device(gy), dp, ctx_d)
    np.testing.assert_allclose(gx_d.copy_to_host(), gx_h, rtol=1e-5, atol=1e-5)
    assert set(gp_d) == set(gp_h)
    for role in gp_h:
        np.testing.assert_allclose(gp_d[role].copy_to_host(), gp_h[role], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("conv", [
    {"out_channels": 4, "kernel_size": 3, "padding": 1, "groups": 4, "activation": "relu6"},
    {"out_channels": 8, "kernel_size": 3, "stride": 2, "padding": 1, "groups": 4},  # mult 2
    {"out_channels": 4, "kernel_size": 3, "padding": 1, "groups": 2, "activation": "silu"},
])
def test_grouped_and_depthwise_convs_match_the_cpu_backend(conv):
    import archc

    text = "input: {channels: 4, height: 5, width: 5}\nlayers: [{conv2d: " + \
        str(conv).replace("'", "") + "}]"
    graph = archc.load("g.yaml", text=text)
    gpu, host = archc.compile(graph, backend="cuda", seed=3), archc.compile(graph, "cpu", seed=3)
    assert all(gpu.backend.on_device(op) for op in gpu.program.ops)
    agree(gpu, host, np.random.default_rng(0).standard_normal((2, 4, 5, 5)), atol=1e-5)


MIXED = """
input: {channels: 2, height: 4, width: 4}
layers:
  - name: c1
    conv2d: {out_channels: 4, kernel_size: 3, padding: 1}
  - batchnorm2d
  - relu
  - name: gate
    global_avg_pool2d: {}
  - sigmoid
  - multiply: [c1, gate, gate]    # broadcast gates (three inputs)
  - concat: [-1, c1]
  - channel_shuffle: 2
  - layer_scale: 1.0
  - softmax: {dim: 1}
  - stochastic_depth: 0.0
  - max_pool2d: 4
  - flatten
  - batchnorm1d
  - dropout: 0.0
  - linear: 3
"""


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_every_op_of_a_mixed_network_runs_on_the_device(mode):
    """Forward, gradients and (training) the batch-norm running statistics and batch
    counts agree with the CPU backend."""
    import archc

    graph = archc.load("mixed.yaml", text=MIXED)
    gpu, host = archc.compile(graph, backend="cuda", seed=2), archc.compile(graph, "cpu", seed=2)
    assert all(gpu.backend.on_device(op) for op in gpu.program.ops)
    rng = np.random.default_rng(5)
    host.params = {k: v if v.dtype == np.int64 else (
        rng.uniform(0.5, 1.5, v.shape) if "running_var" in k or "layer_scale" in k
        else v + 0.1 * rng.standard_normal(v.shape)).astype(np.float32)
        for k, v in host.params.items()}
    gpu.params = {k: v.copy() for k, v in host.params.items()}
    getattr(gpu, mode)(), getattr(host, mode)()
    agree(gpu, host, rng.standard_normal((3, 2, 4, 4)).astype(np.float32), rtol=1e-3,
          atol=1e-5)
    for name, value in host.params.items():  # running statistics, num_batches_tracked
        np.testing.assert_allclose(gpu.params[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    assert gpu.params["batchnorm2d.num_batches_tracked"] == (mode == "train")


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_a_channels_last_block_runs_on_the_device(mode):
    """ConvNeXt's block as torchvision writes it: layer norm and linear layers over the
    channels of a permuted map, forward and backward as on the CPU."""
    import archc

    graph = archc.load("cl.yaml", text=CHANNELS_LAST)
    gpu, host = archc.compile(graph, backend="cuda", seed=3), archc.compile(graph, "cpu", seed=3)
    assert all(gpu.backend.on_device(op) for op in gpu.program.ops)
    getattr(gpu, mode)(), getattr(host, mode)()
    agree(gpu, host, np.random.default_rng(6).standard_normal((2, 4, 3, 5)).astype(np.float32),
          rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("text, passes", [(MIXED, 0), (MIXED, 2), (None, 2)],
                         ids=["mixed", "mixed-O2", "tiny-O2"])
def test_every_output_lands_where_the_memory_plan_puts_it(text, passes):
    """Each op's kernel writes its output into the plan's room for it, in inference and in
    a forward pass for training (fused epilogues, in-place chains of adds and multiplies,
    and a kept pre-activation value included), whatever order it allocates in."""
    import archc
    from archc.passes import preset, run_passes

    graph = archc.load("net.yaml", text=text or TINY)
    if passes:
        graph, _, _ = run_passes(graph, None, preset(passes))
    gpu = archc.compile(graph, backend="cuda", seed=2)
    x = np.random.default_rng(0).standard_normal((2,) + graph[graph.inputs[0]].shape)
    gpu.predict(x.astype(np.float32))
    assert gpu.last_unplaced == []
    gpu.train()
    gpu(x.astype(np.float32))
    assert gpu.last_unplaced == []


@pytest.mark.parametrize("kind, attrs, shape", [
    ("dropout", {"p": 0.3}, (4, 50)),
    ("stochastic_depth", {"p": 0.5, "mode": "row"}, (64, 2, 2, 1)),
])
def test_dropout_masks_are_drawn_on_the_device(kind, attrs, shape):
    from runtime.backends.cuda.backend import BACKEND
    from runtime.program import Op

    op = Op("d", kind, {"mode": "row", **attrs}, ("x",), "d", {}, (shape[1:],), shape[1:])
    x = np.random.default_rng(0).uniform(1, 2, shape).astype(np.float32)

    def run(seed):
        ctx = KernelContext(train=True, rng=np.random.default_rng(seed), keep=True)
        y = BACKEND.kernels[kind](op, [device(x)], {}, ctx)
        (gx,), _ = BACKEND.backward[kind](op, [device(x)], y, device(np.ones(shape)), {}, ctx)
        return y.copy_to_host(), gx.copy_to_host()

    y, gx = run(1)
    scale = y / x
    rate = attrs["p"]
    levels = np.unique(np.round(scale, 4))
    assert len(levels) == 2 and levels[0] == 0
    assert levels[1] == pytest.approx(1 / (1 - rate), rel=1e-4)
    np.testing.assert_allclose(gx, scale, rtol=1e-6)  # the same mask in the backward pass
    if kind == "stochastic_depth":  # one draw per sample
        assert (scale == scale[:, :1, :1, :1]).all()
    kept = (scale > 0).mean()
    assert abs(kept - (1 - rate)) < 4 * np.sqrt(rate * (1 - rate) / scale[..., :1].size)
    np.testing.assert_array_equal(run(1)[0], y)  # the model's generator gives the seed
    assert not np.array_equal(run(2)[0], y)


@pytest.mark.parametrize("train", [False, True])
def test_join_draws_what_the_host_draws(monkeypatch, train):
    """FractalNet's join: the weights of drop-path come from the model's generator on the
    host (the same draws as the CPU's), go to the device in one copy (each copy waits for
    the work queued before it), and the weighted sum runs on the device."""
    from runtime.backends import cpu as host
    from runtime.backends.cuda.backend import BACKEND
    from runtime.program import Op

    shape = (5, 2, 3, 3)
    attrs = {"drop_path": 0.3, "global_drop": 0.4, "columns": None, "column_count": None}
    op = Op("j", "join", attrs, ("a", "b", "c"), "j", {}, (shape[1:],) * 3, shape[1:])
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(shape).astype(np.float32) for _ in range(3)]
    gy = rng.standard_normal(shape).astype(np.float32)
    ctx_h = KernelContext(train=train, rng=np.random.default_rng(3), keep=True)
    ctx_d = KernelContext(train=train, rng=np.random.default_rng(3), keep=True)
    want = host.KERNELS["join"](op, xs, {}, ctx_h)
    inputs, uploads, to_device = [device(x) for x in xs], [], cuda.to_device
    monkeypatch.setattr(cuda, "to_device", lambda *a, **k: uploads.append(a[0].shape) or
                        to_device(*a, **k))
    y = BACKEND.kernels["join"](op, inputs, {}, ctx_d)
    monkeypatch.undo()
    assert uploads == [(3, 5)]  # every input's weight for every sample
    np.testing.assert_allclose(y.copy_to_host(), want, rtol=1e-6, atol=1e-6)
    grads, _ = BACKEND.backward["join"](op, [device(x) for x in xs], y, device(gy), {}, ctx_d)
    for got, expected in zip(grads, host.BACKWARD["join"](op, xs, want, gy, {}, ctx_h)[0]):
        np.testing.assert_allclose(got.copy_to_host(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape, target, smoothing", [
    ((4, 5), np.array([0, 4, 2, 2]), 0.0),
    ((3, 40), np.array([39, 0, 7]), 0.1),   # more classes than threads of a simulated block
    ((2, 3), np.array([[0.2, 0.8, 0.0], [0.5, 0.25, 0.25]]), 0.1),  # mixup's probabilities
    ((2, 3, 2, 3), np.array([[[0, 1, 2], [2, 2, 1]], [[1, 0, 0], [2, 1, 0]]]), 0.1),  # pixels
    ((1, 3, 1, 2), np.array([[[0, -100]]]), 0.0),  # an ignored pixel: the host's loss
    ((2, 4), np.array([3, -100]), 0.0),
])
def test_the_training_loss_runs_on_the_device(shape, target, smoothing):
    from runtime.backends.cuda import training
    from runtime.train.losses import classification_step

    z = (np.random.default_rng(shape[1]).standard_normal(shape) * 3).astype(np.float32)
    z[0, 1] = z[0, 2] = z[0].max() + 1  # a tie: the first maximum is the prediction
    loss, grad, hits = training.classify(device(z), target, label_smoothing=smoothing)
    want_loss, want_grad, want_hits = classification_step(z, target, label_smoothing=smoothing)
    assert float(loss) == pytest.approx(want_loss, rel=1e-5)
    np.testing.assert_allclose(grad.copy_to_host(), want_grad, rtol=1e-4, atol=1e-7)
    assert int(hits) == want_hits
    with pytest.raises(ValueError, match="class labels must lie in"):
        training.classify(device(z), np.full((shape[0],) + shape[2:], shape[1]))


STEP_NET = """
input: {channels: 3, height: 6, width: 6}
layers:
  - name: stem
    conv2d: {out_channels: 4, kernel_size: 3, padding: 1}
  - batchnorm2d
  - relu
  - conv2d: {out_channels: 4, kernel_size: 3, padding: 1, groups: 2}
  - add: [-1, stem]
  - concat: [-1, stem]
  - max_pool2d: 2
  - global_avg_pool2d: {}
  - flatten
  - dropout: 0.25
  - linear: 3
"""


SEGMENT_NET = """
input: {channels: 3, height: 6, width: 6}
layers:
  - conv2d: {out_channels: 4, kernel_size: 3}
  - batchnorm2d
  - relu
  - conv2d: {out_channels: 3, kernel_size: 1}
"""


AUXILIARY_NET = """
input: {channels: 3, height: 6, width: 6}
layers:
  - conv2d: {out_channels: 4, kernel_size: 3, padding: 1}
    name: trunk
  - relu
  - sequential: [global_avg_pool2d, flatten, {linear: 3}]
    name: side
  - global_avg_pool2d: {}
    input: relu
  - flatten
  - linear: 3
    name: fc
output: fc
training_outputs:
  side: {output: side, loss_weight: 0.3}
"""


@pytest.mark.parametrize("kind", ["labels", "soft", "segment", "auxiliary"])
def test_a_training_step_waits_for_the_device_once(monkeypatch, kind):
    """The training loop's step queues its work and reads the loss and hits back at the
    end: the images and targets go to the device before the first kernel (class labels,
    a soft target's probabilities too, or masks cut to an unpadded network's output),
    nothing comes back before the last kernel, and no kernel is handed a host array
    (which numba would copy over and back, waiting each time). A training output's loss
    (GoogLeNet's auxiliary classifiers) is read with the network's, at the end."""
    import archc
    from numba.cuda.simulator import kernel as simulated
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    from runtime.train import loop
    from runtime.train.config import TrainConfig
    from runtime.train.tasks import Classification, Segmentation

    text = {"segment": SEGMENT_NET, "auxiliary": AUXILIARY_NET}.get(kind, STEP_NET)
    model = archc.compile(archc.load("s.yaml", text=text), backend="cuda", seed=0).train()
    config = TrainConfig(batch_size=4, optimizer="adam", lr=1e-3)
    trainable = {k: v for k, v in model.device_params().items()
                 if model.program.params[k].trainable and not model.program.params[k].buffer}
    opt = config.make_optimizer(trainable, model.backend.optim)
    task = (Segmentation if kind == "segment" else Classification)(["a", "b", "c"])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 6, 6)).astype(np.float32)
    y = {"labels": np.array([0, 2, 1, 2]), "soft": rng.dirichlet(np.ones(3), 4).astype(
        np.float32), "segment": rng.integers(0, 3, (4, 6, 6)),
         "auxiliary": np.array([0, 2, 1, 2])}[kind]
    step = lambda: loop._step(model, task, opt, config, trainable, x, y, None, 1.0,  # noqa
                              "epoch 1, step 1", None)
    step()  # the first step makes the optimiser's state
    events = []
    launch, to_device = simulated.FakeCUDAKernel.__call__, cuda.to_device
    copy_to_host = FakeCUDAArray.copy_to_host

    def launched(self, *args):
        if not self._device and not simulated._kernel_context:
            events.append("launch")
            if any(isinstance(a, np.ndarray) and a.ndim for a in args):
                events.append(f"host array to {self.fn.__name__}")
        return launch(self, *args)

    monkeypatch.setattr(simulated.FakeCUDAKernel, "__call__", launched)
    monkeypatch.setattr(cuda, "to_device", lambda *a, **k: events.append("up") or
                        to_device(*a, **k))
    monkeypatch.setattr(FakeCUDAArray, "copy_to_host", lambda *a, **k: events.append("down")
                        or copy_to_host(*a, **k))
    monkeypatch.setattr(cuda, "synchronize", lambda: events.append("sync"))
    loss, hits, judged, _ = step()
    first = events.index("launch")
    # the targets (and a soft target's probabilities), then the images
    assert events[:first] == ["up"] * (3 if kind == "soft" else 2)
    reads = 2 if kind == "auxiliary" else 1  # the network's loss and hits; the side's
    assert events[first:-reads] == ["launch"] * (len(events) - first - reads)
    assert events[-reads:] == ["down"] * reads  # the loss and hits together (each loss's)
    assert isinstance(loss, float) and isinstance(hits, int)
    assert judged == (4 * 4 * 4 if kind == "segment" else 4)  # the masks' 4 x 4 middles
    if kind == "segment":  # the staged masks are the middles the host loss would take
        from runtime.train.losses import classification_step

        z = rng.standard_normal((4, 3, 4, 4)).astype(np.float32)
        task.stage(model, y)
        loss, grad, hits, judged = task.step(model, device(z), y)
        want_loss, want_grad, want_hits = classification_step(z, y[:, 1:5, 1:5])
        assert float(loss) == pytest.approx(want_loss, rel=1e-5)
        np.testing.assert_allclose(grad.copy_to_host(), want_grad, rtol=1e-4, atol=1e-7)
        assert (int(hits), judged) == (want_hits, 64)


@pytest.mark.parametrize("name, kwargs", [
    ("sgd", {"momentum": 0.9, "weight_decay": 0.01, "nesterov": True}),
    ("sgd", {}),
    ("adam", {"weight_decay": 0.01}),
    ("adamw", {}),
])
def test_optimiser_updates_run_on_the_device(name, kwargs):
    from runtime.train import optim
    from runtime.backends.cuda import training

    rng = np.random.default_rng(0)
    start = {"w": rng.standard_normal((3, 70)).astype(np.float32),
             "b": rng.standard_normal(5).astype(np.float32)}
    host = {k: v.copy() for k, v in start.items()}
    dev = {k: device(v) for k, v in start.items()}
    opt_h = optim.OPTIMIZERS[name](host, 0.1, **kwargs)
    opt_d = optim.OPTIMIZERS[name](dev, 0.1, kernels=training.UPDATE, **kwargs)
    for step in range(3):
        grads = {k: rng.standard_normal(v.shape).astype(np.float32) * 10 for k, v in start.items()}
        norms = [optim.clip_grad_norm({k: g.copy() for k, g in grads.items()}, 1.0),
                 optim.clip_grad_norm(dgrads := {k: device(g) for k, g in grads.items()}, 1.0,
                                      training.UPDATE)]
        assert norms[1] == pytest.approx(norms[0], rel=1e-5)
        optim.clip_grad_norm(grads, 1.0)
        opt_h.step(grads)
        opt_d.step(dgrads)
    for k in start:
        np.testing.assert_allclose(dev[k].copy_to_host(), host[k], rtol=1e-5, atol=1e-6)
    state = opt_d.state_dict()  # on the host, as the CPU's: checkpoints move across backends
    assert all(isinstance(v, np.ndarray) for v in state.values())
    for k, v in opt_h.state_dict().items():
        np.testing.assert_allclose(state[k], v, rtol=1e-5, atol=1e-6)


SMALL = """
input: {channels: 1, height: 4, width: 4}
layers:
  - conv2d: {out_channels: 2, kernel_size: 3, padding: 1}
  - batchnorm2d
  - relu
  - max_pool2d: 2
  - flatten
  - linear: 3
"""


def test_archc_train_on_the_device_and_checkpoints_that_resume_on_either_backend(
        tmp_path, capsys, monkeypatch):
    """Two epochs on the CPU; the same two epochs with the first on the device and the
    second resumed from its checkpoint on the CPU, and the other way round: the weights
    agree to float32 rounding (same data order, same updates)."""
    import json

    from archc.cli import main

    spec = tmp_path / "small.yaml"
    spec.write_text(SMALL)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 20)
    x = rng.standard_normal((20, 1, 4, 4)).astype(np.float32) + y[:, None, None, None]
    np.savez(tmp_path / "d.npz", x=x, y=y)
    common = [str(spec), "--data", f"npz:{tmp_path / 'd.npz'}", "--batch-size", "8",
              "--optimizer", "adam", "--lr", "0.01", "--clip", "1.0"]

    def weights(run):
        folder = json.loads((run / "last.json").read_text())["checkpoint"]
        return dict(np.load(run / folder / "weights.npz"))

    assert main(["train", *common, "--epochs", "2", "--out", str(tmp_path / "cpu")]) == 0
    for first, then in (("cuda", "cpu"), ("cpu", "cuda")):
        run = tmp_path / f"{first}-{then}"
        assert main(["train", *common, "--epochs", "1", "--backend", first, "--out",
                     str(run)]) == 0
        assert main(["train", *common, "--epochs", "2", "--backend", then, "--resume",
                     str(run)]) == 0
        want = weights(tmp_path / "cpu")
        got = weights(run)
        assert set(got) == set(want)
        for name in want:  # batch-norm buffers included
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5,
                                       err_msg=f"{first} then {then}: {name}")
    capsys.readouterr()
    monkeypatch.setattr(cuda_backend, "unavailable_reason",
                        lambda: "no CUDA GPU is available on this machine")
    assert main(["train", *common, "--backend", "cuda", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err == "error: no CUDA GPU is available on this machine\n"


SHAPES = """
input: {channels: 4, height: 5, width: 5}
layers:
  - name: a
    slice: {start: 1, end: 3}
  - name: small
    max_pool2d: 2
  - center_crop: [a, small]
  - conv_transpose2d: {out_channels: 2, kernel_size: 2, stride: 2, groups: 2}
  - name: pool
    max_pool2d: 2
  - relu
  - max_unpool2d: {kernel_size: 2}
    inputs: [-1, pool, -3]
  - name: wide
    softmax: {dim: 3}             # along the width
  - slice: {dim: 2, start: 1}     # rows 1..3
  - concat: {dim: 2}              # 3 + 4 rows
    inputs: [-1, wide]
  - permute: [0, 3, 1, 2]         # N, W, C, H
  - add: [-1, -1, -1]
  - flatten
  - linear: 2
"""


def test_shape_ops_along_every_axis_run_on_the_device():
    """Slices, crops, unpooling, softmax, concat along any axis, permutations, a sum of
    three: forward and gradients against the CPU backend."""
    import archc

    graph = archc.load("shapes.yaml", text=SHAPES)
    gpu, host = archc.compile(graph, backend="cuda", seed=4), archc.compile(graph, "cpu", seed=4)
    assert all(gpu.backend.on_device(op) for op in gpu.program.ops)
    agree(gpu, host, np.random.default_rng(0).standard_normal((2, 4, 5, 5)))


def test_every_layer_type_has_device_kernels_and_the_host_fallback_still_works():
    """A layer type added to the CPU backend without CUDA kernels would run through the
    host (correct, but crossing the bus): none does today, and that path still works."""
    from runtime.backends import cpu
    from runtime.backends.cuda import backend as B
    from runtime.program import Op

    assert set(cpu.KERNELS) | set(cpu.BACKWARD) <= B.DEVICE_OPS
    op = Op("t", "tanh", {}, ("x",), "t", {}, ((3, 4),), (3, 4))
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    ctx = KernelContext(keep=True)
    y = B._host_forward("tanh")(op, [device(x)], {}, ctx)
    np.testing.assert_allclose(y.copy_to_host(), np.tanh(x), rtol=1e-6)
    (gx,), _ = B._host_backward("tanh")(op, [device(x)], y, device(np.ones_like(x)), {}, ctx)
    np.testing.assert_allclose(gx.copy_to_host(), 1 - np.tanh(x) ** 2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["predict", "train"])
def test_fused_residual_and_activation_epilogues_on_the_device(mode):
    """-O2 fuses the add and the tanh into the conv: the device applies both in its
    kernel's epilogue (predict) or the residual in it and the activation after, keeping
    the value before it (training)."""
    import archc
    from archc.passes import preset, run_passes

    graph, _, _ = run_passes(archc.load("tiny.yaml", text=TINY), None, preset(2))
    fused = [op for op in archc.compile(graph).program.ops if op.kind == "conv2d"]
    assert len(fused[1].inputs) == 2 and fused[1].attrs["activation"][0] == "tanh"
    gpu, host = archc.compile(graph, backend="cuda", seed=2), archc.compile(graph, "cpu", seed=2)
    x = np.random.default_rng(0).standard_normal((2, 2, 6, 6)).astype(np.float32)
    if mode == "predict":
        np.testing.assert_allclose(gpu.predict(x), host.predict(x), rtol=1e-5, atol=1e-6)
        return
    gpu.train(), host.train()
    for model in (gpu, host):
        model.rng = np.random.default_rng(0)
    gpu.kernels = dict(gpu.kernels, dropout=lambda op, xs, p, ctx: xs[0])  # no masks
    host.kernels = dict(host.kernels, dropout=lambda op, xs, p, ctx: xs[0])
    gpu.backward_kernels = dict(gpu.backward_kernels,
                                dropout=lambda op, xs, y, gy, p, ctx: ([gy], {}))
    host.backward_kernels = dict(host.backward_kernels,
                                 dropout=lambda op, xs, y, gy, p, ctx: ([gy], {}))
    agree(gpu, host, x)


BN_BLOCK = """
input: {channels: 2, height: 5, width: 5}
layers:
  - name: c1
    conv2d: {out_channels: 3, kernel_size: 3, padding: 1}
  - batchnorm2d
  - relu
  - conv2d: {out_channels: 3, kernel_size: 3, padding: 1}
  - batchnorm2d
  - add: [-1, c1]
  - silu
  - flatten
  - linear: 3
"""


@pytest.mark.parametrize("mode", ["predict", "train"])
def test_batch_norm_epilogues_on_the_device(mode):
    """The graph archc train runs (batch norm+relu, batch norm+add+silu) on the device:
    the same outputs and gradients as the CPU's, with batch statistics and without."""
    import archc
    from archc.passes import for_training

    graph = for_training(archc.load("bn.yaml", text=BN_BLOCK))
    assert {op.attrs.get("activation", (None,))[0] for op in archc.compile(graph).program.ops
            if op.kind == "batchnorm2d"} == {"relu", "silu"}
    gpu, host = archc.compile(graph, backend="cuda", seed=2), archc.compile(graph, "cpu", seed=2)
    x = np.random.default_rng(0).standard_normal((3, 2, 5, 5)).astype(np.float32)
    if mode == "predict":
        np.testing.assert_allclose(gpu.predict(x), host.predict(x), rtol=1e-5, atol=1e-6)
        return
    gpu.train(), host.train()
    agree(gpu, host, x)


SPEC_DIR = Path(__file__).resolve().parents[2] / "specs"
LIBRARY = sorted(p.stem for p in SPEC_DIR.glob("*.yaml"))


def _relative(a, b) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.mark.skipif(kernels.SIMULATED, reason="a real GPU only: whole library networks are "
                    "far too slow under the simulator (ARCHC_CUDA=real pytest -m cuda)")
@pytest.mark.parametrize("spec", LIBRARY)
def test_every_library_network_runs_and_trains_on_a_real_gpu(spec):
    """Forward and gradients of each library network on the GPU (float32) against the same
    network in float64 on the CPU (inference mode; and training mode, batch statistics
    included, where no random mask makes the two differ). A gradient's error is measured
    against its own size, or a thousandth of the network's largest gradient where it is
    smaller: a conv bias before a training-mode batch norm has a gradient of exactly zero,
    and the first layers of a deep plain network vanishing ones (MobileNet-V1's: 1e-10)."""
    import archc

    graph = archc.load(SPEC_DIR / f"{spec}.yaml")
    exact = archc.compile(graph, "cpu", dtype="float64")
    gpu = archc.compile(graph, backend="cuda", params=exact.params)
    exact.params = {k: v if v.dtype == np.int64 else v.astype(np.float64)
                    for k, v in gpu.params.items()}  # the float32 weights, exactly
    rng = np.random.default_rng(0)
    x = {k: rng.standard_normal((2,) + s).astype(np.float32)
         for k, s in exact.program.inputs.items()}
    random = {"dropout", "stochastic_depth"} & {op.kind for op in exact.program.ops}
    for mode in ("eval",) if random else ("eval", "train"):
        getattr(gpu, mode)(), getattr(exact, mode)()
        want, got = exact(x), gpu(x)
        outs = want if isinstance(want, dict) else {"y": want}
        gots = got if isinstance(got, dict) else {"y": got}
        for key in outs:
            assert _relative(gots[key], outs[key]) < 1e-4, (mode, key)
        gy = {k: rng.standard_normal(v.shape) for k, v in outs.items()}
        a = exact.backward(gy if isinstance(want, dict) else gy["y"]).params
        b = gpu.backward({k: v.astype(np.float32) for k, v in gy.items()}
                         if isinstance(want, dict) else gy["y"].astype(np.float32)).params
        largest = max(np.abs(g).max() for g in a.values())
        for name, g in a.items():
            scale = max(np.abs(g).max(), 1e-3 * largest)
            assert np.abs(b[name] - g).max() / scale < 1e-3, (mode, name)


def test_depthwise_epilogue_adds_the_residual_before_the_activation():
    import archc
    from runtime.backends.cuda import layers
    from runtime.backends.reference import KERNELS

    graph = archc.load("d.yaml", text="input: {channels: 3, height: 5, width: 4}\nlayers: ["
                       "{conv2d: {out_channels: 6, kernel_size: 3, padding: 1, groups: 3}}]")
    model = archc.compile(graph, dtype="float64")
    (op,) = model.program.ops
    op.attrs["activation"] = ("relu6", ())
    rng = np.random.default_rng(0)
    x, res = rng.standard_normal((2, 3, 5, 4)), rng.standard_normal((2, 6, 5, 4)) * 3
    p = {role: model.params[full] for role, full in op.params.items()}
    want = KERNELS["conv2d"](op, [x, res], p, KernelContext())
    a = op.attrs
    got = layers.depthwise(device(x), device(p["weight"]), device(p["bias"]),
                           stride=a["stride"], dilation=a["dilation"], pads=a["pads"],
                           out_hw=op.out_shape[1:], activation=("relu6", {}),
                           residual=device(res))
    np.testing.assert_allclose(got.copy_to_host(), want, rtol=1e-5, atol=1e-5)


TINY_TASKS = {
    "detect": """
name: tinydet
input: {channels: 3, height: 16, width: 16}
layers:
  - conv2d: {out_channels: 4, kernel_size: 3, stride: 2, padding: 1}
  - relu
  - max_pool2d: 4
  - conv2d: {out_channels: 13, kernel_size: 1}
  - permute: [0, 2, 3, 1]
""",
    "embed": """
name: tinyembed
input: {channels: 1, height: 4, width: 4}
layers:
  - conv2d: {out_channels: 3, kernel_size: 3}
  - relu
  - flatten
  - linear: 5
""",
}


@pytest.mark.parametrize("task, extra", [
    ("detect", ["--data", "shapes-det:6", "--box-loss", "giou"]),
    ("embed", ["--loss", "contrastive"]),
])
def test_detection_and_embedding_train_on_the_device(task, extra, tmp_path):
    """The tasks whose loss runs on the host (detection, embeddings, segmentation with
    Dice) take the device's output and hand back the gradient: one epoch on the device
    ends with the CPU's weights. (Segmentation's cross-entropy runs on the device, as a
    classifier's: test_the_training_loss_runs_on_the_device.)"""
    import json

    from archc.cli import main

    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_TASKS[task])
    if task == "embed":
        rng = np.random.default_rng(0)
        y = rng.integers(0, 3, 12)
        x = rng.standard_normal((12, 1, 4, 4)).astype(np.float32) + y[:, None, None, None]
        np.savez(tmp_path / "d.npz", x=x, y=y)
        extra = extra + ["--data", f"npz:{tmp_path / 'd.npz'}"]
    common = [str(spec), *extra, "--epochs", "1", "--batch-size", "6", "--optimizer", "adam"]
    runs = {}
    for backend in ("cpu", "cuda"):
        runs[backend] = tmp_path / backend
        assert main(["train", *common, "--backend", backend, "--out", str(runs[backend])]) == 0

    def weights(run):
        folder = json.loads((run / "last.json").read_text())["checkpoint"]
        return dict(np.load(run / folder / "weights.npz"))

    want, got = weights(runs["cpu"]), weights(runs["cuda"])
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_reductions_that_cancel_keep_float32_honest():
    """Bias gradients, broadcast operands' gradients and channel sums whose terms cancel:
    half the threads' partial sums near +2e4, half near -2e4, the total near 1. Summed in
    float32 shared memory these were 1e-3 to 1e-1 off on an H100; the partial sums are
    float64 now, as the CPU's, and the totals match float64 to float32's own rounding."""
    from runtime.backends.cuda import tensor

    block = kernels.ELEMENTWISE_BLOCK
    rng = np.random.default_rng(0)
    rows, count = 3, 2 * block
    # thread t sums elements t and t + block: both +1e4 for even t, both -1e4 for odd t
    sign = np.where(np.arange(count) % block % 2 == 0, 1.0, -1.0)
    a = (sign * 1e4 + rng.uniform(0, 0.01, (rows, count))).astype(np.float32)
    exact = a.astype(np.float64).sum(axis=1)
    # (1, C, M): sums along the rows (a map's planes)
    sums = kernels.channel_sums(kernels.to_device(a[None]))
    np.testing.assert_allclose(sums.copy_to_host(), exact, rtol=1e-6)
    # (N, C, 1): channel sums over the samples (a linear layer's bias gradient)
    sums = kernels.channel_sums(kernels.to_device(np.ascontiguousarray(a.T)[:, :, None]))
    np.testing.assert_allclose(sums.copy_to_host(), exact, rtol=1e-6)
    # the gradient of an operand broadcast along the samples
    reduced = tensor.reduce_to(kernels.to_device(np.ascontiguousarray(a.T)), (1, rows))
    np.testing.assert_allclose(reduced.copy_to_host().ravel(), exact, rtol=1e-6)


@pytest.mark.parametrize("aligned, sampling", [(False, 0), (True, 2)])
def test_region_kernels_match_the_cpu(monkeypatch, aligned, sampling):
    """RoI Align and RoI Pool against the CPU's, forward and backward; each pass sends its
    boxes' tables in one copy per dtype (each copy waits for the work queued before it)."""
    from runtime.backends.cpu import roi as cpu_roi
    from runtime.backends.cuda import roi as cuda_roi

    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 2, 5, 6)).astype(np.float32)
    boxes = np.array([[-1.0, 0.5, 7.0, 4.0], [2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 11.0, 9.5]])
    batch = np.array([0, 1, 1])
    y = cpu_roi.align_forward(x, boxes, batch, 0.5, (2, 3), sampling, aligned)
    x_device, uploads, to_device = device(x), [], cuda.to_device
    monkeypatch.setattr(cuda, "to_device", lambda *a, **k: uploads.append(a[0].dtype) or
                        to_device(*a, **k))
    got = cuda_roi.align_forward(x_device, boxes, batch, 0.5, (2, 3), sampling, aligned)
    assert sorted(map(str, uploads)) == ["float64", "int64"]  # images and rows; weights
    uploads.clear()
    cuda_roi.pool_forward(x_device, boxes, batch, 0.5, (2, 3))
    assert uploads == [np.int64]  # images and bins
    monkeypatch.undo()
    np.testing.assert_allclose(got.copy_to_host(), y, rtol=1e-5, atol=1e-6)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    np.testing.assert_allclose(
        cuda_roi.align_backward(device(gy), boxes, batch, 0.5, sampling, aligned,
                                x.shape).copy_to_host(),
        cpu_roi.align_backward(gy, boxes, batch, 0.5, sampling, aligned, x.shape),
        rtol=1e-5, atol=1e-6)
    y, where = cpu_roi.pool_forward(x, boxes, batch, 0.5, (2, 3))
    got, got_where = cuda_roi.pool_forward(device(x), boxes, batch, 0.5, (2, 3))
    np.testing.assert_array_equal(got.copy_to_host(), y)
    np.testing.assert_array_equal(got_where.copy_to_host(), where)
    np.testing.assert_allclose(
        cuda_roi.pool_backward(device(gy), got_where, batch, x.shape).copy_to_host(),
        cpu_roi.pool_backward(gy, where, batch, x.shape), atol=1e-6)


def test_a_pyramid_of_region_maps_runs_on_the_device():
    """roi_align over two levels (boxes split between them, rows put back in place) and its
    backward, through a whole network, as on the CPU."""
    import archc
    from archc.lower import lower
    from runtime.model import Model

    text = """
inputs: {image: {channels: 2, height: 8, width: 8}, boxes: {shape: [3, 4]}}
layers:
  - conv2d: [2, 3, 1, 1]
    input: image
    name: fine
  - max_pool2d: 2
    name: coarse
  - roi_align: {output_size: 2, spatial_scale: [1, 1/2], sampling_ratio: 1, canonical_size: 4,
               canonical_level: 1}
    inputs: [fine, coarse, boxes]
  - flatten
  - linear: 3
"""
    program = lower(archc.load("p.yaml", text=text))
    boxes = np.array([[[0, 0, 2, 2], [1, 1, 7, 7], [0, 0, 8, 8]],
                      [[2, 2, 3, 3], [0, 1, 6, 5], [4, 4, 5, 6]]], np.float32)
    x = {"image": np.random.default_rng(6).standard_normal((2, 2, 8, 8)).astype(np.float32),
         "boxes": boxes}
    host, gpu = Model(program, "cpu", seed=2).train(), Model(program, "cuda", seed=2).train()
    expected = host(x)
    np.testing.assert_allclose(gpu(x), expected, rtol=1e-5, atol=1e-6)
    gy = np.random.default_rng(7).standard_normal(expected.shape).astype(np.float32)
    a, b = host.backward(gy), gpu.backward(gy)
    np.testing.assert_allclose(b.inputs["image"], a.inputs["image"], rtol=1e-4, atol=1e-6)
    for name in a.params:
        np.testing.assert_allclose(b.params[name], a.params[name], rtol=1e-4, atol=1e-6)


def test_a_frozen_batch_norm_trains_with_its_running_statistics():
    import archc

    text = """
input: {channels: 2, height: 4, width: 4}
layers:
  - conv2d: {out_channels: 3, kernel_size: 3, padding: 1, bias: false}
  - batchnorm2d: {frozen: true}
  - relu
"""
    graph = archc.load("f.yaml", text=text)
    host, gpu = archc.compile(graph, "cpu", seed=4), archc.compile(graph, "cuda", seed=4)
    params = host.params
    params["batchnorm2d.running_mean"] = np.array([0.5, -1.0, 0.2], np.float32)
    params["batchnorm2d.running_var"] = np.array([2.0, 0.5, 1.5], np.float32)
    host.params = gpu.params = params
    x = np.random.default_rng(8).standard_normal((3, 2, 4, 4)).astype(np.float32)
    expected = host.eval().predict(x)
    agree(gpu.train(), host.train(), x)
    np.testing.assert_allclose(gpu(x), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(gpu.params["batchnorm2d.running_mean"],
                                  params["batchnorm2d.running_mean"])


def test_inputs_already_on_the_device_stay_there():
    """A device array is taken as it is (no copy to the host and back), checked like a
    host one; the CPU backend brings it over."""
    import archc
    from runtime.errors import InputError

    graph = archc.load("n.yaml", text=TINY)
    gpu, host = archc.compile(graph, backend="cuda", seed=1), archc.compile(graph, seed=1)
    x = np.random.default_rng(0).standard_normal((2,) + graph[graph.inputs[0]].shape)
    x = x.astype(np.float32)
    np.testing.assert_allclose(gpu.predict(device(x)), host.predict(x), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(host.predict(device(x)), host.predict(x))
    with pytest.raises(InputError, match=r"must have shape \(N, "):
        gpu.predict(device(x[:, :1]))
    with pytest.raises(InputError, match="device array of float64"):
        gpu.predict(cuda.to_device(x.astype(np.float64)))


@pytest.mark.parametrize("shape", [(3, 2, 7), (1, 1, 50), (2, 5, 1)])
def test_per_channel_reductions_split_among_blocks_add_up(shape):
    """Channels shared by several blocks (uneven slices included): the batch statistics,
    the batch-norm gradients with batch and with running statistics, and channel sums
    agree with float64 NumPy, and the running statistics move as PyTorch's do."""
    from runtime.backends.cuda import layers, training

    n, c, m = shape
    chunks = kernels.reduction_chunks(c, n * m)
    assert chunks == {(3, 2, 7): 2, (1, 1, 50): 6, (2, 5, 1): 1}[shape]
    rng = np.random.default_rng(n * c * m)
    x = (rng.standard_normal(shape) * 3 + 5).astype(np.float32)
    gy = rng.standard_normal(shape).astype(np.float32)
    w = rng.uniform(0.5, 1.5, c).astype(np.float32)
    x64, gy64 = x.astype(np.float64), gy.astype(np.float64)
    mean, var = x64.mean(axis=(0, 2)), x64.var(axis=(0, 2))
    rm, rv, tracked = device(np.zeros(c)), device(np.ones(c)), cuda.to_device(np.zeros(1, np.int64))
    got_mean, got_var = training.batch_stats(device(x), rm, rv, tracked, momentum=0.1)
    np.testing.assert_allclose(got_mean.copy_to_host(), mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got_var.copy_to_host(), var, rtol=1e-5)
    np.testing.assert_allclose(rm.copy_to_host(), 0.1 * mean, rtol=1e-6, atol=1e-7)
    unbiased = var * (n * m) / max(n * m - 1, 1)
    np.testing.assert_allclose(rv.copy_to_host(), 0.9 + 0.1 * unbiased, rtol=1e-6)
    assert tracked.copy_to_host()[0] == 1
    inv = 1 / np.sqrt(var + 1e-5)[None, :, None]
    xhat = (x64 - mean[None, :, None]) * inv
    s0, s1 = gy64.sum(axis=(0, 2)), (gy64 * xhat).sum(axis=(0, 2))
    gx, g_weight, g_bias = training.batchnorm_train_backward(
        device(x), device(gy), device(mean), device(var), device(w), 1e-5)
    expected = w[None, :, None] * inv / (n * m) * (n * m * gy64 - s0[None, :, None]
                                                    - xhat * s1[None, :, None])
    np.testing.assert_allclose(gx.copy_to_host(), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g_bias.copy_to_host(), s0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g_weight.copy_to_host(), s1, rtol=1e-5, atol=1e-5)
    gx, g_weight, g_bias = layers.batchnorm_backward(
        device(x), device(gy), device(mean), device(var), device(w), 1e-5)
    np.testing.assert_allclose(gx.copy_to_host(), gy64 * w[None, :, None] * inv, rtol=1e-5)
    np.testing.assert_allclose(g_bias.copy_to_host(), s0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g_weight.copy_to_host(), s1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kernels.channel_sums(device(gy)).copy_to_host(), s0,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("first, source, skipped, gemms", [
    ("{conv2d: {out_channels: 4, kernel_size: 3, padding: 1, bias: false}}",
     "{channels: 3, height: 4, width: 4}", "col2im_kernel", 1),
    ("{conv2d: {out_channels: 3, kernel_size: 3, padding: 1, groups: 3, bias: false}}",
     "{channels: 3, height: 4, width: 4}", "depthwise_input_grad_kernel", 0),
    ("{conv_transpose2d: {out_channels: 4, kernel_size: 2, stride: 2, bias: false}}",
     "{channels: 3, height: 2, width: 2}", "rows_to_nchw_kernel", 1),
    ("{linear: {out_features: 5, bias: false}}", "{features: 6}", None, 1),
])
def test_a_training_backward_computes_only_the_gradients_it_needs(first, source, skipped,
                                                                   gemms):
    """``backward(inputs=False)`` (a training step) skips the input gradient of a layer fed
    by the network's input: a stem conv's gcols GEMM and col2im, a depthwise or
    transposed conv's input-gradient kernels, a linear layer's GEMM; and a layer without a
    bias sums no bias gradient (one pass over its output gradient each, for nothing). The
    parameters' gradients still equal the CPU backend's. Counted with the profiler's
    launch hook (``timing.kernel_times``): every kernel launch and library GEMM."""
    import archc
    from runtime.backends.cuda import timing

    rest = "relu, {linear: 3}" if "features" in source else \
        "relu, {max_pool2d: 2}, flatten, {linear: 3}"
    graph = archc.load("s.yaml", text=f"input: {source}\nlayers: [{first}, {rest}]\n")
    gpu = archc.compile(graph, backend="cuda", seed=4).train()
    host = archc.compile(graph, backend="cpu", seed=4).train()
    shape = (2,) + next(iter(gpu.program.inputs.values()))
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    gy = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    host(x)
    want = host.backward(gy).params

    def launches(inputs: bool):
        gpu(x)
        with timing.kernel_times(timing.EventClock()) as times:
            grads = gpu.backward(gy, inputs=inputs)
        counts: dict = {}
        for name, calls, _ in times.rows():
            name = "GEMM" if name.startswith("cuBLAS") or name == "gemm_kernel" else name
            counts[name] = counts.get(name, 0) + calls
        return grads, counts

    lean, fewer = launches(False)
    full, counts = launches(True)
    assert lean.inputs == {} and set(full.inputs) == set(gpu.program.inputs)
    for grads in (lean, full):
        assert set(grads.params) == set(want)
        for name in want:
            np.testing.assert_allclose(grads.params[name], want[name], rtol=1e-4, atol=1e-5,
                                       err_msg=name)
    if skipped:
        assert fewer.get(skipped, 0) == counts[skipped] - 1
    assert counts["GEMM"] - fewer["GEMM"] == gemms
    # the only bias is the last linear layer's: one channel sum in the whole pass
    assert (fewer["channel_partials_kernel"], counts["channel_partials_kernel"]) == (1, 1)
