"""Which way each dense conv runs on the device when a GEMM library (cuBLAS) runs its
products (``conv.py``): image by image (one strided batch straight into NCHW) or over the
batch's rows (one GEMM, then a pass back to NCHW). A rule on the output's size decides, or
benchmark mode measures both ways once per shape; :func:`describe` says which and why
(a profile's algorithm column)."""

from __future__ import annotations

import os

from runtime.backends.cuda.kernels import gemm_library
from runtime.backends.cuda.timing import EventClock

# A dense conv goes image by image (a strided batch straight into NCHW) where an image has
# at least this many output pixels; below, each image's product is narrower than the
# library's tiles (ResNet's last stage: 7 x 7 = 49 columns), and one GEMM over the whole
# batch's columns then a pass back to NCHW (of a small output) costs less. A first guess,
# to be set from a GPU's profile; benchmark mode (below) measures instead.
IMAGE_BATCH_MIN_PIXELS = 256


def by_image_rule(ho: int, wo: int, groups: int) -> bool:
    """The rule for whether a conv's GEMMs go image by image (see IMAGE_BATCH_MIN_PIXELS):
    a dense conv whose GEMMs a library runs."""
    return (groups == 1 and ho * wo >= IMAGE_BATCH_MIN_PIXELS
            and gemm_library()[0] is not None)


# Benchmark mode (cuDNN's benchmark, for archc's one choice per conv): the first time a
# dense conv of a shape runs with a GEMM library, forward or (for a 1x1 conv of stride 1,
# the one whose backward pass differs) backward, both strategies run and are timed on the
# device, and the faster is kept for the rest of the process; off, the rule above decides
# (the same choice every run, so the same rounding). ARCHC_CUDA_BENCHMARK=1 turns it on.
BENCHMARK = [os.environ.get("ARCHC_CUDA_BENCHMARK", "").strip() == "1"]
_MEASURED: dict = {}  # key -> (image by image?, {image by image?: seconds})


def benchmark(on: bool = True) -> None:
    """Turn benchmark mode on or off (the measured choices are kept)."""
    BENCHMARK[0] = bool(on)


def measured() -> list[tuple[str, str, dict, str]]:
    """What benchmark mode measured: (pass, the conv's shapes, {strategy: seconds}, the
    strategy kept), in the order the convs first ran."""
    name = {True: "by image", False: "rows"}
    return [(key[0], f"x {key[1]} w {key[2]} stride {key[3]}" + (" +epilogue" if key[-1]
             else ""), {name[b]: t for b, t in times.items()}, name[chosen])
            for key, (chosen, times) in _MEASURED.items()]


def key(direction: str, x_shape, w_shape, stride, dilation, pads,
        epilogue: bool = False) -> tuple:
    """What benchmark mode measures a conv's pass by: the direction ("forward",
    "backward"), its shapes and geometry, and whether an epilogue follows the GEMM."""
    return (direction, tuple(x_shape), tuple(w_shape), tuple(stride), tuple(dilation),
            tuple(map(tuple, pads)), epilogue)


def describe(x_shape: tuple, w_shape: tuple, out_hw: tuple, *, stride, dilation, pads,
             groups: int, train: bool) -> tuple[str, str]:
    """(algorithm, why) a dense or grouped conv of these shapes runs with on the device
    (a profile's algorithm column): archc's implicit GEMM, a grouped GEMM, or with a
    library image by image or over the batch's rows, by the rule or as benchmark mode
    measured it (its forward; and its backward in training, for a 1x1 conv of stride 1)."""
    (ho, wo), (kh, kw) = out_hw, w_shape[2:]
    if gemm_library()[0] is None:
        if groups > 1:
            return ("grouped GEMM", f"{groups} groups: im2col, one GEMM per group (archc's "
                    "kernel), back to NCHW with the epilogue")
        return ("implicit GEMM", "archc's GEMM kernel (no cuBLAS here): im2col on the fly, "
                "the epilogue inside")
    if groups > 1:
        return ("grouped GEMM", f"{groups} groups: im2col, one strided batch of the groups' "
                "GEMMs into rows, back to NCHW with the epilogue")
    geometry = key("", x_shape, w_shape, stride, dilation, pads)[1:-1]
    found = {k[0]: (chosen, times) for k, (chosen, times) in _MEASURED.items()
             if k[1:-1] == geometry}
    one = ((kh, kw) == (1, 1) and tuple(stride) == (1, 1)
           and not any(p for side in pads for p in side))
    if "forward" in found:
        by_image, times = found["forward"]
        why = (f"benchmark mode measured it: {times[True] * 1e3:.3f} ms image by image, "
               f"{times[False] * 1e3:.3f} ms over the rows")
    else:
        by_image = by_image_rule(ho, wo, groups)
        why = (f"{ho * wo} output pixels {'>=' if by_image else '<'} "
               f"{IMAGE_BATCH_MIN_PIXELS} (strategy.IMAGE_BATCH_MIN_PIXELS)")
    name = "by image" if by_image else "rows"
    how = ("one strided batch straight into NCHW" + (", the input itself (no im2col)"
           if one else "") if by_image else "im2col over the batch, one GEMM, back to NCHW")
    if train and one and "backward" in found:
        direct, times = found["backward"]
        why += (f"; backward {'W.T @ gy per image' if direct else 'through col2im'} "
                f"(measured: {times[True] * 1e3:.3f} ms against {times[False] * 1e3:.3f})")
    return name, f"{how}: {why}"


def choose(conv: tuple, rule: bool, run) -> bool:
    """Whether the conv pass ``conv`` (a :func:`key`) goes image by image: the rule's
    answer, unless benchmark mode is on, when ``run(by_image)`` (which computes the whole
    result either way) is timed both ways the first time that pass is seen, after a
    warm-up of each (kernels compile, the pool grows), and the faster is remembered (a tie
    keeps the rule)."""
    if not BENCHMARK[0]:
        return rule
    if conv not in _MEASURED:
        clock = EventClock()
        ways = (not rule, rule)
        for way in ways:
            run(way)
        marks = {}
        for way in ways:
            start = clock.mark()
            run(way)
            marks[way] = (start, clock.mark())
        clock.sync()
        times = {way: clock.seconds(*marks[way]) for way in ways}
        _MEASURED[conv] = (min(ways, key=lambda way: (times[way], way != rule)), times)
    return _MEASURED[conv][0]
