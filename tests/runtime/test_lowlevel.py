"""The CPU kernels' two intrinsics: a unit-stride row retyped as contiguous (writes reach
the array it came from; a strided view is refused), and a stack buffer."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from runtime.backends.activations import activation_code
from runtime.backends.cpu.elementwise import activate_inplace
from runtime.backends.cpu.lowlevel import stack_buffer, unit_stride


@njit
def _add_one_to_rows(block):
    for r in range(block.shape[0]):
        row = unit_stride(block[r])
        for i in range(row.size):
            row[i] += 1.0


@njit
def _double_every_other(v):
    unit_stride(v[::2])


@njit
def _sum_through_stack(v):
    buf = stack_buffer(8, np.float64)
    for i in range(8):
        buf[i] = 0.0
    for i in range(v.size):
        buf[i % 8] += v[i]
    total = 0.0
    for i in range(8):
        total += buf[i]
    return total


def test_unit_stride_rows_write_through_to_the_array():
    a = np.zeros((4, 3, 10), dtype=np.float32)
    _add_one_to_rows(a[1, :, 2:7])  # a 2-d view: rows of unit stride at a run-time pitch
    expected = np.zeros_like(a)
    expected[1, :, 2:7] = 1.0
    np.testing.assert_array_equal(a, expected)


def test_unit_stride_refuses_a_strided_view():
    with pytest.raises(ValueError, match="not contiguous"):
        _double_every_other(np.zeros(10))


def test_fused_activation_on_a_view_of_rows():
    y = np.linspace(-8, 8, 60, dtype=np.float32).reshape(3, 20)
    code, slope = activation_code("relu6", {})
    view = y[:, 5:15]
    before = y.copy()
    for r in range(3):
        activate_inplace(view[r], code, slope)
    expected = before.copy()
    expected[:, 5:15] = np.clip(before[:, 5:15], 0, 6)
    np.testing.assert_array_equal(y, expected)


def test_stack_buffer_holds_its_values():
    v = np.arange(37, dtype=np.float64)
    assert _sum_through_stack(v) == v.sum()
