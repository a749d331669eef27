"""CUDA kernels (``numba.cuda``) and the thin host functions that launch them.

- ``gemm_kernel``: ``C = op(A) @ op(B)``, then the epilogue (a bias per row or per column,
  an activation) before C is written. Tiled and register-blocked: a block of 16 x 16
  threads computes a 64 x 64 tile of C, each thread a 4 x 4 register tile (rows
  ``ty + 16 i``, columns ``tx + 16 j``, so a warp's stores are contiguous); the 64 x 16
  and 16 x 64 panels of A and B go through shared memory, every element loaded once per
  block. Conv layers use it on im2col matrices (``out (O, N*HW) = W (O, K) @ cols``, bias
  per row) and linear layers directly (``y = x @ W.T``, bias per column).
- ``activation_forward_kernel`` / ``activation_backward_kernel``: grid-stride loops over
  the flattened tensor; ``activate`` and ``derivative`` are compiled from the same scalar
  formulas as the CPU kernels (``runtime/backends/activations.py``), so one code means one
  function everywhere.
- ``add_kernel``: element-wise sum of two same-shape tensors.

float32 throughout; every kernel is tested against NumPy under the CUDA simulator.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os

import numpy as np
from numba import float32, float64

from runtime.backends.cuda import PRECISIONS, CudaUnavailable, allocator, blas, numba_cuda
from runtime.backends.activations import NO_ACTIVATION, activation_code, dispatch_chain

cuda = numba_cuda()

# The simulator runs every GPU thread as a Python thread, so simulated tests use small
# blocks: the same kernels, fewer threads per block (and so more blocks).
SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


# device memory from archc's caching pool (allocator.py) on a GPU, before any allocation
ALLOCATOR = "the simulator's (host memory)" if SIMULATED else allocator.install()


# threads per block of the element-wise kernels and reductions (a power of two), and the
# most blocks a grid-stride loop is launched with (each thread then takes several elements)
ELEMENTWISE_BLOCK = 8 if SIMULATED else 256


MAX_BLOCKS = 2 if SIMULATED else 4096


THREADS = 4 if SIMULATED else 16  # GEMM threads per block along each axis (16 x 16 = 256)


PER_THREAD = 4  # 4 x 4 outputs per thread


TILE = THREADS * PER_THREAD  # rows and columns of C per block (64)


TILE_K = 16  # depth of the shared-memory panels


# the panels' padded widths (a column more against bank conflicts), as constants: Numba
# needs a shared array's shape as literals, and `TILE_K + 1` written in a kernel is not one
# (the simulator accepts it; a real GPU does not)
TILE_K_PADDED = TILE_K + 1


TILE_PADDED = TILE + 1


# Where the memory plan puts the result of the op running now: (shape, view of the plan's
# device buffer), set for the duration of one op by `placing` (a context variable, so the
# slot belongs to the op that set it and to no other call).
_SLOT: contextvars.ContextVar = contextvars.ContextVar("archc_cuda_slot", default=None)


def reserve(buffers: dict, kind: str, nbytes: int):
    """A model's device buffer for a kind of pass (``buffers[kind]``), grown to the
    plan's size when needed."""
    buffer = buffers.get(kind)
    if buffer is None or buffer.size * 4 < nbytes:
        buffer = buffers[kind] = cuda.device_array(max(nbytes // 4, 1), dtype=np.float32)
    return buffer


@contextlib.contextmanager
def aside():
    """While the block runs, results do not take the planned room (a value the op keeps
    apart from its output, such as the one before a fused activation)."""
    token = _SLOT.set(None)
    try:
        yield
    finally:
        _SLOT.reset(token)


@contextlib.contextmanager
def placing(shape: tuple, view):
    """While the block runs, :func:`result` of ``shape``'s size is ``view`` (the plan's
    room for the op's output). Whatever takes it is safe: the plan keeps an op's output
    room clear of every value alive during the op."""
    token = _SLOT.set((shape, view))
    try:
        yield
    finally:
        _SLOT.reset(token)


def result(shape):
    """A device array for what a host function returns as the op's output: the planned
    room (:func:`placing`) when it has this many elements, taken once; otherwise a fresh
    allocation. Temporaries come from :func:`empty`, so which is asked first does not
    matter."""
    shape = shape if isinstance(shape, tuple) else (shape,)
    slot = _SLOT.get()
    if slot is not None and math.prod(slot[0]) == math.prod(shape):
        _SLOT.set(None)
        return slot[1].reshape(shape)
    return cuda.device_array(shape, dtype=np.float32)


def is_device(array) -> bool:
    """Whether an array is a device array (numba's, or the simulator's stand-in)."""
    return not isinstance(array, np.ndarray) and hasattr(array, "copy_to_host")


def to_device(array):
    """A host array on the device (a device array as it is; 0-d arrays stay 0-d)."""
    if is_device(array):  # there already
        return array
    return cuda.to_device(np.require(array, requirements="C"))


def to_device_together(*arrays) -> tuple:
    """Host arrays on the device in one copy per dtype, each a view of its copy: a copy
    from the host waits for the work queued before it, so a kernel's several small tables
    (RoI Align's rows, columns and weights) cost one wait, not one each."""
    arrays = [np.asarray(a) for a in arrays]
    out: list = [None] * len(arrays)
    for dtype in dict.fromkeys(a.dtype for a in arrays):
        which = [i for i, a in enumerate(arrays) if a.dtype == dtype]
        flat = to_device(np.concatenate([arrays[i].ravel() for i in which]))
        start = 0
        for i in which:
            size = arrays[i].size
            out[i] = flat[start:start + size].reshape(arrays[i].shape)
            start += size
    return tuple(out)


@cuda.jit(cache=True)
def fill_kernel(a, value):
    for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        a[i] = value


def zeros(shape, dtype=np.float32):
    """A device array of zeros, filled on the device (a copy of host zeros would wait for
    the work queued before it)."""
    out = empty(shape, dtype)
    _launch(fill_kernel, out.size, out.reshape(out.size), 0.0)
    return out


def to_host(array) -> np.ndarray:
    return array if isinstance(array, np.ndarray) else array.copy_to_host()


def absent(dtype=np.float32, ndim: int = 1):
    """An empty device array (float32 and 1-d unless said): what a kernel gets for an
    optional argument that is not there (the weight of a norm without affine parameters,
    a missing bias; a missing residual, ``ndim`` as the one it stands for)."""
    return cuda.device_array((0,) * ndim, dtype=dtype)


def axis_view(x, axis: int = 1):
    """x as (the axes before ``axis``, ``axis``, the axes after), each flattened: (N, C,
    H*W) for the default, the channels."""
    shape = tuple(x.shape)
    return x.reshape(math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:]))


