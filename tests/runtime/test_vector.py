"""The host's vector unit as the register-tiled kernels size their tiles by it: read from
the features Numba compiles for, overridable, and every geometry's kernel exact on any
machine."""

from __future__ import annotations

import os
import subprocess
import sys
from unittest.mock import patch

import numpy as np
import pytest

from layer_cases import one_op
from numba.core import config as numba_config

from runtime import target
from runtime.backends.cpu import conv, conv_direct, vector
from runtime.errors import UsageError


@pytest.mark.parametrize("features, lanes", [
    ("+avx512f,+avx512bw,+avx2,+avx,+fma,+sse2,-prefer-256-bit", 16),
    ("+avx512f,+avx512bw,+avx2,+avx,+fma,+sse2", 8),  # LLVM's preference for 256 bits kept
    ("+avx2,+avx,+fma,+sse2,-avx512f", 8),
    ("+avx,+sse2,-avx2", 8),
    ("+sse2,+sse4.1,-avx", 4),
    ("+neon", 4),
])
def test_lanes_follow_the_vectors_numba_fills(monkeypatch, features, lanes):
    monkeypatch.delenv("ARCHC_VECTOR_LANES", raising=False)
    with patch.object(numba_config, "CPU_FEATURES", features):
        assert vector.host_lanes() == lanes


@pytest.mark.parametrize("host, user, made, widened", [
    ("+avx512f,+avx2,+avx", None, False, True),
    ("+avx2,+avx,-avx512f", None, False, False),  # nothing to widen
    ("+avx512f,+avx2,+avx", "+avx2,+avx", False, False),  # NUMBA_CPU_FEATURES is the user's
    ("+avx512f,+avx2,+avx", None, True, False),  # Numba's target already made: too late
])
def test_widen_lifts_llvms_preference_only_where_it_may(monkeypatch, host, user, made,
                                                        widened):
    monkeypatch.delenv("NUMBA_CPU_FEATURES", raising=False)  # Numba is loaded: its config
    with patch.object(target.llvm, "get_host_cpu_features", lambda: _Flat(host)), \
            patch.object(numba_config, "CPU_FEATURES", user), \
            patch.object(target, "_target_made", lambda: made):
        assert target.widen() is widened
        assert numba_config.CPU_FEATURES == (f"{host},-prefer-256-bit" if widened
                                                    else user)


class _Flat:
    def __init__(self, text):
        self.text = text

    def flatten(self):
        return self.text


@pytest.mark.parametrize("user", [None, "+sse2,+avx,+avx2"])
def test_numba_compiles_for_the_features_the_tiles_are_sized_by(user):
    """In a fresh process, the features Numba's CPU target was made with (its cache key)
    are the ones the lanes were read from: archc's, or the user's NUMBA_CPU_FEATURES."""
    code = """
import numpy as np, archc
from numba.core.registry import cpu_target
from runtime import target
from runtime.backends.cpu import vector
made = set(cpu_target.target_context.codegen().magic_tuple()[2].split(","))
print(made == target.features(), vector.lanes(), target.vector_bits())
"""
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CPU_FEATURES",
                                                             "ARCHC_VECTOR_LANES")}
    if user:
        env["NUMBA_CPU_FEATURES"] = user
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True, timeout=300)
    same, lanes, bits = run.stdout.split()
    assert same == "True" and int(lanes) == int(bits) // 32
    if user:
        assert lanes == "8"  # the user's AVX2 features: 256-bit vectors


def test_the_geometry_follows_the_lanes():
    with patch.object(vector, "LANES", 16):
        assert (vector.tile_width(), vector.registers(), vector.weight_grad_lanes()) == \
            (32, 32, 16)
        assert conv_direct.tile_rows(64) == 8 and conv_direct.tile_rows(16) == 8
        assert conv_direct.tile_rows(8) == 4  # under WIDE_FROM
    for lanes in (8, 4):
        with patch.object(vector, "LANES", lanes):
            assert (vector.tile_width(), vector.registers(), vector.weight_grad_lanes()) == \
                (16, 16, 8)
            assert conv_direct.tile_rows(64) == 4  # 8 x 16 sums would spill 16 registers


@pytest.mark.parametrize("lanes, tiles", [(16, "8 channels x 32 positions for 16-lane"),
                                          (8, "4 channels x 16 positions for 8-lane")])
def test_archc_bench_says_which_tiles_ran(lanes, tiles):
    op, _ = one_op("conv2d", {"out_channels": 64, "kernel_size": 3, "padding": 1,
                              "in_channels": None}, [(32, 16, 16)])
    with patch.object(vector, "LANES", lanes):
        algorithm, why = conv.choose(op, 128, True)
    assert algorithm == "direct" and f"register tiles of {tiles} vectors" in why


def test_an_override_is_taken_and_a_bad_one_refused(monkeypatch):
    monkeypatch.setenv("ARCHC_VECTOR_LANES", "16")
    assert vector.host_lanes() == 16
    monkeypatch.setenv("ARCHC_VECTOR_LANES", "12")
    with pytest.raises(UsageError, match="ARCHC_VECTOR_LANES must be 4, 8 or 16, got '12'"):
        vector.host_lanes()


