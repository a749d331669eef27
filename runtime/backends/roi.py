"""Region-of-interest pooling as ``torchvision.ops`` defines it: the geometry every backend
shares (reference, CPU, CUDA), computed once per call in float64 NumPy.

A region is a box ``(x1, y1, x2, y2)`` in the input image's pixels and the index of the
image it belongs to; ``spatial_scale`` maps it onto the feature map (1/16 for a stride-16
map). The output is ``(K, C, PH, PW)``: one ``PH x PW`` grid of bins per region.

**RoI Align** (Mask R-CNN) averages, in each bin, a ``grid_h x grid_w`` lattice of
bilinearly interpolated samples. With ``aligned`` the box is shifted by half a pixel
(``x * scale - 0.5``) so that sample positions refer to pixel centres; without it a box
is at least one feature pixel on each side. ``sampling_ratio > 0`` fixes the lattice;
``0`` (or torchvision's ``-1``) takes ``ceil(box side / bins)`` samples per bin side. A
sample lying more than one pixel outside the map counts as 0; one within that pixel is
clamped to the border.

Bilinear interpolation is separable and so is the rule for samples outside the map, so
each bin's average is a product of a row table and a column table: for region ``k``,
bin row ``p`` and sample ``g``, the two rows it reads (``lo``, ``hi``) and their weights
(zero for a sample outside the map or past the region's own lattice). The kernels read
these tables; none repeats the geometry.

**RoI Pool** (Fast R-CNN) takes the maximum over each bin, whose bounds are whole
pixels: the box is rounded to the feature grid (half away from zero, as C's ``round``),
made at least one pixel, and cut into ``floor(p * side / PH)`` to
``ceil((p + 1) * side / PH)``, clipped to the map; an empty bin gives 0 and no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.errors import InputError

MAX_SAMPLES = 1024
"""The most samples a bin may take along one side: an adaptive lattice grows with the box,
so a box thousands of times the map's size would otherwise cost without bound."""


@dataclass(frozen=True)
class AxisTable:
    """One axis of RoI Align's sampling: ``(K, P, G)`` rows (or columns) ``lo`` and ``hi``
    each sample reads and their weights, ``G`` the largest lattice side of any region."""

    lo: np.ndarray
    hi: np.ndarray
    w_lo: np.ndarray
    w_hi: np.ndarray


def check_boxes(boxes: np.ndarray, batch: np.ndarray, images: int) -> None:
    """Refuse regions no definition gives a meaning to: a non-finite coordinate, or an
    image index outside the batch."""
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise InputError(f"regions must be a (K, 4) array of x1, y1, x2, y2; got shape "
                         f"{boxes.shape}")
    if batch.shape != (boxes.shape[0],):
        raise InputError(f"{boxes.shape[0]} regions but {batch.shape} image indices")
    if not np.isfinite(boxes).all():
        raise InputError("a region has a coordinate that is NaN or infinite",
                         hint="boxes are pixel coordinates x1, y1, x2, y2 of the input image")
    if len(batch) and (batch.min() < 0 or batch.max() >= images):
        raise InputError(f"a region names image {int(batch.max())} of a batch of {images}")


def _axis(start: np.ndarray, length: np.ndarray, bins: int, grid: np.ndarray,
          extent: int) -> AxisTable:
    """Sample positions ``start + p * bin + (g + 0.5) * bin / grid`` of each region along
    one axis, as interpolation rows and weights over a map ``extent`` pixels long."""
    side = max(int(grid.max(initial=0)), 1)
    p, g = np.arange(bins)[None, :, None], np.arange(side)[None, None, :]
    step = (length / bins)[:, None, None]
    grid3 = np.maximum(grid, 1)[:, None, None]
    pos = start[:, None, None] + p * step + (g + 0.5) * step / grid3
    used = (g < grid[:, None, None]) & (pos >= -1.0) & (pos <= extent)
    pos = np.maximum(pos, 0.0)
    lo = np.floor(pos).astype(np.int64)
    edge = lo >= extent - 1
    lo = np.where(edge, extent - 1, lo)
    hi = np.where(edge, extent - 1, lo + 1)
    frac = np.where(edge, 0.0, pos - lo)  # pos is (K, P, G) already: so are these
    return AxisTable(lo, hi, np.where(used, 1.0 - frac, 0.0), np.where(used, frac, 0.0))