def empty(shape, dtype=np.float32):
    """A fresh device array: temporaries, and results outside a planned forward pass."""
    return cuda.device_array(shape, dtype=dtype)


def _device(fn):
    return cuda.jit(device=True, inline=True)(fn)


def _activate_link(code, f, rest):
    def activate(v, c, a):
        if c == code:
            return f(v, a)
        return rest(v, c, a)
    return _device(activate)


def _derivative_link(code, df, rest):
    def derivative(x, y, c, a):
        if c == code:
            return df(x, y, a)
        return rest(x, y, c, a)
    return _device(derivative)


@cuda.jit(device=True, inline=True)
def _identity(v, c, a):
    return v


@cuda.jit(device=True, inline=True)
def _one(x, y, c, a):
    return 1.0


activate = dispatch_chain(_activate_link, _identity, lambda f: _device(f.forward))


derivative = dispatch_chain(_derivative_link, _one, lambda f: _device(f.derivative))


@cuda.jit(device=True, inline=True)
def _panel_product(sa, sb, acc, av, bv, tx, ty):
    """acc (this thread's 4 x 4 outputs: rows ty + 16 i, columns tx + 16 j) += the product
    of the shared panels sa (64 x 16) and sb (16 x 64), through registers av and bv."""
    for kk in range(TILE_K):
        for i in range(PER_THREAD):
            av[i] = sa[ty + THREADS * i, kk]
        for j in range(PER_THREAD):
            bv[j] = sb[kk, tx + THREADS * j]
        for i in range(PER_THREAD):
            for j in range(PER_THREAD):
                acc[i, j] += av[i] * bv[j]


