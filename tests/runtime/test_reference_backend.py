"""The reference backend (plain NumPy) against PyTorch: every op on hypothesis-drawn shapes
and attributes, in float64 so that any difference is a semantic one, and whole networks
against their PyTorch twins with the same weights."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import archc
import torch_models
import torch_twins
from archc.layers import REGISTRY
from conftest import SPECS
from runtime.backends.reference import KERNELS
from runtime.context import KernelContext
from runtime.params import WeightsError, init_params
from layer_cases import draw_op, randomized

OPS = sorted(op for op, layer in REGISTRY.items() if not layer.internal and op != "max_unpool2d")


@pytest.mark.parametrize("op", OPS)
@settings(max_examples=25)
@given(data=st.data())
def test_op_forward_matches_pytorch(op, data):
    attrs, in_shapes, prog_op, program, rng = draw_op(data, op)
    params = randomized(init_params(program, seed=1), rng)  # scales, shifts, statistics too
    # wide enough to reach every saturation point (relu6 at 6, hardswish at +-3)
    xs = [4 * rng.standard_normal((2,) + tuple(s)) for s in in_shapes]
    ours = KERNELS[op](prog_op, xs, params, KernelContext(rng=rng))

    mod = torch_twins.module(op, attrs, in_shapes)
    with torch.no_grad():
        if mod is not None:
            mod = mod.double().eval()
            state = mod.state_dict()
            for key in state:
                state[key].copy_(torch.as_tensor(params[key]))
        theirs = torch_twins.apply(op, attrs, mod, [torch.as_tensor(x) for x in xs]).numpy()
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-9)


def test_max_unpool_puts_values_back_where_the_pool_found_them():
    text = """input: {channels: 2, height: 7, width: 7}
layers:
  - max_pool2d: {kernel_size: 2, stride: 2}
    name: pool
  - max_unpool2d: 2
    inputs: [-1, pool, input]
"""
    model = archc.compile(archc.load("u.yaml", text=text), dtype="float64")
    x = np.random.default_rng(0).standard_normal((3, 2, 7, 7))
    pooled, idx = torch.nn.functional.max_pool2d(torch.as_tensor(x), 2, 2, return_indices=True)
    expected = torch.nn.functional.max_unpool2d(pooled, idx, 2, 2, output_size=[7, 7])
    np.testing.assert_allclose(model(x), expected.numpy())


def test_batchnorm_train_mode_matches_pytorch_and_updates_running_stats():
    graph = archc.load("bn.yaml", text="input: {channels: 3, height: 4, width: 5}\n"
                       "layers: [{batchnorm2d: {momentum: 0.2}}]\n")
    model = archc.compile(graph, dtype="float64").train()
    twin = torch.nn.BatchNorm2d(3, momentum=0.2).double().train()
    x = np.random.default_rng(1).standard_normal((6, 3, 4, 5)) * 3 + 1
    for _ in range(2):
        ours = model(x)
        theirs = twin(torch.as_tensor(x)).detach().numpy()
        np.testing.assert_allclose(ours, theirs, atol=1e-10)
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        np.testing.assert_allclose(model.parameters()[f"batchnorm2d.{key}"],
                                   getattr(twin, key).numpy(), atol=1e-12)


def test_dropout_in_training_and_inference():
    graph = archc.load("d.yaml", text="input: {features: 20000}\nlayers: [{dropout: 0.3}]\n")
    model = archc.compile(graph, seed=3)
    x = np.ones((2, 20000), np.float32)
    assert np.array_equal(model.eval()(x), x)
    y = model.train()(x)
    assert abs((y == 0).mean() - 0.3) < 0.02
    assert np.allclose(y[y != 0], 1 / 0.7) and abs(y.mean() - 1) < 0.03


def copy_into(twin: torch.nn.Module, params: dict) -> None:
    state = twin.state_dict()
    assert set(state) == set(params)
    with torch.no_grad():
        for key, tensor in state.items():
            tensor.copy_(torch.as_tensor(params[key]))


@pytest.mark.parametrize("spec, twin, variables, size", [
    ("lenet5", torch_models.LeNet5, {}, 32),
    ("resnet18", torch_models.ResNet, {"resolution": 64}, 64),
    ("googlenet", torch_models.GoogLeNet, {"resolution": 64}, 64),
    ("unet", torch_models.UNet, {"resolution": 64, "padding": 1}, 64),
])
def test_network_matches_its_hand_written_pytorch_twin(spec, twin, variables, size):
    """Independent structure: the twins are written from torchvision's code, and the
    parameters move across by name (state_dict keys)."""
    model = archc.compile(archc.load(SPECS / f"{spec}.yaml", **variables), seed=0)
    torch_model = twin().eval()
    copy_into(torch_model, model.parameters())
    channels = next(iter(model.program.inputs.values()))[0]
    x = np.random.default_rng(0).standard_normal((2, channels, size, size)).astype(np.float32)
    with torch.no_grad():
        expected = torch_model(torch.as_tensor(x)).numpy()
    ours = model(x)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("spec, variables", [
    ("mobilenet_v2", {"resolution": 64}),
    ("efficientnet", {"resolution": 64}),
    ("convnext_tiny", {"resolution": 64}),
    ("shufflenet_v2", {"resolution": 64}),
    ("densenet121", {"resolution": 64}),
    ("squeezenet1_1", {"resolution": 64}),
    ("deeplab", {"resolution": 64}),
    ("yolo", {"S": 2}),
])
def test_network_matches_a_pytorch_twin_of_its_graph(spec, variables):
    graph = archc.load(SPECS / f"{spec}.yaml", **variables)
    model = archc.compile(graph, seed=0)
    twin = torch_twins.TorchGraph(graph).eval()
    state = twin.state_dict()  # keys "layers.<node name with / for .>.<role>"
    with torch.no_grad():
        for key, tensor in state.items():
            layer, role = key.split(".", 1)[1].rsplit(".", 1)
            tensor.copy_(torch.as_tensor(model.parameters()[layer.replace("/", ".") + "." + role]))
    assert len(state) == len(model.parameters())
    shape = next(iter(model.program.inputs.values()))
    x = np.random.default_rng(1).standard_normal((2,) + shape).astype(np.float32)
    with torch.no_grad():
        values = twin(torch.as_tensor(x))
    (name,) = graph.outputs.values()
    expected = values[name].numpy()
    np.testing.assert_allclose(model(x), expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())


CONVNEXT_BLOCK = """
input: {channels: 6, height: 5, width: 4}
layers:
  - conv2d: {out_channels: 6, kernel_size: 7, padding: 3, groups: 6}
    name: dwconv
  - permute: [0, 2, 3, 1]
  - layernorm: {eps: 1.0e-6}
    name: norm
  - linear: 24
    name: pwconv1
  - gelu
  - linear: 6
    name: pwconv2
  - permute: [0, 3, 1, 2]
  - add: [-1, input]
