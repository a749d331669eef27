"""The CUDA kernels against NumPy and the CPU kernels, under Numba's CUDA simulator
(tests/conftest.py sets NUMBA_ENABLE_CUDASIM=1 unless ARCHC_CUDA=real): tiny shapes, few
cases, as the simulator runs every GPU thread as a Python thread. `pytest -m cuda`
selects them; on a machine with a GPU, `ARCHC_CUDA=real pytest -m cuda` runs them for
real."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from runtime.backends import cuda as cuda_backend
from runtime.backends.cpu import elementwise as cpu
from runtime.backends.epilogue import CODES

pytestmark = pytest.mark.cuda

kernels = pytest.importorskip("runtime.backends.cuda.kernels")
cuda = kernels.cuda


def device(x):
    return cuda.to_device(np.ascontiguousarray(x, dtype=np.float32))


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


@pytest.mark.parametrize("name", sorted(CODES))
def test_activation_kernels_match_the_cpu_kernels(name):
    kind = "gelu" if name.startswith("gelu") else name
    attrs = {"negative_slope": 0.2, "approximate": "tanh" if name == "gelu_tanh" else "none"}
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


@pytest.mark.parametrize("kernel_size, stride, padding, dilation, activation", [
    (3, 1, 1, 1, ("relu", {})),
    (3, 2, 1, 1, None),
    (2, 1, 0, 2, ("silu", {})),
])
def test_conv2d_forward_and_backward_match_the_reference(kernel_size, stride, padding, dilation,
                                                         activation):
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
    ctx = {"keep": True, "train": False}
    expected = KERNELS["conv2d"](op, [x], p, ctx)
    a = op.attrs
    y, cols = kernels.conv2d_forward(device(x), device(p["weight"]), device(p["bias"]),
                                     stride=a["stride"], dilation=a["dilation"], pads=a["pads"],
                                     out_hw=op.out_shape[1:], activation=activation)
    np.testing.assert_allclose(y.copy_to_host(), expected, rtol=1e-5, atol=1e-5)
    gy = rng.standard_normal(expected.shape)
    (gx_ref,), grads = BACKWARD["conv2d"](op, [x], expected, gy, p, ctx)
    g_pre = gy if act is None else cpu.activation_grad(
        activation[0], activation[1], ctx["pre_activation"][op.output], expected, gy)
    gx, gw, gb = kernels.conv2d_backward(x.shape, device(p["weight"]), cols, device(g_pre),
                                         stride=a["stride"], dilation=a["dilation"],
                                         pads=a["pads"])
    np.testing.assert_allclose(gx.copy_to_host(), gx_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gw.copy_to_host(), grads["weight"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gb.copy_to_host(), grads["bias"], rtol=1e-4, atol=1e-5)
