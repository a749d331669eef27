"""RoI Align and RoI Pool written out point by point from torchvision's definition (its
C++ ``roi_align_kernel`` and ``roi_pool_kernel``), independent of runtime.backends.roi:
every bin, every sample, every bilinear tap in plain Python. Works on NumPy float64
arrays and on torch float64 tensors alike, so that torch's autograd of this very
definition gives the gradients the kernels' backward passes are held to.
"""

from __future__ import annotations

import math


def _bilinear(plane, height: int, width: int, y: float, x: float):
    """The value of ``plane`` (H, W) at (y, x) as torchvision samples it."""
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (hy * hx * plane[y_low][x_low] + hy * lx * plane[y_low][x_high]
            + ly * hx * plane[y_high][x_low] + ly * lx * plane[y_high][x_high])


def roi_align(x, boxes, batch, scale, pooled, sampling_ratio, aligned):
    """(K, C, PH, PW) as nested lists of scalars (:func:`stack` makes them one array)."""
    ph_, pw_ = pooled
    channels, height, width = len(x[0]), len(x[0][0]), len(x[0][0][0])
    out = [[[[0.0] * pw_ for _ in range(ph_)] for _ in range(channels)] for _ in boxes]
    offset = 0.5 if aligned else 0.0
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        sx, sy = float(x1) * scale - offset, float(y1) * scale - offset
        ex, ey = float(x2) * scale - offset, float(y2) * scale - offset
        rw, rh = ex - sx, ey - sy
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / ph_, rw / pw_
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(rh / ph_)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(rw / pw_)
        count = max(gh * gw, 1)
        for c in range(channels):
            plane = x[int(batch[k])][c]
            for p in range(ph_):
                for q in range(pw_):
                    total = 0.0
                    for iy in range(gh):
                        yy = sy + p * bh + (iy + 0.5) * bh / gh
                        for ix in range(gw):
                            xx = sx + q * bw + (ix + 0.5) * bw / gw
                            total = total + _bilinear(plane, height, width, yy, xx)
                    out[k][c][p][q] = total / count
    return out


def _round(v: float) -> int:
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def roi_pool(x, boxes, batch, scale, pooled):
    """(K, C, PH, PW) maxima over torchvision's integer bins (0 for an empty bin)."""
    ph_, pw_ = pooled
    channels, height, width = len(x[0]), len(x[0][0]), len(x[0][0][0])
    out = [[[[0.0] * pw_ for _ in range(ph_)] for _ in range(channels)] for _ in boxes]
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        sw, sh = _round(float(x1) * scale), _round(float(y1) * scale)
        ew, eh = _round(float(x2) * scale), _round(float(y2) * scale)
        rw, rh = max(ew - sw + 1, 1), max(eh - sh + 1, 1)
        for c in range(channels):
            plane = x[int(batch[k])][c]
            for p in range(ph_):
                h0 = min(max(math.floor(p * rh / ph_) + sh, 0), height)
                h1 = min(max(math.ceil((p + 1) * rh / ph_) + sh, 0), height)
                for q in range(pw_):
                    w0 = min(max(math.floor(q * rw / pw_) + sw, 0), width)
                    w1 = min(max(math.ceil((q + 1) * rw / pw_) + sw, 0), width)
                    best = None
                    for r in range(h0, h1):
                        for s in range(w0, w1):
                            if best is None or plane[r][s] > best:
                                best = plane[r][s]
                    out[k][c][p][q] = 0.0 if best is None else best
    return out


def stack(nested, lib):
    """Nested lists of scalars as one float64 array of ``lib`` (numpy or torch)."""
    if isinstance(nested, list):
        parts = [stack(item, lib) for item in nested]
        return lib.stack(parts) if parts else lib.zeros(0, dtype=lib.float64)
    return lib.as_tensor(nested, dtype=lib.float64) if hasattr(lib, "as_tensor") \
        else lib.float64(nested)