"""


class TorchConvNeXtBlock(torch.nn.Module):
    """torchvision's CNBlock without layer scale and stochastic depth, as it is written."""

    def __init__(self, dim):
        super().__init__()
        nn = torch.nn
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1, self.pwconv2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(torch.nn.functional.gelu(self.pwconv1(self.norm(y))))
        return y.permute(0, 3, 1, 2) + x


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_a_channels_last_block_matches_torchvisions_way_of_writing_it(backend):
    """layernorm and linear over the last axis of a permuted map: PyTorch's LayerNorm and
    Linear there, forward and backward, with the same (out, in) weights."""
    model = archc.compile(archc.load("cn.yaml", text=CONVNEXT_BLOCK), backend=backend, seed=4)
    twin = TorchConvNeXtBlock(6).double()
    assert {k: tuple(v.shape) for k, v in twin.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in model.params.items()}
    with torch.no_grad():
        for key, value in twin.state_dict().items():
            value.copy_(torch.as_tensor(model.params[key]))
    x = np.random.default_rng(0).standard_normal((2, 6, 5, 4))
    xt = torch.tensor(x, requires_grad=True)
    expected = twin(xt)
    model.train()
    ours = model(x.astype(model.dtype))
    tol = 1e-9 if model.dtype == np.float64 else 2e-5
    np.testing.assert_allclose(ours, expected.detach().numpy(), rtol=tol, atol=tol)
    gy = np.random.default_rng(1).standard_normal(ours.shape)
    expected.backward(torch.as_tensor(gy))
    grads = model.backward(gy.astype(model.dtype))
    np.testing.assert_allclose(grads.input, xt.grad.numpy(), rtol=tol * 10, atol=tol * 10)
    for name, param in twin.named_parameters():
        np.testing.assert_allclose(grads.params[name], param.grad.numpy(), rtol=tol * 10,
                                   atol=tol * 10, err_msg=name)


