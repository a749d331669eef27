"""Window pooling on the CPU: one pass per (sample, channel) plane. Max pooling remembers
where each maximum came from (max unpooling and the backward pass use the positions);
average pooling divides as PyTorch does."""

from __future__ import annotations

import numpy as np
from numba import njit, prange, uint64

from runtime.backends import lines
from runtime.backends.cpu.norm import lane_sums
from runtime.config import PARALLEL
from runtime.backends.reference import _window_pads


@njit(cache=True, inline="always")
def _split_phases(padded, span, phases):
    """phases[p, t] = padded[p + t * sw] (sw = the number of phases; -inf past ``span``):
    the columns a stride-``sw`` window reads at tap ``j`` are then phase ``j*dw % sw``
    from ``j*dw // sw`` on, contiguous."""
    sw, length = phases.shape
    for p in range(sw):
        for t in range(length):
            q = p + t * sw
            phases[p, t] = padded[q] if q < span else -np.inf


@njit(cache=True, **PARALLEL)
def max_pool_forward_kernel(x, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo):
    """The maxima and where each came from (row * w + column in its plane; -1 for a
    window wholly in the padding), for the backward pass and max unpooling. A maximum is
    separable: first each input row's maxima across every window's columns (read from
    the row's column phases: contiguous loads that vectorise; each row once, however many
    windows overlap it), then down each window's rows. Only a strictly greater value
    replaces a maximum, across and then down, so the first maximum in row-major order
    wins, as in PyTorch (ties after a ReLU are common). 1.4x the tap-by-tap kernel it
    replaced (ResNet's 3x3/2 pool at batch 8: 5.9 -> 4.2 ms)."""
    n, c, h, w = x.shape
    y = np.empty((n, c, ho, wo), dtype=x.dtype)
    idx = np.empty((n, c, ho, wo), dtype=np.int64)
    span = (wo - 1) * sw + (kw - 1) * dw + 1  # padded columns the windows cover
    c0, c1 = max(0, -pl), min(w, span - pl)  # input columns inside them
    r0, r1 = max(0, -pt), min(h, (ho - 1) * sh + (kh - 1) * dh + 1 - pt)  # rows read
    for job in prange(n * c):
        # every array indexed whole, unsigned (no view per row: two atomic reference
        # counts each, as much as the row's work)
        b, ch = uint64(job // c), uint64(job % c)
        padded = np.full(span, -np.inf, dtype=x.dtype)
        phases = np.empty((sw, (span + sw - 1) // sw), dtype=x.dtype)
        across = np.empty((h, wo), dtype=x.dtype)  # each row's maxima across the windows
        column = np.empty((h, wo), dtype=np.int64)  # and their columns
        first, to = uint64(c0), uint64(c0 + pl)
        for r in range(uint64(r0), uint64(r1)):
            for k in range(uint64(c1 - c0)):
                padded[to + k] = x[b, ch, r, first + k]
            _split_phases(padded, span, phases)
            for xx in range(uint64(wo)):
                across[r, xx] = -np.inf
                column[r, xx] = -1
            for j in range(kw):
                p, at = uint64(j * dw % sw), uint64(j * dw // sw)
                shift = j * dw - pl
                for xx in range(uint64(wo)):
                    v, best = phases[p, at + xx], across[r, xx]
                    take = v > best
                    across[r, xx] = v if take else best
                    column[r, xx] = np.int64(xx) * sw + shift if take else column[r, xx]
        for yy in range(uint64(ho)):
            for xx in range(uint64(wo)):
                y[b, ch, yy, xx] = -np.inf
                idx[b, ch, yy, xx] = -1
            for i in range(kh):
                r = np.int64(yy) * sh + i * dh - pt
                if r < 0 or r >= h:
                    continue
                ru = uint64(r)
                for xx in range(uint64(wo)):
                    v, best = across[ru, xx], y[b, ch, yy, xx]
                    take = v > best
                    y[b, ch, yy, xx] = v if take else best
                    idx[b, ch, yy, xx] = r * w + column[ru, xx] if take else idx[b, ch, yy, xx]
    return y, idx


@njit(cache=True, **PARALLEL)
def max_pool_phases_kernel(x, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo):
    """The maxima alone (no positions: an inference pass), window by window as two
    passes, since a maximum is separable: the maximum down each window's rows into one
    padded row (contiguous loads), that row split into its ``sw`` column phases
    (:func:`_split_phases`), and the maximum across the window's columns read from the
    phases. Both loops vectorise; strided loads did not (2.5-3x faster than the row
    kernel). Only a strictly greater value replaces a maximum, as there."""
    n, c, h, w = x.shape
    y = np.empty((n, c, ho, wo), dtype=x.dtype)
    span = (wo - 1) * sw + (kw - 1) * dw + 1  # padded columns the windows cover
    c0, c1 = max(0, -pl), min(w, span - pl)  # input columns inside them
    for job in prange(n * c):
        # every array indexed whole, unsigned: a view per row costs two atomic reference
        # counts (ResNet-18's 3x3/2 pool at batch 8: 1.57 -> 1.40 ms; training's kernel
        # above 3.85 -> 3.49)
        b, ch = uint64(job // c), uint64(job % c)
        down = np.empty(span, dtype=x.dtype)
        phases = np.empty((sw, (span + sw - 1) // sw), dtype=x.dtype)
        for yy in range(uint64(ho)):
            down[:] = -np.inf
            for i in range(kh):
                sy = np.int64(yy) * sh + i * dh - pt
                if sy < 0 or sy >= h:
                    continue
                row, first, to = uint64(sy), uint64(c0), uint64(c0 + pl)
                for k in range(uint64(c1 - c0)):
                    v, d = x[b, ch, row, first + k], down[to + k]
                    down[to + k] = v if v > d else d
            _split_phases(down, span, phases)
            for xx in range(uint64(wo)):
                y[b, ch, yy, xx] = -np.inf
            for j in range(kw):
                p, at = uint64(j * dw % sw), uint64(j * dw // sw)
                for xx in range(uint64(wo)):
                    v, o = phases[p, at + xx], y[b, ch, yy, xx]
                    y[b, ch, yy, xx] = v if v > o else o
    return y


@njit(cache=True, **PARALLEL)
def scatter_kernel(values, idx, h, w, accumulate):
    """out (N, C, h, w) with values[b, c, i, j] placed at position idx[b, c, i, j] (row * w
    + column; -1: nowhere) of its plane, added up where positions repeat (the gradient of
    a max pool, whose overlapping windows can pick one input twice) or written over (max
    unpooling, as PyTorch does)."""
    n, c, ho, wo = values.shape
    out = np.empty((n, c, h * w), dtype=values.dtype)
    for job in prange(n * c):
        b = job // c
        ch = job % c
        out[b, ch] = 0.0  # each plane zeroed by its thread, not the whole map by one
        for yy in range(ho):
            for xx in range(wo):
                at = idx[b, ch, yy, xx]
                if at >= 0:
                    if accumulate:
                        out[b, ch, at] += values[b, ch, yy, xx]
                    else:
                        out[b, ch, at] = values[b, ch, yy, xx]
    return out.reshape(n, c, h, w)


def max_pool_forward(op, xs, p, ctx):
    (x,), a = xs, op.attrs
    ho, wo = op.out_shape[1:]
    top, _, left, _ = _window_pads(a, x.shape[2:], (ho, wo))
    (kh, kw), (sh, sw), (dh, dw) = a["kernel_size"], a["stride"], a["dilation"]
    x = np.ascontiguousarray(x)
    if not (ctx.keep or op.output in ctx.positions):
        return max_pool_phases_kernel(x, kh, kw, sh, sw, dh, dw, top, left, ho, wo)
    y, ctx.indices[op.output] = max_pool_forward_kernel(x, kh, kw, sh, sw, dh, dw, top, left,
                                                        ho, wo)
    return y


def max_pool_backward(op, xs, y, gy, p, ctx):
    x = xs[0]
    return [scatter_kernel(np.ascontiguousarray(gy), ctx.indices[op.output], x.shape[2],
                           x.shape[3], True)], {}


@njit(cache=True)
def avg_window(yy, xx, h, w, kh, kw, sh, sw, pt, pl, count_pad):
    """Rows [a0, a1) and columns [b0, b1) of output (yy, xx)'s window inside the input, and
    its divisor: PyTorch counts the declared padding (count_pad) but never the cells
    ceil_mode adds past it."""
    h0, w0 = yy * sh - pt, xx * sw - pl
    h1, w1 = min(h0 + kh, h + pt), min(w0 + kw, w + pl)
    a0, a1, b0, b1 = max(h0, 0), min(h1, h), max(w0, 0), min(w1, w)
    divisor = (h1 - h0) * (w1 - w0) if count_pad else (a1 - a0) * (b1 - b0)
    return a0, a1, b0, b1, divisor


@njit(cache=True, **PARALLEL)
def avg_pool_forward_kernel(x, kh, kw, sh, sw, pt, pl, ho, wo, count_pad):
    """PyTorch's avg_pool2d (windows and divisors from avg_window)."""
    n, c, h, w = x.shape
    y = np.empty((n, c, ho, wo), dtype=x.dtype)
    for job in prange(n * c):
        b = job // c
        ch = job % c
        for yy in range(ho):
            for xx in range(wo):
                a0, a1, b0, b1, divisor = avg_window(yy, xx, h, w, kh, kw, sh, sw, pt, pl,
                                                     count_pad)
                acc = 0.0
                for i in range(a0, a1):
                    for j in range(b0, b1):
                        acc += x[b, ch, i, j]
                y[b, ch, yy, xx] = acc / divisor
    return y


@njit(cache=True, **PARALLEL)
def avg_pool_backward_kernel(gy, h, w, kh, kw, sh, sw, pt, pl, count_pad):
    n, c, ho, wo = gy.shape
    gx = np.empty((n, c, h, w), dtype=gy.dtype)
    for job in prange(n * c):
        b = job // c
        ch = job % c
        gx[b, ch] = 0.0  # each plane zeroed by its thread
        for yy in range(ho):
            for xx in range(wo):
                a0, a1, b0, b1, divisor = avg_window(yy, xx, h, w, kh, kw, sh, sw, pt, pl,
                                                     count_pad)
                share = gy[b, ch, yy, xx] / divisor
                for i in range(a0, a1):
                    for j in range(b0, b1):
                        gx[b, ch, i, j] += share
    return gx


def _inside(h, w, kh, kw, sh, sw, pt, pl, ho, wo) -> bool:
    """Whether every window of an average pool lies inside the map (no padding, none
    past the edge): the divisor is kh * kw throughout."""
    return pt == 0 and pl == 0 and (ho - 1) * sh + kh <= h and (wo - 1) * sw + kw <= w


@njit(cache=True, **PARALLEL)
def avg_pool_inside_forward_kernel(x, kh, kw, sh, sw, ho, wo):
    """avg_pool2d where every window lies inside the map (_inside): per output row, the
    window's kh input rows summed into one row (contiguous loops, vectorised), then each
    window's kw columns of that row, divided by kh * kw. LeNet-5's 2x2/2 pools at batch
    256: 1.0 ms a pass with avg_pool_forward_kernel's window per output."""
    n, c, h, w = x.shape
    y = np.empty((n, c, ho, wo), dtype=x.dtype)
    divisor = kh * kw
    span = uint64((wo - 1) * sw + kw)  # the columns the windows read
    for job in prange(n * c):
        plane = x[job // c, job % c]
        out = y[job // c, job % c]
        row = np.empty(span, dtype=x.dtype)
        for yy in range(ho):
            first = plane[yy * sh]
            for q in range(span):
                row[q] = first[q]
            for i in range(1, kh):
                src = plane[yy * sh + i]
                for q in range(span):
                    row[q] += src[q]
            dest = out[yy]
            for xx in range(wo):
                acc = 0.0
                for j in range(kw):
                    acc += row[xx * sw + j]
                dest[xx] = acc / divisor
    return y


@njit(cache=True, **PARALLEL)
def avg_pool_tiles_backward_kernel(gy, h, w, kh, kw):
    """The input gradient of an average pool whose windows tile the map (stride = kernel,
    no padding, inside it): each window's share of its output's gradient written once
    (no zeroed map added into), zeros where no window reads."""
    n, c, ho, wo = gy.shape
    gx = np.empty((n, c, h, w), dtype=gy.dtype)
    divisor = kh * kw
    for job in prange(n * c):
        g = gy[job // c, job % c]
        plane = gx[job // c, job % c]
        for i in range(h):
            dest = plane[i]
            if i < ho * kh:
                src = g[i // kh]
                for xx in range(wo):
                    share = src[xx] / divisor
                    for j in range(kw):
                        dest[xx * kw + j] = share
                for q in range(wo * kw, w):
                    dest[q] = 0.0
            else:
                for q in range(w):
                    dest[q] = 0.0
    return gx


def _avg_geometry(op):
    a = op.attrs
    (kh, kw), (sh, sw), (pt, pl) = a["kernel_size"], a["stride"], a["padding"]
    return kh, kw, sh, sw, pt, pl


def avg_pool_forward(op, xs, p, ctx):
    kh, kw, sh, sw, pt, pl = _avg_geometry(op)
    ho, wo = op.out_shape[1:]
    x = np.ascontiguousarray(xs[0])
    if _inside(x.shape[2], x.shape[3], kh, kw, sh, sw, pt, pl, ho, wo):
        return avg_pool_inside_forward_kernel(x, kh, kw, sh, sw, ho, wo)
    return avg_pool_forward_kernel(x, kh, kw, sh, sw, pt, pl, ho, wo,
                                   op.attrs["count_include_pad"])


def avg_pool_backward(op, xs, y, gy, p, ctx):
    kh, kw, sh, sw, pt, pl = _avg_geometry(op)
    h, w = xs[0].shape[2:]
    gy = np.ascontiguousarray(gy)
    if (kh, kw) == (sh, sw) and _inside(h, w, kh, kw, sh, sw, pt, pl, *gy.shape[2:]):
        return [avg_pool_tiles_backward_kernel(gy, h, w, kh, kw)], {}
    return [avg_pool_backward_kernel(gy, h, w, kh, kw, sh, sw, pt, pl,
                                     op.attrs["count_include_pad"])], {}


# ----------------------------------------------------------------- adaptive and global
@njit(cache=True, **PARALLEL)
def adaptive_pool_forward_kernel(x, rows, cols, is_max):
    """Pooling over bins: output (i, j) reduces x[rows[i, 0]:rows[i, 1], cols[j, 0]:cols[j,
    1]] (a global pool is one bin). Max pooling also returns each maximum's position
    (row * W + column, the first maximum in row-major order)."""
    n, c, h, w = x.shape
    ho, wo = rows.shape[0], cols.shape[0]
    y = np.empty((n, c, ho, wo), dtype=x.dtype)
    idx = np.zeros((n, c, ho, wo), dtype=np.int64)
    for job in prange(n * c):
        b = job // c
        ch = job % c
        for i in range(ho):
            for j in range(wo):
                if is_max:
                    best = -np.inf
                    at = rows[i, 0] * w + cols[j, 0]
                    for r in range(rows[i, 0], rows[i, 1]):
                        for q in range(cols[j, 0], cols[j, 1]):
                            v = x[b, ch, r, q]
                            if v > best or np.isnan(v):
                                best = v
                                at = r * w + q
                                if np.isnan(v):
                                    break
                    y[b, ch, i, j] = best
                    idx[b, ch, i, j] = at
                else:
                    total = 0.0
                    for r in range(rows[i, 0], rows[i, 1]):
                        for q in range(cols[j, 0], cols[j, 1]):
                            total += x[b, ch, r, q]
                    y[b, ch, i, j] = total / ((rows[i, 1] - rows[i, 0]) * (cols[j, 1] - cols[j, 0]))
    return y, idx


@njit(cache=True, **PARALLEL)
def adaptive_avg_backward_kernel(gy, rows, cols, h, w):
    n, c, ho, wo = gy.shape
    gx = np.zeros((n, c, h, w), dtype=gy.dtype)
    for job in prange(n * c):  # each thread owns one (sample, channel) plane
        b = job // c
        ch = job % c
        for i in range(ho):
            for j in range(wo):
                share = gy[b, ch, i, j] / ((rows[i, 1] - rows[i, 0]) * (cols[j, 1] - cols[j, 0]))
                for r in range(rows[i, 0], rows[i, 1]):
                    for q in range(cols[j, 0], cols[j, 1]):
                        gx[b, ch, r, q] += share
    return gx


def _bin_arrays(op, x):
    from runtime.backends.reference import _bins

    ho, wo = op.out_shape[1:]
    return (np.array(_bins(x.shape[2], ho), dtype=np.int64),
            np.array(_bins(x.shape[3], wo), dtype=np.int64))


@njit(cache=True, **PARALLEL)
def global_avg_kernel(x):
    """The mean of each (sample, channel) plane of x (N, C, M): sums in vector lanes,
    shifted by the plane's first value, totals in float64 (norm.lane_sums; the bins'
    loop summed one element at a time)."""
    n, c, m = x.shape
    y = np.empty((n, c), dtype=x.dtype)
    none = np.empty(0, dtype=x.dtype)
    for job in prange(n * c):
        b = job // c
        ch = job % c
        shift = x[b, ch, 0]
        total, _ = lane_sums(x[b, ch], shift, none)
        y[b, ch] = shift + total / m
    return y


@njit(cache=True, **PARALLEL)
def global_avg_last_kernel(x, block):
    """The mean over the positions of x (N, M, C), channels-last, per (sample, channel):
    float64 sums, ``block`` channels a job, each position's channels one vector loop."""
    n, m, c = x.shape
    y = np.empty((n, c), dtype=x.dtype)
    blocks = (c + block - 1) // block
    for job in prange(n * blocks):
        b, q0 = job // blocks, (job % blocks) * block
        q1 = min(c, q0 + block)
        acc = np.zeros(q1 - q0, dtype=np.float64)
        for p in range(m):
            row = x[b, p, q0:q1]
            for q in range(uint64(q1 - q0)):
                acc[q] += row[q]
        for q in range(q1 - q0):
            y[b, q0 + q] = acc[q] / m
    return y


def adaptive_pool_forward(op, xs, p, ctx):
    x = np.ascontiguousarray(xs[0])
    if "max" not in op.kind and tuple(op.out_shape[1:]) == (1, 1):  # a global average
        if op.inputs[0] in ctx.channels_last:  # (N, H, W, C)
            n, c = x.shape[0], x.shape[3]
            return global_avg_last_kernel(x.reshape(n, -1, c), 64).reshape(n, c, 1, 1)
        n, c = x.shape[:2]
        return global_avg_kernel(x.reshape(n, c, -1)).reshape(n, c, 1, 1)
    rows, cols = _bin_arrays(op, x)
    y, idx = adaptive_pool_forward_kernel(x, rows, cols, "max" in op.kind)
    if "max" in op.kind:
        ctx.saved[op.output] = idx
    return y


def adaptive_pool_backward(op, xs, y, gy, p, ctx):
    x, gy = xs[0], np.ascontiguousarray(gy)
    if "max" in op.kind:
        return [scatter_kernel(gy, ctx.saved[op.output], x.shape[2], x.shape[3], True)], {}
    rows, cols = _bin_arrays(op, x)
    return [adaptive_avg_backward_kernel(gy, rows, cols, x.shape[2], x.shape[3])], {}


# ----------------------------------------------------------------------------- unpooling
@njit(cache=True, **PARALLEL)
def unpool_forward_kernel(x, kh, kw, nearest):
    """Nearest: every value fills its kh x kw block; bed of nails: it goes to the block's
    top-left corner, zeros elsewhere."""
    n, c, h, w = x.shape
    y = np.zeros((n, c, h * kh, w * kw), dtype=x.dtype)
    for job in prange(n * c):
        b = job // c
        ch = job % c
        for r in range(h):
            for q in range(w):
                v = x[b, ch, r, q]
                if nearest:
                    for i in range(kh):
                        for j in range(kw):
                            y[b, ch, r * kh + i, q * kw + j] = v
                else:
                    y[b, ch, r * kh, q * kw] = v
    return y


_unpool_grad_cell = njit(cache=True, inline="always")(lines.unpool_grad_cell)


@njit(cache=True, **PARALLEL)
def unpool_backward_kernel(gy, kh, kw, nearest):
    n, c, ho, wo = gy.shape
    h, w = ho // kh, wo // kw
    gx = np.empty((n, c, h, w), dtype=gy.dtype)
    for job in prange(n * c):
        b = job // c
        ch = job % c
        for r in range(h):
            for q in range(w):
                _unpool_grad_cell(gy, gx, b, ch, r, q, kh, kw, nearest)
    return gx


def unpool_forward(op, xs, p, ctx):
    kh, kw = op.attrs["kernel_size"]
    return unpool_forward_kernel(np.ascontiguousarray(xs[0]), kh, kw,
                                 op.attrs["mode"] == "nearest")


def unpool_backward(op, xs, y, gy, p, ctx):
    kh, kw = op.attrs["kernel_size"]
    return [unpool_backward_kernel(np.ascontiguousarray(gy), kh, kw,
                                   op.attrs["mode"] == "nearest")], {}


@njit(cache=True, **PARALLEL)
def max_unpool_backward_kernel(gy, idx):
    """Each value's gradient read back from the position it was put at."""
    n, c, h, w = idx.shape
    flat = gy.reshape(n, c, -1)
    gx = np.zeros((n, c, h, w), dtype=gy.dtype)
    for job in prange(n * c):
        b = job // c
        ch = job % c
        for r in range(h):
            for q in range(w):
                at = idx[b, ch, r, q]
                if at >= 0:
                    gx[b, ch, r, q] = flat[b, ch, at]
    return gx


def _unpool_positions(op, ctx, x):
    return np.ascontiguousarray(ctx.indices[op.inputs[1]].reshape(x.shape))


def max_unpool_forward(op, xs, p, ctx):
    x = np.ascontiguousarray(xs[0])
    ho, wo = op.attrs["out_size"]
    return scatter_kernel(x, _unpool_positions(op, ctx, x), ho, wo, False)


def max_unpool_backward(op, xs, y, gy, p, ctx):
    x = xs[0]
    gx = max_unpool_backward_kernel(np.ascontiguousarray(gy), _unpool_positions(op, ctx, x))
    return [gx] + [None] * (len(xs) - 1), {}
