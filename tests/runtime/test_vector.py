"""The host's vector unit as the register-tiled kernels size their tiles by it: read from
the features Numba compiles for, overridable, and every geometry's kernel exact on any
machine."""

from __future__ import annotations

from unittest.mock import patch

import numpy as np
import pytest

from layer_cases import one_op
from runtime.backends.cpu import conv, conv_direct, vector
from runtime.errors import UsageError


@pytest.mark.parametrize("features, lanes", [
    ("+avx512f,+avx512bw,+avx2,+avx,+fma,+sse2", 16),
    ("+avx2,+avx,+fma,+sse2,-avx512f", 8),
    ("+avx,+sse2,-avx2", 8),
    ("+sse2,+sse4.1,-avx", 4),
    ("+neon", 4),
])
def test_lanes_follow_the_features_numba_compiles_for(monkeypatch, features, lanes):
    monkeypatch.delenv("ARCHC_VECTOR_LANES", raising=False)
    with patch.object(vector.numba_config, "CPU_FEATURES", features):
        assert vector.host_lanes() == lanes


def test_the_geometry_follows_the_lanes():
    with patch.object(vector, "LANES", 16):
        assert (vector.tile_width(), vector.registers(), vector.weight_grad_lanes()) == \
            (32, 32, 16)
        assert conv_direct.tile_rows(64) == 8 and conv_direct.tile_rows(16) == 4
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