def test_weights_round_trip_and_errors(tmp_path):
    model = archc.compile(archc.load(SPECS / "lenet5.yaml"), seed=5)
    path = model.save(tmp_path / "w.npz")
    other = archc.compile(archc.load(SPECS / "lenet5.yaml"), seed=6)
    other.load(path)
    x = np.ones((1, 1, 32, 32), np.float32)
    assert np.array_equal(model(x), other(x))
    bigger = archc.compile(archc.load(SPECS / "lenet5.yaml", num_classes=12))
    with pytest.raises(WeightsError, match=r"wrong shape: fc3.bias \(10,\) \(expected \(12,\)\)"):
        bigger.load(path)
    np.savez(tmp_path / "bad.npz", nope=np.zeros(3))
    with pytest.raises(WeightsError, match="missing: c1.bias"):
        model.load(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(WeightsError, match=r"is not a NumPy array \(.npy\) nor an .npz file"):
        model.load(tmp_path / "junk.npz")


def test_compile_takes_given_weights_and_checks_them():
    graph = archc.load(SPECS / "lenet5.yaml")
    weights = archc.compile(graph, seed=5).params
    given = {k: v.astype(np.float64) for k, v in weights.items()}
    model = archc.compile(graph, backend="cpu", params=given)
    x = np.ones((2, 1, 32, 32), np.float32)
    assert np.array_equal(model(x), archc.compile(graph, backend="cpu", seed=5)(x))
    assert model.params["c1.weight"].dtype == np.float32  # converted, a copy
    model.params["c1.weight"][...] = 0
    assert given["c1.weight"].any()
    del given["fc3.bias"]
    given["fc4.weight"] = np.zeros(1)
    with pytest.raises(WeightsError, match=re.escape(
            "the dict of parameters does not fit lenet5: missing: fc3.bias | unexpected: "
            "fc4.weight")):
        archc.compile(graph, params=given)


def test_initialisation_follows_pytorch():
    model = archc.compile(archc.load(SPECS / "resnet18.yaml"), seed=0)
    p = model.parameters()
    bound = 1 / np.sqrt(3 * 7 * 7)
    w = p["conv1.weight"]
    assert w.dtype == np.float32 and np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert np.all(p["bn1.weight"] == 1) and np.all(p["bn1.bias"] == 0)
    assert np.all(p["bn1.running_var"] == 1) and p["bn1.num_batches_tracked"].dtype == np.int64
    again = archc.compile(archc.load(SPECS / "resnet18.yaml"), seed=0).parameters()
    assert all(np.array_equal(p[k], again[k]) for k in p)


# ----------------------------------------------------------------------------- backward
@pytest.mark.parametrize("op", OPS)
@settings(max_examples=20)
@given(data=st.data())
def test_op_gradients_match_pytorch_autograd(op, data):
    from runtime.backends.reference_backward import BACKWARD

    attrs, in_shapes, prog_op, program, rng = draw_op(data, op)
    train = data.draw(st.booleans()) and op in ("batchnorm2d", "batchnorm1d")
    assume(not (train and op == "batchnorm1d"))  # 1-d batch norm needs a batch > 1: fine, 2
    params = randomized(init_params(program, seed=1), rng)
    xs = [4 * rng.standard_normal((3,) + tuple(s)) for s in in_shapes]
    ctx = KernelContext(train=train, rng=rng)
    y = KERNELS[op](prog_op, xs, {k: v.copy() for k, v in params.items()}, ctx)
    # a max-pool window lying wholly in the padding (-inf out): PyTorch 2.13's CPU backward
    # then scatters through index -1 and corrupts the heap; test_empty_max_pool_window covers it
    assume(not np.isneginf(y).any())
    gy = rng.standard_normal(y.shape)
    gxs, gps = BACKWARD[op](prog_op, xs, y, gy, params, ctx)

    mod = torch_twins.module(op, attrs, in_shapes)
    txs = [torch.tensor(x, requires_grad=True) for x in xs]
    if mod is not None:
        mod = mod.double().train(train)
        with torch.no_grad():
            state = mod.state_dict()
            for key in state:
                state[key].copy_(torch.as_tensor(params[key]))
    out = torch_twins.apply(op, attrs, mod, txs)
    out.backward(torch.as_tensor(gy))
    for ours, theirs in zip(gxs, txs):
        if ours is not None:
            expected = theirs.grad if theirs.grad is not None else torch.zeros_like(theirs)
            np.testing.assert_allclose(ours, expected.numpy(), rtol=1e-7, atol=1e-7)
    if mod is not None:
        for name, param in mod.named_parameters():
            np.testing.assert_allclose(gps[name], param.grad.numpy(), rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_empty_max_pool_window(backend):
    # width 1, kernel 2 dilated by 2, padding 1: the taps fall at -1 and 1, both padding.
    # PyTorch gives -inf there (its backward then writes out of bounds); archc gives -inf
    # and sends no gradient anywhere.
    text = """input: {channels: 1, height: 3, width: 1}
layers:
  - max_pool2d: {kernel_size: [1, 2], padding: [0, 1], dilation: [1, 2]}
"""
    model = archc.compile(archc.load("net.yaml", text=text), backend=backend, dtype="float64")
    x = np.random.default_rng(0).standard_normal((2, 1, 3, 1))
    y = model(x)
    expected = torch.nn.functional.max_pool2d(torch.tensor(x), (1, 2), None, (0, 1), (1, 2))
    np.testing.assert_array_equal(y, expected.numpy())
    assert y.shape == (2, 1, 3, 1) and np.isneginf(y).all()
    assert not model.backward(np.ones_like(y)).input.any()


def test_max_unpool_and_pool_gradients():
    text = """input: {channels: 2, height: 7, width: 7}
layers:
  - max_pool2d: {kernel_size: 3, stride: 2, padding: 1}
    name: pool
  - max_unpool2d: {kernel_size: 3, stride: 2, padding: 1}
    inputs: [-1, pool, input]
"""
    model = archc.compile(archc.load("u.yaml", text=text), dtype="float64")
    x = np.random.default_rng(0).standard_normal((2, 2, 7, 7))
    y = model(x)
    gy = np.random.default_rng(1).standard_normal(y.shape)
    grads = model.backward(gy)
    tx = torch.tensor(x, requires_grad=True)
    pooled, idx = torch.nn.functional.max_pool2d(tx, 3, 2, 1, return_indices=True)
    out = torch.nn.functional.max_unpool2d(pooled, idx, 3, 2, 1, output_size=[7, 7])
    out.backward(torch.as_tensor(gy))
    np.testing.assert_allclose(grads.input, tx.grad.numpy())


def test_finite_differences_through_a_branching_network():
    """Autograd over the program: fan-out accumulates, train-mode batch norm, frozen layers."""
    text = """input: {channels: 2, height: 6, width: 6}
layers:
  - conv2d: [3, 3, 1, 1]
    name: a
  - batchnorm2d
  - gelu
  - conv2d: [3, 1]
    input: a
    name: b
  - add: [-1, -2, a]
  - avg_pool2d: 2
  - flatten
  - linear: 4
    trainable: false
  - softmax
"""
    model = archc.compile(archc.load("g.yaml", text=text), dtype="float64", seed=2).train()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 6, 6))
    gy = rng.standard_normal((3, 4))

    def loss(xv, params=None):
        saved = {k: v.copy() for k, v in model.params.items()}
        if params:
            model.params.update(params)
        value = float((model(xv) * gy).sum())
        model.params = saved
        return value

    model(x)
    grads = model.backward(gy)
    assert "linear.weight" not in grads.params  # frozen
    eps = 1e-6
    for _ in range(6):  # random input coordinates
        idx = tuple(rng.integers(0, s) for s in x.shape)
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        numeric = (loss(xp) - loss(xm)) / (2 * eps)
        assert abs(numeric - grads.input[idx]) < 1e-6 * max(1, abs(numeric))
    for name in ("a.weight", "b.bias", "batchnorm2d.weight"):
        value = model.params[name]
        idx = tuple(rng.integers(0, s) for s in value.shape)
        plus, minus = value.copy(), value.copy()
        plus[idx] += eps
        minus[idx] -= eps
        numeric = (loss(x, {name: plus}) - loss(x, {name: minus})) / (2 * eps)
        assert abs(numeric - grads.params[name][idx]) < 1e-6 * max(1, abs(numeric)), name