@cuda.jit(device=True, inline=True)
def _epilogue(v, bias, bias_mode, r, q, code, slope):
    """C[r, q]'s value plus the bias of its row (mode 1) or column (mode 2), activated."""
    if bias_mode == 1:
        v += bias[r]
    elif bias_mode == 2:
        v += bias[q]
    return activate(v, code, slope)


@cuda.jit(cache=True)
def gemm_kernel(a, b, c, trans_a, trans_b, bias, bias_mode, code, slope):
    """c (M, N) = op(a) @ op(b), plus bias (mode 1: per row, 2: per column, 0: none), then
    activation ``code``; launched on a (ceil(N / 64), ceil(M / 64)) grid of 16 x 16
    blocks."""
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    # one padding column: the loads below store down a column for a transposed operand,
    # which would otherwise hit one shared-memory bank 16 or 32 times over
    sa = cuda.shared.array((TILE, TILE_K_PADDED), float32)
    sb = cuda.shared.array((TILE_K, TILE_PADDED), float32)
    acc = cuda.local.array((PER_THREAD, PER_THREAD), float32)
    av = cuda.local.array(PER_THREAD, float32)
    bv = cuda.local.array(PER_THREAD, float32)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    tid = ty * THREADS + tx
    row0, col0 = cuda.blockIdx.y * TILE, cuda.blockIdx.x * TILE
    for i in range(PER_THREAD):
        for j in range(PER_THREAD):
            acc[i, j] = 0.0
    for k0 in range(0, k, TILE_K):
        # consecutive threads read consecutive addresses of each operand (coalesced):
        # along K of a row-major A (M, K), along M of a transposed one (K, M); the same
        # for B along N (K, N) or along K (N, K)
        for step in range(TILE * TILE_K // (THREADS * THREADS)):  # 4 loads per thread
            idx = tid + step * THREADS * THREADS
            if trans_a:
                r, q = idx % TILE, idx // TILE
            else:
                r, q = idx // TILE_K, idx % TILE_K
            gr, gk = row0 + r, k0 + q
            if gr < m and gk < k:
                sa[r, q] = a[gk, gr] if trans_a else a[gr, gk]
            else:
                sa[r, q] = 0.0
            if trans_b:
                r, q = idx % TILE_K, idx // TILE_K
            else:
                r, q = idx // TILE, idx % TILE
            gk, gc = k0 + r, col0 + q
            if gk < k and gc < n:
                sb[r, q] = b[gc, gk] if trans_b else b[gk, gc]
            else:
                sb[r, q] = 0.0
        cuda.syncthreads()
        _panel_product(sa, sb, acc, av, bv, tx, ty)
        cuda.syncthreads()
    for i in range(PER_THREAD):
        r = row0 + ty + THREADS * i
        if r >= m:
            continue
        for j in range(PER_THREAD):
            q = col0 + tx + THREADS * j
            if q < n:
                c[r, q] = _epilogue(acc[i, j], bias, bias_mode, r, q, code, slope)


@cuda.jit(cache=True)
def activation_forward_kernel(x, y, code, slope):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, x.size, stride):
        y[i] = activate(x[i], code, slope)


@cuda.jit(cache=True)
def activation_backward_kernel(x, y, gy, gx, code, slope):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, x.size, stride):
        gx[i] = gy[i] * derivative(x[i], y[i], code, slope)


@cuda.jit(cache=True)
def add_kernel(a, b, out):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, a.size, stride):
        out[i] = a[i] + b[i]


