"""Depthwise convolutions (one filter per channel, ``groups == in_channels``, any channel
multiplier, stride, dilation and padding) on per-plane "phase grids".

A thread job takes one (sample, input channel) plane and copies it, with its zero
padding, into ``sh * sw`` phase planes: phase ``(ri, rj)`` holds the padded input's rows
``u * sh + ri`` and columns ``v * sw + rj``, each phase ``wq`` columns wide and flattened.
Filter tap ``(i, j)`` then reads phase ``((i*dh) % sh, (j*dw) % sw)`` at the constant
offset ``((i*dh) // sh) * wq + (j*dw) // sw`` from output position ``p = yy * wq + xx``:
every tap is a stride-1 pass over one long contiguous vector (``ho * wq`` outputs, the
columns past ``wo`` computed and dropped), which vectorises whatever the map's width; a
row-by-row loop does not at 7x7 or 14x14 (a 14-wide row is shorter than the 16 lanes of
AVX-512 unrolled four times: everything ran in the scalar remainder, 1-5 GFLOP/s).
The padding needs no ``np.pad`` of the whole tensor, and the plane stays in cache for all
taps, the epilogue (bias, residual, activation) and, for the gradients, both products.

Column indices are unsigned: Numba checks every signed index for wrap-around (a negative
index counts from the end), and that branch alone kept these loops scalar.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, uint64

from runtime.backends.cpu.conv_direct import tap_phases
from runtime.backends.cpu.elementwise import activate_inplace
from runtime.backends.cpu.lowlevel import stack_buffer, unit_stride
from runtime.config import PARALLEL


# Depthwise convs run channels-last (depthwise_rows_last), where a chain (conv_chain.py)
# or the layout plan (layout.py) can give them their input so at no cost, whenever their
# channels are whole 16-lane vectors: measured (two threads, the conv and its SiLU alone,
# batch 1 and 8) 1.0-1.1x the planes' speed at 16-32 channels of 56x56 and 1.2-2.5x on
# every shape of MobileNetV2 and EfficientNet-B0 (96-1152 channels, 112x112 to 7x7, 3x3
# and 5x5, strided or not). Other channel counts run half vectors or one value at a time
# (8 channels of 56x56: 2.7x slower than the planes, whose loops run along the rows),
# and go channels-last only where their map is strided or at most this wide (wider
# filters: in proportion narrower).
CHANNELS_LAST_MAX_WIDTH = 14

BAND_INPUT_BYTES = 1 << 18  # input rows per sub-band of depthwise_rows_last: in L2


def favours_channels_last(op) -> bool:
    """Whether a depthwise conv (dilation 1) runs faster channels-last than on planes."""
    kw = op.attrs["kernel_size"][1]
    return tuple(op.attrs["dilation"]) == (1, 1) and (
        op.out_shape[0] % 16 == 0 or max(op.attrs["stride"]) > 1
        or op.out_shape[2] * kw <= 3 * CHANNELS_LAST_MAX_WIDTH)


@njit(cache=True)
def phase_geometry(kh, kw, sh, sw, dh, dw, ho, wo):
    """Rows and width of each phase plane, and per tap (in (i, j) order) its phase and
    offset. The rows leave one spare row so that the dropped columns of the last output
    row read zeros rather than past the end."""
    hq = ((ho - 1) * sh + (kh - 1) * dh) // sh + 2
    wq = ((wo - 1) * sw + (kw - 1) * dw) // sw + 1
    phase, offset = tap_phases(kh, kw, sh, sw, dh, dw, wq)
    return hq, wq, phase, offset.astype(np.uint64)


@njit(cache=True)
def _to_phases(x, b, ch, sh, sw, pt, pl, hq, wq, out):
    """out (sh*sw, hq*wq) <- plane x[b, ch] padded by (pt, pl), split into phases; zeros
    wherever the padded input has no pixel."""
    out[:] = 0.0
    _rows_to_phases(x[b, ch], pt, sh, sw, pl, wq, out)


@njit(cache=True)
def _rows_to_phases(src, top, sh, sw, pl, wq, out):
    """Rows ``src`` (rows, w) of a plane into its phases ``out``, row r at padded row ``r +
    top`` and column c at padded column ``c + pl``; the rest of ``out`` is left as it is
    (zeros, for a padding). conv_chain.py fills phases from a band of rows this way."""
    h, w = src.shape[0], src.shape[1]
    if sh == 1 and sw == 1:
        for r in range(h):
            row = uint64((r + top) * wq + pl)
            line = unit_stride(src[r])
            for c in range(uint64(w)):
                out[0, row + c] = line[c]
        return
    usw = uint64(sw)
    for r in range(h):
        u, ri = (r + top) // sh, (r + top) % sh
        line = unit_stride(src[r])
        for rj in range(sw):
            # columns c = v * sw + rj - pl of the input, for v from first to last
            first = (pl - rj + sw - 1) // sw if pl > rj else 0
            last = min((w - 1 + pl - rj) // sw, wq - 1)
            if last < first:
                continue
            dest = out[ri * sw + rj]
            at, col = uint64(u * wq + first), uint64(first * sw + rj - pl)
            for k in range(uint64(last - first + 1)):
                dest[at + k] = line[col + k * usw]


@njit(cache=True)
def _from_phases(grid, gx, b, ch, sh, sw, pt, pl, hq, wq):
    """The adjoint of :func:`_to_phases`: gx[b, ch] <- the phases' values at the input's
    own pixels (the padding's are dropped; pixels that no output reads get zero)."""
    h, w = gx.shape[2], gx.shape[3]
    usw = uint64(sw)
    for r in range(h):
        u, ri = (r + pt) // sh, (r + pt) % sh
        if u >= hq:
            for c in range(w):
                gx[b, ch, r, c] = 0.0
            continue
        for c in range(max(0, wq * sw - pl), w):
            gx[b, ch, r, c] = 0.0
        for rj in range(sw):
            first = (pl - rj + sw - 1) // sw if pl > rj else 0
            last = min((w - 1 + pl - rj) // sw, wq - 1)
            if last < first:
                continue
            src = grid[ri * sw + rj]
            at, col = uint64(u * wq + first), uint64(first * sw + rj - pl)
            for k in range(uint64(last - first + 1)):
                gx[b, ch, r, col + k * usw] = src[at + k]


@njit(cache=True)
def _accumulate(acc, phases, w, o, phase, offset, length):
    """acc[p] += sum over taps t of w_t * phases[phase[t], p + offset[t]], three taps per
    pass over acc (fewer loads and stores of acc than one tap a pass)."""
    taps = phase.size
    t = 0
    while t + 3 <= taps:
        a, b, c = phases[phase[t]], phases[phase[t + 1]], phases[phase[t + 2]]
        oa, ob, oc = offset[t], offset[t + 1], offset[t + 2]
        wa, wb, wc = w[o, t], w[o, t + 1], w[o, t + 2]
        for p in range(uint64(length)):
            acc[p] += wa * a[p + oa] + wb * b[p + ob] + wc * c[p + oc]
        t += 3
    while t < taps:
        a, oa, wa = phases[phase[t]], offset[t], w[o, t]
        for p in range(uint64(length)):
            acc[p] += wa * a[p + oa]
        t += 1


@njit(cache=True, **PARALLEL)
def depthwise_forward_kernel(x, w, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo, mult, bias,
                             residual, code, slope):
    """y (N, C*mult, ho, wo): y[n, c*mult + m] = the padded plane x[n, c] correlated with
    filter w[c*mult + m] (w flattened to (C*mult, kh*kw)), then the epilogue: bias,
    residual (N, C*mult, ho, wo), activation ``code`` (empty arrays and a negative code:
    nothing)."""
    n, c = x.shape[0], x.shape[1]
    hq, wq, phase, offset = phase_geometry(kh, kw, sh, sw, dh, dw, ho, wo)
    length = ho * wq
    y = np.empty((n, c * mult, ho, wo), dtype=x.dtype)
    shift = bias if bias.size else np.zeros(c * mult, dtype=x.dtype)
    for job in prange(n * c):
        b, ch = job // c, job % c
        phases = np.empty((sh * sw, hq * wq), dtype=x.dtype)
        _to_phases(x, b, ch, sh, sw, pt, pl, hq, wq, phases)
        acc = np.empty(length, dtype=x.dtype)
        for m in range(mult):
            o = ch * mult + m
            acc[:] = 0.0
            _accumulate(acc, phases, w, o, phase, offset, length)
            add = shift[o]
            for yy in range(ho):
                row = uint64(yy * wq)
                for xx in range(uint64(wo)):
                    y[b, o, yy, xx] = acc[row + xx] + add
            if residual.shape[0]:
                for yy in range(ho):
                    for xx in range(uint64(wo)):
                        y[b, o, yy, xx] += residual[b, o, yy, xx]
            activate_inplace(y[b, o].reshape(ho * wo), code, slope)
    return y


@njit(cache=True, inline="always")
def _inside_tile(acc, e, wd, bias, c0, width, count, kh, kw, sh, sw, pt, pl, e_lo, e_hi, w, oy,
                 ox, out, o):
    """out[o + p, c0 + l] for ``count`` output positions ox + p of row oy and ``width``
    channels (both literals: acc (count * width) stays in registers), every position's
    horizontal taps inside the map: no test per tap, and each filter vector loaded once
    for all the positions."""
    uc = uint64(c0)
    for p in range(count):
        for l in range(width):
            acc[p * width + l] = bias[uc + uint64(l)] if bias.size else 0.0
    for i in range(kh):
        sy = oy * sh + i - pt
        if sy < e_lo or sy >= e_hi:
            continue  # a row of the padding
        base = (sy - e_lo) * w + ox * sw - pl
        for j in range(kw):
            tap, src = uint64(i * kw + j), uint64(base + j)
            for l in range(width):
                wv = wd[tap, uc + uint64(l)]
                for p in range(count):
                    acc[p * width + l] += wv * e[src + uint64(p * sw), uc + uint64(l)]
    for p in range(count):
        for l in range(width):
            out[uint64(o + p), uc + uint64(l)] = acc[p * width + l]


@njit(cache=True, inline="always")
def _edge_position(acc, e, wd, bias, c0, width, kh, kw, sh, sw, pt, pl, e_lo, e_hi, w, oy, ox,
                   out, o):
    """out[o, c0 + l] for output position (oy, ox) and ``width`` channels (a literal),
    the taps that fall in the padding skipped."""
    uc = uint64(c0)
    for l in range(width):
        acc[l] = bias[uc + uint64(l)] if bias.size else 0.0
    for i in range(kh):
        sy = oy * sh + i - pt
        if sy < e_lo or sy >= e_hi:
            continue
        base = (sy - e_lo) * w
        for j in range(kw):
            sx = ox * sw + j - pl
            if sx < 0 or sx >= w:
                continue
            tap, src = uint64(i * kw + j), uint64(base + sx)
            for l in range(width):
                acc[l] += wd[tap, uc + uint64(l)] * e[src, uc + uint64(l)]
    for l in range(width):
        out[uint64(o), uc + uint64(l)] = acc[l]


@njit(cache=True, inline="always")
def _row_blocks(tile, one, e, wd, bias, c0, width, count, kh, kw, sh, sw, pt, pl, e_lo, e_hi,
                w, s0, rows, wo, x_lo, x_hi, out):
    """Output rows s0.. of channels c0..c0+width: tiles of ``count`` positions where their
    taps lie inside the map (columns x_lo..x_hi), one position at a time elsewhere."""
    for r in range(rows):
        oy = s0 + r
        for ox in range(x_lo):
            _edge_position(one, e, wd, bias, c0, width, kh, kw, sh, sw, pt, pl, e_lo, e_hi, w,
                           oy, ox, out, r * wo + ox)
        ox = x_lo
        while ox + count <= x_hi:
            _inside_tile(tile, e, wd, bias, c0, width, count, kh, kw, sh, sw, pt, pl, e_lo,
                         e_hi, w, oy, ox, out, r * wo + ox)
            ox += count
        for ox in range(ox, wo):
            _edge_position(one, e, wd, bias, c0, width, kh, kw, sh, sw, pt, pl, e_lo, e_hi, w,
                           oy, ox, out, r * wo + ox)


@njit(cache=True, fastmath={"contract"})
def depthwise_rows_last(e, e_lo, e_hi, w, wd, bias, kh, kw, sh, sw, pt, pl, s0, rows, wo, out):
    """The depthwise conv (dilation 1) of output rows s0.. (``rows`` of them) channels-last,
    with its bias (empty: none): ``e`` holds input rows e_lo..e_hi as (rows*w, C), ``wd``
    the filters (kh*kw, C); ``out`` (rows*wo, C). conv_chain.py runs it on a band of
    expanded rows.

    Every tap is a multiply-add over a block of channels of a position: a loop as long as
    the channels whatever the map's size (the planes' loops run along rows: short at 7x7
    or 14x14, and strided maps go through phase copies). Blocks of 64 channels (then
    vectors of 16, a half vector, the rest), taken one after the other over sub-bands of
    rows whose input stays in L2, so that a block's inputs and filters stay close across
    the taps; the sums of 4 positions x 64 channels (8 x 16, 8 x 8) in registers over all
    the taps. Against a pass over all the channels per tap (the sums loaded and stored per
    tap, inputs and filters from L2), two threads, EfficientNet-B0's shapes at batch 1:
    1.2x (96 channels of 112x112, stride 2) to 2x (672 of 14x14, 5x5). ``fastmath``
    allows only contraction into fused multiply-adds."""
    c = out.shape[1]
    tile = stack_buffer(256, e.dtype)  # 4 positions x 64 channels
    mid = stack_buffer(128, e.dtype)  # 8 positions x 16 channels
    one = stack_buffer(64, e.dtype)
    wide, vec = c // 64 * 64, c // 16 * 16
    half = vec + 8 <= c
    # the output columns whose horizontal taps all lie inside the map
    x_lo = min(wo, (pl + sw - 1) // sw)
    x_hi = max(x_lo, min(wo, (w - kw + pl) // sw + 1))
    # sub-bands of output rows whose input rows stay in L2 while their channel blocks run
    per = max(1, (BAND_INPUT_BYTES // max(1, w * c * e.itemsize) - kh) // sh + 1)
    for r0 in range(0, rows, per):
        n = min(rows, r0 + per) - r0
        dest = out[r0 * wo:(r0 + n) * wo]
        for c0 in range(0, wide, 64):
            _row_blocks(tile, one, e, wd, bias, c0, 64, 4, kh, kw, sh, sw, pt, pl, e_lo, e_hi,
                        w, s0 + r0, n, wo, x_lo, x_hi, dest)
        for c0 in range(wide, vec, 16):
            _row_blocks(mid, one, e, wd, bias, c0, 16, 8, kh, kw, sh, sw, pt, pl, e_lo, e_hi,
                        w, s0 + r0, n, wo, x_lo, x_hi, dest)
        if half:  # half a vector
            _row_blocks(mid, one, e, wd, bias, vec, 8, 8, kh, kw, sh, sw, pt, pl, e_lo, e_hi,
                        w, s0 + r0, n, wo, x_lo, x_hi, dest)
        rest = vec + 8 * half
        if rest < c:  # the last channels, fewer than 8: a position at a time
            _row_blocks(one, one, e, wd, bias, rest, c - rest, 1, kh, kw, sh, sw, pt, pl, e_lo,
                        e_hi, w, s0 + r0, n, wo, x_lo, x_hi, dest)


@njit(cache=True, **PARALLEL)
def depthwise_last_kernel(x, wd, kh, kw, sh, sw, pt, pl, ho, wo, bias, code, slope, band):
    """A depthwise conv (one filter per channel, dilation 1) channels-last: x (N, H, W, C)
    -> y (N, ho, wo, C), ``wd`` (kh*kw, C), then bias and activation ``code``; jobs of
    ``band`` output rows of a sample."""
    n, h, w, c = x.shape
    y = np.empty((n, ho, wo, c), dtype=x.dtype)
    bands = (ho + band - 1) // band
    for job in prange(n * bands):
        b, k = job // bands, job % bands
        y0, y1 = k * band, min(ho, (k + 1) * band)
        if y0 >= y1:
            continue
        out = y[b].reshape(ho * wo, c)[y0 * wo:y1 * wo]
        depthwise_rows_last(x[b].reshape(h * w, c), 0, h, w, wd, bias, kh, kw, sh, sw, pt, pl,
                            y0, y1 - y0, wo, out)
        activate_inplace(out.reshape(out.size), code, slope)
    return y


@njit(cache=True, fastmath={"reassoc"})
def _dot(a, b, offset, length):
    """sum_p a[p] * b[p + offset]. Reassociation lets the sum vectorise (several partial
    sums, added at the end): no less accurate than the sequential sum."""
    s = a.dtype.type(0)
    for p in range(uint64(length)):
        s += a[p] * b[p + offset]
    return s


@njit(cache=True)
def _gy_grid(gy, b, o, wq, out):
    """out (ho * wq) <- gy[b, o] with rows wq wide, zeros in the dropped columns."""
    ho, wo = gy.shape[2], gy.shape[3]
    out[:] = 0.0
    for yy in range(ho):
        row = uint64(yy * wq)
        for xx in range(uint64(wo)):
            out[row + xx] = gy[b, o, yy, xx]


@njit(cache=True, **PARALLEL)
def depthwise_backward_kernel(x, w, gy, kh, kw, sh, sw, dh, dw, pt, pl, need_input):
    """The gradients of :func:`depthwise_forward_kernel` (without epilogue): the filters'
    (C*mult, kh*kw), per tap a dot product of gy's grid with the shifted phase, and,
    when ``need_input``, the input's (N, C, H, W): each tap adds w_t * gy's grid back onto
    its phase at its offset, then the phases go back to the input's pixels."""
    n, c = x.shape[0], x.shape[1]
    mult = gy.shape[1] // c
    ho, wo = gy.shape[2], gy.shape[3]
    hq, wq, phase, offset = phase_geometry(kh, kw, sh, sw, dh, dw, ho, wo)
    length = ho * wq
    taps = kh * kw
    gw = np.empty((n, c * mult, taps), dtype=x.dtype)
    gx = np.empty(x.shape if need_input else (0, 0, 0, 0), dtype=x.dtype)
    for job in prange(n * c):
        b, ch = job // c, job % c
        phases = np.empty((sh * sw, hq * wq), dtype=x.dtype)
        _to_phases(x, b, ch, sh, sw, pt, pl, hq, wq, phases)
        grid = np.empty(length, dtype=x.dtype)
        back = np.zeros((sh * sw, hq * wq) if need_input else (0, 0), dtype=x.dtype)
        for m in range(mult):
            o = ch * mult + m
            _gy_grid(gy, b, o, wq, grid)
            for t in range(taps):
                gw[b, o, t] = _dot(grid, phases[phase[t]], offset[t], length)
                if need_input:
                    dest, at, wt = back[phase[t]], offset[t], w[o, t]
                    for p in range(uint64(length)):
                        dest[p + at] += wt * grid[p]
        if need_input:
            _from_phases(back, gx, b, ch, sh, sw, pt, pl, hq, wq)
    return gw.sum(axis=0), gx
