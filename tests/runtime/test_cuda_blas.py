"""The CUDA backend's GEMMs through a library (cuBLAS, via nvmath-python's bindings):
under the simulator, cuBLAS's calls are emulated on the simulated arrays' addresses
(tests/support/emulated_cublas.py), so the row-major to column-major mapping, the leading
dimensions of row slices and the epilogue after the library's GEMM are checked against
NumPy and against archc's own GEMM kernel without a GPU. On a GPU (ARCHC_CUDA=real) the
last test checks the real cuBLAS against archc's kernel."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.cuda

kernels = pytest.importorskip("runtime.backends.cuda.kernels")
from runtime.backends import cuda as cuda_backend  # noqa: E402
from runtime.backends.cpu import elementwise as cpu  # noqa: E402
from runtime.backends.cuda import blas, strategy  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
import emulated_cublas  # noqa: E402
from cuda_networks import CHANNELS_LAST as BLOCK  # noqa: E402

cuda = kernels.cuda
SIMULATED = kernels.SIMULATED


@pytest.fixture
def emulated():
    """GEMMs go to the emulated cuBLAS while the test runs (simulator only)."""
    if not SIMULATED:
        pytest.skip("the emulated cuBLAS reads simulated (host) arrays")
    emulated_cublas.calls.clear()
    with kernels.using_gemm(blas.Cublas(emulated_cublas, "emulated cuBLAS"),
                            "emulated cuBLAS"):
        yield emulated_cublas.calls


def device(x):
    return cuda.to_device(np.ascontiguousarray(x, dtype=np.float32))


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_the_emulator_is_cublas_column_major_gemm(trans_a, trans_b):
    """The stand-in itself: column-major operands with leading dimensions larger than
    their rows, alpha and beta, against NumPy; and cuBLAS's refusal of a short one."""
    rng = np.random.default_rng(3)
    m, n, k, pad = 3, 4, 5, 2
    a_rows, a_cols = (m, k) if not trans_a else (k, m)
    b_rows, b_cols = (k, n) if not trans_b else (n, k)
    a = rng.standard_normal((a_cols, a_rows + pad)).astype(np.float32)  # column-major, ld
    b = rng.standard_normal((b_cols, b_rows + pad)).astype(np.float32)
    c = rng.standard_normal((n, m + pad)).astype(np.float32)
    alpha, beta = np.array([2.0], np.float32), np.array([0.5], np.float32)
    op_a, op_b = a[:, :a_rows].T, b[:, :b_rows].T
    op_a, op_b = (op_a.T if trans_a else op_a), (op_b.T if trans_b else op_b)
    expected = 2.0 * op_a.astype(np.float64) @ op_b + 0.5 * c[:, :m].T
    emulated_cublas.sgemm(1, int(trans_a), int(trans_b), m, n, k, alpha.ctypes.data,
                          a.ctypes.data, a_rows + pad, b.ctypes.data, b_rows + pad,
                          beta.ctypes.data, c.ctypes.data, m + pad)
    np.testing.assert_allclose(c[:, :m].T, expected, rtol=1e-5)
    with pytest.raises(emulated_cublas.InvalidValue, match="leading dimensions"):
        emulated_cublas.sgemm(1, int(trans_a), int(trans_b), m, n, k, alpha.ctypes.data,
                              a.ctypes.data, a_rows - 1, b.ctypes.data, b_rows,
                              beta.ctypes.data, c.ctypes.data, m)


@pytest.mark.parametrize("m, n, k, trans_a, trans_b, bias_mode, activation", [
    (5, 7, 3, False, False, 0, None),
    (70, 66, 20, True, False, 1, ("relu", {})),
    (9, 70, 17, False, True, 2, ("gelu", {"approximate": "tanh"})),
    (3, 4, 40, True, True, 1, ("leaky_relu", {"negative_slope": 0.2})),
    (1, 6, 4, False, True, 2, None),  # one row: y = x @ W.T for a single image
])
def test_library_gemm_with_epilogue_matches_numpy(emulated, m, n, k, trans_a, trans_b,
                                                  bias_mode, activation):
    rng = np.random.default_rng(m * n + k)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    bias = rng.standard_normal(m if bias_mode == 1 else n).astype(np.float32)
    expected = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b)
    expected += bias[:, None] if bias_mode == 1 else bias[None, :] if bias_mode == 2 else 0
    if activation is not None:
        expected = cpu.activation_forward_kernel(expected, *cpu.activation_code(*activation))
    got = kernels.gemm(device(a), device(b), trans_a=trans_a, trans_b=trans_b,
                       bias=device(bias) if bias_mode else None, bias_mode=bias_mode,
                       activation=activation).copy_to_host()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    # C (m, n) row-major is C^T column-major: B's flag first, then A's; n and m swapped
    assert emulated == [(int(trans_b), int(trans_a), n, m, k, b.shape[1], a.shape[1], n)]


