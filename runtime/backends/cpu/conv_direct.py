"""Convolutions computed directly, in register tiles: no GEMM, no layout pass over the
whole tensor.

Each thread job takes one sample, one group and a band of output rows. It copies the
input rows the band reads into a small zero-padded *panel* ``(C/g, rows_in * Wp + reach)``
(the grid layout of conv_grid.py, but only for the band, so it stays in cache), where
output position ``q`` (row ``q // Wp``) sees filter tap (i, j) at ``q + i*dh*Wp + j*dw``.
The panel's positions are then walked in tiles of ``T`` positions, and for every block
of ``R`` output channels the tile's ``R x T`` sums are accumulated over every (tap,
input channel) in a stack buffer, which LLVM keeps in vector registers: one vector load
of the panel feeds ``R`` fused multiply-adds with broadcast weights, and the output is
written once. The tile fits the machine's vector registers (vector.py): with AVX-512, T =
32 and R = 8 where a group has 32 output channels or more, else 4 (tile_rows); with AVX2,
4 x 16. (A GEMM per tap, the grid's way, has an inner dimension of C/g:
16-64 for the small-channel convs of CIFAR ResNets, where BLAS runs at a fraction of its
peak, and it reads and writes the whole output once per tap.) Positions past the output's
width (the panel's padding columns) are computed and dropped; the output rows are then
written with the fused epilogue (bias, residual, activation) while in cache.

The filters are packed once per model (runtime.packing) as ``(groups, blocks, taps,
C/g, R)``, zero rows completing the last block. The input gradient of a stride-1 conv
is again a stride-1 conv (of the output gradient with the filters turned by 180 degrees,
input and output channels swapped per group), so it runs on this kernel too.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, uint64

from runtime.backends.cpu import vector
from runtime.backends.cpu.elementwise import activate_inplace
from runtime.backends.cpu.lowlevel import stack_buffer, unit_stride
from runtime.config import PARALLEL

ROWS = 4  # output channels per register tile where a group has few (8 vector registers)
WIDE_ROWS = 8  # ... and from WIDE_FROM output channels per group (16 of AVX-512's 32)
# Measured (forward, 2 threads, AVX-512): 8 rows 1.33x faster than 4 at 64 channels 56x56
# batch 8, 1.2x at 128x28x28, 1.14x at 32x16x16 batch 128, 1.84x on ResNet-18's stem (64
# filters of 3 channels, 7x7/2), even at 64x8x8 batch 128; 4 rows 1.25x faster at 16
# channels 32x32 batch 128 (half as many blocks to share out).
WIDE_FROM = 32


def tile_rows(og: int) -> int:
    """Output channels per register tile for a group of ``og``: 8 only where the machine
    has 32 vector registers (AVX-512) and the group 32 channels or more."""
    return WIDE_ROWS if vector.registers() >= 32 and og >= WIDE_FROM else ROWS


def pack_filters(w: np.ndarray, groups: int) -> np.ndarray:
    """Filters (O, C/g, kh, kw) -> (groups, blocks, kh*kw, C/g, rows): the ``rows``
    (tile_rows) weights one (tap, input channel) step of a tile multiplies, side by side;
    zeros complete the last block of a group's output channels."""
    o, cg, kh, kw = w.shape
    og = o // groups
    rows = tile_rows(og)
    blocks = -(-og // rows)
    packed = np.zeros((groups, blocks * rows, cg, kh * kw), dtype=w.dtype)
    packed[:, :og] = w.reshape(groups, og, cg, kh * kw)
    return np.ascontiguousarray(
        packed.reshape(groups, blocks, rows, cg, kh * kw).transpose(0, 1, 4, 3, 2))


def flip_filters(w: np.ndarray, groups: int) -> np.ndarray:
    """The filters of a stride-1 conv's input gradient: (O, C/g, kh, kw) -> (C, O/g, kh,
    kw), each group's input and output channels swapped, every filter turned by 180
    degrees."""
    o, cg, kh, kw = w.shape
    og = o // groups
    turned = w[:, :, ::-1, ::-1].reshape(groups, og, cg, kh, kw).transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(turned.reshape(groups * cg, og, kh, kw))


def split(n: int, groups: int, cg: int, og: int, ho: int, wp: int,
          threads: int) -> tuple[int, int]:
    """(output rows per job, chunks of output channels per job). A band's input panel and
    output rows stay within about 512 KB (in L2 while every output-channel block walks
    them); a small map is one band (tiles straddling rows waste less of it); where the
    batch, groups and bands give fewer than two jobs per thread, the output channels are
    dealt out in chunks (each rebuilds the panel, a small cost), then the rows."""
    rows = tile_rows(og)
    blocks = -(-og // rows)
    per_row = wp * 4 * (cg + blocks * rows)
    band = max(1, min(ho, 524288 // max(per_row, 1)))
    want = 2 * threads
    jobs = n * groups * -(-ho // band)
    chunks = 1
    if jobs < want:
        chunks = min(blocks, -(-want // jobs))
        jobs *= chunks
    if jobs < want:
        band = max(1, -(-ho // -(-want // (n * groups * chunks))))
    return band, chunks


@njit(cache=True, fastmath={"contract"}, **PARALLEL)
def direct_conv_kernel(x, wt, og, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo, band, chunks, tile,
                       bias, residual, code, slope):
    """y (N, groups*og, ho, wo) = the conv of x (N, C, H, W) with the packed filters ``wt``
    (pack_filters), stride (sh, sw), dilation (dh, dw), padding ``pt`` rows on top and
    ``pl`` columns on the left (the bottom and right padding follow from ho and wo); then
    the epilogue: per-channel ``bias``, ``residual`` (N, O, ho, wo), activation ``code``
    (empty arrays and a negative code: nothing). Jobs: (sample, group, band of ``band``
    output rows, chunk of output channels: ``chunks`` per group; split()). Register tiles
    of ``tile`` positions (vector.tile_width: 16 or 32; blocks of 8 output channels take
    32).

    A strided conv reads its input in sh x sw *phases*: phase (a, b) holds the padded
    input's rows a, a + sh, ... and columns b, b + sw, ..., so tap (i, j) is a stride-1
    read of phase ((i*dh) % sh, (j*dw) % sw) shifted by ((i*dh) // sh, (j*dw) // sw)
    (one phase at stride 1). ``fastmath`` allows only contraction (a multiply and add
    fused into one FMA: one rounding instead of two)."""
    n = x.shape[0]
    groups, blocks, taps, cg, rows_t = wt.shape[0], wt.shape[1], wt.shape[2], wt.shape[3], \
        wt.shape[4]
    if not ((rows_t == 8 and tile == 32) or (rows_t == 4 and (tile == 16 or tile == 32))):
        raise ValueError("direct_conv_kernel: tiles are 8 x 32, 4 x 32 or 4 x 16")
    reach_y, reach_x = (kh - 1) * dh // sh, (kw - 1) * dw // sw
    wp = wo + reach_x  # the panel's row pitch: a phase's columns that the band reads
    phase, shift = tap_phases(kh, kw, sh, sw, dh, dw, wp)
    rows_in_max = band + reach_y
    bands = (ho + band - 1) // band
    y = np.empty((n, groups * og, ho, wo), dtype=x.dtype)
    per_chunk = (blocks + chunks - 1) // chunks
    for job in prange(n * groups * bands * chunks):
        b = job // (groups * bands * chunks)
        g = (job // (bands * chunks)) % groups
        y0 = ((job // chunks) % bands) * band
        ob0 = (job % chunks) * per_chunk
        ob1 = min(blocks, ob0 + per_chunk)
        if ob0 >= ob1:
            continue
        rows = min(band, ho - y0)
        npos = (rows * wp + tile - 1) // tile * tile
        rows_in = rows + reach_y
        length = max(npos + reach_y * wp + reach_x, rows_in_max * wp)
        panel = np.empty((sh * sw, cg, length), dtype=x.dtype)
        # every geometry its own buffer: LLVM keeps a buffer in registers only where
        # every index is known at compile time
        acc8 = stack_buffer(256, x.dtype)  # 8 x 32
        acc4 = stack_buffer(128, x.dtype)  # 4 x 32
        acc4n = stack_buffer(64, x.dtype)  # 4 x 16
        for ph in range(sh * sw):
            _fill_panel(x[b], panel[ph], g * cg, cg, y0 * sh + ph // sw - pt, rows_in, sh,
                        ph % sw - pl, sw, wp, 0, length)
        out = np.empty(((ob1 - ob0) * rows_t, npos), dtype=x.dtype)
        for ob in range(ob0, ob1):
            wb = wt[g, ob]
            row0 = (ob - ob0) * rows_t
            for p0 in range(0, npos, tile):
                # one call per tile geometry, each with literal sizes (see _sums)
                if rows_t == 8:
                    _sums(acc8, wb, panel, phase, shift, taps, cg, p0, 8, 32)
                    _store(acc8, out, row0, 8, p0, 32)
                elif tile == 32:
                    _sums(acc4, wb, panel, phase, shift, taps, cg, p0, 4, 32)
                    _store(acc4, out, row0, 4, p0, 32)
                else:
                    _sums(acc4n, wb, panel, phase, shift, taps, cg, p0, 4, 16)
                    _store(acc4n, out, row0, 4, p0, 16)
        for o in range(ob0 * rows_t, min(og, ob1 * rows_t)):
            channel = g * og + o
            add = bias[channel] if bias.size else 0.0
            src = out[o - ob0 * rows_t]
            for r in range(rows):
                dest = y[b, channel, y0 + r]
                start = uint64(r * wp)
                for xx in range(uint64(wo)):
                    dest[xx] = src[start + xx] + add
                if residual.shape[0]:
                    res = residual[b, channel, y0 + r]
                    for xx in range(uint64(wo)):
                        dest[xx] += res[xx]
                activate_inplace(dest, code, slope)
    return y


@njit(cache=True, inline="always")
def _sums(acc, wb, panel, phase, shift, taps, cg, p0, rows, tile):
    """acc[r * tile + p] = the sum over every (tap, input channel) of packed filter row r
    (of ``rows``: wb (taps, C/g, rows)) times the panel at tile position p0 + p. Inlined
    where ``rows`` and ``tile`` are literals, so that every index into ``acc`` is a
    constant once LLVM unrolls the loops and it keeps the rows x tile sums in vector
    registers: one vector load of the panel feeds ``rows`` fused multiply-adds with
    broadcast weights."""
    for i in range(rows * tile):
        acc[i] = 0.0
    for t in range(taps):
        at = uint64(p0 + shift[t])
        src_phase = panel[phase[t]]
        for ch in range(cg):
            w = wb[t, ch]
            src = src_phase[ch]
            for p in range(uint64(tile)):
                v = src[at + p]
                for r in range(rows):
                    acc[uint64(r * tile) + p] += w[r] * v


@njit(cache=True, inline="always")
def _store(acc, out, row0, rows, p0, tile):
    """out[row0 + r, p0:p0 + tile] = acc[r * tile:(r + 1) * tile] for r < rows."""
    for r in range(rows):
        dest = out[row0 + r]
        for p in range(uint64(tile)):
            dest[uint64(p0) + p] = acc[uint64(r * tile) + p]


@njit(cache=True)
def tap_phases(kh, kw, sh, sw, dh, dw, wp):
    """Per filter tap (i, j) in row-major order: the phase it reads, ((i*dh) % sh, (j*dw)
    % sw) numbered row by row, and its shift from the output position in that phase's
    panel of row pitch ``wp`` (the depthwise kernels' phase planes read the same way)."""
    phase = np.empty(kh * kw, dtype=np.int64)
    shift = np.empty(kh * kw, dtype=np.int64)
    for t in range(kh * kw):
        i, j = t // kw, t % kw
        phase[t] = ((i * dh) % sh) * sw + (j * dw) % sw
        shift[t] = ((i * dh) // sh) * wp + (j * dw) // sw
    return phase, shift


@njit(cache=True)
def _fill_panel(xb, panel, c0, channels, iy0, rows_in, sh, ix0, sw, wp, base, end):
    """panel[ch, base + r*wp + col] = xb[c0 + ch, iy0 + r*sh, ix0 + col*sw] for the first
    ``channels`` rows of the panel (any further rows are left as they are), zero outside
    the input, and zeros from past the last row to column ``end`` (the tiles read up to
    the filter's reach beyond it). At stride 1 a row is one contiguous copy between
    zeros."""
    h, w = xb.shape[1], xb.shape[2]
    # the panel columns that fall inside the input: ix0 + col*sw in [0, w)
    lo = min(wp, max(0, (sw - 1 - ix0) // sw))
    hi = max(lo, min(wp, (w - ix0 + sw - 1) // sw))
    for ch in range(channels):
        dest = panel[ch]
        for r in range(rows_in):
            iy = iy0 + r * sh
            row = uint64(base + r * wp)
            if iy < 0 or iy >= h:
                for xx in range(uint64(wp)):
                    dest[row + xx] = 0.0
                continue
            src = xb[c0 + ch, iy]
            for xx in range(uint64(lo)):
                dest[row + xx] = 0.0
            if sw == 1:
                at = row + uint64(lo)
                first = uint64(ix0 + lo)
                for xx in range(uint64(hi - lo)):
                    dest[at + xx] = src[first + xx]
            else:
                for col in range(lo, hi):
                    dest[row + uint64(col)] = src[ix0 + col * sw]
            for xx in range(uint64(hi), uint64(wp)):
                dest[row + xx] = 0.0
        for q in range(uint64(base + rows_in * wp), uint64(end)):
            dest[q] = 0.0


WEIGHT_GRAD_FLOATS = 131072  # a weight-gradient job's panels: 512 KB of float32, in L2
WEIGHT_GRAD_CHUNK = 1024  # panel positions per pass over the blocks: 8 rows of 4 KB, in L1


def weight_grad_band(cg: int, og: int, ho: int, wp: int, reach_y: int, phases: int) -> int:
    """Output rows per weight-gradient job: as many as keep its panels (x's rows of
    ``cg`` channels in ``phases`` phases, gy's of ``og``) within WEIGHT_GRAD_FLOATS."""
    per_row = (-(-cg // 4) * 4 * phases + -(-og // 4) * 4) * wp
    return max(1, min(ho, WEIGHT_GRAD_FLOATS // max(per_row, 1) - reach_y))


@njit(cache=True, fastmath={"contract"}, **PARALLEL)
def direct_weight_grad_kernel(x, gy, groups, kh, kw, sh, sw, dh, dw, pt, pl, band, splits,
                              lanes):
    """The weight gradient (O, C/g, kh, kw) of the conv of x (N, C, H, W) whose output
    gradient is gy (N, O, ho, wo), in jobs of ``band`` output rows (weight_grad_band), on
    panels like the forward pass's: x's rows in phases, and gy's rows at the same pitch
    with zeros in the padding columns and rows. Where a whole map is one band, the panels
    stack samples up to about WEIGHT_GRAD_FLOATS values (a small map alone would leave
    the sums below too short to pay for themselves; more would leave L2). For each tap,
    block of 4 input channels and block of 4 output channels, 16 sums of products over
    the panel's positions are kept ``lanes`` (vector.weight_grad_lanes: 16 or 8) wide in
    registers. The jobs are dealt out to ``splits`` partial sums (one per thread), added
    at the end."""
    if lanes != 16 and lanes != 8:
        raise ValueError("direct_weight_grad_kernel: sums are 16 or 8 lanes wide")
    n, c = x.shape[0], x.shape[1]
    o, ho, wo = gy.shape[1], gy.shape[2], gy.shape[3]
    cg, og = c // groups, o // groups
    cg4, og4 = (cg + 3) // 4 * 4, (og + 3) // 4 * 4
    taps = kh * kw
    reach_y, reach_x = (kh - 1) * dh // sh, (kw - 1) * dw // sw
    wp = wo + reach_x
    phase, shift = tap_phases(kh, kw, sh, sw, dh, dw, wp)
    band = min(band, ho)
    bands = (ho + band - 1) // band
    stride = (band + reach_y) * wp  # a sample's (band's) region of a panel
    positions = WEIGHT_GRAD_FLOATS // (cg4 * sh * sw + og4)
    per = 1 if bands > 1 else max(1, min(n, positions // stride))
    runs = (n + per - 1) // per
    units = runs * groups * bands
    partial = np.zeros((splits, groups, og4, cg4, taps), dtype=x.dtype)
    for k in prange(splits):
        acc16 = stack_buffer(256, x.dtype)  # 4 output x 4 input channels x 16 lanes
        acc8 = stack_buffer(128, x.dtype)  # ... x 8 lanes
        for unit in range(k, units, splits):
            b0 = (unit // (groups * bands)) * per
            g = (unit // bands) % groups
            y0 = (unit % bands) * band
            rows = min(band, ho - y0)
            count = min(per, n - b0)
            npos = (count * stride + lanes - 1) // lanes * lanes
            panel = np.zeros((sh * sw, cg4, npos + reach_y * wp + reach_x), dtype=x.dtype)
            grad = np.zeros((og4, npos), dtype=x.dtype)
            for s in range(count):
                base = s * stride
                for ph in range(sh * sw):
                    _fill_panel(x[b0 + s], panel[ph], g * cg, cg, y0 * sh + ph // sw - pt,
                                rows + reach_y, sh, ph % sw - pl, sw, wp, base, 0)
                for oo in range(og):
                    dest = grad[oo]
                    for r in range(rows):
                        src = gy[b0 + s, g * og + oo, y0 + r]
                        start = uint64(base + r * wp)
                        for xx in range(uint64(wo)):
                            dest[start + xx] = src[xx]
            # the taps innermost, over WEIGHT_GRAD_CHUNK positions at a time: a block's 4
            # rows of gy and 4 of x (shifted per tap) stay in L1 across its taps, read
            # from L2 once rather than once per tap
            for q0 in range(0, npos, WEIGHT_GRAD_CHUNK):
                q1 = min(npos, q0 + WEIGHT_GRAD_CHUNK)
                for cb in range(0, cg4, 4):
                    for ob in range(0, og4, 4):
                        for t in range(taps):
                            ph = panel[phase[t]]
                            off = uint64(shift[t])
                            # one call per lane count, each with literal sizes (see _sums)
                            if lanes == 16:
                                _grad_sums(acc16, grad, ph, ob, cb, off, q0, q1, 16)
                                _add_grad_sums(acc16, partial[k, g], ob, cb, t, 16)
                            else:
                                _grad_sums(acc8, grad, ph, ob, cb, off, q0, q1, 8)
                                _add_grad_sums(acc8, partial[k, g], ob, cb, t, 8)
    summed = partial.sum(axis=0)
    gw = np.empty((o, cg, kh, kw), dtype=x.dtype)
    for g in range(groups):
        for oo in range(og):
            for cc in range(cg):
                for t in range(taps):
                    gw[g * og + oo, cc, t // kw, t % kw] = summed[g, oo, cc, t]
    return gw


@njit(cache=True, inline="always")
def _grad_sums(acc, grad, ph, ob, cb, off, q0, q1, lanes):
    """acc[(4*i + j) * lanes + l] = the sum over the panel positions q = q0 + l, q0 + l +
    lanes, ... (below q1) of grad[ob + i, q] * ph[cb + j, off + q], for 4 output channels (i) and 4
    input channels (j): 16 sums ``lanes`` wide, which LLVM keeps in registers where the
    call has a literal ``lanes`` (see _sums)."""
    g0, g1, g2, g3 = grad[ob], grad[ob + 1], grad[ob + 2], grad[ob + 3]
    x0, x1, x2, x3 = ph[cb], ph[cb + 1], ph[cb + 2], ph[cb + 3]
    for i in range(16 * lanes):
        acc[i] = 0.0
    step = uint64(lanes)
    for p0 in range(q0, q1, lanes):
        q = uint64(p0)
        for l in range(step):
            a0, a1 = g0[q + l], g1[q + l]
            a2, a3 = g2[q + l], g3[q + l]
            v0, v1 = x0[off + q + l], x1[off + q + l]
            v2, v3 = x2[off + q + l], x3[off + q + l]
            acc[l] += a0 * v0
            acc[step + l] += a0 * v1
            acc[2 * step + l] += a0 * v2
            acc[3 * step + l] += a0 * v3
            acc[4 * step + l] += a1 * v0
            acc[5 * step + l] += a1 * v1
            acc[6 * step + l] += a1 * v2
            acc[7 * step + l] += a1 * v3
            acc[8 * step + l] += a2 * v0
            acc[9 * step + l] += a2 * v1
            acc[10 * step + l] += a2 * v2
            acc[11 * step + l] += a2 * v3
            acc[12 * step + l] += a3 * v0
            acc[13 * step + l] += a3 * v1
            acc[14 * step + l] += a3 * v2
            acc[15 * step + l] += a3 * v3


@njit(cache=True, inline="always")
def _add_grad_sums(acc, partial, ob, cb, t, lanes):
    """partial[ob + i, cb + j, t] += the lanes of acc's sum (i, j) added up (_grad_sums)."""
    for pair in range(16):
        total = acc[pair * lanes]  # in the sums' own type (a float64 total cost a
        for l in range(1, lanes):  # conversion per lane, adds twice as slow)
            total += acc[pair * lanes + l]
        partial[ob + pair // 4, cb + pair % 4, t] += total