# --------------------------------------------------------------------------- launches
def _blocks(size: int) -> int:
    """Enough blocks of ELEMENTWISE_BLOCK threads for ``size`` elements, capped (the loops
    stride)."""
    return max(1, min(MAX_BLOCKS, (size + ELEMENTWISE_BLOCK - 1) // ELEMENTWISE_BLOCK))


def _codes(activation) -> tuple[int, float]:
    return activation_code(*activation) if activation is not None else (NO_ACTIVATION, 0.0)


def gemm(a, b, *, trans_a: bool = False, trans_b: bool = False, bias=None, bias_mode: int = 0,
         activation: tuple[str, dict] | None = None, out=None):
    """op(a) @ op(b) on the device, with the epilogue; a, b (and bias) device arrays;
    written into ``out`` (e.g. one group's rows of a larger result) when given.

    A batch of products: a 3-d ``out`` (count, M, N) gets ``op(a[i]) @ op(b[i])`` for each
    i, where a 2-d ``a`` or ``b`` is the same matrix for every product (the weights of a
    conv applied image by image); one strided-batched call to the library, or a launch per
    product of archc's kernel. A batch takes no epilogue."""
    batched = out is not None and out.ndim == 3
    (a_rows, a_cols), (b_rows, b_cols) = tuple(a.shape)[-2:], tuple(b.shape)[-2:]
    m, k_a = (a_cols, a_rows) if trans_a else (a_rows, a_cols)
    k_b, n = (b_cols, b_rows) if trans_b else (b_rows, b_cols)
    if k_a != k_b:
        raise ValueError(f"gemm: inner dimensions differ ({k_a} and {k_b})")
    if batched and (bias is not None or activation is not None
                    or any(x.ndim == 3 and x.shape[0] != out.shape[0] for x in (a, b))):
        raise ValueError(f"gemm: a batch of {out.shape[0]} products takes operands of that "
                         f"many matrices (or one shared) and no epilogue")
    c = result((m, n)) if out is None else out
    if bias is None:
        bias, bias_mode = absent(), 0
    code, slope = _codes(activation)
    library = gemm_library()[0]
    if library is not None:  # cuBLAS, then the epilogue as one pass over C
        library.gemm(a, b, c, trans_a, trans_b)
        if bias_mode or code != NO_ACTIVATION:
            _launch(gemm_epilogue_kernel, c.size, c, bias, bias_mode, code, slope)
        return c
    grid = ((n + TILE - 1) // TILE, (m + TILE - 1) // TILE)
    for i in range(c.shape[0] if batched else 1):
        gemm_kernel[grid, (THREADS, THREADS)](
            a[i] if a.ndim == 3 else a, b[i] if b.ndim == 3 else b, c[i] if batched else c,
            trans_a, trans_b, bias, bias_mode, code, slope)
    return c


_GEMM: list = []  # (library or None, the line saying which GEMM runs), chosen on first use


def gemm_library() -> tuple:
    """(the GEMM library or None for archc's kernel, a line saying which runs): cuBLAS
    when it can run here (``blas.choose``, ``ARCHC_CUDA_GEMM``), chosen once."""
    if not _GEMM:
        _GEMM.append(blas.choose(SIMULATED))
    return _GEMM[-1]


def set_precision(precision: str) -> str:
    """The arithmetic of every GEMM from now on, in this process: one of
    :data:`runtime.backends.cuda.PRECISIONS`, float32 (the default), or a tensor-core
    format of cuBLAS (tf32, bf16: operands rounded, float32 sums). The tensor-core formats
    need cuBLAS: where archc's own GEMM runs they are refused, saying why. Returns the
    line saying which GEMM runs, in which precision."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    library, line = gemm_library()
    if library is None:
        if precision == "float32":
            return line
        raise CudaUnavailable(f"--precision {precision} runs the matrix products on cuBLAS's "
                              f"{blas.TENSOR_CORE_FORMATS[precision]} tensor cores; here they "
                              f"run on {line}")
    library.set_precision(precision)
    return f"{line}, {precision}"


@contextlib.contextmanager
def using_gemm(library, line: str):
    """While the block runs, GEMMs go to ``library`` (None: archc's kernel)."""
    gemm_library()
    _GEMM.append((library, line))
    try:
        yield
    finally:
        _GEMM.pop()


@cuda.jit(cache=True)
def gemm_epilogue_kernel(c, bias, bias_mode, code, slope):
    """The GEMM kernel's epilogue on a C a library computed: bias per row (mode 1) or per
    column (mode 2), then activation ``code``, in place."""
    m, n = c.shape
    for e in range(cuda.grid(1), m * n, cuda.gridsize(1)):
        r, q = e // n, e % n
        c[r, q] = _epilogue(c[r, q], bias, bias_mode, r, q, code, slope)


def activation_forward(x, name: str, attrs: dict, out=None):
    """The activation of x (into ``out``, which may be x itself: element by element)."""
    code, slope = activation_code(name, attrs)
    flat = x.reshape(x.size)
    y = result(x.size) if out is None else out.reshape(x.size)
    _launch(activation_forward_kernel, x.size, flat, y, code, slope)
    return y.reshape(x.shape)


def activation_backward(x, y, gy, name: str, attrs: dict):
    code, slope = activation_code(name, attrs)
    gx = empty(x.size)
    _launch(activation_backward_kernel, x.size, x.reshape(x.size), y.reshape(y.size),
            gy.reshape(gy.size), gx, code, slope)
    return gx.reshape(x.shape)


def add(a, b, out=None):
    """a + b (into ``out``, which may be a or b: element by element)."""
    if a.shape != b.shape:
        raise ValueError(f"add: shapes differ ({a.shape} and {b.shape})")
    out = result(a.size) if out is None else out.reshape(a.size)
    _launch(add_kernel, a.size, a.reshape(a.size), b.reshape(b.size), out)
    return out.reshape(a.shape)


@cuda.jit(device=True, inline=True)
def block_sum(partial, t, value):
    """The sum of ``value`` over the ELEMENTWISE_BLOCK threads of a block (thread ``t``
    gives its own), by a tree reduction in the shared array ``partial``; every thread gets
    the total. Each call needs its own shared array."""
    partial[t] = value
    cuda.syncthreads()
    step = ELEMENTWISE_BLOCK // 2
    while step > 0:
        if t < step:
            partial[t] += partial[t + step]
        cuda.syncthreads()
        step //= 2
    return partial[0]


def _launch(kernel, size: int, *args) -> None:
    kernel[_blocks(size), ELEMENTWISE_BLOCK](*args)


# A plane kernel works on ``planes`` rows of ``width`` values (an image's channel, a
# row of an im2col matrix): grid y over the planes, grid x and the threads over a plane's
# values, both loops striding. What is per plane (image, channel, kernel tap) is worked
# out once per plane, not once per value: a GPU divides integers in software, and the
# flat one-thread-per-value kernels spent most of their instructions undoing a flat index.
MAX_PLANES = 2 if SIMULATED else 65535  # CUDA's limit on grid y
PLANE_BLOCKS = 1 if SIMULATED else 1024  # blocks along a plane, at most


def _launch_planes(kernel, planes: int, width: int, *args) -> None:
    """Launch a plane kernel: blocks of a warp-multiple of threads no wider than a plane
    needs (at most ELEMENTWISE_BLOCK; 7 x 7 maps take 64), enough of them along x to
    cover a plane, one per plane along y up to CUDA's limit."""
    threads = min(ELEMENTWISE_BLOCK, 32 * max(1, -(-width // 32)))
    along = max(1, min(PLANE_BLOCKS, -(-width // threads)))
    kernel[(along, max(1, min(MAX_PLANES, planes))), threads](*args)


@cuda.jit(device=True, inline=True)
def plane_range():
    """(first, step) of this thread's values within a plane, and (first, step) of its
    planes: the loops of a plane kernel."""
    return (cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x,
            cuda.gridDim.x * cuda.blockDim.x, cuda.blockIdx.y, cuda.gridDim.y)


# --------------------------------------------------------------------------- per channel
# A per-channel reduction (batch-norm statistics and gradients, bias gradients) splits
# each channel's values among several blocks when channels are few and large: one block
# per channel would leave most of a GPU idle (ResNet's first stage at batch 64: 64
# channels of 200,704 values, 64 blocks for 132 multiprocessors). Each block writes its
# float64 partial sum; a second, small kernel adds a channel's partials.
REDUCTION_BLOCKS = 16 if SIMULATED else 1024  # the blocks a reduction aims for in all


REDUCTION_PER_THREAD = 1 if SIMULATED else 8  # the fewest values each thread adds


def reduction_chunks(channels: int, count: int) -> int:
    """How many blocks share each of ``channels`` channels of ``count`` values."""
    want = max(1, REDUCTION_BLOCKS // max(channels, 1))
    return max(1, min(want, count // (ELEMENTWISE_BLOCK * REDUCTION_PER_THREAD)))


@cuda.jit(device=True, inline=True)
def chunk_bounds(count, k, chunks):
    """The values [lo, hi) of a channel's ``count`` that block ``k`` of ``chunks`` adds."""
    return k * count // chunks, (k + 1) * count // chunks


@cuda.jit(device=True, inline=True)
def chunk_walk(lo, t, m):
    """Where thread t of a reduction block starts in its slice of a channel's values,
    (image, position) for flat index lo + t of an (N, M) walk, and its stride as (images,
    positions): :func:`chunk_step` then moves it with no division (a GPU divides in
    software)."""
    e = lo + t
    return e // m, e % m, ELEMENTWISE_BLOCK // m, ELEMENTWISE_BLOCK % m


@cuda.jit(device=True, inline=True)
def chunk_step(b, p, step_b, step_p, m):
    """The next (image, position) of a reduction thread's walk, ELEMENTWISE_BLOCK on."""
    p += step_p
    b += step_b
    if p >= m:
        p -= m
        b += 1
    return b, p


@cuda.jit(cache=True)
def channel_partials_kernel(a, centre, partial):
    """partial[ch, k] = the float64 sum of the k-th of partial.shape[1] slices of channel
    ch of an (N, C, M) view: of the values, or (``centre`` not empty) of their squared
    distances from centre[ch]. Grid (C, chunks)."""
    n, c, m = a.shape
    ch, k, t = cuda.blockIdx.x, cuda.blockIdx.y, cuda.threadIdx.x
    sums = cuda.shared.array(ELEMENTWISE_BLOCK, float64)
    lo, hi = chunk_bounds(n * m, k, partial.shape[1])
    square = centre.size > 0
    mu = centre[ch] if square else 0.0
    total = float64(0.0)
    b, q, step_b, step_q = chunk_walk(lo, t, m)
    for _ in range(lo + t, hi, ELEMENTWISE_BLOCK):
        d = a[b, ch, q] - mu
        total += d * d if square else d
        b, q = chunk_step(b, q, step_b, step_q, m)
    total = block_sum(sums, t, total)
    if t == 0:
        partial[ch, k] = total


@cuda.jit(device=True, inline=True)
def row_sum(partial, ch):
    """The float64 sum of channel ch's partial sums, partial[ch, :]."""
    total = float64(0.0)
    for k in range(partial.shape[1]):
        total += partial[ch, k]
    return total


@cuda.jit(cache=True)
def sum_rows_kernel(partial, out, scale):
    """out[ch] = scale * the sum of partial[ch, :] (a channel's partial sums)."""
    for ch in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[ch] = row_sum(partial, ch) * scale


def channel_partials(a, centre=None):
    """(C, chunks) float64 partial sums of an (N, C, M) device array per channel (of
    squared distances from ``centre``, a (C,) float64 array, when given)."""
    n, c, m = a.shape
    chunks = reduction_chunks(c, n * m)
    partial = empty((c, chunks), np.float64)
    channel_partials_kernel[(c, chunks), ELEMENTWISE_BLOCK](
        a, absent(np.float64) if centre is None else centre, partial)
    return partial


def channel_sums(a, scale: float = 1.0, dtype=np.float32):
    """scale * the sum of an (N, C, M) device array over its first and last axes, (C,):
    bias gradients (axis_view of the output gradient), a map's plane sums ((1, N*C,
    H*W)), a batch's channel means (float64). Float64 partial sums, as the CPU's (a bias
    gradient's terms cancel: float32 partials left it 1e-3 to 1e-1 off on an H100)."""
    out = empty(a.shape[1], dtype)
    _launch(sum_rows_kernel, out.size, channel_partials(a), out, scale)
    return out