@pytest.mark.parametrize("rows, tile", [(8, 16), (4, 8), (2, 32)])
def test_the_kernel_refuses_a_tile_it_has_no_code_for(rows, tile):
    """A tile the kernel has no path for would read past its buffers: refused."""
    x = np.ones((1, 2, 4, 4), np.float32)
    wt = np.ones((1, 1, 9, 2, rows), np.float32)
    empty = np.empty(0, np.float32)
    with pytest.raises(ValueError, match="tiles are"):
        conv_direct.direct_conv_kernel(x, wt, rows, 3, 3, 1, 1, 1, 1, 1, 1, 4, 4, 4, 1, tile,
                                       empty, np.empty((0, 0, 0, 0), np.float32), -1, 0.0)


@pytest.mark.parametrize("lanes", [16, 8])
def test_every_tile_geometry_gives_the_same_conv(lanes):
    """The forward kernel in each geometry and the weight gradient at each lane count
    against float64 sums, on a map whose rows straddle tiles and a partial block of
    output channels."""
    rng = np.random.default_rng(lanes)
    x = rng.standard_normal((2, 5, 11, 13)).astype(np.float32)
    w = rng.standard_normal((11, 5, 3, 3)).astype(np.float32)
    gy = rng.standard_normal((2, 11, 11, 13)).astype(np.float32)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))
    expected = np.einsum("nchwij,ocij->nohw", windows, w.astype(np.float64))
    expected_gw = np.einsum("nchwij,nohw->ocij", windows, gy.astype(np.float64))
    empty = np.empty(0, np.float32)
    with patch.object(vector, "LANES", lanes):
        for wide_from in (1, 10**6):  # blocks of 8 output channels where the machine has them
            with patch.object(conv_direct, "WIDE_FROM", wide_from):
                wt = conv_direct.pack_filters(w, 1)
                y = conv_direct.direct_conv_kernel(
                    x, wt, 11, 3, 3, 1, 1, 1, 1, 1, 1, 11, 13, 3, 2, vector.tile_width(), empty,
                    np.empty((0, 0, 0, 0), np.float32), -1, 0.0)
                np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
        gw = conv_direct.direct_weight_grad_kernel(x, gy, 1, 3, 3, 1, 1, 1, 1, 1, 1, 4, 2,
                                                   vector.weight_grad_lanes())
        np.testing.assert_allclose(gw, expected_gw, rtol=1e-4, atol=1e-3)


def _weight_grad(x, gy, k, stride, pad, groups):
    """The weight gradient of a conv in float64, from its windows."""
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = gy.shape[2:]
    windows = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))
    windows = windows[:, :, ::stride, ::stride][:, :, :ho, :wo]
    n, c = x.shape[:2]
    o = gy.shape[1]
    parts = [np.einsum("nchwij,nohw->ocij", windows[:, g * c // groups:(g + 1) * c // groups],
                       gy[:, g * o // groups:(g + 1) * o // groups].astype(np.float64))
             for g in range(groups)]
    return np.concatenate(parts)


@pytest.mark.parametrize("lanes", [16, 8])
@pytest.mark.parametrize("shape, out, k, stride, pad, groups", [
    ((3, 5, 40, 37), 7, 3, 1, 1, 1),  # panels longer than GRAD_CHUNK: chunk by chunk
    ((2, 4, 9, 11), 40, 3, 1, 1, 1),  # two vectors of outputs at once, then one
    ((2, 3, 21, 19), 20, 7, 2, 3, 1),  # 49 taps in groups of 9 (the last one padded), phases
    ((2, 6, 14, 14), 16, 5, 1, 0, 1),  # LeNet-5's C3
    ((2, 8, 9, 10), 12, 3, 2, 1, 2),  # groups, strided
])
def test_the_weight_gradient_in_every_block_shape(lanes, shape, out, k, stride, pad, groups):
    """The weight gradient's blocks of output-channel vectors and tap groups, against
    float64 sums, at each lane count."""
    rng = np.random.default_rng(lanes + out)
    x = rng.standard_normal(shape).astype(np.float32)
    ho = (shape[2] + 2 * pad - k) // stride + 1
    wo = (shape[3] + 2 * pad - k) // stride + 1
    gy = rng.standard_normal((shape[0], out, ho, wo)).astype(np.float32)
    reach = (k - 1) // stride
    band = conv_direct.weight_grad_band(shape[1] // groups, out // groups, ho, wo + reach,
                                        reach, stride * stride)
    if shape == (3, 5, 40, 37):
        assert band == ho and 3 * (ho + 2) * (wo + 2) > 2 * conv_direct.GRAD_CHUNK
    gw = conv_direct.direct_weight_grad_kernel(x, gy, groups, k, k, stride, stride, 1, 1, pad,
                                               pad, band, 2, lanes)
    np.testing.assert_allclose(gw, _weight_grad(x, gy, k, stride, pad, groups), rtol=1e-4,
                               atol=1e-3)