@pytest.mark.parametrize("spec, twin, variables, size", [
    ("lenet5", torch_models.LeNet5, {}, 32),
    ("resnet18", torch_models.ResNet, {"resolution": 64}, 64),
])
def test_network_gradients_match_pytorch(spec, twin, variables, size):
    model = archc.compile(archc.load(SPECS / f"{spec}.yaml", **variables), seed=0).train()
    torch_model = twin().train()
    copy_into(torch_model, model.parameters())
    x = np.random.default_rng(0).standard_normal((2, torch_model_channels(model), size, size))
    x = x.astype(np.float32)
    y = model(x)
    gy = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    grads = model.backward(gy)
    tx = torch.tensor(x, requires_grad=True)
    torch_model(tx).backward(torch.as_tensor(gy))
    scale = np.abs(tx.grad.numpy()).max()
    np.testing.assert_allclose(grads.input, tx.grad.numpy(), atol=1e-4 * scale, rtol=1e-3)
    for name, param in torch_model.named_parameters():
        ref = param.grad.numpy()
        np.testing.assert_allclose(grads.params[name], ref, rtol=1e-3,
                                   atol=1e-4 * np.abs(ref).max() + 1e-7, err_msg=name)


def torch_model_channels(model) -> int:
    return next(iter(model.program.inputs.values()))[0]


def test_backward_needs_a_forward_pass():
    model = archc.compile(archc.load(SPECS / "lenet5.yaml"))
    with pytest.raises(RuntimeError, match="forward pass first"):
        model.backward(np.ones((1, 10)))