def align_tables(boxes: np.ndarray, scale: float, out_hw: tuple[int, int], sampling_ratio: int,
                 aligned: bool, in_hw: tuple[int, int]):
    """(rows, columns, 1 / samples per bin) of RoI Align over ``boxes`` (K, 4)."""
    b = np.asarray(boxes, dtype=np.float64) * scale - (0.5 if aligned else 0.0)
    x1, y1, w, h = b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    if not aligned:
        w, h = np.maximum(w, 1.0), np.maximum(h, 1.0)
    (ph, pw), (height, width) = out_hw, in_hw
    if sampling_ratio > 0:
        gh = gw = np.full(len(b), sampling_ratio, dtype=np.int64)
    else:
        gh = np.maximum(np.ceil(h / ph), 0).astype(np.int64)
        gw = np.maximum(np.ceil(w / pw), 0).astype(np.int64)
    if len(b) and max(gh.max(), gw.max()) > MAX_SAMPLES:
        raise InputError(
            f"a region {float(max(h.max(), w.max())):.4g} feature pixels long would take "
            f"more than {MAX_SAMPLES} samples per bin side",
            hint="boxes are pixel coordinates of the input image; give roi_align a "
                 "sampling_ratio to fix the samples per bin")
    rows, cols = _axis(y1, h, ph, gh, height), _axis(x1, w, pw, gw, width)
    return rows, cols, 1.0 / np.maximum(gh * gw, 1)


def _round_half_away(v: np.ndarray) -> np.ndarray:
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def pool_bins(boxes: np.ndarray, scale: float, out_hw: tuple[int, int], in_hw: tuple[int, int]):
    """``(start, end)`` rows ``(K, PH)`` and columns ``(K, PW)`` of RoI Pool's bins."""
    b = _round_half_away(np.asarray(boxes, dtype=np.float64) * scale)
    if len(b) and np.abs(b).max() > 2.0**52:
        raise InputError("a region's coordinates are too large to pool",
                         hint="boxes are pixel coordinates x1, y1, x2, y2 of the input image")

    def axis(start, end, bins, extent):
        side = np.maximum(end - start + 1, 1.0)[:, None]
        p = np.arange(bins)[None, :]
        lo = np.floor(p * side / bins) + start[:, None]
        hi = np.ceil((p + 1) * side / bins) + start[:, None]
        return (np.clip(lo, 0, extent).astype(np.int64), np.clip(hi, 0, extent).astype(np.int64))

    (ph, pw), (height, width) = out_hw, in_hw
    return axis(b[:, 1], b[:, 3], ph, height), axis(b[:, 0], b[:, 2], pw, width)


def adaptive_grid(sampling_ratio: int) -> int:
    """torchvision writes 'adaptive' as -1, archc as 0: both mean ceil(side / bins)."""
    return max(sampling_ratio, 0)


def interpolation_matrix(table: AxisTable, k: int, extent: int) -> np.ndarray:
    """``(P, extent)``: row ``p`` sums region ``k``'s samples of bin ``p`` as weights on the
    map's rows (the reference backend's clear form of the same sampling)."""
    m = np.zeros((table.lo.shape[1], extent))
    for p in range(table.lo.shape[1]):
        np.add.at(m[p], table.lo[k, p], table.w_lo[k, p])
        np.add.at(m[p], table.hi[k, p], table.w_hi[k, p])
    return m



