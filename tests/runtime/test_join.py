"""FractalNet's join: the mean of its columns in inference, drop-path in training (local:
each input dropped with a probability, one always kept; global: a fraction of the samples
keep one column of the whole network at every join), on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import archc
from runtime.backends import cpu
from runtime.backends.reference import GLOBAL_DROP_PATH, KERNELS, join_weights
from runtime.backends.reference_backward import BACKWARD
from runtime.context import KernelContext
from runtime.program import Op


def _join(k: int, shape=(2, 3, 3), **attrs) -> Op:
    attrs = {"drop_path": 0.0, "global_drop": 0.0, "columns": None, "column_count": None,
             **attrs}
    return Op("j", "join", attrs, tuple(f"x{i}" for i in range(k)), "j", {},
              (shape,) * k, shape)


def test_inference_is_the_mean_whatever_the_drop_rates():
    op = _join(3, drop_path=0.5, global_drop=0.5)
    xs = [np.random.default_rng(i).standard_normal((4, 2, 3, 3)) for i in range(3)]
    y = KERNELS["join"](op, xs, {}, KernelContext(train=False, rng=np.random.default_rng(0)))
    np.testing.assert_allclose(y, sum(xs) / 3)


@pytest.mark.parametrize("rate", [0.15, 0.5, 0.9])
def test_local_drop_path_keeps_at_least_one_input_and_averages_those_kept(rate):
    op = _join(2, drop_path=rate)
    w = join_weights(op, 20000, KernelContext(train=True, rng=np.random.default_rng(1)))
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    assert set(np.unique(w)) <= {0.0, 0.5, 1.0}
    # a row keeps both with (1 - rate)^2; otherwise one, drawn among those kept
    both = (w == 0.5).all(axis=1).mean()
    assert abs(both - (1 - rate) ** 2) < 0.02
    np.testing.assert_allclose(w.mean(axis=0), 0.5, atol=0.02)  # no input favoured


def test_global_drop_path_keeps_one_column_of_the_network_at_every_join():
    """Two joins of one network in one pass: a sample drawn for global drop-path keeps
    the same column at both (a join that has no input from it keeps its local draw)."""
    ctx = KernelContext(train=True, rng=np.random.default_rng(2))
    inner = _join(2, drop_path=0.15, global_drop=0.5, columns=[1, 2], column_count=3)
    outer = _join(3, drop_path=0.15, global_drop=0.5, columns=[0, 1, 2], column_count=3)
    w_inner, w_outer = join_weights(inner, 4000, ctx), join_weights(outer, 4000, ctx)
    chosen, column = ctx.saved[GLOBAL_DROP_PATH]
    assert abs(chosen.mean() - 0.5) < 0.05
    assert set(np.unique(column[chosen])) == {0, 1, 2}
    np.testing.assert_array_equal(w_outer[chosen], np.eye(3)[column[chosen]])
    on_inner = chosen & (column >= 1)
    np.testing.assert_array_equal(w_inner[on_inner], np.eye(2)[column[on_inner] - 1])
    # the rest keep the local rule: most rows average both inputs
    assert (w_outer[~chosen] > 0).all(axis=1).mean() > 0.5


def test_the_gradient_is_each_inputs_weight_by_central_differences():
    op = _join(3, drop_path=0.4, global_drop=0.3)
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((5, 2, 3, 3)) for _ in range(3)]
    gy = rng.standard_normal((5, 2, 3, 3))

    def loss(values):  # the same draw each time: the same generator seed
        ctx = KernelContext(train=True, rng=np.random.default_rng(7))
        return float((KERNELS["join"](op, values, {}, ctx) * gy).sum()), ctx

    value, ctx = loss(xs)
    grads, _ = BACKWARD["join"](op, xs, None, gy, {}, ctx)
    eps = 1e-6
    for i in range(3):
        for index in [(0, 0, 0, 0), (2, 1, 2, 1), (4, 1, 1, 2)]:
            up = [x.copy() for x in xs]
            down = [x.copy() for x in xs]
            up[i][index] += eps
            down[i][index] -= eps
            numeric = (loss(up)[0] - loss(down)[0]) / (2 * eps)
            assert grads[i][index] == pytest.approx(numeric, rel=1e-6, abs=1e-8)


def test_the_cpu_kernel_draws_what_the_reference_draws():
    op = _join(3, drop_path=0.3, global_drop=0.4)
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal((6, 2, 3, 3)).astype(np.float32) for _ in range(3)]
    ref_ctx = KernelContext(train=True, rng=np.random.default_rng(9))
    cpu_ctx = KernelContext(train=True, rng=np.random.default_rng(9))
    want = KERNELS["join"](op, xs, {}, ref_ctx)
    got = cpu.KERNELS["join"](op, xs, {}, cpu_ctx)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    gy = rng.standard_normal(want.shape).astype(np.float32)
    for a, b in zip(cpu.BACKWARD["join"](op, xs, got, gy, {}, cpu_ctx)[0],
                    BACKWARD["join"](op, xs, want, gy, {}, ref_ctx)[0]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


FRACTAL = """
input: {channels: 1, height: 8, width: 8}
layers:
  - conv2d: [4, 3, 1, 1]
    name: stem
  - conv2d: [4, 3, 1, 1]
    name: deep1
  - conv2d: [4, 3, 1, 1]
    name: deep2
  - conv2d: [4, 3, 1, 1]
    name: shallow
    inputs: [stem]
  - join: {drop_path: 0.5, global_drop: 0.5}
    inputs: [shallow, deep2]
  - global_avg_pool2d
  - flatten
  - linear: 3
"""


def test_a_network_with_drop_path_trains_and_predicts_the_mean():
    """In training, two passes over one batch differ (new draws) and gradients reach both
    columns; in inference the output is fixed."""
    graph = archc.load("f.yaml", text=FRACTAL)
    model = archc.compile(graph, backend="cpu", seed=0, dtype="float64")
    x = np.random.default_rng(5).standard_normal((16, 1, 8, 8))
    model.train()
    a, b = model(x), model(x)
    assert not np.allclose(a, b)
    grads = model.backward(np.ones_like(b))
    assert np.abs(grads.params["deep1.weight"]).sum() > 0
    assert np.abs(grads.params["shallow.weight"]).sum() > 0
    model.eval()
    np.testing.assert_allclose(model.predict(x), model.predict(x))
