"""Weights packed for the CPU kernels (runtime.packing): made once, reused while the
parameters stay the same, and never stale after an optimiser step, a new set of
parameters, a load, or an in-place change followed by sync()."""

from __future__ import annotations

import numpy as np

import archc
from runtime.backends.cpu import conv
from runtime.train import optim

SPEC = """input: {channels: 4, height: 9, width: 9}
layers:
  - conv2d: {out_channels: 6, kernel_size: 3, padding: 1, activation: relu}
  - conv2d: {out_channels: 5, kernel_size: 3, padding: 1}
"""


def _models():
    graph = archc.load("packed.yaml", text=SPEC)
    return (archc.compile(graph, backend="cpu", seed=0).eval(),
            archc.compile(graph, backend="reference", seed=0, dtype="float64").eval())


def _x():
    return np.random.default_rng(0).standard_normal((2, 4, 9, 9)).astype(np.float32)


def _same(model, ref, x):
    ref.params = {k: v.astype(np.float64) for k, v in model.params.items()}
    np.testing.assert_allclose(model.predict(x), ref(x.astype(np.float64)), rtol=1e-4,
                               atol=1e-4)


def test_weights_are_packed_once_and_reused(monkeypatch):
    model, ref = _models()
    assert all(conv.choose(op)[0] == "direct" for op in model.program.ops)
    made = []
    pack = conv.pack_filters
    monkeypatch.setattr(conv, "pack_filters", lambda w, groups: made.append(w.shape) or
                        pack(w, groups))
    x = _x()
    first = model.predict(x)
    assert len(made) == 2  # one pack per conv
    np.testing.assert_array_equal(model.predict(x), first)
    model(x)
    assert len(made) == 2  # reused by later passes, with or without a tape
    _same(model, ref, x)


def test_an_optimizer_step_makes_the_packs_stale():
    model, ref = _models()
    x = _x()
    model.predict(x)
    # an optimiser holding the arrays, stepping while the model stays in eval mode
    opt = optim.SGD(model.device_params(), lr=0.5)
    model.predict(x)  # packs again after device_params(), then the step changes the weights
    y = model(x)
    grads = model.backward(np.ones_like(y)).params
    opt.step(grads)
    _same(model, ref, x)


def test_new_parameters_loads_and_synced_changes_repack(tmp_path):
    model, ref = _models()
    x = _x()
    model.predict(x)
    other = archc.compile(archc.load("packed.yaml", text=SPEC), backend="cpu", seed=7)
    model.params = {k: v.copy() for k, v in other.params.items()}
    _same(model, ref, x)
    path = tmp_path / "w.npz"
    archc.compile(archc.load("packed.yaml", text=SPEC), backend="cpu", seed=9).save(path)
    model.load(path)
    _same(model, ref, x)
    name = next(k for k in model.params if k.endswith("weight"))
    model.params[name][...] *= -2  # in place: the documented contract is sync() after it
    model.sync()
    _same(model, ref, x)