def test_library_gemm_into_row_slices_of_a_larger_matrix(emulated):
    """A grouped conv's GEMMs read and write row ranges of larger matrices: the addresses
    move by whole rows and the leading dimensions stay the parent's row length."""
    rng = np.random.default_rng(0)
    w, cols = rng.standard_normal((6, 4)), rng.standard_normal((8, 5))
    out = device(np.full((6, 5), np.nan))
    wd, cd = device(w), device(cols)
    for g in range(2):
        kernels.gemm(wd[3 * g:3 * g + 3], cd[4 * g:4 * g + 4], out=out[3 * g:3 * g + 3])
    expected = np.concatenate([w[:3] @ cols[:4], w[3:] @ cols[4:]])
    np.testing.assert_allclose(out.copy_to_host(), expected, rtol=1e-5)
    assert [call[5:] for call in emulated] == [(5, 4, 5)] * 2


def test_the_emulated_strided_batch_reads_each_product_at_its_stride():
    """cublasSgemmStridedBatched as emulated: product i at A + i stride_a (0: one A for
    all), B + i stride_b, C + i stride_c, against NumPy; outputs that overlap are refused
    (cuBLAS leaves them undefined)."""
    rng = np.random.default_rng(5)
    m, n, k, count = 3, 4, 2, 3
    a = rng.standard_normal((k, m)).astype(np.float32)  # column-major (m, k), shared
    b = rng.standard_normal((count, n, k)).astype(np.float32)  # column-major (k, n) each
    c = np.zeros((count, n, m), np.float32)
    one, zero = np.ones(1, np.float32), np.zeros(1, np.float32)
    emulated_cublas.sgemm_strided_batched(1, 0, 0, m, n, k, one.ctypes.data, a.ctypes.data,
                                          m, 0, b.ctypes.data, k, n * k, zero.ctypes.data,
                                          c.ctypes.data, m, n * m, count)
    for i in range(count):
        np.testing.assert_allclose(c[i].T, a.T @ b[i].T, rtol=1e-5)
    with pytest.raises(emulated_cublas.InvalidValue, match="overlap"):
        emulated_cublas.sgemm_strided_batched(1, 0, 0, m, n, k, one.ctypes.data,
                                              a.ctypes.data, m, 0, b.ctypes.data, k, n * k,
                                              zero.ctypes.data, c.ctypes.data, m, m, count)


@pytest.mark.parametrize("library", [True, False], ids=["emulated-cublas", "archc-kernel"])
@pytest.mark.parametrize("shared, trans_a, trans_b", [
    ("a", False, False),  # a conv's weights times each image's columns
    ("a", True, False),   # a 1x1 conv's input gradient: W.T times each image's gradient
    ("b", False, True),
    (None, True, True),   # a grouped conv's per-group products
])
def test_a_batch_of_products_matches_numpy(request, library, shared, trans_a, trans_b):
    """gemm with a 3-d ``out``: op(a[i]) @ op(b[i]) for each i, a 2-d operand shared by
    all; one strided-batched library call (its strides those of the arrays, 0 for the
    shared one), or archc's kernel once per product."""
    calls = request.getfixturevalue("emulated") if library else None
    rng = np.random.default_rng(7)
    count, m, n, k = 3, 5, 70, 6
    a = rng.standard_normal(((k, m) if trans_a else (m, k)) if shared == "a" else
                            (count,) + ((k, m) if trans_a else (m, k)))
    b = rng.standard_normal(((n, k) if trans_b else (k, n)) if shared == "b" else
                            (count,) + ((n, k) if trans_b else (k, n)))
    out = device(np.full((count, m, n), np.nan))
    kernels.gemm(device(a), device(b), trans_a=trans_a, trans_b=trans_b, out=out)
    for i in range(count):
        ai = a if shared == "a" else a[i]
        bi = b if shared == "b" else b[i]
        expected = (ai.T if trans_a else ai) @ (bi.T if trans_b else bi)
        np.testing.assert_allclose(out.copy_to_host()[i], expected, rtol=1e-5, atol=1e-5)
    if library:
        strides = (0 if shared == "b" else b[0].size, 0 if shared == "a" else a[0].size,
                   m * n, count)
        assert [call[8:] for call in calls] == [strides]


def test_a_batch_takes_no_epilogue_and_one_count():
    a, b = device(np.ones((2, 3))), device(np.ones((3, 3, 4)))
    for kwargs in ({"bias": device(np.ones(2)), "bias_mode": 1}, {}):
        out = device(np.zeros((3 if kwargs else 4, 2, 4)))  # the bias; 4 for 3
        with pytest.raises(ValueError, match="takes operands of that many matrices"):
            kernels.gemm(a, b, out=out, **kwargs)


