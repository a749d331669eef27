"""`archc bench` and Model.profile: every layer timed, joined with the analysis (FLOPs,
the roofline estimate), shares that add up; the same on the CUDA backend (simulated)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import archc
from archc.analysis import analyse
from archc.cli import main
from archc.passes import for_training

SPECS = archc.__path__[0] + "/../specs"


def test_model_profile_times_every_op_forward_and_backward():
    model = archc.compile(archc.load(f"{SPECS}/lenet5.yaml"), backend="cpu")
    x = np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype(np.float32)
    names = [op.name for op in model.program.ops]
    forward = model.profile(x, repeat=2)
    assert list(forward) == names
    assert all(set(t) == {"forward"} and t["forward"] > 0 for t in forward.values())
    both = model.profile(x, repeat=1, backward=True)
    assert all(t["backward"] > 0 for t in both.values())
    assert model.kernels is model.backend.kernels  # the timed tables are taken down again
    assert model.backward_kernels is model.backend.backward


def test_profile_times_passes_after_two_untimed_ones(monkeypatch):
    """A training pass's tape lives on while the next one runs: the memory the passes
    reuse settles only after the second (its page faults are not the kernels' time)."""
    model = archc.compile(archc.load(f"{SPECS}/lenet5.yaml"), backend="cpu")
    x = np.zeros((2, 1, 32, 32), np.float32)
    calls = []
    run = model.predict
    monkeypatch.setattr(model, "predict", lambda x: calls.append(1) or run(x))
    model.profile(x, repeat=3)
    assert len(calls) == 3 + 2


def test_bench_joins_times_with_the_analysis(capsys):
    assert main(["bench", f"{SPECS}/lenet5.yaml", "--batch", "4", "--train", "--repeat", "1",
                 "--device", "h100", "--json"]) == 0
    profile = json.loads(capsys.readouterr().out)
    assert profile["backend"] == "cpu" and profile["profile"] == "h100"
    layers = {layer["name"]: layer for layer in profile["layers"]}
    # --train times the graph archc train runs: its tanh layers in the convs' epilogues
    report = analyse(for_training(archc.load(f"{SPECS}/lenet5.yaml")), batch=4)
    nodes = [node for node in report.nodes if node.op != "input"]
    assert layers["c1"]["kind"] == "conv2d+tanh"
    assert len(nodes) == len(layers)
    for node in nodes:
        layer = layers[node.name]
        assert layer["flops"] == node.flops
        assert layer["estimate_s"] > 0 or node.flops == 0
        if node.flops:
            assert layer["flop_rate"] == pytest.approx(node.flops / layer["forward_s"])
    # each conv says how the CPU computed it and why; the other layers have one way
    for node in nodes:
        algorithm, why = layers[node.name]["algorithm"], layers[node.name]["why"]
        assert (algorithm == "direct" and "stride 1" in why) if node.op == "conv2d" else \
            algorithm is why is None
    assert profile["forward_s"] == pytest.approx(sum(v["forward_s"] for v in layers.values()))
    assert profile["images_per_s"] == pytest.approx(
        4 / (profile["forward_s"] + profile["backward_s"]))

    assert main(["bench", f"{SPECS}/lenet5.yaml", "-O2", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "conv2d+tanh" in out  # the fused kernels are what is timed
    assert "... 5 more layers (--top 0 shows all)" in out
    assert "time by kind:" in out and "roofline estimate of the forward pass on cpu" in out
    assert "| algorithm |" not in out and " algorithm " in out.splitlines()[3]
    # the reasons cover every layer, shown in the table or not (which are the 3 slowest
    # depends on the machine)
    assert "why each algorithm" in out
    assert re.search(r"^  direct: .*\bc1: stride 1", out, re.M) and "c3: stride 1" in out
    assert main(["bench", f"{SPECS}/lenet5.yaml", "--top", "0"]) == 0  # as written
    table = capsys.readouterr().out.split("\n\n")[1].splitlines()[1:]
    assert len(table) == len([node for node in analyse(archc.load(f"{SPECS}/lenet5.yaml"), 4).nodes
                              if node.op != "input"])
    shares = [float(cell[:-1]) for row in table for cell in row.split() if cell.endswith("%")]
    assert sum(shares) == pytest.approx(100, abs=0.1 * len(shares))


@pytest.mark.cuda
def test_bench_on_the_cuda_backend(tmp_path, capsys):
    spec = tmp_path / "t.yaml"
    spec.write_text("input: {channels: 2, height: 4, width: 4}\nlayers:\n"
                    "  - conv2d: {out_channels: 2, kernel_size: 3, padding: 1}\n"
                    "  - softmax: {dim: 2}\n"
                    "  - flatten\n  - linear: 2\n")
    assert main(["bench", str(spec), "--backend", "cuda", "--batch", "2", "--repeat", "1",
                 "--train", "--kernels", "--top", "0"]) == 0
    out = capsys.readouterr().out
    assert "t on cuda (the CUDA simulator), batch 2: mean of 1 pass" in out
    assert "roofline (h100)" in out and "backward" in out
    assert "ran through the host" not in out  # every layer has its device kernels
    # --kernels: each kernel of a training step on its own, calls per step
    head, *rows = out.split("kernels, each launch and library GEMM on its own, per "
                            "training step: ")[1].splitlines()
    calls = {row.split()[0]: float(row.split()[1]) for row in rows[1:]}
    assert calls["conv_gemm_kernel"] == 1 and calls["softmax_kernel"] == 1
    assert calls["softmax_backward_kernel"] == 1 and calls["nchw_to_rows_kernel"] == 1
    assert "col2im_kernel" not in calls  # a training step needs no input gradient
    assert f"{sum(calls.values()):g} launches" in head
    shares = [float(row.split()[-3][:-1]) for row in rows[1:]]
    assert sum(shares) == pytest.approx(100, abs=0.1 * len(shares))


def test_kernel_times_need_a_backend_that_tells_kernels_apart(capsys):
    model = archc.compile(archc.load(f"{SPECS}/lenet5.yaml"), backend="cpu")
    with pytest.raises(ValueError, match="the cpu backend does not time its kernels"):
        model.profile_kernels(np.zeros((1, 1, 32, 32), np.float32))
    assert main(["bench", f"{SPECS}/lenet5.yaml", "--kernels"]) == 2
    assert "--kernels times each GPU kernel on its own: it needs --backend cuda (this run " \
           "is on cpu" in capsys.readouterr().err
