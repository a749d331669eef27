"""Layers that share weights (``shares:``): one head applied to several feature maps, as
Faster R-CNN's RPN head and RetinaNet's heads run over every pyramid level. The sharer
holds no parameters of its own; training adds the gradients of every use."""

from __future__ import annotations

import numpy as np
import pytest

import archc

SPEC = """
name: shared_head
inputs:
  a: {channels: 4, height: 8, width: 8}
  b: {channels: 4, height: 4, width: 4}
blocks:
  head:
    layers:
      - conv2d: [4, 3, 1, 1]
        name: conv
      - relu
      - conv2d: [3, 1]
        name: logits
layers:
  - head:
    input: a
    name: head_a
  - head:
    input: b
    name: head_b
    shares: head_a
  - conv2d: [3, 1]
    input: head_b
    name: single
  - conv2d: [3, 1]
    input: head_a
    shares: single
outputs: {ya: conv2d, yb: single}
"""


def test_a_sharer_counts_no_parameters_and_reads_its_owners():
    graph = archc.load("s.yaml", text=SPEC)
    assert graph["head_b.conv"].shares == "head_a.conv"
    assert graph["conv2d"].shares == "single"
    assert graph["head_b.relu"].shares is None  # nothing to share
    report = graph.summary()
    assert report.totals["params"] == (4 * 4 * 9 + 4) + (3 * 4 + 3) + (3 * 3 + 3)
    program = archc.compile(graph).program
    assert not any(name.startswith("head_b.") for name in program.params)
    op = next(op for op in program.ops if op.name == "head_b.logits")
    assert op.params == {"weight": "head_a.logits.weight", "bias": "head_a.logits.bias"}


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradients_of_every_use_add_up_as_in_torch(backend):
    torch = pytest.importorskip("torch")
    graph = archc.load("s.yaml", text=SPEC)
    model = archc.compile(graph, backend=backend, seed=5).train()
    rng = np.random.default_rng(0)
    x = {"a": rng.standard_normal((2, 4, 8, 8)).astype(np.float32),
         "b": rng.standard_normal((2, 4, 4, 4)).astype(np.float32)}
    y = model(x)
    grads = model.backward({k: np.ones_like(v) for k, v in y.items()})
    p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
         for k, v in model.params.items()}

    def head(t):
        t = torch.relu(torch.nn.functional.conv2d(t, p["head_a.conv.weight"],
                                                  p["head_a.conv.bias"], padding=1))
        return torch.nn.functional.conv2d(t, p["head_a.logits.weight"], p["head_a.logits.bias"])

    def single(t):
        return torch.nn.functional.conv2d(t, p["single.weight"], p["single.bias"])

    ha, hb = head(torch.tensor(x["a"], dtype=torch.float64)), \
        head(torch.tensor(x["b"], dtype=torch.float64))
    out = {"ya": single(ha), "yb": single(hb)}
    for key in y:
        np.testing.assert_allclose(y[key], out[key].detach().numpy(), rtol=1e-4, atol=1e-5)
    sum(v.sum() for v in out.values()).backward()
    assert set(grads.params) == set(p)
    for name, t in p.items():
        np.testing.assert_allclose(grads.params[name], t.grad.numpy(), rtol=1e-4, atol=1e-4,
                                   err_msg=name)


def test_sharing_needs_a_counterpart_of_the_same_shapes():
    bad = SPEC.replace("  b: {channels: 4, height: 4, width: 4}",
                       "  b: {channels: 5, height: 4, width: 4}")
    with pytest.raises(archc.SpecError, match="cannot share the weights of 'head_a.conv'"):
        archc.load("s.yaml", text=bad)
    with pytest.raises(archc.SpecError, match="names no earlier layer or block"):
        archc.load("s.yaml", text=SPEC.replace("shares: head_a", "shares: head_c"))
    other = SPEC.replace("    shares: single", "    shares: head_a")
    with pytest.raises(archc.SpecError, match="no counterpart"):
        archc.load("s.yaml", text=other)


def test_weight_rewriting_passes_leave_shared_layers_alone():
    from archc.passes.fold_bn import fold_bn

    text = SPEC.replace("      - relu\n", "      - batchnorm2d\n      - relu\n")
    graph = archc.load("s.yaml", text=text)
    params = archc.compile(graph).params
    result = fold_bn(graph, params, {})
    assert "head_a.batchnorm2d" in result.graph and "head_b.batchnorm2d" in result.graph


def test_onnx_export_writes_shared_weights_once():
    ort = pytest.importorskip("onnxruntime")
    from archc.export.onnx import to_onnx

    graph = archc.load("s.yaml", text=SPEC)
    model = archc.compile(graph, backend="cpu", seed=5).eval()
    proto = to_onnx(graph, model.params)
    assert not any(i.name.startswith("head_b") for i in proto.graph.initializer)
    rng = np.random.default_rng(1)
    x = {"a": rng.standard_normal((1, 4, 8, 8)).astype(np.float32),
         "b": rng.standard_normal((1, 4, 4, 4)).astype(np.float32)}
    session = ort.InferenceSession(proto.SerializeToString())
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, x)))
    for key, value in model.predict(x).items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6)
