"""`archc export`: the (optionally optimised) graph as a spec archc reads back, the weights
as a PyTorch state_dict that torch.nn models load; PyTorch `.pt` state_dicts as weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import archc
from archc.cli import main
from conftest import SPECS
from torch_models import LeNet5, MobileNetV2, ResNet


def _torch_out(module, x):
    with torch.no_grad():
        return module.eval()(torch.as_tensor(x)).numpy()


@pytest.mark.parametrize("spec, build, shape", [
    ("lenet5", LeNet5, (1, 32, 32)),
    ("resnet18", lambda: ResNet([2, 2, 2, 2]), (3, 64, 64)),
    ("mobilenet_v2", MobileNetV2, (3, 64, 64)),  # names by the spec's torch_names
])
def test_state_dict_export_loads_into_torch_and_back(spec, build, shape, tmp_path, capsys):
    """archc -> state_dict .npz -> a torch.nn model (strict: every key, every shape) gives
    archc's outputs; the torch model's own .pt state_dict -> archc gives torch's."""
    out = tmp_path / "w.npz"
    assert main(["export", str(SPECS / f"{spec}.yaml"), "--format", "state-dict", "--seed", "3",
                 "-o", str(out)]) == 0
    assert "named and laid out as in PyTorch's state_dict" in capsys.readouterr().out
    twin = build()
    with np.load(out) as saved:
        twin.load_state_dict({k: torch.from_numpy(saved[k]) for k in saved.files}, strict=True)
    variables = {"resolution": shape[1]} if spec != "lenet5" else {}
    model = archc.compile(archc.load(SPECS / f"{spec}.yaml", **variables), backend="cpu", seed=3)
    x = np.random.default_rng(0).standard_normal((2,) + shape).astype(np.float32)
    np.testing.assert_allclose(model.predict(x), _torch_out(twin, x), rtol=1e-4, atol=1e-5)
    # and back: torch's own weights, saved the way PyTorch users do
    torch.manual_seed(1)
    other = build()
    for m in other.modules():  # non-trivial batch-norm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    model.load(tmp_path / "other.pt")
    np.testing.assert_allclose(model.predict(x), _torch_out(other, x), rtol=1e-4, atol=1e-5)


def test_written_spec_keeps_pytorchs_names(tmp_path):
    """archc export --format yaml writes the torch_names rules out name by name: the
    written spec takes torchvision-named weights as the original does."""
    out = tmp_path / "m.yaml"
    assert main(["export", str(SPECS / "mobilenet_v2.yaml"), "--format", "yaml", "--set",
                 "resolution=32", "-o", str(out)]) == 0
    assert "torch_names:" in out.read_text()
    original = archc.compile(archc.load(SPECS / "mobilenet_v2.yaml", resolution=32), seed=4)
    written = archc.compile(archc.load(out))
    assert written.program.torch_names == original.program.torch_names
    assert "features.18.1.running_var" in original.state_dict()
    np.savez(tmp_path / "w.npz", **original.state_dict())
    written.load(tmp_path / "w.npz")
    assert all(np.array_equal(written.params[k], v) for k, v in original.params.items())


def test_yaml_export_reads_back_to_the_same_network(tmp_path, capsys):
    spec = SPECS / "resnet18.yaml"
    out = tmp_path / "r18.yaml"
    assert main(["export", str(spec), "--format", "yaml", "-O2", "--set", "resolution=32",
                 "-o", str(out)]) == 0
    assert "resnet18 as a spec, 25 layers" in capsys.readouterr().out
    written = archc.load(out)
    assert len(written) == 25 and not any(node.op == "batchnorm2d" for node in written)
    # -O2 folded batch norm into the convs: the exported weights fit the exported spec
    weights = tmp_path / "w.npz"
    assert main(["export", str(spec), "--format", "state-dict", "-O2", "--set",
                 "resolution=32", "-o", str(weights)]) == 0
    original = archc.compile(archc.load(spec, resolution=32), backend="cpu")
    folded = archc.compile(written, backend="cpu")
    folded.load(weights)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(folded.predict(x), original.predict(x), rtol=1e-4, atol=1e-5)
    # without passes the spec reads back to the graph as written
    assert main(["export", str(spec), "--format", "yaml", "-o", str(out)]) == 0
    again, first = archc.load(out), archc.load(spec)
    assert [(n.name, n.op, n.shape) for n in again] == [(n.name, n.op, n.shape) for n in first]


@pytest.mark.parametrize("content, message", [
    (b"not a pickle at all", "is not a readable PyTorch state_dict"),
    ("tensor", "holds no state_dict"),
    ("dict", "does not fit lenet5: missing:"),
])
def test_bad_pt_weights_get_one_line(content, message, tmp_path, capsys):
    path = tmp_path / "w.pt"
    if content == "tensor":
        torch.save(torch.zeros(3), path)
    elif content == "dict":
        torch.save({"c1.weight": torch.zeros(6, 1, 5, 5)}, path)
    else:
        path.write_bytes(content)
    assert main(["run", str(SPECS / "lenet5.yaml"), "--weights", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
