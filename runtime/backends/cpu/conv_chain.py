"""Inverted-residual chains in one pass: a 1x1 expansion, a depthwise conv and a 1x1
projection (MobileNetV2's and EfficientNet's blocks) computed band by band of output rows,
so that the expanded maps never leave the cache.

Run one at a time, the three convs each write their whole output to memory and the next
reads it back: MobileNetV2's second block at batch 1 writes and reads a 144-channel map of
112x112 (7.2 MB) twice, past this machine's 1 MB of L2 per core. Here a thread job takes
one sample's band of output rows and walks it in sub-bands of a few rows:

1. the expansion's GEMM ``E = W_e @ x[rows]`` for the input rows the sub-band's
   depthwise reads that the last sub-band did not (the rows both read stay in ``E``:
   moved to its front, never computed twice), then its epilogue (bias, activation);
2. the depthwise conv of those rows, then its epilogue, into ``D``;
3. the projection's GEMM ``W_p @ D`` straight into the output rows, then its epilogue
   (bias, the block's residual, activation).

``E`` and ``D`` are channels-last where the chain has an expansion and its map is strided
or small (:func:`channels_last`): the expansion's GEMM writes ``E`` transposed and the
projection's reads ``D`` transposed at no cost, and each depthwise tap is a multiply-add
along the channels of a position, a loop as long as the channels whatever the map (what
the engines' blocked layouts buy). Otherwise they are planes: per channel, the rows of
``E`` copied with their zero padding into phase planes and the taps summed over them
(``conv_depthwise.py``'s phase grids: every tap a stride-1 pass over one long vector),
which wins on wide maps with few channels.

A chain may lack the expansion (MobileNetV2's first block: the depthwise reads the input)
or the projection (EfficientNet's: squeeze-excitation reads the depthwise's output; the
chain then writes that output). Inference only: a training pass keeps every value for
backward, and runs the ops one by one.

:func:`find_chains` finds them in a program where they pay (:func:`worth`, from
measurements: they take less memory wherever they run, and no more time only where the
samples alone keep the threads busy and the block has its projection); the
CPU backend's ``chains`` hands them to ``Model.predict``, which runs each chain at its
first op's step and skips the others.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from numba import njit, prange, uint64

from runtime.backends.cpu.blas import gemm
from runtime.backends.cpu.conv import _flat_filters, last_filters
from runtime.backends.cpu.conv_depthwise import (_accumulate, _rows_to_phases, depthwise_rows_last,
                                                 favours_channels_last, phase_geometry)
from runtime.backends.cpu import conv_pointwise
from runtime.backends.cpu.conv_pointwise import (_finish_rows, finish_block, pack_last,
                                                 pointwise_last_tiles)
from runtime.backends.cpu.elementwise import activate_inplace, cpu_activation_code, numpy_forward
from runtime.backends.activations import NO_ACTIVATION
from runtime.backends.epilogue import activation_of
from runtime.config import PARALLEL

@njit(cache=True, **PARALLEL)
def chain_kernel(x, we, wet, be, code_e, slope_e, wd, bd, kh, kw, sh, sw, pt, pl, ho, wo,
                 code_d, slope_d, wp, bp, residual, code_p, slope_p, chunks, band,
                 channels_last):
    """y = project(depthwise(expand(x))) for x (N, C, H, W): ``we`` (Ce, C) the expansion
    (shape (0, 0): none, Ce = C), ``wet`` the same packed (C, Ce) for
    conv_pointwise.pointwise_last_tiles (the channels-last expansion), ``wd`` the depthwise
    filters, (Ce, kh*kw) or, with
    ``channels_last``, (kh*kw, Ce) (stride (sh, sw), padding top ``pt``, left ``pl``,
    output ho x wo, dilation 1), ``wp`` (Co, Ce) the projection (shape (0, 0): none, the
    depthwise's output is the result); each stage with its bias (empty: none) and
    activation code; ``residual`` (N, Co, ho*wo) added before the projection's activation
    (shape (0, 0, 0): none). Jobs: ``chunks`` bands of output rows per sample, each walked
    ``band`` rows at a time (see the module doc). The expanded and depthwise rows are
    planes, or channels-last (``channels_last``, only with an expansion)."""
    n, c, h, w = x.shape
    expand = we.shape[0] > 0
    ce = we.shape[0] if expand else c
    project = wp.shape[0] > 0
    co = wp.shape[0] if project else ce
    dtype = x.dtype
    hq, wq, phase, offset = phase_geometry(kh, kw, sh, sw, 1, 1, band, wo)
    erows = min(h, (band - 1) * sh + kh)  # input rows a sub-band reads, at most
    xf = x.reshape(n, c, h * w)
    no_residual = np.empty((0, 0, 0), dtype=dtype)
    y = np.empty((n, co, ho * wo), dtype=dtype)
    shift_d = bd if bd.size else np.zeros(ce, dtype=dtype)
    per = (ho + chunks - 1) // chunks
    for job in prange(n * chunks):
        b, k = job // chunks, job % chunks
        y0, y1 = k * per, min(ho, (k + 1) * per)
        if y0 >= y1:
            continue
        if not expand:
            e = np.empty((0, 0), dtype=dtype)
        elif channels_last:
            e = np.empty((erows * w, ce), dtype=dtype)
        else:
            e = np.empty((ce, erows * w), dtype=dtype)
        last = channels_last and expand
        d = np.empty((band * wo, ce) if last else (ce, band * wo), dtype=dtype)
        phases = np.empty((0 if last else sh * sw, hq * wq), dtype=dtype)
        acc = np.empty(0 if last else band * wq, dtype=dtype)
        e_lo, e_hi = 0, 0  # the input rows e holds
        for s0 in range(y0, y1, band):
            s1 = min(y1, s0 + band)
            rows = s1 - s0
            r_lo = max(0, s0 * sh - pt)
            r_hi = min(h, (s1 - 1) * sh - pt + kh)
            if expand and r_hi > r_lo:
                keep = 0
                if e_lo <= r_lo < e_hi:  # rows the last sub-band expanded: to the front
                    keep = e_hi - r_lo
                    moved = (r_lo - e_lo) * w
                    if moved and last:
                        flat = e.reshape(e.size)
                        for i in range(uint64(keep * w * ce)):
                            flat[i] = flat[i + moved * ce]
                    elif moved:
                        for ch in range(ce):
                            row = e[ch]
                            for i in range(uint64(keep * w)):
                                row[i] = row[i + moved]
                first = r_lo + keep
                if r_hi > first:
                    # the expansion of input rows first..r_hi, then its epilogue: the same
                    # GEMM transposed where the rows are channels-last (no copy)
                    span = slice(keep * w, (r_hi - r_lo) * w)
                    rows_x = xf[b, :, first * w:r_hi * w]
                    if last and wet.shape[0]:  # register tiles (conv_pointwise)
                        pointwise_last_tiles(xf[b], wet, e, first * w, r_hi * w, 0, ce,
                                             keep * w)
                        _finish_rows(e[span], 0, ce, be, code_e, slope_e)
                    elif last:
                        gemm(rows_x, we, e[span], 0.0, True, True)
                        _finish_rows(e[span], 0, ce, be, code_e, slope_e)
                    else:
                        gemm(we, rows_x, e[:, span], 0.0, False, False)
                        finish_block(e[:, span], b, 0, 0, 0, be, no_residual, code_e, slope_e)
                e_lo, e_hi = r_lo, r_hi
            if last:
                dest = d[:rows * wo]
                depthwise_rows_last(e, e_lo, e_hi, w, wd, bd, kh, kw, sh, sw, pt, pl, s0, rows,
                                wo, dest)
                activate_inplace(dest.reshape(dest.size), code_d, slope_d)
                if project:
                    block = y[b, :, s0 * wo:s1 * wo]
                    gemm(wp, dest, block, 0.0, False, True)
                    finish_block(block, b, 0, s0 * wo, s1 * wo, bp, residual, code_p,
                                 slope_p)
                else:
                    for ch in range(ce):
                        out = y[b, ch]
                        for p in range(rows * wo):
                            out[s0 * wo + p] = dest[p, ch]
                continue
            dest = d[:, :rows * wo] if project else y[b, :, s0 * wo:s1 * wo]
            length = rows * wq
            top = r_lo + pt - s0 * sh  # the padded row, from the sub-band's first, of r_lo
            for ch in range(ce):
                phases[:] = 0.0
                if r_hi > r_lo:
                    if expand:
                        src = e[ch, :(r_hi - r_lo) * w].reshape((r_hi - r_lo, w))
                    else:
                        src = x[b, ch, r_lo:r_hi]
                    _rows_to_phases(src, top, sh, sw, pl, wq, phases)
                acc[:length] = 0.0
                _accumulate(acc, phases, wd, ch, phase, offset, length)
                out = dest[ch]
                add = shift_d[ch]
                for r in range(rows):
                    at, to = uint64(r * wq), uint64(r * wo)
                    for i in range(uint64(wo)):
                        out[to + i] = acc[at + i] + add
                activate_inplace(out, code_d, slope_d)
            if project:
                block = y[b, :, s0 * wo:s1 * wo]
                gemm(wp, dest, block, 0.0, False, False)
                finish_block(block, b, 0, s0 * wo, s1 * wo, bp, residual, code_p, slope_p)
    return y.reshape(n, co, ho, wo)


@dataclass(frozen=True)
class Chain:
    """Ops run as one: ``expand`` (or None), ``depthwise``, ``project`` (or None), at the
    step of the first; ``name`` is that op's (a profile times the chain under it)."""

    expand: object
    depthwise: object
    project: object

    @property
    def ops(self) -> tuple:
        return tuple(op for op in (self.expand, self.depthwise, self.project) if op is not None)

    @property
    def name(self) -> str:
        return self.ops[0].name

    @property
    def inputs(self) -> tuple[str, ...]:
        """The values the chain reads: its input, then the projection's residual."""
        return (self.ops[0].inputs[0],) + tuple(self.project.inputs[1:] if self.project else ())

    @property
    def output(self) -> str:
        return self.ops[-1].output

    def describe(self) -> str:
        return " + ".join(op.name for op in self.ops)


def _one_by_one(op) -> bool:
    """An unpadded, unstrided, ungrouped 1x1 conv."""
    a = op.attrs
    return op.kind == "conv2d" and tuple(a["kernel_size"]) == (1, 1) \
        and a["pads"] == ((0, 0), (0, 0)) and tuple(a["stride"]) == (1, 1) \
        and a["groups"] == 1


def _activation_fits(op, dtype) -> bool:
    act = activation_of(op)
    return act is None or not numpy_forward(act[0], dtype)


def _plain_depthwise(op) -> bool:
    """A depthwise conv with one filter per channel, dilation 1 and one input."""
    a = op.attrs
    c = op.in_shapes[0][0]
    return op.kind == "conv2d" and a["groups"] == c and op.out_shape[0] == c \
        and tuple(a["dilation"]) == (1, 1) and len(op.inputs) == 1


def find_chains(program, batch: int, dtype, choose=None, threads: int | None = None
                ) -> list[Chain]:
    """The inverted-residual chains of a program (see the module doc) that pay
    (:func:`worth`) in inference at a batch size on ``threads`` threads (Numba's): a
    depthwise conv with the 1x1 conv that alone feeds it and the 1x1 conv that alone
    reads it, either of those possibly missing, never both; no op in two chains (in
    MobileNetV1's depthwise, pointwise, depthwise, pointwise, ... each depthwise conv
    takes the pointwise conv after it). ``choose(op, batch, train)``
    (conv.choose) must pick the ops' own algorithms, pointwise and depthwise (a layer
    that ``archc tune`` measured faster another way stays on its own)."""
    threads = threads or numba.get_num_threads()
    itemsize = np.dtype(dtype).itemsize
    producer = {op.output: step for step, op in enumerate(program.ops)}
    readers: dict[str, list[int]] = {}
    for step, op in enumerate(program.ops):
        for name in op.inputs:
            readers.setdefault(name, []).append(step)
    outputs = set(program.outputs.values())

    def algorithm(op):
        return choose(op, batch, False)[0] if choose else None

    def sole_reader(name):
        steps = readers.get(name, [])
        return steps[0] if len(steps) == 1 and name not in outputs else None

    chains = []
    taken: set[str] = set()  # ops in a chain already: each op runs once
    for step, op in enumerate(program.ops):
        if not _plain_depthwise(op) or not _activation_fits(op, dtype) \
                or algorithm(op) not in (None, "depthwise"):
            continue
        expand = None
        source = producer.get(op.inputs[0])
        if source is not None and program.ops[source].name not in taken:
            cand = program.ops[source]
            if _one_by_one(cand) and len(cand.inputs) == 1 and _activation_fits(cand, dtype) \
                    and sole_reader(cand.output) == step \
                    and algorithm(cand) in (None, "pointwise"):
                expand = cand
        project = None
        user = sole_reader(op.output)
        if user is not None:
            cand = program.ops[user]
            start = source if expand is not None else step
            residual_ready = all(producer.get(name, -1) < start for name in cand.inputs[1:])
            if _one_by_one(cand) and cand.inputs[0] == op.output and residual_ready \
                    and _activation_fits(cand, dtype) \
                    and algorithm(cand) in (None, "pointwise"):
                project = cand
        chain = Chain(expand, op, project)
        if (expand is not None or project is not None) and worth(chain, batch, itemsize,
                                                                 threads):
            chains.append(chain)
            taken.update(member.name for member in chain.ops)
    return chains


# Where a chain pays, measured (bench/bench_chains.py, 2 threads, the whole network at
# -O2 against its ops one by one). With the expanded rows channels-last (see
# channels_last), the depthwise taps run along the channels, 1.3-6.7x faster than the
# planes on strided and small maps: MobileNetV2 0.87-0.93x the time of its ops at batch 1
# and 0.78-0.89x at batch 8 (its ops one by one with the layout plan, layout.py, or
# without); EfficientNet-B0's chains (no projection: squeeze-excitation reads the
# depthwise output, written back as planes) 0.92x its ops on planes at batch 8 but 1.07x
# its ops with the layout plan, which keeps the same maps channels-last: left to the
# plan. On planes (a chain without an expansion, or 56x56 and wider maps), 0.90-1.02x at
# batch 8, 0.96-1.09x at batch 1: the kernels' own speed bounds those, not the memory
# between them; they run where they have their projection, the samples alone keep every
# thread busy, and the batch's maps they keep from memory outgrow the cache (under about
# 1 MB they stay in L2 anyway).
CHAIN_MIN_BYTES = 1 << 20
# ... and a channels-last chain whose rows are split among the threads (fewer samples
# than threads) only where its output map has this many positions: on a 7x7 map each
# job's GEMMs are then three or four rows (MobileNetV2 at batch 1, its four 7x7 blocks
# one op at a time, the 1x1 convs' channels split among the threads instead: 7.45
# against 7.69 ms, interleaved; at 14x14 the chains stay faster, 7.74 without them)
CHAIN_SPLIT_POSITIONS = 64


def _geometry(chain: Chain):
    dw = chain.depthwise
    (kh, kw), (sh, sw) = dw.attrs["kernel_size"], dw.attrs["stride"]
    c, h, w = dw.in_shapes[0]
    ho, wo = dw.out_shape[1:]
    return kh, sh, c, h, w, ho, wo


def _chunks(batch: int, ho: int, threads: int) -> int:
    """Jobs per sample: one where the samples keep every thread busy."""
    return 1 if batch >= threads else min(ho, -(-threads // batch))


def worth(chain: Chain, batch: int, itemsize: int, threads: int) -> bool:
    """Whether running the chain as one kernel pays at this batch size (see above)."""
    if channels_last(chain):  # without a projection, the layout plan does better
        _, _, _, _, _, ho, wo = _geometry(chain)
        split = batch < threads  # each sample's rows dealt out among the threads
        return chain.project is not None and not (split and ho * wo < CHAIN_SPLIT_POSITIONS)
    kh, sh, c, h, w, ho, wo = _geometry(chain)
    if chain.project is None or batch < threads:
        return False
    kept = (c * h * w if chain.expand is not None else 0) + c * ho * wo
    return batch * kept * itemsize >= CHAIN_MIN_BYTES


# bytes of a sub-band's working set (its expanded input rows, the depthwise's output
# rows) that a thread keeps in its L2 (1 MB per core on this machine)
BAND_BYTES = 640 << 10


def plan(chain: Chain, batch: int, itemsize: int, threads: int) -> tuple[int, int]:
    """(chunks of output rows per sample, rows per sub-band): the samples alone where
    they keep every thread busy, else each sample's rows split among the threads; a
    sub-band as many rows as fit BAND_BYTES, at least one."""
    kh, sh, c, h, w, ho, wo = _geometry(chain)
    chunks = _chunks(batch, ho, threads)
    per = -(-ho // chunks)
    fixed = itemsize * c * w * max(0, kh - sh)  # expanded rows beyond the band's own
    row = itemsize * c * (sh * w + wo)  # per output row: expanded input, depthwise output
    return chunks, max(1, min(per, (BAND_BYTES - fixed) // max(row, 1)))


def channels_last(chain: Chain) -> bool:
    """Whether the chain keeps its expanded and depthwise rows channels-last (a chain with
    an expansion only: its GEMM writes either layout at no cost, where the network's own
    input would need a copy), where the depthwise conv runs faster so
    (conv_depthwise.favours_channels_last)."""
    if chain.expand is None:
        return False
    if CHANNELS_LAST is not None:
        return CHANNELS_LAST
    return favours_channels_last(chain.depthwise)


CHANNELS_LAST = None  # None: as the rule says; True or False: forced (tests, bench)


def _codes(op, dtype) -> tuple[int, float]:
    act = activation_of(op) if op is not None else None
    return cpu_activation_code(*act, dtype) if act is not None else (NO_ACTIVATION, 0.0)


def chain_forward(chain: Chain, xs: list, params: list[dict], ctx) -> np.ndarray:
    """Run a chain: ``xs`` its inputs (:attr:`Chain.inputs`), ``params`` each op's
    parameters by role, in :attr:`Chain.ops` order."""
    x = np.ascontiguousarray(xs[0])
    dtype = x.dtype
    none2, empty = np.empty((0, 0), dtype=dtype), np.empty(0, dtype=dtype)
    by_op = dict(zip((op.name for op in chain.ops), params))
    pe = by_op.get(chain.expand.name) if chain.expand is not None else None
    pd = by_op[chain.depthwise.name]
    pp = by_op.get(chain.project.name) if chain.project is not None else None
    dw = chain.depthwise
    (kh, kw), (sh, sw) = dw.attrs["kernel_size"], dw.attrs["stride"]
    (pt, _), (pl, _) = dw.attrs["pads"]
    ho, wo = dw.out_shape[1:]
    chunks, band = plan(chain, x.shape[0], x.itemsize, numba.get_num_threads())
    if chain.project is not None and len(xs) > 1:
        residual = np.ascontiguousarray(xs[1]).reshape(x.shape[0], -1, ho * wo)
    else:
        residual = np.empty((0, 0, 0), dtype=dtype)
    last = channels_last(chain)
    wd = last_filters(dw, pd["weight"], ctx) if last else _flat_filters(pd["weight"])
    wet = ctx.packs.get((chain.expand.name, "last"), pe["weight"], pack_last) \
        if pe and last and conv_pointwise.LAST_TILES else none2
    return chain_kernel(
        x, _flat_filters(pe["weight"]) if pe else none2, wet.astype(dtype, copy=False),
        pe.get("bias", empty) if pe else empty,
        *_codes(chain.expand, dtype), wd, pd.get("bias", empty), kh, kw, sh,
        sw, pt, pl, ho, wo, *_codes(dw, dtype),
        _flat_filters(pp["weight"]) if pp else none2,
        pp.get("bias", empty) if pp else empty, residual,
        *_codes(chain.project, dtype), chunks, band, last)
