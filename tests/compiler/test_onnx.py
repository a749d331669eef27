"""ONNX: archc's exports checked by programs no one here wrote (onnx's full checker,
onnxruntime), read back to the same graph; models exported by PyTorch read into archc."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import archc
from archc.cli import main
from archc.errors import OnnxError
from archc.export import from_onnx, to_onnx
from archc.export.onnx import emitters
from archc.layers import REGISTRY
from archc.naming import torch_names
from archc.optimize import initial_params, optimize
from archc.passes import preset
from conftest import LIBRARY, LIBRARY_SMALL, SPECS
from graphs import assert_same_graph
from torch_models import ResNet

TOLERANCE = 1e-4  # relative to the output's largest magnitude


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def _session(model: onnx.ModelProto | bytes) -> ort.InferenceSession:
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def _onnxruntime(model: onnx.ModelProto | ort.InferenceSession, x: np.ndarray) -> list:
    session = model if isinstance(model, ort.InferenceSession) else _session(model)
    return session.run(None, {session.get_inputs()[0].name: x})


def _archc(graph, params, x, model=None) -> list[np.ndarray]:
    if model is None:
        model = archc.compile(graph, backend="cpu", params=params)
    out = model.predict(x)
    return [out[k] for k in graph.outputs] if isinstance(out, dict) else [out]


def _without_counters(params: dict) -> dict:
    """ONNX has no use for batch norm's num_batches_tracked; import sets it to 0."""
    return {k: v for k, v in params.items() if not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize("spec", LIBRARY)
def test_every_library_network_runs_in_onnxruntime_and_reads_back(spec):
    """Random weights, eval mode, as written and after -O2: the full checker passes,
    onnxruntime agrees with archc at two batch sizes (the batch is symbolic), and import
    gives back the same graph and weights."""
    graph = archc.load(SPECS / f"{spec}.yaml", **LIBRARY_SMALL.get(spec, {}))
    if len(graph.inputs) > 1 or any(n.shares for n in graph):
        pytest.skip("boxes as a second input, or shared weights: import reads neither back "
                    "(NOT_READ); tests/runtime/test_roi.py runs the detectors in ONNX Runtime")
    params = initial_params(graph, None, seed=1)  # batch-norm statistics randomised
    optimised = optimize(graph, preset(2), params)
    rng = np.random.default_rng(0)
    shape = graph[graph.inputs[0]].shape
    for g, p in ((graph, params), (optimised.graph, optimised.params)):
        model = to_onnx(g, p)
        data = model.SerializeToString()
        onnx.checker.check_model(data, full_check=True)
        assert [i.name for i in model.graph.input] == g.inputs
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
        session, runtime = _session(data), archc.compile(g, backend="cpu", params=p)
        for batch in (1, 3):
            x = rng.standard_normal((batch,) + shape).astype(np.float32)
            for got, want in zip(_onnxruntime(session, x), _archc(g, p, x, runtime),
                                 strict=True):
                assert got.shape == want.shape
                assert _relative(got, want) < TOLERANCE
        back, weights = from_onnx(data)
        assert_same_graph(back, g)
        assert torch_names(back) == torch_names(g)  # PyTorch's names (mobilenet_v2's rules)
        assert set(weights) == set(p)
        changed = [k for k, v in _without_counters(p).items() if not np.array_equal(weights[k], v)]
        assert not changed, f"weights read back differ: {changed}"


def test_every_layer_type_has_an_onnx_form():
    missing = [op for op in REGISTRY if op != "input" and op not in emitters.EMITTERS]
    assert not missing, f"layer types without an ONNX emitter: {missing}"


LAYER_ZOO = """
name: zoo
input: {channels: 4, height: 12, width: 10}
layers:
  - name: a
    conv2d: {out_channels: 8, kernel_size: 3, padding: same, activation: {leaky_relu: 0.2}}
  - {name: p, max_pool2d: {kernel_size: 2, ceil_mode: true}}
  - {name: u, max_unpool2d: {kernel_size: 2, output_size: [12, 10]}, inputs: [p, p]}
  - {name: g, gelu: {approximate: tanh}}
  - {name: t, conv_transpose2d: {out_channels: 6, kernel_size: 3, stride: 2, padding: 1,
       output_padding: 1, groups: 2}}
  - {name: n, batchnorm2d: {track_running_stats: false}}
  - {name: lrn, local_response_norm: {size: 4}}
  - {name: ln, layernorm2d: {elementwise_affine: false}}
  - {name: bed, unpool2d: {kernel_size: 2, mode: bed_of_nails}, inputs: [a]}
  - {name: near, unpool2d: {kernel_size: [1, 2]}, inputs: [a]}
  - {name: up, upsample: {size: [7, 9], mode: bilinear, align_corners: true}, inputs: [a]}
  - {name: up2, upsample: {scale_factor: 1.5}, inputs: [a]}
  - {name: amax, adaptive_max_pool2d: [5, 3], inputs: [a]}
  - {name: gmax, global_max_pool2d, inputs: [a]}
  - {name: crop, center_crop, inputs: [t, up]}
  - {name: sh, channel_shuffle: 2, inputs: [crop]}
  - {name: hs, hardswish}
  - {name: sp, softplus: 2.0}
  - {name: j, join: {drop_path: 0.2, global_drop: 0.5, columns: [2, 0], column_count: 3},
     inputs: [hs, sp]}
  - {name: mi, mish}
  - {name: hsig, hardsigmoid}
  - {name: sq, multiply: [hsig, hsig]}
  - {name: half, slice: {start: 1, end: 4}}
  - {name: perm, permute: [0, 1, 3, 2]}
  - {name: flat, flatten: {start_dim: 2}}
  - {name: sm, softmax: {dim: 2}}
  - {name: vec, flatten, inputs: [gmax]}
  - {name: bn1, batchnorm1d: {affine: false}}
  - {name: lnorm, layernorm}
  - {name: fc, linear: {out_features: 6, bias: false, activation: relu6}}
  - {name: sd, stochastic_depth: {p: 0.2, mode: batch}}
  - {name: r, reshape: [2, 3], trainable: false}
  - {name: last, permute: [0, 2, 3, 1], inputs: [a]}
  - {name: lnl, layernorm: {eps: 1.0e-6}}
  - {name: fcl, linear: {out_features: 5, activation: gelu}}
  - {name: first, permute: [0, 3, 1, 2]}
outputs: {probs: sm, rows: r, pooled: amax, channels_last: first}
"""


def test_every_kind_of_layer_through_onnxruntime_and_back():
    """The layer types the library specs do not use, with non-default attributes: an
    unpooling fed by its pool's indices, even-sized LRN, ceil-mode pooling, batch norm
    without running statistics, several named outputs, a frozen layer."""
    graph = archc.load("zoo.yaml", text=LAYER_ZOO)
    assert {n.op for n in graph} | {"input"} >= set(REGISTRY) - {
        "avg_pool2d", "adaptive_avg_pool2d", "global_avg_pool2d", "conv2d", "relu",
        "silu", "sigmoid", "tanh", "dropout", "identity", "add", "concat", "layer_scale",
        "leaky_relu", "relu6",  # (these two here as fused activations)
        "roi_align", "roi_pool"}  # need a boxes input: tests/runtime/test_roi.py
    params = initial_params(graph, None, seed=2)
    model = to_onnx(graph, params)
    onnx.checker.check_model(model, full_check=True)
    assert [o.name for o in model.graph.output] == ["probs", "rows", "pooled", "channels_last"]
    x = np.random.default_rng(1).standard_normal((2, 4, 12, 10)).astype(np.float32)
    for got, want in zip(_onnxruntime(model, x), _archc(graph, params, x), strict=True):
        assert _relative(got, want) < TOLERANCE
    back, weights = from_onnx(model.SerializeToString())
    assert_same_graph(back, graph)
    assert not back["r"].trainable


@pytest.mark.parametrize("spec", ["resnet18", "shufflenet_v2", "mobilenet_v2", "unet"])
def test_import_without_archcs_notes_reads_the_operators(spec):
    """Stripped of archc's per-layer notes (as after a tool that rewrites doc strings), the
    operators alone give a network with the same outputs and the same layer names."""
    graph = archc.load(SPECS / f"{spec}.yaml", **{"resolution": 64} if spec != "unet" else
                       {"resolution": 188})
    params = initial_params(graph, None, seed=3)
    model = to_onnx(graph, params)
    for node in model.graph.node:
        node.doc_string = ""
    back, weights = from_onnx(model.SerializeToString())
    # (dropout reads back as identity, a centre crop as two slices)
    assert {n.name for n in graph if n.op not in ("dropout", "stochastic_depth")} <= \
        {n.name for n in back}
    x = np.random.default_rng(2).standard_normal((2,) + graph[graph.inputs[0]].shape)
    x = x.astype(np.float32)
    assert _relative(_archc(back, {**archc.compile(back).params, **weights}, x)[0],
                     _archc(graph, params, x)[0]) < 1e-5


# ---------------------------------------------------------------- models PyTorch exported

class Zoo(nn.Module):
    """Operators torch.onnx writes for common CNN code: a residual, a concat, a channel
    shuffle by view/transpose, chunk, GELU (Div/Erf/Mul), SiLU (Sigmoid/Mul), Mish (opset 17:
    Softplus/Tanh/Mul), Softplus, upsampling,
    a transposed conv, a batch norm it cannot fold, global pooling by mean()."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.branch = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.norm = nn.BatchNorm2d(8)
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 5))
        self.act = nn.Hardswish()
        self.smooth = nn.Sequential(nn.Mish(), nn.Softplus())

    def forward(self, x):
        x = self.pool(self.stem(x))
        y = torch.cat([x, nn.functional.silu(self.branch(x)) + x], dim=1)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)  # shuffle
        a, b = y.chunk(2, dim=1)
        y = self.norm(self.up(torch.cat([a, torch.sigmoid(b)], dim=1)))
        y = nn.functional.interpolate(self.smooth(self.act(y)), scale_factor=0.5,
                                      mode="bilinear")
        y = nn.functional.avg_pool2d(y, 2, padding=1, count_include_pad=False)
        return torch.softmax(self.head(y.mean(dim=(2, 3))), dim=1)


def _torch_onnx(module: nn.Module, shape) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter warns it is the old one
        torch.onnx.export(module.eval(), torch.zeros((1,) + shape), buffer, dynamo=False,
                          input_names=["image"], output_names=["scores"], opset_version=17,
                          dynamic_axes={"image": {0: "batch"}, "scores": {0: "batch"}})
    return buffer.getvalue()


def _randomise_batchnorm(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)


@pytest.mark.parametrize("build, shape", [(Zoo, (3, 15, 13)),
                                          (lambda: ResNet([1, 1, 1, 1], 10), (3, 64, 64))])
def test_a_torch_model_through_onnx_computes_what_torch_does(build, shape, tmp_path, capsys):
    torch.manual_seed(0)
    module = build()
    _randomise_batchnorm(module)
    path = tmp_path / "model.onnx"
    path.write_bytes(_torch_onnx(module, shape))
    spec, weights = tmp_path / "net.yaml", tmp_path / "net.npz"
    assert main(["import", str(path), "-o", str(spec), "--weights-out", str(weights)]) == 0
    assert f"wrote {spec}" in capsys.readouterr().out
    graph = archc.load(spec)
    model = archc.compile(graph, backend="cpu")
    model.load(weights)
    x = np.random.default_rng(3).standard_normal((4,) + shape).astype(np.float32)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    assert _relative(model.predict(x), want) < TOLERANCE
    # layers are named after PyTorch's modules
    names = {n.name for n in graph}
    assert {"stem.0", "branch", "up", "head.1", "head.3"} <= names or \
        {"conv1", "layer1.0.conv1", "layer4.0.downsample.0", "fc"} <= names
    if build is Zoo:  # torch's Mish (Softplus, Tanh, Mul) reads back as one layer
        assert {n.op for n in graph if n.name.startswith("smooth")} == {"mish", "softplus"}


# ---------------------------------------------------------------- the command line

def test_export_and_import_on_the_command_line(tmp_path, capsys):
    spec = str(SPECS / "lenet5.yaml")
    out = tmp_path / "lenet5.onnx"
    assert main(["export", spec, "--format", "onnx", "-O2", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "as ONNX (opset 17, batch dimension 'batch')" in text
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    assert [n.name for n in model.graph.node][:2] == ["c1", "c1/Tanh_2"]  # fused, then split
    assert "c1.weight" in {t.name for t in model.graph.initializer}
    assert main(["import", str(out), "-o", str(tmp_path / "back.yaml")]) == 0
    assert "back.npz: 10 arrays" in capsys.readouterr().out
    assert main(["run", str(tmp_path / "back.yaml"), "--weights", str(tmp_path / "back.npz"),
                 "--batch", "2"]) == 0


def _one_line_error(capsys, argv: list[str]) -> str:
    """Exit 2, one line saying what is wrong (and at most a hint line), no traceback."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert "error: " in lines[0] and "Traceback" not in captured.err
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("hint: "))
    return captured.err