@pytest.mark.parametrize("by_image", [True, False], ids=["by-image", "small-images"])
def test_dense_convs_go_image_by_image_and_1x1_convs_skip_im2col(emulated, monkeypatch,
                                                                 by_image):
    """With a GEMM library, a dense conv on images of enough pixels is one strided batch
    over the images written straight into NCHW: the 3x3 conv gathers each image's columns
    first, the 1x1 conv of stride 1 multiplies its input as it is, forward and for its
    input gradient (no im2col, no col2im); the epilogue (bias, activation) in place
    after. On small images: one GEMM over the batch's columns, then the rows go back to
    NCHW with the epilogue. Both agree with archc's kernel."""
    import archc
    from runtime.backends.cuda import conv

    monkeypatch.setattr(strategy, "IMAGE_BATCH_MIN_PIXELS", 25 if by_image else 26)
    launched = []
    original = conv._launch_planes
    monkeypatch.setattr(conv, "_launch_planes", lambda kernel, *rest: (
        launched.append(kernel), original(kernel, *rest))[1])
    graph = archc.load("n.yaml", text="""
input: {channels: 3, height: 5, width: 5}
layers:
  - conv2d: {out_channels: 4, kernel_size: 3, padding: 1}
  - conv2d: {out_channels: 6, kernel_size: 1, activation: relu}
  - global_avg_pool2d: {}
  - flatten
  - linear: 2
""")
    x = np.random.default_rng(1).standard_normal((2, 3, 5, 5)).astype(np.float32)
    gy = np.random.default_rng(2).standard_normal((2, 2)).astype(np.float32)
    model = archc.compile(graph, backend="cuda", seed=3).train()
    y = model(x)
    convs = [call for call in emulated if call[4] in (27, 4)]  # K = C*kh*kw
    if by_image:
        assert launched.count(conv.im2col_images_kernel) == 1  # the 3x3 conv only
        assert launched.count(conv.im2col_kernel) == 0
        assert launched.count(conv.epilogue_kernel) == 2  # the biases, the 1x1's relu
        # C^T (HW, O) per image, K, 2 images
        assert [(c[2], c[3], c[4], c[-1]) for c in convs] == [(25, 4, 27, 2), (25, 6, 4, 2)]
    else:
        assert launched.count(conv.im2col_kernel) == 2
        assert launched.count(conv.epilogue_kernel) == 2  # from the rows, back to NCHW
        assert [c[2:5] for c in convs] == [(50, 4, 27), (50, 6, 4)]  # one GEMM each
    launched.clear()
    grads = model.backward(gy)
    assert launched.count(conv.col2im_kernel) == (1 if by_image else 2)
    _agrees_with_archcs_kernel(graph, 3, x, gy, y, grads)


def test_a_transposed_view_is_refused_rather_than_misread():
    x = np.zeros((3, 4), np.float32).T  # columns not contiguous
    with pytest.raises(ValueError, match="rows are not contiguous"):
        blas.sgemm_arguments(x, np.zeros((3, 2), np.float32), np.zeros((4, 2), np.float32),
                             False, False)


def _agrees_with_archcs_kernel(graph, seed: int, x, gy, y, grads) -> None:
    """The output y and the gradients (for output gradient gy) a library's GEMMs gave
    are those of the same model with archc's own GEMM kernel."""
    import archc

    with kernels.using_gemm(None, "archc's kernel"):
        own = archc.compile(graph, backend="cuda", seed=seed).train()
        np.testing.assert_allclose(y, own(x), rtol=1e-4, atol=1e-5)
        expected = own.backward(gy)
    np.testing.assert_allclose(grads.input, expected.input, rtol=1e-4, atol=1e-5)
    for name, value in expected.params.items():
        np.testing.assert_allclose(grads.params[name], value, rtol=1e-4, atol=1e-5,
                                   err_msg=name)


NETWORK = """
input: {channels: 3, height: 6, width: 6}
layers:
  - name: c1
    conv2d: {out_channels: 4, kernel_size: 3, padding: 1, activation: relu}
  - conv2d: {out_channels: 4, kernel_size: 3, padding: 1}
  - add: [-1, c1]
  - relu
  - conv2d: {out_channels: 6, kernel_size: 3, stride: 2, padding: 1, groups: 2}
  - conv_transpose2d: {out_channels: 4, kernel_size: 2, stride: 2}
  - global_avg_pool2d: {}
  - flatten
  - linear: {out_features: 5, activation: gelu}
  - linear: 3
"""


# the channels-last ConvNeXt-style block, with a classifier after it
CHANNELS_LAST = BLOCK + """  - global_avg_pool2d: {}
  - flatten
  - linear: 3
"""


@pytest.mark.parametrize("text, passes", [(NETWORK, 0), (NETWORK, 2), (CHANNELS_LAST, 0)],
                         ids=["convs", "convs-O2", "channels-last"])