def regions(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A region layer's boxes input (N, R, 4) as torchvision's lists: (N R, 4) float64
    boxes and the image index of each."""
    n, r = boxes.shape[:2]
    return (np.asarray(boxes, dtype=np.float64).reshape(n * r, 4),
            np.repeat(np.arange(n, dtype=np.int64), r))


def levels(boxes: np.ndarray, scales: tuple, canonical_size: int, canonical_level: int):
    """The pyramid level (index into ``scales``, finest first) FPN assigns each box:
    ``floor(k0 + log2(sqrt(area) / size))`` clamped to the levels (torchvision's
    ``LevelMapper``, its 1e-6 included)."""
    if len(scales) == 1:
        return np.zeros(len(boxes), dtype=np.int64)
    first, last = round(-np.log2(scales[0])), round(-np.log2(scales[-1]))
    area = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 0.0)
    k = np.floor(canonical_level + np.log2(np.sqrt(area) / canonical_size + 1e-6))
    return (np.clip(k, first, last) - first).astype(np.int64)


def run_levels(maps: list, boxes: np.ndarray, batch: np.ndarray, attrs: dict, each) -> None:
    """Call ``each(level, map, rows)`` for every pyramid level that holds boxes, ``rows``
    the (sorted) indices of its boxes."""
    level = levels(boxes, attrs["spatial_scale"], attrs.get("canonical_size", 224),
                   attrs.get("canonical_level", 4))
    for i, x in enumerate(maps):
        rows = np.flatnonzero(level == i)
        if len(rows):
            each(i, x, rows)


def align_forward(x: np.ndarray, boxes: np.ndarray, batch: np.ndarray, scale: float,
                  out_hw: tuple[int, int], sampling_ratio: int, aligned: bool) -> np.ndarray:
    """RoI Align of ``x`` (N, C, H, W) over ``boxes`` (K, 4) of images ``batch`` (K,):
    (K, C, PH, PW), in ``x``'s dtype (the reference: one matrix product per region)."""
    check_boxes(boxes, batch, x.shape[0])
    in_hw = x.shape[2:]
    rows, cols, inv = align_tables(boxes, scale, out_hw, sampling_ratio, aligned, in_hw)
    y = np.zeros((len(boxes), x.shape[1]) + tuple(out_hw), dtype=x.dtype)
    for k in range(len(boxes)):
        ay, ax = interpolation_matrix(rows, k, in_hw[0]), interpolation_matrix(cols, k, in_hw[1])
        y[k] = (ay @ x[batch[k]] @ ax.T) * inv[k]  # per channel: rows, then columns
    return y


def align_backward(gy: np.ndarray, boxes: np.ndarray, batch: np.ndarray, scale: float,
                   sampling_ratio: int, aligned: bool, in_shape: tuple) -> np.ndarray:
    """The gradient of :func:`align_forward`'s input (N, C, H, W) given ``gy``."""
    in_hw = in_shape[2:]
    rows, cols, inv = align_tables(boxes, scale, gy.shape[2:], sampling_ratio, aligned, in_hw)
    gx = np.zeros(in_shape, dtype=np.float64)
    for k in range(len(boxes)):
        ay, ax = interpolation_matrix(rows, k, in_hw[0]), interpolation_matrix(cols, k, in_hw[1])
        gx[batch[k]] += (ay.T @ gy[k] @ ax) * inv[k]
    return gx.astype(gy.dtype)


def pool_forward(x: np.ndarray, boxes: np.ndarray, batch: np.ndarray, scale: float,
                 out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """RoI Pool: (K, C, PH, PW) maxima and their positions ``row * W + column`` in the map
    (-1 for an empty bin, whose output is 0)."""
    check_boxes(boxes, batch, x.shape[0])
    (rs, re), (cs, ce) = pool_bins(boxes, scale, out_hw, x.shape[2:])
    k_, c_, width = len(boxes), x.shape[1], x.shape[3]
    y = np.zeros((k_, c_) + tuple(out_hw), dtype=x.dtype)
    where = np.full(y.shape, -1, dtype=np.int64)
    for k in range(k_):
        for p in range(out_hw[0]):
            for q in range(out_hw[1]):
                window = x[batch[k], :, rs[k, p]:re[k, p], cs[k, q]:ce[k, q]]
                if window.size == 0:
                    continue
                flat = window.reshape(c_, -1)
                best = flat.argmax(axis=1)  # the first maximum, as torchvision's strict '>'
                y[k, :, p, q] = flat[np.arange(c_), best]
                wide = ce[k, q] - cs[k, q]
                where[k, :, p, q] = (rs[k, p] + best // wide) * width + cs[k, q] + best % wide
    return y, where


def pool_backward(gy: np.ndarray, where: np.ndarray, batch: np.ndarray,
                  in_shape: tuple) -> np.ndarray:
    """The gradient of :func:`pool_forward`'s input: each bin's gradient to its maximum."""
    n, c, h, w = in_shape
    gx = np.zeros((n, c, h * w + 1), dtype=np.float64)  # the last slot takes position -1
    for k in range(len(where)):
        idx = np.where(where[k] < 0, h * w, where[k]).reshape(c, -1)
        for ch in range(c):
            np.add.at(gx[batch[k], ch], idx[ch], gy[k, ch].ravel())
    return gx[:, :, :-1].reshape(in_shape).astype(gy.dtype)


@dataclass(frozen=True)
class Kernels:
    """One backend's region kernels and the array moves the layer drivers need."""

    align_forward: object
    align_backward: object
    pool_forward: object
    pool_backward: object
    zeros: object  # shape -> a zeroed float array on the backend's device
    put: object  # (y, rows, part): y[rows] = part
    take: object  # (g, rows) -> g[rows]
    host: object = np.asarray  # a device array as a NumPy array (the boxes)


def _put(y, rows, part):
    y[rows] = part


NUMPY = Kernels(align_forward, align_backward, pool_forward, pool_backward,
                lambda shape, dtype=np.float32: np.zeros(shape, dtype), _put, lambda g, rows: g[rows])
"""The reference backend's region kernels."""


def _boxes(xs: list, impl: Kernels):
    *maps, boxes = xs
    b, batch = regions(impl.host(boxes))
    check_boxes(b, batch, maps[0].shape[0])
    return maps, b, batch


def align_layer(op, xs: list, impl: Kernels):
    """A ``roi_align`` node's output: every box from its pyramid level (rows N R)."""
    maps, b, batch = _boxes(xs, impl)
    a = op.attrs
    grid, out = adaptive_grid(a["sampling_ratio"]), tuple(a["output_size"])
    if len(maps) == 1:
        return impl.align_forward(maps[0], b, batch, a["spatial_scale"][0], out, grid,
                                  a["aligned"])
    y = impl.zeros((len(b), maps[0].shape[1]) + out, maps[0].dtype)
    run_levels(maps, b, batch, a, lambda i, x, rows: impl.put(y, rows, impl.align_forward(
        x, b[rows], batch[rows], a["spatial_scale"][i], out, grid, a["aligned"])))
    return y


def align_layer_backward(op, xs: list, gy, impl: Kernels) -> list:
    """The gradients of a ``roi_align`` node's feature maps (None for the boxes)."""
    maps, b, batch = _boxes(xs, impl)
    a = op.attrs
    grads = [None] * len(maps)

    def each(i, x, rows):
        grads[i] = impl.align_backward(gy if len(maps) == 1 else impl.take(gy, rows),
                                       b[rows], batch[rows], a["spatial_scale"][i],
                                       adaptive_grid(a["sampling_ratio"]), a["aligned"], x.shape)

    run_levels(maps, b, batch, a, each)
    return [g if g is not None else impl.zeros(x.shape, x.dtype) for g, x in zip(grads, maps)] + [None]


def pool_layer(op, xs: list, impl: Kernels, indices: dict):
    """A ``roi_pool`` node's output; the positions of its maxima go to ``indices``."""
    maps, b, batch = _boxes(xs, impl)
    y, where = impl.pool_forward(maps[0], b, batch, op.attrs["spatial_scale"][0],
                                 tuple(op.attrs["output_size"]))
    indices[op.output] = where
    return y


def pool_layer_backward(op, xs: list, gy, impl: Kernels, indices: dict) -> list:
    maps, b, batch = _boxes(xs, impl)
    return [impl.pool_backward(gy, indices[op.output], batch, maps[0].shape), None]


def layer_kernels(impl: Kernels) -> dict:
    """A backend's op-table entries for the region layers: kind -> (forward, backward)."""
    return {
        "roi_align": (lambda op, xs, p, ctx: align_layer(op, xs, impl),
                      lambda op, xs, y, gy, p, ctx: (align_layer_backward(op, xs, gy, impl), {})),
        "roi_pool": (lambda op, xs, p, ctx: pool_layer(op, xs, impl, ctx.indices),
                     lambda op, xs, y, gy, p, ctx: (
                         pool_layer_backward(op, xs, gy, impl, ctx.indices), {})),
    }
