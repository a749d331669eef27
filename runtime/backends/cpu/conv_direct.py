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
32 and R = 8 where a group has 16 output channels or more, else 4 (tile_rows); with AVX2,
4 x 16. (A GEMM per tap, the grid's way, has an inner dimension of C/g:
16-64 for the small-channel convs of CIFAR ResNets, where BLAS runs at a fraction of its
peak, and it reads and writes the whole output once per tap.) Positions past the output's
width (the panel's padding columns) are computed and dropped; the output rows are then
written with the fused epilogue (bias, residual, activation) while in cache.

The filters are packed once per model (runtime.packing) as ``(groups, blocks, taps,
C/g, R)``, zero rows completing the last block. The input gradient of a stride-1 conv
is again a stride-1 conv (of the output gradient with the filters turned by 180 degrees,
input and output channels swapped per group), so it runs on this kernel too.

The weight gradient reads the same panels of x, and the output gradient turned
channels-last beside them; its sums are vectors over output channels, one per (input
channel, tap), so that nothing is summed across lanes (direct_weight_grad_kernel).
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
# filters of 3 channels, 7x7/2), even at 64x8x8 batch 128. At 16 channels 32x32 batch 128
# 4 rows were 1.25x faster while LLVM filled 256-bit vectors; with 512-bit ones 8 rows are
# 1.13x faster forward, 1.08x backward (ResNet-20's training step 267 -> 260 ms).
WIDE_FROM = 16


def tile_rows(og: int) -> int:
    """Output channels per register tile for a group of ``og``: 8 only where the machine
    has 32 vector registers (AVX-512) and the group WIDE_FROM channels or more."""
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
            _fill_panel(x, b, panel, ph, g * cg, cg, y0 * sh + ph // sw - pt, rows_in, sh,
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
        _epilogue(out, ob0 * rows_t, min(og, ob1 * rows_t), g * og, b, y0, rows, wp, y, bias,
                  residual, code, slope)
    return y


@njit(cache=True)
def _epilogue(out, o0, o1, c0, b, y0, rows, wp, y, bias, residual, code, slope):
    """y[b, c0 + o, y0 + r, :] = out[o - o0, r * wp:r * wp + wo] + bias, + residual, then
    the activation, for o0 <= o < o1 and r < rows: every array indexed whole and the
    activation run once per channel over its rows (contiguous), not per row (a view per
    row costs two atomic reference counts, and the call its own: a fifth of a 16-channel
    conv's time went to them)."""
    wo = y.shape[3]
    flat = y.reshape(-1)
    bu = uint64(b)
    for o in range(o0, o1):
        channel = uint64(c0 + o)
        add = bias[channel] if bias.size else y.dtype.type(0.0)
        row = uint64(o - o0)
        for r in range(uint64(rows)):
            start, yy = r * uint64(wp), uint64(y0) + r
            if residual.shape[0]:
                for xx in range(uint64(wo)):
                    y[bu, channel, yy, xx] = out[row, start + xx] + add + \
                        residual[bu, channel, yy, xx]
            else:
                for xx in range(uint64(wo)):
                    y[bu, channel, yy, xx] = out[row, start + xx] + add
        if code >= 0:
            first = ((b * y.shape[1] + c0 + o) * y.shape[2] + y0) * wo
            activate_inplace(flat[first:first + rows * wo], code, slope)


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
def _fill_panel(x, b, panel, ph, c0, channels, iy0, rows_in, sh, ix0, sw, wp, base, end):
    """panel[ph, ch, base + r*wp + col] = x[b, c0 + ch, iy0 + r*sh, ix0 + col*sw] for the
    first ``channels`` rows of the panel (any further rows are left as they are), zero
    outside the input, and zeros from past the last row to column ``end`` (the tiles
    read up to the filter's reach beyond it). At stride 1 a row is one contiguous copy
    between zeros. Every array is indexed whole, unsigned: a view per row costs two
    atomic reference counts, and a signed index a check for negative values."""
    h, w = x.shape[2], x.shape[3]
    # the panel columns that fall inside the input: ix0 + col*sw in [0, w)
    lo = min(wp, max(0, (sw - 1 - ix0) // sw))
    hi = max(lo, min(wp, (w - ix0 + sw - 1) // sw))
    p, bu, pitch = uint64(ph), uint64(b), uint64(wp)
    for ch in range(uint64(channels)):
        src_c = uint64(c0) + ch
        for r in range(uint64(rows_in)):
            iy = iy0 + np.int64(r) * sh
            row = uint64(base) + r * pitch
            if iy < 0 or iy >= h:
                for xx in range(pitch):
                    panel[p, ch, row + xx] = 0.0
                continue
            yy = uint64(iy)
            for xx in range(uint64(lo)):
                panel[p, ch, row + xx] = 0.0
            if sw == 1:
                at, first = row + uint64(lo), uint64(ix0 + lo)
                for xx in range(uint64(hi - lo)):
                    panel[p, ch, at + xx] = x[bu, src_c, yy, first + xx]
            else:
                for col in range(uint64(lo), uint64(hi)):
                    panel[p, ch, row + col] = x[bu, src_c, yy, uint64(ix0 + np.int64(col) * sw)]
            for xx in range(uint64(hi), pitch):
                panel[p, ch, row + xx] = 0.0
        for q in range(uint64(base + rows_in * wp), uint64(end)):
            panel[p, ch, q] = 0.0


WEIGHT_GRAD_FLOATS = 131072  # a weight-gradient job's panels: 512 KB of float32, in L2


GRAD_VECTOR = 16  # output channels per vector of the weight gradient's sums


def weight_grad_band(cg: int, og: int, ho: int, wp: int, reach_y: int, phases: int) -> int:
    """Output rows per weight-gradient job: as many as keep its panels (x's rows of
    ``cg`` channels in ``phases`` phases, gy's positions by ``og`` channels rounded up to
    GRAD_VECTOR) within WEIGHT_GRAD_FLOATS."""
    per_row = (cg * phases + -(-og // GRAD_VECTOR) * GRAD_VECTOR) * wp
    return max(1, min(ho, WEIGHT_GRAD_FLOATS // max(per_row, 1) - reach_y))


TAP_GROUP = 9  # filter taps per block of sums (a 3x3 filter's); more taps in groups of 9
GRAD_CHUNK = 256  # panel positions per pass over the blocks: gy's rows for them in L1


@njit(cache=True, fastmath={"contract"}, **PARALLEL)
def direct_weight_grad_kernel(x, gy, groups, kh, kw, sh, sw, dh, dw, pt, pl, band, splits,
                              lanes):
    """The weight gradient (O, C/g, kh, kw) of the conv of x (N, C, H, W) whose output
    gradient is gy (N, O, ho, wo), in jobs of ``band`` output rows (weight_grad_band).
    Each job copies x's rows into panels like the forward pass's (in phases), and gy's
    rows channels-last: ``gt`` (positions, O/g rounded up to GRAD_VECTOR), zeros in the
    padding columns and rows, at the panels' pitch. Where a whole map is one band, the
    panels stack samples up to about WEIGHT_GRAD_FLOATS values.

    The sums are vectorised over output channels: for each input channel, group of
    TAP_GROUP taps and vector of GRAD_VECTOR output channels, sums[tap] += x[channel,
    tap's offset + q] (one value, broadcast) * gt[q, vector] over the panel positions q,
    GRAD_CHUNK of them at a time (gt's rows for them stay in L1). Each tap's sum is then
    one vector of the gradient: no sum across lanes, and the loads of gt are contiguous.
    ``lanes`` (vector.weight_grad_lanes) 16: two vectors at once, 18 of AVX-512's 32
    registers; else one. Taps past the last of a group repeat it, their sums dropped.
    (An earlier kernel vectorised over positions and added each sum's lanes up after
    every block: 1.1-1.5x slower on AVX-512, 2 threads; with AVX2 only, as emulated on
    the same machine, this one takes 1.0-1.15x its time.) The jobs are dealt out to
    ``splits`` partial sums (one per thread), added at the end."""
    n, c = x.shape[0], x.shape[1]
    o, ho, wo = gy.shape[1], gy.shape[2], gy.shape[3]
    cg, og = c // groups, o // groups
    ogp = (og + GRAD_VECTOR - 1) // GRAD_VECTOR * GRAD_VECTOR
    taps = kh * kw
    tgroups = (taps + TAP_GROUP - 1) // TAP_GROUP
    tpad = tgroups * TAP_GROUP
    reach_y, reach_x = (kh - 1) * dh // sh, (kw - 1) * dw // sw
    wp = wo + reach_x
    phase, shift = tap_phases(kh, kw, sh, sw, dh, dw, wp)
    band = min(band, ho)
    bands = (ho + band - 1) // band
    stride = (band + reach_y) * wp
    positions = WEIGHT_GRAD_FLOATS // (cg * sh * sw + ogp)
    per = 1 if bands > 1 else max(1, min(n, positions // stride))
    runs = (n + per - 1) // per
    units = runs * groups * bands
    partial = np.zeros((splits, groups, cg, tpad, ogp), dtype=x.dtype)
    for k in prange(splits):
        # a buffer per call below (LLVM keeps one in registers only where a single
        # geometry uses it, see _sums): TAP_GROUP taps x GRAD_VECTOR channels each
        pair_a = stack_buffer(144, x.dtype)
        pair_b = stack_buffer(144, x.dtype)
        last = stack_buffer(144, x.dtype)
        narrow = stack_buffer(144, x.dtype)
        bases = np.empty(TAP_GROUP, dtype=np.int64)
        for unit in range(k, units, splits):
            b0 = (unit // (groups * bands)) * per
            g = (unit // bands) % groups
            y0 = (unit % bands) * band
            rows = min(band, ho - y0)
            count = min(per, n - b0)
            npos = count * stride
            plen = npos + reach_y * wp + reach_x
            panel = np.zeros((sh * sw, cg, plen), dtype=x.dtype)
            gt = np.zeros((npos, ogp), dtype=x.dtype)
            for s in range(count):
                base = s * stride
                for ph in range(sh * sw):
                    _fill_panel(x, b0 + s, panel, ph, g * cg, cg, y0 * sh + ph // sw - pt,
                                rows + reach_y, sh, ph % sw - pl, sw, wp, base, 0)
                # gy's rows channels-last, indexed whole (no view per position)
                bs, c1 = uint64(b0 + s), uint64(g * og)
                for r in range(uint64(rows)):
                    yy, q0 = uint64(y0) + r, uint64(base) + r * uint64(wp)
                    for xx in range(uint64(wo)):
                        for oo in range(uint64(og)):
                            gt[q0 + xx, oo] = gy[bs, c1 + oo, yy, xx]
            flat = panel.reshape(-1)
            step = 2 * GRAD_VECTOR if lanes == 16 else GRAD_VECTOR
            for q0 in range(0, npos, GRAD_CHUNK):
                q1 = min(npos, q0 + GRAD_CHUNK)
                for ob in range(0, ogp, step):
                    for ch in range(cg):
                        dest = partial[k, g, ch]
                        for tg in range(tgroups):
                            t0 = tg * TAP_GROUP
                            for i in range(TAP_GROUP):
                                t = min(t0 + i, taps - 1)  # past the last tap: it again
                                bases[i] = (phase[t] * cg + ch) * plen + shift[t]
                            # literal widths, one buffer per call (see _sums)
                            if lanes != 16:
                                _grad_sums(narrow, gt, flat, bases, q0, q1, ob, 16)
                                _add_grad_sums(narrow, dest, t0, ob, 16)
                            elif ob + step <= ogp:
                                _grad_sums_pair(pair_a, pair_b, gt, flat, bases, q0, q1, ob, 16)
                                _add_grad_sums(pair_a, dest, t0, ob, 16)
                                _add_grad_sums(pair_b, dest, t0, ob + 16, 16)
                            else:
                                _grad_sums(last, gt, flat, bases, q0, q1, ob, 16)
                                _add_grad_sums(last, dest, t0, ob, 16)
    summed = partial.sum(axis=0)
    gw = np.empty((o, cg, kh, kw), dtype=x.dtype)
    for g in range(groups):
        for oo in range(og):
            for cc in range(cg):
                for t in range(taps):
                    gw[g * og + oo, cc, t // kw, t % kw] = summed[g, cc, t, oo]
    return gw


@njit(cache=True, inline="always")
def _grad_sums(acc, gt, flat, tb, q0, q1, ob, width):
    """acc[i * width + p] = the sum over q0 <= q < q1 of flat[tb[i] + q] * gt[q, ob + p],
    for the TAP_GROUP taps i and ``width`` output channels p (one or two vectors): a
    literal ``width`` keeps the sums in registers, as _sums does."""
    for i in range(TAP_GROUP * width):
        acc[i] = 0.0
    bases = _tap_bases(tb)
    first = uint64(ob)
    for q in range(uint64(q0), uint64(q1)):
        row = gt[q]
        xs = _tap_values(flat, bases, q)
        for p in range(uint64(width)):
            _tap_fmas(acc, row[first + p], p, width, xs)


@njit(cache=True, inline="always")
def _grad_sums_pair(acc, acc_b, gt, flat, tb, q0, q1, ob, width):
    """_grad_sums for two vectors of output channels at once, ob and ob + width, into two
    buffers (one buffer of 2 x TAP_GROUP vectors kept its sums in registers but stored
    them back to memory at every step)."""
    for i in range(TAP_GROUP * width):
        acc[i] = 0.0
        acc_b[i] = 0.0
    bases = _tap_bases(tb)
    first = uint64(ob)
    second = uint64(ob + width)
    for q in range(uint64(q0), uint64(q1)):
        row = gt[q]
        xs = _tap_values(flat, bases, q)
        for p in range(uint64(width)):
            _tap_fmas(acc, row[first + p], p, width, xs)
            _tap_fmas(acc_b, row[second + p], p, width, xs)


@njit(cache=True, inline="always")
def _tap_bases(tb):
    """The TAP_GROUP (9) taps' offsets into the flat panels, unsigned."""
    return (uint64(tb[0]), uint64(tb[1]), uint64(tb[2]), uint64(tb[3]), uint64(tb[4]),
            uint64(tb[5]), uint64(tb[6]), uint64(tb[7]), uint64(tb[8]))


@njit(cache=True, inline="always")
def _tap_values(flat, bases, q):
    """The panel's value at position q for each of the 9 taps."""
    b0, b1, b2, b3, b4, b5, b6, b7, b8 = bases
    return (flat[b0 + q], flat[b1 + q], flat[b2 + q], flat[b3 + q], flat[b4 + q],
            flat[b5 + q], flat[b6 + q], flat[b7 + q], flat[b8 + q])


@njit(cache=True, inline="always")
def _tap_fmas(acc, gv, p, width, xs):
    """acc[i * width + p] += xs[i] * gv for the 9 taps i."""
    x0, x1, x2, x3, x4, x5, x6, x7, x8 = xs
    acc[p] += x0 * gv
    acc[uint64(width) + p] += x1 * gv
    acc[uint64(2 * width) + p] += x2 * gv
    acc[uint64(3 * width) + p] += x3 * gv
    acc[uint64(4 * width) + p] += x4 * gv
    acc[uint64(5 * width) + p] += x5 * gv
    acc[uint64(6 * width) + p] += x6 * gv
    acc[uint64(7 * width) + p] += x7 * gv
    acc[uint64(8 * width) + p] += x8 * gv


@njit(cache=True, inline="always")
def _add_grad_sums(acc, dest, t0, ob, width):
    """dest[t0 + i, ob + p] += acc[i * width + p] (_grad_sums)."""
    for i in range(TAP_GROUP):
        row = dest[t0 + i]
        for p in range(width):
            row[ob + p] += acc[i * width + p]