def test_a_network_through_the_library_matches_archcs_own_gemm(emulated, text, passes):
    """Dense convs take im2col + the library's GEMM instead of the implicit GEMM kernel,
    with the bias, residual and activation after; grouped and transposed convs and
    linear layers call it per group, channels-last linear layers over rows folded from
    the leading axes: forward and every gradient agree with archc's kernel (and fused or
    not: -O2 fuses the residual and activations into the convs)."""
    import archc
    from archc.passes import preset, run_passes

    graph = archc.load("n.yaml", text=text)
    if passes:
        graph, _, _ = run_passes(graph, None, preset(passes))
    shape = graph[graph.inputs[0]].shape
    x = np.random.default_rng(1).standard_normal((2,) + shape).astype(np.float32)
    gy = np.random.default_rng(2).standard_normal((2, 3)).astype(np.float32)
    library = archc.compile(graph, backend="cuda", seed=4).train()
    y = library(x)
    assert library.last_unplaced == []  # outputs still where the memory plan puts them
    grads = library.backward(gy)
    assert len(emulated) >= 6  # every conv and linear, forward and backward
    _agrees_with_archcs_kernel(graph, 4, x, gy, y, grads)


@pytest.mark.parametrize("by_image", [True, False], ids=["by-image", "rows"])
def test_convs_go_through_in_chunks_of_images_that_fit_the_workspace(emulated, monkeypatch,
                                                                      by_image):
    """A workspace of one image's columns: every dense and grouped conv goes image by image
    through im2col (forward and backward), the residual and the output taken per chunk,
    the weight gradient summed over the chunks; the same outputs and gradients as archc's
    own kernel (which needs no workspace), fused (-O2) or not."""
    import archc
    from archc.passes import preset, run_passes
    from runtime.backends.cuda import conv

    monkeypatch.setattr(conv, "WORKSPACE_BYTES", 1)
    monkeypatch.setattr(strategy, "IMAGE_BATCH_MIN_PIXELS", 1 if by_image else 10 ** 6)
    graph, _, _ = run_passes(archc.load("n.yaml", text=NETWORK), None, preset(2))
    x = np.random.default_rng(1).standard_normal((3, 3, 6, 6)).astype(np.float32)
    gy = np.random.default_rng(2).standard_normal((3, 3)).astype(np.float32)
    launched = []
    original = conv._launch_planes
    monkeypatch.setattr(conv, "_launch_planes", lambda kernel, *rest: (
        launched.append(kernel), original(kernel, *rest))[1])
    model = archc.compile(graph, backend="cuda", seed=4).train()
    y = model(x)
    # two dense convs and a grouped one, 3 images: an im2col per conv and image
    assert launched.count(conv.im2col_images_kernel) == (6 if by_image else 0)
    assert launched.count(conv.im2col_kernel) == (3 if by_image else 9)
    launched.clear()
    grads = model.backward(gy)
    assert launched.count(conv.im2col_kernel) == 9 + 1  # and the transposed conv's, whole
    assert launched.count(conv.col2im_kernel) == 9
    # a GEMM batch is only ever the grouped conv's 2 groups: one image a chunk
    assert all(len(call) == 8 or call[-1] == 2 for call in emulated)
    _agrees_with_archcs_kernel(graph, 4, x, gy, y, grads)


def test_kernel_times_tell_each_gemm_by_its_shape(emulated):
    """Model.profile_kernels with the library: each GEMM is a row named by its shape (C's
    rows x columns x the inner dimension), calls counted per pass, beside archc's own
    kernels; the launch entry and the library's GEMM are themselves again after."""
    import archc
    from numba.cuda.simulator import kernel as simulated

    launch, gemm = simulated.FakeCUDAKernel.__call__, blas.Cublas.gemm
    model = archc.compile(archc.load("n.yaml", text=NETWORK), backend="cuda", seed=4)
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 6)).astype(np.float32)
    rows = {name: (calls, spent) for name, calls, spent in model.profile_kernels(x, repeat=2)}
    # the two linear layers: (2 x 4) @ W.T (4 x 5), then (2 x 5) @ W.T (5 x 3)
    assert rows["cuBLAS sgemm 2x5x4"][0] == 1 and rows["cuBLAS sgemm 2x3x5"][0] == 1
    assert rows["cuBLAS sgemm 4x72x27"][0] == 1  # the first conv: one GEMM, 2 x 36 pixels
    assert rows["im2col_kernel"][0] == 3  # the dense and grouped convs
    assert all(spent >= 0 for _, spent in rows.values())
    assert simulated.FakeCUDAKernel.__call__ is launch and blas.Cublas.gemm is gemm


