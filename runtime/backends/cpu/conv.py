"""Convolution kernels for the CPU, the algorithm chosen per case (measurements in
docs/performance.md; :func:`rule` decides, ``archc tune`` measures):

- few channels per group (any stride, kernel size, dilation): register tiles
  (conv_direct.py), no GEMM: the band of input rows a job reads copied into a padded
  panel in cache, each tile of output sums kept in vector registers over every tap and
  input channel.
- dense 3x3, stride 1, in inference: Winograd F(4x4, 3x3) or F(2x2, 3x3)
  (conv_winograd.py).
- stride 1 (any kernel size, dilation, groups): one GEMM per filter tap on a padded
  "grid" layout, no im2col. The input is copied once into ``grid (C, N*Hp*Wp + tail)``:
  channel-major, each sample's padded map flattened. Output position p of the grid sees
  tap (i, j) at column ``p + i*dh*Wp + j*dw``, so ``out_grid (O, N*Hp*Wp) = sum_t W_t @
  grid[:, off_t : off_t + L]``: kh*kw GEMMs accumulating in place (beta = 1) on column
  slices, every one a large matrix product. Grid positions past the output's width or
  height are computed and dropped (a few percent at 56x56). The input gradient is the
  adjoint (``W_t.T @ gy_grid`` added at the shifted columns) and the weight gradient per
  tap ``gy_grid @ grid[:, off_t : off_t + L].T`` (a GEMM with a long inner dimension).
- strided: im2col of the whole batch + one GEMM per group;
  ``cols[(c, i, j), (n, y, x)] = x_padded[n, c, y*s + i*d, x*s + j*d]``, input gradient by
  col2im.
- unpadded 1x1: a GEMM per sample on the map as it lies.
- depthwise: a direct loop per plane on its phase grid (one filter per channel: a GEMM
  would be C tiny products; conv_depthwise.py).
"""

from __future__ import annotations

import functools
import time

import numba
import numpy as np

from runtime.backends.cpu import conv_pointwise, vector
from runtime.backends.cpu.blas import parallel_gemm
from runtime.backends.cpu.conv_depthwise import (depthwise_backward_kernel,
                                                 depthwise_forward_kernel, depthwise_last_kernel)
from runtime.backends.cpu.conv_direct import (
    direct_conv_kernel,
    direct_weight_grad_kernel,
    flip_filters,
    pack_filters,
    split,
    tile_rows,
    weight_grad_band,
)
from runtime.backends.cpu.conv_pointwise import (
    pack_last,
    pointwise_kernel,
    pointwise_last_kernel,
    pointwise_vector_kernel,
    pointwise_weight_grad_kernel,
    subsample_kernel,
    upsample_kernel,
)
from runtime.backends.cpu.conv_grid import (
    from_grid,
    grid_conv_input_grad_kernel,
    grid_conv_kernel,
    grid_conv_weight_grad_kernel,
    to_grid,
)
from runtime.backends.cpu.conv_im2col import (
    col2im_kernel,
    im2col_conv_kernel,
    im2col_kernel,
    im2col_weight_grad_kernel,
)
from runtime.backends.cpu.conv_winograd import (
    fused_tiles,
    input_tiles,
    output_tiles,
    tile_products,
    transform_filters,
    weight_gradient,
)
from runtime.backends.cpu.elementwise import NO_ACTIVATION, fused_forward
from runtime.context import KernelContext
from runtime.tuning import forget, tuned


def _geometry(op):
    a = op.attrs
    (kh, kw), (sh, sw), (dh, dw) = a["kernel_size"], a["stride"], a["dilation"]
    (pt, _), (pl, _) = a["pads"]
    ho, wo = op.out_shape[1:]
    return kh, kw, sh, sw, dh, dw, pt, pl, ho, wo


def _pointwise_input(op, x):
    """What a 1x1 conv's GEMM reads: the input, every stride-th row and column of it."""
    sh, sw = op.attrs["stride"]
    return subsample_kernel(x, sh, sw) if (sh, sw) != (1, 1) else x


class _Grid:
    """Where a stride-1 conv's input sits in the grid layout (see the module docstring)."""

    def __init__(self, op, x):
        a = op.attrs
        (kh, kw), (dh, dw) = a["kernel_size"], a["dilation"]
        (self.top, bottom), (self.left, right) = a["pads"]
        self.n, _, self.h, self.w = x.shape
        self.hp, self.wp = self.h + self.top + bottom, self.w + self.left + right
        self.offsets = np.array([i * dh * self.wp + j * dw for i in range(kh) for j in range(kw)],
                                dtype=np.int64)
        self.tail = int(self.offsets[-1])
        self.length = self.n * self.hp * self.wp

    def grid(self, x):
        return to_grid(x, self.top, self.left, self.hp, self.wp, self.tail)


def _flat_filters(w):
    """Filters (O, C/g, kh, kw) as rows (O, C/g*kh*kw): the matrix of a 1x1 conv's and an
    im2col GEMM, and a depthwise conv's (C*mult, kh*kw)."""
    return np.ascontiguousarray(w.reshape(w.shape[0], -1))


def _taps(w):
    """(O, C/g, kh, kw) -> (kh*kw, O, C/g): one contiguous matrix per filter tap (packed
    once per model while the weights stay the same: runtime.packing)."""
    o, cg, kh, kw = w.shape
    return np.ascontiguousarray(w.transpose(2, 3, 0, 1).reshape(kh * kw, o, cg))