@pytest.mark.parametrize("content, message", [
    (b"this is plain text, not protobuf", "not an ONNX model: the file does not parse"),
    ("truncated", "not an ONNX model"),
    (b"", "not an ONNX model: the file holds no graph"),
])
def test_a_file_that_is_not_onnx_gets_one_line(content, message, tmp_path, capsys):
    path = tmp_path / "bad.onnx"
    if content == "truncated":
        graph = archc.load(SPECS / "lenet5.yaml")
        data = to_onnx(graph, initial_params(graph, None)).SerializeToString()
        content = data[: len(data) // 2]
    path.write_bytes(content)
    assert message in _one_line_error(capsys, ["import", str(path), "-o", str(tmp_path / "x.yaml")])


def test_an_unsupported_operator_is_named(tmp_path, capsys):
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            return self.conv(x).abs()

    path = tmp_path / "odd.onnx"
    path.write_bytes(_torch_onnx(Odd(), (1, 8, 8)))
    err = _one_line_error(capsys, ["import", str(path), "-o", str(tmp_path / "x.yaml")])
    assert "ONNX operator Abs" in err and "has no archc layer" in err and "archc imports: " in err


def test_asymmetric_padding_is_refused_with_the_reason(tmp_path):
    node = onnx.helper.make_node("Conv", ["x", "w"], ["y"], name="c", pads=[0, 0, 1, 1])
    graph = onnx.helper.make_graph(
        [node], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                         ["N", 1, 4, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 2, 3, 3])],
        initializer=[onnx.numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    with pytest.raises(OnnxError, match="padding .* is not the same on both sides"):
        from_onnx(model.SerializeToString())


def test_a_foreign_mean_reads_as_a_join():
    info = onnx.helper.make_tensor_value_info
    nodes = [onnx.helper.make_node("Relu", ["x"], ["a"], name="a"),
             onnx.helper.make_node("Sigmoid", ["x"], ["b"], name="b"),
             onnx.helper.make_node("Mean", ["a", "b", "x"], ["m"], name="m")]
    graph = onnx.helper.make_graph(
        nodes, "g", [info("x", onnx.TensorProto.FLOAT, ["N", 2, 3, 3])],
        [info("m", onnx.TensorProto.FLOAT, ["N", 2, 3, 3])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    back, _ = from_onnx(model.SerializeToString())
    assert back["m"].op == "join" and back["m"].attrs["drop_path"] == 0
    x = np.random.default_rng(0).standard_normal((2, 2, 3, 3)).astype(np.float32)
    want = (np.maximum(x, 0) + 1 / (1 + np.exp(-x)) + x) / 3
    np.testing.assert_allclose(archc.compile(back).predict(x), want, rtol=1e-6, atol=1e-6)


def test_a_layer_without_an_onnx_form_is_named(monkeypatch, tmp_path, capsys):
    monkeypatch.delitem(emitters.EMITTERS, "tanh")
    err = _one_line_error(capsys, ["export", str(SPECS / "lenet5.yaml"), "--format", "onnx",
                                   "-o", str(tmp_path / "m.onnx")])
    assert "layer 'c1_act' (tanh) cannot be written to ONNX" in err or "(tanh) cannot" in err
    assert not (tmp_path / "m.onnx").exists()


def test_wrong_weights_for_an_export_get_one_line(tmp_path, capsys):
    weights = tmp_path / "w.npz"
    np.savez(weights, **{"c1.weight": np.zeros((6, 1, 3, 3), np.float32)})
    err = _one_line_error(capsys, ["export", str(SPECS / "lenet5.yaml"), "--format", "onnx",
                                   "--weights", str(weights), "-o", str(tmp_path / "m.onnx")])
    assert "c1.weight" in err


def test_a_batch_norm_with_a_fused_epilogue_exports_as_separate_operators():
    """The graph archc train runs (batch norms carrying the add and relu after them)
    exports to BatchNormalization, Add and Relu, with the same outputs in ONNX Runtime."""
    from archc.passes import for_training

    graph = for_training(archc.load(SPECS / "resnet20.yaml"))
    assert graph["layer1.0.bn2"].attrs["activation"] == ("relu", ())
    params = initial_params(graph, None, seed=1)
    model = to_onnx(graph, params)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("BatchNormalization") == 21 and ops.count("Relu") == 19
    assert ops.count("Add") == 9
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32)
    for got, want in zip(_onnxruntime(model, x), _archc(graph, params, x), strict=True):
        assert _relative(got, want) < TOLERANCE


def test_training_outputs_are_left_out_of_the_export():
    """GoogLeNet's auxiliary classifiers train only: the ONNX file computes the network's
    output, without their layers or weights, and reads back as the network without them."""
    graph = archc.load(SPECS / "googlenet.yaml", aux_logits=True, resolution=64)
    params = initial_params(graph, None, seed=1)
    model = to_onnx(graph, params)
    onnx.checker.check_model(model, full_check=True)
    assert [o.name for o in model.graph.output] == ["fc"]
    assert not [i.name for i in model.graph.initializer if i.name.startswith("aux")]
    x = np.random.default_rng(2).standard_normal((2, 3, 64, 64)).astype(np.float32)
    (got,) = _onnxruntime(model, x)
    assert _relative(got, _archc(graph, params, x)[0]) < TOLERANCE
    back, _ = from_onnx(model.SerializeToString())
    assert not [n.name for n in back if n.name.startswith("aux")]
    assert len(back) == len(archc.load(SPECS / "googlenet.yaml", resolution=64))