def test_choosing_the_gemm(monkeypatch):
    """ARCHC_CUDA_GEMM: numba is archc's kernel anywhere; cublas is refused where it
    cannot run, saying why; auto falls back with the reason; a typo is named."""
    library, line = blas.choose(True, "numba")
    assert library is None and "ARCHC_CUDA_GEMM=numba" in line
    assert blas.choose(True, "auto") == (None, "archc's numba-cuda GEMM (the simulator has "
                                               "no cuBLAS)")
    with pytest.raises(cuda_backend.CudaUnavailable, match="does not run under the CUDA "
                                                           "simulator"):
        blas.choose(True, "cublas")
    with pytest.raises(cuda_backend.CudaUnavailable,
                       match="ARCHC_CUDA_GEMM='cublass' is not one of auto, cublas, numba"):
        blas.choose(False, "cuBLASs")
    monkeypatch.setitem(sys.modules, "nvmath.bindings", None)  # nvmath-python missing
    with pytest.raises(cuda_backend.CudaUnavailable, match="pip install nvmath-python"):
        blas.choose(False, "cublas")
    library, line = blas.choose(False, "auto")
    assert library is None and "needs the nvmath-python package" in line


def test_cublas_that_cannot_start_says_why(monkeypatch):
    """Where nvmath-python imports but cuBLAS cannot start (no driver, no libcublas), the
    reason travels into the line; the error is archc's one-line CUDA error."""
    class Broken:
        @staticmethod
        def create():
            raise RuntimeError("libcuda.so.1: cannot open shared object file")

    monkeypatch.setattr(blas, "_binding", lambda: Broken)
    library, line = blas.choose(False, "auto")
    assert library is None
    assert line.startswith("archc's numba-cuda GEMM (cuBLAS cannot run here (RuntimeError: "
                           "libcuda.so.1")


def test_the_real_binding_without_a_gpu_falls_back_saying_why():
    """nvmath-python itself (a test dependency) on a machine with no GPU driver: it
    imports, cuBLAS cannot start, and archc's kernel runs with the reason given."""
    pytest.importorskip("nvmath.bindings.cublas")
    if not SIMULATED:
        pytest.skip("a real GPU is here: cuBLAS may well start")
    library, line = blas.choose(False, "auto")
    assert library is None
    assert line.startswith("archc's numba-cuda GEMM (cuBLAS cannot run here (")


@pytest.mark.skipif(SIMULATED, reason="cuBLAS needs a real GPU (ARCHC_CUDA=real)")
def test_cublas_on_the_gpu_matches_archcs_kernel():
    library, line = kernels.gemm_library()
    assert library is not None, line
    rng = np.random.default_rng(0)
    for m, n, k, ta, tb in [(64, 3136, 576, False, False), (576, 3136, 64, True, False),
                            (64, 576, 3136, False, True), (1, 1000, 512, False, True)]:
        a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
        b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
        got = kernels.gemm(device(a), device(b), trans_a=ta, trans_b=tb).copy_to_host()
        with kernels.using_gemm(None, "archc's kernel"):
            own = kernels.gemm(device(a), device(b), trans_a=ta, trans_b=tb).copy_to_host()
        np.testing.assert_allclose(got, own, rtol=1e-4, atol=1e-3)


# each tensor-core precision: the emulated rounding of its operands, the math mode it sets
# on the handle, whether it calls the Ex GEMMs, and its error bounds relative to the
# largest exact entry (TF32 rounds to 2^-11, bfloat16 to 2^-8)
TENSOR_CORES = {"tf32": (emulated_cublas.tf32, 3, False, (1e-5, 5e-3)),
                "bf16": (emulated_cublas.bf16, 0, True, (1e-4, 4e-2))}


@pytest.mark.parametrize("precision", sorted(TENSOR_CORES))
@pytest.mark.parametrize("batch", [None, 3])
def test_tensor_core_precisions_round_the_operands_as_the_tensor_cores_do(
        emulated, monkeypatch, precision, batch):
    """--precision tf32 / bf16: tf32 sets cuBLAS's TF32 math mode on the handle, bf16
    calls cublasGemmEx / cublasGemmStridedBatchedEx with the bfloat16 compute type; the
    products are those of the rounded operands (float32 sums): within the format's
    rounding of the float32 result, not equal to it; float32 again gives float32's, through
    cublasSgemm."""
    rounding, mode, ex, (low, high) = TENSOR_CORES[precision]
    used = []
    for name in ("sgemm", "sgemm_strided_batched", "gemm_ex", "gemm_strided_batched_ex"):
        original = getattr(emulated_cublas, name)
        monkeypatch.setattr(emulated_cublas, name, lambda *args, _name=name, _f=original: (
            used.append(_name), _f(*args))[1])
    rng = np.random.default_rng(7)
    shape = (batch,) if batch else ()
    a, b = rng.standard_normal(shape + (20, 30)), rng.standard_normal((30, 10))
    exact = a @ b
    assert kernels.set_precision(precision) == f"emulated cuBLAS, {precision}"
    assert emulated_cublas.math_mode == [mode]

    def product():
        out = cuda.device_array(shape + (20, 10), np.float32) if batch else None
        return kernels.gemm(device(a), device(b), out=out).copy_to_host()

    got = product()
    rounded = (rounding(a.astype(np.float32)).astype(np.float64)
               @ rounding(b.astype(np.float32)))
    np.testing.assert_allclose(got, rounded, rtol=1e-5, atol=1e-5)
    error = np.abs(got - exact).max() / np.abs(exact).max()
    assert low < error < high
    call = ("gemm_strided_batched" if batch else "gemm") + ("_ex" if ex else "")
    assert used == [call if ex else "s" + call]
    kernels.set_precision("float32")
    assert emulated_cublas.math_mode == [0]
    got = product()
    assert np.abs(got - exact).max() / np.abs(exact).max() < 1e-6
    assert used[-1] == "s" + call.removesuffix("_ex")