def _block(rows: int) -> int:
    """Output columns per thread job: about 256 KB of output block, so it stays in L2 while
    every tap adds to it."""
    return max(256, min(8192, (65536 // max(rows, 1)) // 64 * 64))


def _split(rows: int, columns: int, outer: int) -> tuple[int, int]:
    """:func:`_split_for` on Numba's threads."""
    return _split_for(rows, columns, outer, numba.get_num_threads())


@functools.lru_cache(maxsize=4096)
def _split_for(rows: int, columns: int, outer: int, threads: int) -> tuple[int, int]:
    """(columns per block, blocks of rows) of a GEMM job split for ``outer`` products of
    ``rows`` x ``columns`` outputs (samples, groups): :func:`_block` and
    :func:`_row_blocks`, unless the threads would then get unequal work (Numba hands each
    thread an equal run of jobs): then blocks of equal width, as many as make the jobs a
    multiple of the threads. A 1x1 conv to 24 channels of a 56x56 map at batch 1 had two
    blocks of 2688 and 448 columns, one per thread; equal blocks made the projections of
    MobileNetV2 1.4-1.7x faster at batch 1 (24-96 output channels, 14x14 to 56x56)."""
    block = _block(rows)
    count = -(-columns // block)
    row_blocks = _row_blocks(rows, outer * count)
    jobs = outer * count * row_blocks
    if jobs >= 8 * threads:
        return block, row_blocks
    step = -(-rows // row_blocks)
    work = [(min(columns, (j % count + 1) * block) - j % count * block)
            * max(0, min(rows, ((j // count) % row_blocks + 1) * step)
                  - (j // count) % row_blocks * step) for j in range(jobs)]
    shares = [sum(work[t * jobs // threads:(t + 1) * jobs // threads]) for t in range(threads)]
    if max(shares) * threads <= 1.15 * sum(shares):
        return block, row_blocks
    while (outer * count) % threads:
        count += 1
    block = -(-columns // count)
    # whole vectors (16 floats) per block where that leaves the blocks near equal
    return (-(-block // 16) * 16 if block >= 256 else block), 1


def _row_blocks(rows: int, jobs: int) -> int:
    """Blocks of output rows per column job, so that every thread gets two jobs where the
    column blocks alone are fewer (a 7x7 map at batch 1 is a single block: one thread
    would do all the work); no block under 32 rows."""
    want = 2 * numba.get_num_threads()
    return 1 if jobs >= want else max(1, min(rows // 32, -(-want // max(jobs, 1))))


def _panel(rows: int) -> int:
    """im2col columns per panel: about 512 KB of panel, so it stays in L2 for its GEMM."""
    return max(64, min(8192, (131072 // max(rows, 1)) // 16 * 16))


def _grid_forward(op, x, w, taps, bias, residual, code, slope):
    layout = _Grid(op, x)
    out = grid_conv_kernel(layout.grid(x), taps, layout.offsets, op.attrs["groups"],
                           layout.length, _block(w.shape[0] // op.attrs["groups"]))
    ho, wo = op.out_shape[1:]
    return from_grid(out, layout.n, 0, 0, ho, wo, layout.hp, layout.wp, bias, residual, code,
                     slope)


def _winograd_forward(op, x, u, m, bias, residual, code, slope):
    """F(m x m, 3x3) (conv_winograd.py) on the transformed filters ``u``."""
    (pt, _), (pl, _) = op.attrs["pads"]
    return _winograd(x, u, m, pt, pl, *op.out_shape[1:], bias, residual, code, slope)


def _direct(x, wt, og, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo, bias, residual, code, slope):
    """A conv in register tiles (conv_direct.py) on the packed filters ``wt``."""
    n, c = x.shape[:2]
    groups = wt.shape[0]
    band, chunks = split(n, groups, c // groups * sh * sw, og, ho, wo + (kw - 1) * dw // sw,
                         numba.get_num_threads())
    return direct_conv_kernel(x, wt, og, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo, band, chunks,
                              vector.tile_width(), bias, residual, code, slope)


def _direct_input_grad(op, gy, w, ctx):
    """A stride-1 conv's input gradient as a stride-1 conv of gy with the turned filters
    (conv_direct.flip_filters), padded by the reach of the filter less the forward's
    padding; None where that padding would be negative (a forward padding wider than the
    filter's reach: the grid's adjoint does those)."""
    kh, kw, _, _, dh, dw, pt, pl, _, _ = _geometry(op)
    (_, pb), (_, pr) = op.attrs["pads"]
    if max(pt, pb) > (kh - 1) * dh or max(pl, pr) > (kw - 1) * dw:
        return None
    groups = op.attrs["groups"]
    wt = ctx.packs.get((op.name, "direct-grad"), w,
                       lambda w: pack_filters(flip_filters(w, groups), groups))
    c, h, wd = op.in_shapes[0]
    return _direct(gy, wt, c // groups, kh, kw, 1, 1, dh, dw, (kh - 1) * dh - pt,
                   (kw - 1) * dw - pl, h, wd, *_no_epilogue(gy))


def _winograd_input_grad(op, gy, w, m, ctx):
    """A stride-1 3x3 conv's input gradient is a 3x3 conv of gy with the flipped filters,
    padded by 2 - the forward padding: Winograd again (transformed once per model)."""
    u = ctx.packs.get((op.name, f"winograd{m}-grad"), w,
                      lambda w: transform_filters(flip_filters(w, 1), m))
    (pt, _), (pl, _) = op.attrs["pads"]
    c, h, wd = op.in_shapes[0]
    return _winograd(gy, u, m, 2 - pt, 2 - pl, h, wd, *_no_epilogue(gy))


def _winograd(x, u, m, pt, pl, ho, wo, bias, residual, code, slope):
    """F(m x m, 3x3) on the transformed filters ``u`` (a*a, C, O): in three passes over
    the whole batch (each parallel: its (m+2)^2 GEMMs share U among all the tiles), or
    fused per block of tile rows (conv_winograd.fused_tiles) where the batch's transformed
    tiles and products would outgrow the cache and U is small enough to read per block."""
    n, c = x.shape[:2]
    o = u.shape[2]
    th, tw = -(-ho // m), -(-wo // m)
    k = np.array([2, 4, 5, 8], dtype=x.dtype)
    row_bytes = (m + 2) ** 2 * tw * (c + o) * x.itemsize  # V and M of a row of tiles
    if n * th * row_bytes > WINOGRAD_PASS_BYTES and u.nbytes <= WINOGRAD_FUSED_FILTER_BYTES:
        rows = max(1, min(th, WINOGRAD_BLOCK_BYTES // row_bytes))
        return fused_tiles(x, u, m, pt, pl, th, tw, rows, ho, wo, bias, residual, code, slope,
                           k)
    v = input_tiles(x, m, pt, pl, th, tw, k)
    products = tile_products(v, u, WINOGRAD_GEMM_ROWS)  # (m+2)^2 GEMMs: jobs enough
    return output_tiles(products, m, th, tw, x.shape[0], ho, wo, bias, residual, code, slope, k)


def _grid_backward(op, x, w, taps, gy, input_grad: bool = True, weight_grad: bool = True):
    """(input gradient, or None unless ``input_grad``; weight gradient, or None unless
    ``weight_grad``) on the grid."""
    layout = _Grid(op, x)
    groups = op.attrs["groups"]
    gy_grid = to_grid(gy, 0, 0, layout.hp, layout.wp, 0)
    gx = None
    if input_grad:
        g_grid = grid_conv_input_grad_kernel(taps, layout.offsets, groups, gy_grid,
                                             layout.length + layout.tail, _block(w.shape[1]))
        gx = from_grid(g_grid, layout.n, layout.top, layout.left, layout.h, layout.w,
                       layout.hp, layout.wp, *_no_epilogue(x))
    if not weight_grad:
        return gx, None
    g_taps = grid_conv_weight_grad_kernel(layout.grid(x), layout.offsets, groups, gy_grid,
                                          w.shape[1], numba.get_num_threads(), _block(w.shape[0]))
    kh, kw = op.attrs["kernel_size"]
    gw = g_taps.reshape(kh, kw, *w.shape[:2]).transpose(2, 3, 0, 1)
    return gx, np.ascontiguousarray(gw)


# Stride-1 convs on the grid (a GEMM per tap) rather than through im2col, unless the grid
# is mostly padding and the channels many: bench/bench_conv.py, which times both on the
# same shapes (the switches are for it), measured the grid 1.03-3.7x faster down to 8x8
# maps (a grid 1.56x the map) and at LeNet's 6 channels even with a grid 1.96x the map,
# and im2col 1.4x faster at 7x7 with 512 channels (a grid 1.65x the map). With the taps
# packed once per model (runtime.packing) the grid won that case too at batch 1 (1.35 ms
# against 2.07: im2col's GEMM is 49 columns wide there) and lost it at batch 8 (10.9
# against 9.7 ms): a wasteful grid is still chosen while the batch's positions are few.
GRID_AT_STRIDE_1 = True

GRID_NARROW = 256  # positions of the whole batch below which im2col's GEMM is too narrow

# Winograd F(m x m, 3x3) for dense 3x3 stride-1 convs (conv_winograd.py) where the batch
# has the tiles and channels for its (m+2)^2 GEMMs to be worth their transforms. Measured
# against the grid (packed taps, forward, 2 threads): F(4x4) 2.2x faster at 64 channels
# 56x56 batch 1, 2.3x at 128x28x28, F(2x2) 1.9x at 256x14x14 (16 tiles of 4x4: F(4x4)
# only 1.5x) and 1.4x at 512x7x7 (4 tiles of 4x4: F(4x4) 1.4x slower than the grid); at
# batch 8, F(4x4) 2.4x at 256x14x14 and 2.1x at 512x7x7, equal at 64x56x56 (its
# transformed tiles outgrow the cache); at batch 128, 1.35x at 32 channels 16x16 and 2.4x at
# 64x8x8, but 1.7x slower at 16 channels 32x32 (GEMMs 16 wide). Against the register
# tiles of conv_direct.py (archc tune, batch 128): 1.9x slower at 32 channels 16x16, 1.25x
# faster at 64x8x8; at batch 1, 1.2-1.4x faster from 64 channels up.
WINOGRAD_TILE = None  # None: chosen per layer as below; 2 or 4 forces it (tests)
WINOGRAD_TILES_4 = 64  # tiles of 4x4 in the batch from which F(4x4, 3x3) runs
# tiles of m x m in the batch from which F(m x m, 3x3) runs: on fewer, its transformed
# filters ((m+2)^2/9 times the filters' size) are read for too little work (512x7x7 at
# batch 1, 16 tiles of 2x2: Winograd 2.93 ms, the register tiles 1.6; 256x7x7 0.43
# against 0.40). 256x14x14 at batch 1, 49 tiles, ran faster alone (0.96 against 1.05
# ms) but slower in ResNet-18, its filters no longer in the cache (its three such convs
# 1.0 ms slower in a 21 ms pass).
WINOGRAD_MIN_TILES = 64
WINOGRAD_MIN_CHANNELS = 64
WINOGRAD_GEMM_ROWS = 512  # tiles per GEMM job
# Past this many bytes of the batch's transformed tiles and products (V and M), a conv
# whose transformed filters (U) take at most WINOGRAD_FUSED_FILTER_BYTES runs fused, a
# block of tile rows of about WINOGRAD_BLOCK_BYTES per job, each job reading U; where U is
# bigger, reading it per block costs more than V and M going through memory. Measured (2
# threads, forward): 64 channels 56x56, F(4x4), batch 8: three passes 6.9 ms, fused 5.2
# (blocks of 256 KB 5.7, 1 MB 5.8); batch 1: 0.69 against 0.62-0.65; 128 channels 28x28,
# batch 8 (U 2.4 MB): 4.4 against 4.2-6.3; 512 channels 7x7: 8.7 against 17-46.
WINOGRAD_PASS_BYTES = 2 << 20
WINOGRAD_BLOCK_BYTES = 512 << 10
WINOGRAD_FUSED_FILTER_BYTES = 1 << 20
# In training the filters change at every step, and a step transforms them twice (U for
# the forward pass, U of the flipped filters for the input gradient): Winograd runs where
# F(4x4)'s U takes at most this many bytes. Measured (ResNet-18, batch 8, forward and both
# gradients, against the rules' register tiles or im2col): 64x56x56 22.4 ms against 24.9,
# 128x28x28 19.5 against 24.7, their transforms 0.1 and 0.5 ms a step; 256x14x14 22.8
# against 24.3 (its transforms 2.6 ms a step, but the whole step 446 -> 418 ms with its
# weight gradient from im2col); 512x7x7 34.3 against 26.4.
WINOGRAD_TRAIN_FILTER_BYTES = 10 << 20
# Winograd's weight gradient (F(3x3, 2x2), conv_winograd.weight_gradient) sums about this
# many tiles per GEMM, their transforms in the thread's cache: measured (2 threads, batch
# 8) 64x56x56 6.9 ms with 28 tiles against 14.0 with 448 (the register tiles' 9.7);
# 128x28x28 6.2 against 9.0 (the grid's 9.1); 64x8x8 at batch 128 2.5 against the
# register tiles' 3.7. At 16-32 channels the register tiles stayed faster (Winograd does
# not train there); from 256 channels im2col's one GEMM (6.4 ms at 256x14x14, batch 8,
# against 8.1), which convs that train with Winograd take above this many input channels.
WINOGRAD_GRAD_TILES = 32
WINOGRAD_GRAD_MAX_CHANNELS = 128
# the batch's transformed input tiles ((m+2)^2 x tiles x C floats) at most this big where
# the conv cannot run fused: past it they and the products outgrow the cache, and the
# register tiles win (before the fused blocks: 64 channels 56x56 at batch 8: 14 MB of
# tiles, Winograd 8.9 ms against 5.7; 128x28x28 at batch 8: 7 MB, Winograd 3.1 against 5.0)
WINOGRAD_MAX_BYTES = 12 << 20


def tiles_of(op) -> str:
    """The register tiles a direct conv runs in on this machine, for ``archc bench``."""
    og = op.out_shape[0] // op.attrs["groups"]
    return (f"register tiles of {tile_rows(og)} channels x {vector.tile_width()} positions "
            f"for {vector.lanes()}-lane vectors")


def _winograd_tile(op, batch: int, forced: bool = False) -> int:
    """m of F(m x m, 3x3) for a dense 3x3 stride-1 conv at a batch size, 0 for none
    (``forced``: the m to run with, the thresholds aside)."""
    ho, wo = op.out_shape[1:]

    def tiles(m: int) -> int:
        return batch * -(-ho // m) * -(-wo // m)

    if WINOGRAD_TILE is not None:
        m = WINOGRAD_TILE
    else:
        m = 4 if tiles(4) >= WINOGRAD_TILES_4 else 2
    if forced:
        return m
    if min(op.in_shapes[0][0], op.out_shape[0]) < WINOGRAD_MIN_CHANNELS:
        return 0
    fused = (m + 2) ** 2 * op.in_shapes[0][0] * op.out_shape[0] * 4 <= WINOGRAD_FUSED_FILTER_BYTES
    if not fused and (m + 2) ** 2 * tiles(m) * op.in_shapes[0][0] * 4 > WINOGRAD_MAX_BYTES:
        return 0
    return m if tiles(m) >= WINOGRAD_MIN_TILES else 0


# Convs in register tiles (conv_direct.py) up to this many input channels per group, by
# (training, strided); the grid (stride 1) and im2col rules above. Measured (archc tune,
# 2 threads): in inference, against the grid (its GEMM per tap, layout copies included)
# 2.7x faster at 16 channels 32x32 batch 128 (ResNet-20's stages), 1.8x at 32x16x16,
# 1.4x at 64x8x8 and 64x56x56 batch 1, 1.2x at 128x28x28, 1.1x at 256x14x14, and at
# 512x7x7 1.1x faster at batch 1 but to 1.3x slower at batch 8; strided, against im2col,
# 1.1-1.4x faster on ResNet stems (3 channels, 7x7/2: 0.87 against 1.18 ms at batch 1),
# 1.5-2x on ResNet-20's 16- and 32-channel downsampling convs at batch 128, even to 1.16x
# at 64 channels, im2col 1.2x faster at 128. In training (forward, both gradients; the
# weight gradient in register tiles too up to DIRECT_WEIGHT_GRAD_MAX_CHANNELS): 2.2x the
# grid at 16 channels 32x32 batch 128, 1.45x at 32x16x16; 1.23x at 64x56x56 and 1.08x at
# 128x28x28 batch 8 (with the grid's weight gradient), 1.1-1.5x slower than the grid or
# im2col from 256 channels; strided, 1.3x faster than im2col at 16 channels, even at 64,
# 1.08x slower at 32 and at the 3-channel 7x7/2 stem at batch 8 (within the noise);
# with the weight gradient vectorised over output channels, 1.17x faster at 32 (ResNet-20's
# 32->64 at batch 128, 8.0 against 9.3 ms), as fast at 64 (ResNet-18's 64->128, batch 8).
DIRECT_MAX_CHANNELS = {(False, False): 256, (False, True): 64, (True, False): 128,
                       (True, True): 32}

# ... and whatever the channels in inference at stride 1 where the batch has fewer output
# positions than this and the filters at most 3x3: a 7x7 map at batch 1 (3x3, 512
# channels: the register tiles 1.6 ms, im2col 2.08, the grid 2.89; 1024 channels: 6.8,
# 10.2, 10.8; but 5x5, 512 channels: 11.9 ms against im2col's 9.3)
DIRECT_FEW_POSITIONS = 64

# The weight gradient in register tiles up to this many input channels per group; the
# grid's GEMM per tap (stride 1) or im2col's above (a sum over the whole batch's positions
# into a small matrix, BLAS's best case). Measured (AVX-512, 2 threads, the tiles
# vectorised over output channels): against the grid 1.85x faster at 32x16x16 batch 128,
# 1.5x at 64x8x8, 1.26x at 64x56x56 batch 8, 1.16x at batch 1; at 128x28x28 even at
# batch 8 and 1.1x slower at batch 1 (im2col 1.5x faster there), at 256x14x14 im2col
# 1.6x faster.
DIRECT_WEIGHT_GRAD_MAX_CHANNELS = 64

GRID_WASTE_LIMIT = 1.6


GRID_FEW_CHANNELS = 128  # below this many input channels per group, the grid regardless


def _is_depthwise(op) -> bool:
    groups = op.attrs["groups"]
    return groups > 1 and groups == op.in_shapes[0][0]


def _is_pointwise(op) -> bool:
    """An unpadded 1x1: a GEMM on the map as it lies."""
    return tuple(op.attrs["kernel_size"]) == (1, 1) and op.attrs["pads"] == ((0, 0), (0, 0))


def _winograd_fits(op, train: bool) -> bool:
    """A dense 3x3 stride-1 conv: what F(m x m, 3x3) computes; in training, only where its
    filters are few enough to transform again at every step (WINOGRAD_TRAIN_FILTER_BYTES)."""
    a = op.attrs
    if train and 36 * op.in_shapes[0][0] * op.out_shape[0] * 4 > WINOGRAD_TRAIN_FILTER_BYTES:
        return False
    return tuple(a["kernel_size"]) == (3, 3) and tuple(a["stride"]) == (1, 1) \
        and tuple(a["dilation"]) == (1, 1) and a["groups"] == 1


def candidates(op, train: bool = False) -> list[str]:
    """Every algorithm that can run this conv (``archc tune`` times each)."""
    if _is_depthwise(op):
        return ["depthwise"]
    out = ["pointwise"] if _is_pointwise(op) else []
    if _winograd_fits(op, train):
        out.append("winograd")
    out.append("direct")
    if tuple(op.attrs["stride"]) == (1, 1):
        out.append("grid")
    return out + ["im2col"]


_MEASURED: dict[int, tuple] = {}  # id(op) -> (op, batch, train, entry): one lookup per op


def choose(op, batch: int = 1, train: bool = False) -> tuple[str, str]:
    """The algorithm the CPU runs a conv2d with, and why: the one ``archc tune`` measured
    fastest for this layer, batch and mode on this machine (runtime.tuning), else the
    rules' (:func:`rule`)."""
    hit = _MEASURED.get(id(op))
    if hit is None or hit[0] is not op or hit[1:3] != (batch, train):
        if len(_MEASURED) > 10000:
            _MEASURED.clear()
        hit = _MEASURED[id(op)] = (op, batch, train, tuned(op, batch, train))
    measured = hit[3]
    if measured is not None and measured["algorithm"] in candidates(op, train):
        times = sorted(measured["times"].items(), key=lambda kv: kv[1])
        return measured["algorithm"], "measured by archc tune: " + ", ".join(
            f"{name} {seconds * 1e3:.3g} ms" for name, seconds in times)
    return rule(op, batch, train)


def forget_choices() -> None:
    """Read the tuning cache again at the next pass (``archc tune`` wrote it)."""
    _MEASURED.clear()
    forget()


def rule(op, batch: int = 1, train: bool = False) -> tuple[str, str]:
    """The algorithm the CPU runs a conv2d with at a batch size, in training mode or not,
    and why: ``depthwise``, ``pointwise``, ``winograd``, ``direct``, ``grid`` or ``im2col``
    (see the module docstring). Decided from the op's shapes and attributes, the batch and the
    mode alone, so the choice is known before the first image (``archc bench`` prints it
    per layer). Winograd's filters are transformed once per model in inference, but again
    after every update in training: there it runs only where they are few
    (WINOGRAD_TRAIN_FILTER_BYTES)."""
    a = op.attrs
    c, h, w = op.in_shapes[0]
    groups = a["groups"]
    if _is_depthwise(op):
        return "depthwise", "one filter per channel: a direct loop (a GEMM would be tiny)"
    if _is_pointwise(op):
        return "pointwise", "an unpadded 1x1: a GEMM on the map as it lies"
    strided = tuple(a["stride"]) != (1, 1)
    ho, wo = op.out_shape[1:]
    taps = a["kernel_size"][0] * a["kernel_size"][1]
    direct = c // groups <= DIRECT_MAX_CHANNELS[train, strided] or (
        not train and not strided and taps <= 9 and batch * ho * wo < DIRECT_FEW_POSITIONS)
    if strided and direct:
        sh, sw = a["stride"]
        return "direct", (f"strided, {c // groups} channels per group: {tiles_of(op)} on "
                          f"{sh}x{sw} phases of the input")
    if not GRID_AT_STRIDE_1 or strided:
        return "im2col", "strided: im2col + GEMM"
    (pt, pb), (pl, pr) = a["pads"]
    m = _winograd_tile(op, batch) if _winograd_fits(op, train) else 0
    if m:
        tiles = batch * -(-ho // m) * -(-wo // m)
        return "winograd", (f"F({m}x{m}, 3x3) on {tiles} tiles: {9 * m * m / (m + 2) ** 2:.2f}x "
                            "fewer multiplications than direct")
    if direct and c // groups > DIRECT_MAX_CHANNELS[train, strided]:
        return "direct", (f"stride 1 with {batch * ho * wo} positions in the batch: "
                          f"{tiles_of(op)} (a GEMM would be too narrow, Winograd's filters "
                          "read for too few tiles)")
    if direct:
        return "direct", (f"stride 1 with {c // groups} channels per group: {tiles_of(op)} "
                          "(a GEMM per tap would have an inner dimension of "
                          f"{c // groups})")
    if c // groups >= GRID_FEW_CHANNELS and _whole_batch_im2col(op, batch):
        return "im2col", (f"stride 1 with {c // groups} channels: im2col of the whole batch, "
                          "one GEMM" + (" each way" if train else ""))
    waste = (h + pt + pb) * (w + pl + pr) / (ho * wo)
    if waste <= GRID_WASTE_LIMIT:
        return "grid", f"stride 1: a GEMM per tap on the padded grid ({waste:.2f}x the output)"
    if c // groups < GRID_FEW_CHANNELS:
        return "grid", f"stride 1 with {c // groups} channels per group: a GEMM per tap"
    if batch * ho * wo < GRID_NARROW:
        return "grid", (f"stride 1 with {batch * ho * wo} positions in the batch: im2col's "
                        "GEMM would be too narrow")
    return "im2col", (f"a padded grid {waste:.2f}x the output with {c // groups} channels per "
                      "group: im2col + GEMM")


# A 1x1 conv writing channels-last whose rules split its channels among the threads (a
# small map) splits its positions instead while its weights are at most this big (each job
# reads them all): 80->480 channels at 14x14, batch 1, 167 -> 111 us; at 192->1152, 7x7
# (884 KB of weights), splitting the channels stayed faster (160 against 189 us).
LAST_SPLIT_WEIGHT_BYTES = 512 << 10


def last_filters(op, w, ctx):
    """A depthwise conv's filters (C, 1, kh, kw) as the channels-last kernels read them,
    (kh*kw, C): packed once per model (the layout plan's convs and conv_chain.py's)."""
    return ctx.packs.get((op.name, "depthwise-channels-last"), w,
                         lambda w: np.ascontiguousarray(_flat_filters(w).T))


def _jobs_per_sample(batch: int, rows: int) -> int:
    """Jobs per sample so that the batch gives every thread two: one where the samples
    alone do, never more than ``rows``."""
    return max(1, min(rows, -(-2 * numba.get_num_threads() // batch)))


def _bias(p, x):
    return p["bias"] if "bias" in p else np.empty(0, dtype=x.dtype)


def _no_residual(x, rank: int = 4):
    return np.empty((0,) * rank, dtype=x.dtype)


def _no_epilogue(x, rank: int = 4):
    """Epilogue arguments that do nothing: (bias, residual, activation code, slope)."""
    return np.empty(0, dtype=x.dtype), _no_residual(x, rank), NO_ACTIVATION, 0.0


def _plan(op, n, dtype, residual, train, last_in, last_out, code, slope, algorithm):
    """The depthwise and 1x1 convs' forward as a function of (x, residual, params, ctx),
    every decision that depends on the op, the batch size, the mode, the layout and the
    epilogue alone made here, once: a pass keeps these functions in ``ctx.plans`` (the
    model's own, from pass to pass), so that an inference pass at batch 1 spends little
    Python between its kernels (EfficientNet-B0 makes 81 conv calls a pass, most of them
    on 14x14 and 7x7 maps). None for the other algorithms: their kernels run long enough
    that their decisions, made at every call, cost nothing that shows."""
    kh, kw, sh, sw, dh, dw, pt, pl, ho, wo = _geometry(op)
    groups = op.attrs["groups"]
    algorithm = algorithm or choose(op, n, train)[0]
    nothing = np.empty(0, dtype=dtype)
    if algorithm == "depthwise" and last_in:  # (N, H, W, C) in and out: layout.py
        band = -(-ho // _jobs_per_sample(n, ho))

        def run(x, residual, p, ctx):
            return depthwise_last_kernel(x, last_filters(op, p["weight"], ctx), kh, kw, sh, sw,
                                         pt, pl, ho, wo, p.get("bias", nothing), code, slope,
                                         band)
        return run
    if algorithm == "depthwise":
        mult = op.out_shape[0] // op.in_shapes[0][0]

        def run(x, residual, p, ctx):
            return depthwise_forward_kernel(x, _flat_filters(p["weight"]), kh, kw, sh, sw, dh,
                                            dw, pt, pl, ho, wo, mult, p.get("bias", nothing),
                                            residual, code, slope)
        return run
    if algorithm != "pointwise":
        return None
    o, c = op.out_shape[0], op.in_shapes[0][0]
    if tuple(op.in_shapes[0][1:]) == (1, 1) and groups == 1 and not (last_in or last_out):
        # on a 1x1 map (squeeze-excitation's convs, heads after a global pool): a matrix
        # product and its epilogue on this thread (conv_pointwise.pointwise_vector_kernel)
        none2 = np.empty((0, 0), dtype=dtype)

        def run(x, residual, p, ctx):
            y = pointwise_vector_kernel(x.reshape(n, c), _flat_filters(p["weight"]),
                                        p.get("bias", nothing),
                                        residual.reshape(n, o) if residual.size else none2,
                                        code, slope)
            return y.reshape(n, o, 1, 1)
        return run
    # either side channels-last where layout.py says
    positions = ho * wo
    block, rows = _split(o // groups, positions, n * groups)
    if last_out and rows > 1 and o * (c // groups) * np.dtype(dtype).itemsize \
            <= LAST_SPLIT_WEIGHT_BYTES:
        # channels-last rows split by channels are strided blocks: split the positions
        block, rows = -(-positions // -(-numba.get_num_threads() // n)), 1
    tiles = last_out and not last_in and groups == 1 and conv_pointwise.LAST_TILES
    none3 = np.empty((0, 0, 0), dtype=dtype)
    no_pack = np.empty((0, 0), dtype=dtype)  # no filters packed for the tiles
    shape = (n, ho, wo, o) if last_out else (n, o, ho, wo)

    def run(x, residual, p, ctx):
        w = p["weight"]
        x3 = x.reshape(n, positions, c) if last_in else \
            _pointwise_input(op, x).reshape(n, c, positions)
        wt = ctx.packs.get((op.name, "last"), w, pack_last) if tiles else no_pack
        res3 = residual.reshape(n, o, positions) if residual.size else none3
        if last_in or last_out:
            y = pointwise_last_kernel(x3, _flat_filters(w), p.get("bias", nothing), block,
                                      rows, res3, code, slope, last_in, last_out,
                                      wt.astype(dtype, copy=False))
        else:
            y = pointwise_kernel(x3, _flat_filters(w), groups, False, p.get("bias", nothing),
                                 block, rows, res3, code, slope)
        return y.reshape(shape)
    return run


def _conv2d(op, xs, p, ctx, code, slope, algorithm: str | None = None):
    """The conv and its epilogue: bias, residual (a second input), activation ``code``."""
    x = np.ascontiguousarray(xs[0])
    residual = np.ascontiguousarray(xs[1]) if len(xs) > 1 else _no_residual(x)
    last_in, last_out = op.inputs[0] in ctx.channels_last, op.output in ctx.channels_last
    key = (id(op), x.shape[0], x.dtype, residual.size > 0, ctx.train, last_in, last_out, code,
           slope, algorithm, numba.get_num_threads())
    run = ctx.planned(op, key, lambda: _plan(op, x.shape[0], x.dtype, residual.size > 0,
                                             ctx.train, last_in, last_out, code, slope,
                                             algorithm))
    if run is not None:
        return run(x, residual, p, ctx)
    w = p["weight"]
    kh, kw, sh, sw, dh, dw, pt, pl, ho, wo = _geometry(op)
    groups = op.attrs["groups"]
    algorithm = algorithm or choose(op, x.shape[0], ctx.train)[0]
    if algorithm == "winograd":
        m = _winograd_tile(op, x.shape[0], forced=True)
        u = ctx.packs.get((op.name, f"winograd{m}"), w, lambda w: transform_filters(w, m))
        return _winograd_forward(op, x, u, m, _bias(p, x), residual, code, slope)
    if algorithm == "direct":
        wt = ctx.packs.get((op.name, "direct"), w, lambda w: pack_filters(w, groups))
        return _direct(x, wt, w.shape[0] // groups, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo,
                       _bias(p, x), residual, code, slope)
    if algorithm == "grid":
        return _grid_forward(op, x, w, ctx.packs.get((op.name, "taps"), w, _taps), _bias(p, x),
                             residual, code, slope)
    # otherwise im2col + GEMM: the whole batch's columns and one GEMM where they are few
    # enough, else panel by panel, straight into the output
    wmat = _flat_filters(w)
    if _whole_batch_im2col(op, x):
        cols = im2col_kernel(x, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo)
        out = np.empty((w.shape[0], cols.shape[1]), dtype=x.dtype)
        parallel_gemm(wmat, cols, out, 0.0, False, False, numba.get_num_threads())
        return from_grid(out, x.shape[0], 0, 0, ho, wo, ho, wo, _bias(p, x), residual, code,
                         slope)
    panel = min(_panel(wmat.shape[1]), ho * wo)
    rows = _row_blocks(w.shape[0] // groups, x.shape[0] * groups * -(-ho * wo // panel))
    res3 = residual.reshape(x.shape[0], w.shape[0], ho * wo) if residual.size else \
        _no_residual(x, 3)
    y = im2col_conv_kernel(x, wmat, groups, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo, panel, rows,
                           _bias(p, x), res3, code, slope)
    return y.reshape(x.shape[0], w.shape[0], ho, wo)


conv2d_forward = fused_forward(_conv2d)


def conv2d_backward(op, xs, y, gy, p, ctx, algorithm: str | None = None):
    """[input gradient], {"weight": ..., "bias": ...}; the input gradient is None where the
    pass asks for none (``ctx.input_grads``: a training step's first conv)."""
    (x,) = xs
    w = p["weight"]
    kh, kw, sh, sw, dh, dw, pt, pl, ho, wo = _geometry(op)
    x = np.ascontiguousarray(x)
    gy = np.ascontiguousarray(gy)
    groups = op.attrs["groups"]
    need = ctx.input_grads
    grads = {}
    if "bias" in p:
        grads["bias"] = gy.sum(axis=(0, 2, 3))
    algorithm = algorithm or choose(op, x.shape[0], ctx.train)[0]
    if algorithm == "depthwise":
        gw, gx = depthwise_backward_kernel(x, _flat_filters(w), gy, kh, kw, sh, sw, dh, dw, pt,
                                           pl, need)
        grads["weight"] = gw.reshape(w.shape)
        return [gx if need else None], grads
    if algorithm == "pointwise":
        xs_ = _pointwise_input(op, x)
        n, c = xs_.shape[:2]
        x3, gy3 = xs_.reshape(n, c, ho * wo), gy.reshape(n, w.shape[0], ho * wo)
        grads["weight"] = pointwise_weight_grad_kernel(
            x3, gy3, groups, min(n, numba.get_num_threads())).reshape(w.shape)
        if not need:
            return [None], grads
        bias, residual, code, slope = _no_epilogue(x, rank=3)
        block, rows = _split(c // groups, ho * wo, n * groups)
        gsub = pointwise_kernel(gy3, _flat_filters(w), groups, True, bias, block, rows, residual,
                                code, slope).reshape(n, c, ho, wo)
        if (sh, sw) == (1, 1):
            return [gsub], grads
        return [upsample_kernel(gsub, sh, sw, x.shape[2], x.shape[3])], grads
    if algorithm == "direct":
        grads["weight"] = _tiles_weight_grad(op, x, w, gy)
        if not need:
            return [None], grads
        if (sh, sw) != (1, 1):
            return [_im2col_input_grad(op, x, w, gy)], grads
        gx = _direct_input_grad(op, gy, w, ctx)
        if gx is None:  # a padding wider than the filter's reach: the grid's adjoint
            gx = _grid_backward(op, x, w, ctx.packs.get((op.name, "taps"), w, _taps), gy,
                                weight_grad=False)[0]
        return [gx], grads
    if algorithm == "winograd":
        # the weight gradient is F(3x3, 2x2); the input gradient Winograd again where the
        # flipped conv's padding (2 - the forward's) is a padding, else the grid's adjoint
        tw = -(-wo // 2)  # 2x2 tiles of gy in a row
        if w.shape[1] <= WINOGRAD_GRAD_MAX_CHANNELS:
            grads["weight"] = weight_gradient(x, gy, pt, pl, max(1, WINOGRAD_GRAD_TILES // tw),
                                              numba.get_num_threads())
        else:
            grads["weight"] = _im2col_weight_grad(op, x, w, to_grid(gy, 0, 0, ho, wo, 0))
        if not need:
            return [None], grads
        if max(max(pair) for pair in op.attrs["pads"]) <= 2:
            m = _winograd_tile(op, x.shape[0], forced=True)
            return [_winograd_input_grad(op, gy, w, m, ctx)], grads
        return [_grid_backward(op, x, w, ctx.packs.get((op.name, "taps"), w, _taps), gy,
                               weight_grad=False)[0]], grads
    if algorithm == "grid":
        gx, grads["weight"] = _grid_backward(op, x, w, ctx.packs.get((op.name, "taps"), w, _taps),
                                             gy, input_grad=need)
        return [gx], grads
    gy_grid = to_grid(gy, 0, 0, ho, wo, 0)
    grads["weight"] = _im2col_weight_grad(op, x, w, gy_grid)
    return [_im2col_input_grad(op, x, w, gy, gy_grid) if need else None], grads


def _tiles_weight_grad(op, x, w, gy):
    """A conv's weight gradient in register tiles (conv_direct.py) up to
    DIRECT_WEIGHT_GRAD_MAX_CHANNELS input channels per group, else the grid's GEMM per tap
    (stride 1) or im2col's."""
    kh, kw, sh, sw, dh, dw, pt, pl, ho, wo = _geometry(op)
    groups = op.attrs["groups"]
    if w.shape[1] <= DIRECT_WEIGHT_GRAD_MAX_CHANNELS:
        band = weight_grad_band(w.shape[1], w.shape[0] // groups, ho, wo + (kw - 1) * dw // sw,
                                (kh - 1) * dh // sh, sh * sw)
        return direct_weight_grad_kernel(x, gy, groups, kh, kw, sh, sw, dh, dw, pt, pl, band,
                                         numba.get_num_threads(), vector.weight_grad_lanes())
    if (sh, sw) == (1, 1):
        return _grid_backward(op, x, w, None, gy, input_grad=False)[1]
    return _im2col_weight_grad(op, x, w, to_grid(gy, 0, 0, ho, wo, 0))


# im2col of the whole batch (one GEMM each way: the forward pass's and both gradients')
# where its matrix takes at most this many bytes and the conv has one group; else panel by
# panel. Measured (2 threads, forward and both gradients, against the panels' per-sample
# GEMMs, whose packing of the filters repeats per panel): ResNet-18's layer4 convs (512
# channels, 7x7, batch 8) 33.3 -> 21.6 ms (PyTorch 19.4), its strided 256->512 16.2 ->
# 10.6 ms (PyTorch 10.5), 128->256 14.4 -> 11.7; stride 1 at 256x14x14 21.1 ms against
# the grid's 27.4 and the register tiles' 26.4 (128x28x28: 25.9 against the tiles' 21.4).
# Stride-1 convs past the register tiles' channels run it too (rule()): in training
# 1.25-1.55x the grid and the tiles from 256 channels; in inference at 512 channels
# (dilated 3x3 at 28x28, 5x5 at 7x7 and 14x14, batch 1 and 8) 1.4-2.2x the grid, which
# it replaced there.
WHOLE_BATCH_IM2COL_BYTES = 64 << 20


def _whole_batch_im2col(op, x) -> bool:
    """Whether im2col builds the whole batch's matrix: ``x`` the input, or the batch size
    (float32)."""
    kh, kw = op.attrs["kernel_size"]
    ho, wo = op.out_shape[1:]
    batch, itemsize = (x, 4) if isinstance(x, int) else (x.shape[0], x.itemsize)
    size = op.in_shapes[0][0] * kh * kw * batch * ho * wo * itemsize
    return op.attrs["groups"] == 1 and size <= WHOLE_BATCH_IM2COL_BYTES


def _im2col_weight_grad(op, x, w, gy_grid):
    """Any conv's weight gradient: gy's grid (O, N*ho*wo) times x's im2col matrix: whole
    (one GEMM, the threads sharing the gradient's columns) or panel by panel, the panels'
    products summed per thread."""
    kh, kw, sh, sw, dh, dw, pt, pl, ho, wo = _geometry(op)
    if _whole_batch_im2col(op, x):
        cols = im2col_kernel(x, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo)
        gw = np.empty((w.shape[0], cols.shape[0]), dtype=x.dtype)
        parallel_gemm(gy_grid, cols, gw, 0.0, False, True, numba.get_num_threads())
        return gw.reshape(w.shape)
    gw = im2col_weight_grad_kernel(x, gy_grid, op.attrs["groups"], kh, kw, sh, sw, dh, dw, pt,
                                   pl, ho, wo, numba.get_num_threads(), _panel(w[0].size))
    return gw.reshape(w.shape)


def _im2col_input_grad(op, x, w, gy, gy_grid=None):
    """Any conv's input gradient: every output position's column W_g.T @ gy (one GEMM),
    added back onto the input by col2im."""
    kh, kw, sh, sw, dh, dw, pt, pl, ho, wo = _geometry(op)
    n, c, h, wd = x.shape
    taps = np.ascontiguousarray(w.reshape(1, w.shape[0], -1))
    if gy_grid is None:
        gy_grid = to_grid(gy, 0, 0, ho, wo, 0)
    if _whole_batch_im2col(op, x):
        gcols = np.empty((taps.shape[2], gy_grid.shape[1]), dtype=x.dtype)
        parallel_gemm(taps[0], gy_grid, gcols, 0.0, True, False, numba.get_num_threads())
        return col2im_kernel(gcols, n, c, h, wd, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo)
    gcols = grid_conv_input_grad_kernel(taps, np.zeros(1, np.int64), op.attrs["groups"],
                                        gy_grid, gy_grid.shape[1], _block(taps.shape[2]))
    return col2im_kernel(gcols, n, c, h, wd, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo)


def _transposed_geometry(op, x):
    a = op.attrs
    (kh, kw), (sh, sw), (dh, dw) = a["kernel_size"], a["stride"], a["dilation"]
    (ph, pw) = a["padding"]
    return kh, kw, sh, sw, dh, dw, ph, pw


def conv_transpose2d_forward(op, xs, p, ctx):
    """The adjoint of a conv: every input pixel's column W_g.T @ x (one GEMM for the
    batch, the im2col layout) added back onto the output by col2im."""
    x = np.ascontiguousarray(xs[0])
    w = p["weight"]  # (in, out / groups, kh, kw)
    n, c, h, wd = x.shape
    kh, kw, sh, sw, dh, dw, ph, pw = _transposed_geometry(op, x)
    groups = op.attrs["groups"]
    taps = np.ascontiguousarray(w.reshape(1, c, -1))
    cols = grid_conv_input_grad_kernel(taps, np.zeros(1, np.int64), groups,
                                       to_grid(x, 0, 0, h, wd, 0), n * h * wd,
                                       _block(taps.shape[2]))
    ho, wo = op.out_shape[1:]
    y = col2im_kernel(cols, n, w.shape[1] * groups, ho, wo, kh, kw, sh, sw, dh, dw, ph, pw, h, wd)
    if "bias" in p:
        y += p["bias"].reshape(1, -1, 1, 1)
    return y


def conv_transpose2d_backward(op, xs, y, gy, p, ctx):
    """The input gradient is a conv of gy (im2col + GEMM), the weight gradient x's grid
    times gy's im2col matrix."""
    x = np.ascontiguousarray(xs[0])
    w = p["weight"]
    n, c, h, wd = x.shape
    kh, kw, sh, sw, dh, dw, ph, pw = _transposed_geometry(op, x)
    groups = op.attrs["groups"]
    taps = np.ascontiguousarray(w.reshape(1, c, -1))
    zero = np.zeros(1, np.int64)
    cols = im2col_kernel(np.ascontiguousarray(gy), kh, kw, sh, sw, dh, dw, ph, pw, h, wd)
    gx_grid = grid_conv_kernel(cols, taps, zero, groups, n * h * wd, _block(c // groups))
    gx = from_grid(gx_grid, n, 0, 0, h, wd, h, wd, *_no_epilogue(x))
    g_taps = grid_conv_weight_grad_kernel(cols, zero, groups, to_grid(x, 0, 0, h, wd, 0),
                                          taps.shape[2], numba.get_num_threads(), _block(c))
    grads = {"weight": g_taps.reshape(w.shape)}
    if "bias" in p:
        grads["bias"] = gy.sum(axis=(0, 2, 3))
    return [gx], grads


def time_algorithms(op, params: dict, batch: int, train: bool, repeat: int,
                    seed: int = 0) -> dict[str, float]:
    """Algorithm -> the best of ``repeat`` timed runs (after a warm-up) of a conv op on the
    CPU backend, forward (and backward when ``train``), on random input."""
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((batch,) + tuple(shape)).astype(np.float32)
          for shape in op.in_shapes]
    p = {role: params[full] for role, full in op.params.items()}
    gy = rng.standard_normal((batch,) + tuple(op.out_shape)).astype(np.float32)
    times = {}
    for name in candidates(op, train):
        ctx = KernelContext(train=train)  # its own packs: each algorithm packs once

        def run():
            y = _conv2d(op, xs, p, ctx, -1, 0.0, algorithm=name)
            if train:
                conv2d_backward(op, xs[:1], y, gy, p, ctx, algorithm=name)

        run()
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - start)
        times[name] = best
    return times