@pytest.mark.skipif(SIMULATED, reason="cuBLAS needs a real GPU (ARCHC_CUDA=real)")
@pytest.mark.parametrize("precision", sorted(TENSOR_CORES))
def test_tensor_core_precisions_on_the_gpu(precision):
    """The real cuBLAS in each tensor-core precision, one product and a strided batch (a
    conv's shapes): within the format's rounding of the exact product and not equal to it
    (how the hardware rounds, to nearest or toward zero, is left open)."""
    _, _, _, (low, high) = TENSOR_CORES[precision]
    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, 576)).astype(np.float32)
    b = rng.standard_normal((4, 576, 784)).astype(np.float32)
    exact = a.astype(np.float64) @ b
    try:
        kernels.set_precision(precision)
        single = kernels.gemm(device(a), device(b[0])).copy_to_host()
        out = cuda.device_array(b.shape[:1] + (64, 784), np.float32)
        batch = kernels.gemm(device(a), device(b), out=out).copy_to_host()
    finally:
        kernels.set_precision("float32")
    for got, want in ((single, exact[0]), (batch, exact)):
        error = np.abs(got - want).max() / np.abs(want).max()
        assert low < error < high, error


def test_the_emulated_bf16_rounds_to_nearest_even():
    """The stand-in's bfloat16 (the tests' oracle): 7 mantissa bits kept, ties to even,
    signs and powers of two exact."""
    ulp = 2.0 ** -7  # bfloat16's spacing in [1, 2)
    values = np.array([1.0, 1 + ulp / 2, 1 + 3 * ulp / 2, 1 + ulp / 2 + 2 ** -20, -3.0,
                       1 + ulp / 4, 2.0 ** -30], np.float32)
    expected = [1.0, 1.0, 1 + 2 * ulp, 1 + ulp, -3.0, 1.0, 2.0 ** -30]
    assert emulated_cublas.bf16(values).tolist() == expected


def test_a_network_trains_through_bf16_products(emulated, monkeypatch):
    """--precision bf16 on a whole network (dense convs image by image, grouped and
    transposed convs, linear layers; forward and backward): every GEMM goes through the Ex
    calls, and the output and every gradient are within bfloat16's rounding of archc's
    float32 kernel, and not equal to them (the rounding happened)."""
    import archc

    monkeypatch.setattr(strategy, "IMAGE_BATCH_MIN_PIXELS", 1)
    used = []
    monkeypatch.setattr(emulated_cublas, "sgemm", lambda *a: used.append("sgemm"))
    monkeypatch.setattr(emulated_cublas, "sgemm_strided_batched",
                        lambda *a: used.append("sgemm_strided_batched"))
    graph = archc.load("n.yaml", text=NETWORK)
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 6)).astype(np.float32)
    gy = np.random.default_rng(2).standard_normal((2, 3)).astype(np.float32)
    kernels.set_precision("bf16")
    model = archc.compile(graph, backend="cuda", seed=4).train()
    y = model(x)
    grads = model.backward(gy)
    assert used == [] and len(emulated) >= 6
    with kernels.using_gemm(None, "archc's kernel"):
        own = archc.compile(graph, backend="cuda", seed=4).train()
        expected_y = own(x)
        expected = own.backward(gy)
    pairs = [("output", y, expected_y), ("input", grads.input, expected.input)] + [
        (name, grads.params[name], value) for name, value in expected.params.items()]
    errors = {}
    for name, got, want in pairs:
        errors[name] = np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)
        assert errors[name] < 2e-2, (name, errors[name])
    assert max(errors.values()) > 5e-4, errors


def test_the_gemm_constants_are_cublas_own():
    """The enumerations archc passes to cuBLAS are nvmath-python's values for them."""
    nvmath = pytest.importorskip("nvmath")
    from nvmath.bindings import cublas

    assert blas.MATH_MODES == {"float32": int(cublas.Math.DEFAULT_MATH),
                               "tf32": int(cublas.Math.TF32_TENSOR_OP_MATH),
                               "bf16": int(cublas.Math.DEFAULT_MATH)}
    assert blas.COMPUTE_TYPES == {"bf16": int(cublas.ComputeType.COMPUTE_32F_FAST_16BF)}
    assert blas.CUDA_R_32F == int(nvmath.CudaDataType.CUDA_R_32F)
    assert blas.GEMM_DEFAULT == int(cublas.GemmAlgo.DFALT)
    assert (blas.OP_N, blas.OP_T) == (int(cublas.Operation.N), int(cublas.Operation.T))
    assert (emulated_cublas.COMPUTE_32F, emulated_cublas.COMPUTE_32F_FAST_16BF,
            emulated_cublas.COMPUTE_32F_FAST_TF32) == tuple(int(getattr(
                cublas.ComputeType, name)) for name in ("COMPUTE_32F", "COMPUTE_32F_FAST_16BF",
                                                       "COMPUTE_32F_FAST_TF32"))


@pytest.mark.parametrize("precision, name", [("tf32", "TF32"), ("bf16", "bfloat16")])
def test_tensor_core_precisions_without_cublas_are_refused_saying_why(precision, name):
    if not SIMULATED:
        pytest.skip("a real GPU may run cuBLAS")
    assert kernels.set_precision("float32").startswith("archc's numba-cuda GEMM")
    with pytest.raises(cuda_backend.CudaUnavailable,
                       match=f"--precision {precision} runs the matrix products on cuBLAS's "
                             f"{name} tensor cores; here they run on archc's numba-cuda GEMM "
                             r"\(the simulator has no cuBLAS\)"):
        kernels.set_precision(precision)


@pytest.mark.parametrize("precision, backend, message", [
    ("tf32", "cpu", "error: --precision tf32 is the GPU's tensor-core format: it needs "
                    "--backend cuda (this run is on cpu)"),
    ("tf32", "cuda", "error: --precision tf32 runs the matrix products on cuBLAS's TF32 tensor "
                     "cores; here they run on archc's numba-cuda GEMM (the simulator has no "
                     "cuBLAS)"),
    ("bf16", "cuda", "error: --precision bf16 runs the matrix products on cuBLAS's bfloat16 "
                     "tensor cores; here they run on archc's numba-cuda GEMM (the simulator "
                     "has no cuBLAS)"),
])
def test_the_precision_flag_says_what_it_needs(capsys, precision, backend, message):
    from archc.cli import main

    if not SIMULATED:
        pytest.skip("a real GPU may run cuBLAS")
    spec = str(Path(__file__).resolve().parents[2] / "specs" / "lenet5.yaml")
    assert main(["bench", spec, "--backend", backend, "--precision", precision]) == 2
    assert capsys.readouterr().err.strip() == message


POINTWISE = """
input: {channels: 3, height: 6, width: 6}
layers:
  - conv2d: {out_channels: 4, kernel_size: 3, padding: 1, activation: relu}
  - conv2d: {out_channels: 5, kernel_size: 1, bias: false}
  - global_avg_pool2d: {}
  - flatten
  - linear: 3
"""


class _FakeClock:
    """A device clock that the strategies' stand-in costs advance (see below)."""

    now = [0.0]

    def mark(self):
        return self.now[0]

    def sync(self) -> None:
        pass

    def seconds(self, start, end) -> float:
        return end - start


@pytest.mark.parametrize("faster", ["rows", "by image"])
def test_benchmark_mode_times_both_strategies_once_per_shape(emulated, monkeypatch, faster):
    """ARCHC_CUDA_BENCHMARK (cuDNN's benchmark, for archc's choice per dense conv): the
    first pass times each conv shape both ways, image by image and over the batch's
    rows (forward; and backward for the 1x1 conv, whose input gradient differs), after a
    warm-up of each, keeps the faster whatever the rule says, and never times that shape
    again; the outputs and gradients are archc's own kernel's either way. Off, the rule
    decides and nothing is timed."""
    import archc
    from runtime.backends.cuda import conv

    monkeypatch.setattr(strategy, "IMAGE_BATCH_MIN_PIXELS", 1 if faster == "rows" else 10 ** 6)
    monkeypatch.setattr(strategy, "EventClock", _FakeClock)
    monkeypatch.setattr(strategy, "_MEASURED", {})
    cost = {True: 2.0, False: 1.0} if faster == "rows" else {True: 1.0, False: 2.0}
    ran = []
    for name in ("_conv_images", "_conv_images_backward"):
        original = getattr(conv, name)

        def counted(*args, _f=original):
            way = args[-2 if _f.__name__ == "_conv_images" else -1]
            ran.append(way)
            _FakeClock.now[0] += cost[way]
            return _f(*args)
        monkeypatch.setattr(conv, name, counted)
    graph = archc.load("n.yaml", text=POINTWISE)
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 6)).astype(np.float32)
    gy = np.random.default_rng(2).standard_normal((2, 3)).astype(np.float32)
    strategy.benchmark(False)
    model = archc.compile(graph, backend="cuda", seed=4).train()
    model(x)
    model.backward(gy)
    assert strategy.measured() == [] and len(ran) == 2 + 2  # the rule, once each
    strategy.benchmark(True)
    try:
        ran.clear()
        model = archc.compile(graph, backend="cuda", seed=4).train()
        y = model(x)
        grads = model.backward(gy)
        assert len(ran) == 5 * 3 + 1  # 3 timed: 2 warm-ups, 2 timed, 1 kept; the 3x3 backward
        ran.clear()
        y = model(x)
        grads = model.backward(gy)
        chosen = faster == "by image"
        assert ran == [chosen, chosen, chosen, False]  # (the 3x3's backward has no choice)
    finally:
        strategy.benchmark(False)
    rows = strategy.measured()
    assert [(direction, shapes) for direction, shapes, _, _ in rows] == [
        ("forward", "x (2, 3, 6, 6) w (4, 3, 3, 3) stride (1, 1) +epilogue"),
        ("forward", "x (2, 4, 6, 6) w (5, 4, 1, 1) stride (1, 1)"),
        ("backward", "x (2, 4, 6, 6) w (5, 4, 1, 1) stride (1, 1)")]
    for _, _, times, kept in rows:
        assert times == {"by image": cost[True], "rows": cost[False]} and kept == faster
    _agrees_with_archcs_kernel(graph, 4, x, gy, y, grads)


ALGORITHMS = """
input: {channels: 4, height: 8, width: 8}
layers:
  - name: big
    conv2d: {out_channels: 4, kernel_size: 3, padding: 1}
  - name: grouped
    conv2d: {out_channels: 4, kernel_size: 3, padding: 1, groups: 2}
  - name: depthwise
    conv2d: {out_channels: 4, kernel_size: 3, padding: 1, groups: 4}
  - name: pointwise
    conv2d: {out_channels: 4, kernel_size: 1}
  - name: small
    conv2d: {out_channels: 4, kernel_size: 3, stride: 2, padding: 1}
"""


def test_a_profile_says_which_way_each_conv_ran(request, monkeypatch):
    """The CUDA backend's algorithm column (archc bench --backend cuda): archc's implicit
    GEMM where no library runs; with one, grouped GEMMs, the depthwise kernel, and dense
    convs image by image or over the rows as the rule (output pixels against
    IMAGE_BATCH_MIN_PIXELS) or benchmark mode decided, with the times it measured."""
    import archc
    from runtime.backends.cuda import conv

    model = archc.compile(archc.load("a.yaml", text=ALGORITHMS), backend="cuda")
    ops = {op.name: op for op in model.program.ops}
    names = {name: model.algorithm(op, 2)[0] for name, op in ops.items()}
    assert names == {"big": "implicit GEMM", "grouped": "grouped GEMM",
                     "depthwise": "depthwise", "small": "implicit GEMM",
                     "pointwise": "implicit GEMM"}
    request.getfixturevalue("emulated")
    monkeypatch.setattr(strategy, "IMAGE_BATCH_MIN_PIXELS", 40)
    monkeypatch.setattr(strategy, "_MEASURED", {})
    how = {name: model.algorithm(op, 2) for name, op in ops.items()}
    assert {name: algorithm for name, (algorithm, _) in how.items()} == {
        "big": "by image", "grouped": "grouped GEMM", "depthwise": "depthwise",
        "small": "rows", "pointwise": "by image"}
    assert how["big"][1] == ("one strided batch straight into NCHW: 64 output pixels >= 40 "
                             "(strategy.IMAGE_BATCH_MIN_PIXELS)")
    assert how["small"][1].startswith("im2col over the batch, one GEMM, back to NCHW: 16 "
                                      "output pixels < 40")
    assert "the input itself (no im2col)" in how["pointwise"][1]
    # what benchmark mode measured overrides the rule, and the profile says so
    monkeypatch.setattr(strategy, "EventClock", _FakeClock)
    cost = {True: 2.0, False: 1.0}
    original = conv._conv_images

    def timed(*args):
        _FakeClock.now[0] += cost[args[-2]]
        return original(*args)
    monkeypatch.setattr(conv, "_conv_images", timed)
    strategy.benchmark(True)
    try:
        model(np.zeros((2, 4, 8, 8), np.float32))
    finally:
        strategy.benchmark(False)
    assert model.algorithm(ops["big"], 2) == (
        "rows", "im2col over the batch, one GEMM, back to NCHW: benchmark mode measured it: "
        "2000.000 ms image by image, 1000.000 ms over the rows")
    assert model.algorithm(ops["big"], 4)[0] == "by image"  # another batch: not measured
