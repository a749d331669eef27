"""The installed ``archc`` command, run as a user runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, SPECS

ARCHC = shutil.which("archc", path=str(Path(sys.executable).parent)) or "archc"


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([ARCHC, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_check_resnet18_prints_one_line_with_the_output_shape():
    out = run("check", "specs/resnet18.yaml")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("\n") == 1
    assert "input 3x224x224 -> fc 1000" in out.stdout and "70 nodes" in out.stdout


def test_set_overrides_change_the_result():
    out = run("check", "specs/resnet18.yaml", "--set", "num_classes=10", "--set", "resolution=64",
              "--json")
    data = json.loads(out.stdout)
    assert data["outputs"] == {"fc": [10]} and data["inputs"] == {"input": [3, 64, 64]}
    deeper = json.loads(run("check", "specs/resnet18.yaml", "--set", "blocks=[3, 4, 6, 3]",
                            "--json").stdout)
    assert deeper["nodes"] > data["nodes"]


def test_user_error_exit_code_and_format(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("input: {channels: 3, height: 8, width: 8}\nlayers:\n  - reul\n")
    out = run("check", str(spec))
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines() == [
        f"{spec}:3:5: error: unknown layer type 'reul'", "hint: did you mean 'relu'?"]


@pytest.mark.parametrize("args", [[], ["check"], ["check", "--bogus", "x.yaml"], ["frobnicate"]])
def test_bad_command_lines_exit_2_with_a_reason(args):
    out = run(*args)
    assert out.returncode == 2
    assert "archc: error:" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("args", [["--help"], ["check", "--help"]])
def test_help_everywhere(args):
    out = run(*args)
    assert out.returncode == 0 and "usage: archc" in out.stdout


def test_version():
    assert run("--version").stdout.startswith("archc ")


def test_python_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "archc", "check", str(SPECS / "lenet5.yaml")],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "fc3 10" in out.stdout


def test_summary_table_json_depth_batch_and_device(tmp_path):
    out = run("summary", "specs/resnet18.yaml", "--depth", "1")
    assert out.returncode == 0, out.stderr
    assert "11,689,512" in out.stdout and "layer4" in out.stdout and "layer4.0" not in out.stdout
    assert max(len(line) for line in out.stdout.splitlines()) <= 100
    one = json.loads(run("summary", "specs/lenet5.yaml", "--json").stdout)
    eight = json.loads(run("summary", "specs/lenet5.yaml", "--json", "--batch", "8").stdout)
    assert eight["totals"]["macs"] == 8 * one["totals"]["macs"]
    assert one["device"] is None and one["nodes"][1]["latency_s"] is None
    gpu = json.loads(run("summary", "specs/lenet5.yaml", "--json", "--device", "h200").stdout)
    assert gpu["device"]["name"] == "h200" and gpu["totals"]["latency_s"] > 0
    bad = run("summary", "specs/lenet5.yaml", "--device", "tpu")
    assert bad.returncode == 2 and "unknown device 'tpu'" in bad.stderr
    assert run("summary", "specs/lenet5.yaml", "--batch", "0").returncode == 2
    assert run("summary", "specs/resnet18.yaml", "--set", "num_classes=7", "--json").returncode == 0


def test_render_writes_each_format(tmp_path):
    for ext in ("svg", "png", "pdf", "dot"):
        target = tmp_path / f"lenet5.{ext}"
        out = run("render", "specs/lenet5.yaml", "-o", str(target))
        assert out.returncode == 0, out.stderr
        assert out.stdout == f"wrote {target} (13 layers)\n" and target.stat().st_size > 500
    out = run("render", "specs/resnet18.yaml", "-o", str(tmp_path / "r"), "--format", "svg",
              "--collapse", "1", "--rankdir", "LR", "--detail", "high", "--annotate", "params,rf")
    assert out.returncode == 0 and (tmp_path / "r").read_text().startswith("<?xml")
    bad = run("render", "specs/lenet5.yaml", "-o", str(tmp_path / "x.bmp"))
    assert bad.returncode == 2 and "unknown diagram format 'bmp'" in bad.stderr
    assert run("render", "specs/lenet5.yaml").returncode == 2  # -o is required


@pytest.mark.parametrize("spec", sorted(p.name for p in SPECS.glob("*.yaml")))
def test_every_library_spec_through_check_summary_and_render(spec, tmp_path, capsys,
                                                             monkeypatch):
    from archc.cli import main

    monkeypatch.chdir(ROOT)
    assert main(["check", f"specs/{spec}"]) == 0
    assert main(["summary", f"specs/{spec}", "--depth", "1", "--json"]) == 0
    assert main(["render", f"specs/{spec}", "-o", str(tmp_path / "d.dot"), "--collapse", "1"]) == 0
    out = capsys.readouterr()
    assert out.err == "" and "ok" in out.out


def test_run_random_input_weights_and_output(tmp_path):
    import numpy as np

    # several outputs: an .npz of one array per output, under the name given
    two = tmp_path / "two.yaml"
    two.write_text("name: two\ninput: {features: 4}\nlayers:\n  - linear: 3\n    name: a\n"
                   "  - linear: 2\n    name: b\noutputs: [a, b]\n")
    out = run("run", str(two), "--batch", "2", "-o", str(tmp_path / "y.npy"))
    assert out.returncode == 2 and "two has 2 outputs (a, b)" in out.stderr
    assert "name the file .npz" in out.stderr and not (tmp_path / "y.npy").exists()
    out = run("run", str(two), "--batch", "2", "-o", str(tmp_path / "y.npz"))
    assert out.returncode == 0 and f"wrote {tmp_path / 'y.npz'} (2 outputs: a, b)" in out.stdout
    with np.load(tmp_path / "y.npz") as saved:
        assert {k: saved[k].shape for k in saved} == {"a": (2, 3), "b": (2, 2)}
    out = run("run", "specs/lenet5.yaml", "--batch", "3", "-o", str(tmp_path / "y.npy"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("fc3: 3 x 10\nforward pass on cpu:")
    y = np.load(tmp_path / "y.npy")
    assert y.shape == (3, 10) and np.isfinite(y).all()
    # the same input and weights give the same output
    x = np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    import archc

    model = archc.compile(archc.load(SPECS / "lenet5.yaml"), backend="cpu", seed=7)
    model.save(tmp_path / "w.npz")
    out = run("run", "specs/lenet5.yaml", "--input", str(tmp_path / "x.npy"), "--weights",
              str(tmp_path / "w.npz"), "-o", str(tmp_path / "y2.npy"))
    assert out.returncode == 0, out.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y2.npy"), model(x), rtol=1e-6)


def test_run_bad_inputs_are_user_errors(tmp_path):
    import numpy as np

    np.save(tmp_path / "x.npy", np.zeros((2, 3, 32, 32), np.float32))
    out = run("run", "specs/lenet5.yaml", "--input", str(tmp_path / "x.npy"))
    assert out.returncode == 2 and "must have shape (N, 1, 32, 32)" in out.stderr
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    out = run("run", "specs/lenet5.yaml", "--input", str(tmp_path / "bad.npy"))
    assert out.returncode == 2 and "is not a NumPy array (.npy) nor an .npz file" in out.stderr
    out = run("run", "specs/lenet5.yaml", "--weights", str(tmp_path / "none.npz"))
    assert out.returncode == 2 and "no such weights file" in out.stderr
    assert "Traceback" not in out.stderr


def test_optimize_verify_write_and_read_back(tmp_path):
    out = run("optimize", "specs/resnet18.yaml", "--set", "resolution=64", "-O2", "--verify",
              "-o", str(tmp_path / "r18.yaml"), "--weights-out", str(tmp_path / "r18.npz"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("resnet18: 70 -> 25 layers\n")
    assert "fold_bn             70 -> 50" in out.stdout
    assert "fuse_add: fused layer1.0.add + layer1.0.relu_1 into layer1.0.conv2 (residual " \
           "maxpool)" in out.stdout
    lines = [line for line in out.stdout.splitlines() if line.startswith("verify on")]
    assert len(lines) == 2 and all(line.endswith("  ok") for line in lines)
    assert "verify on digits inputs (4 images)" in out.stdout
    # the written spec and weights run, and give what the original gives
    ran = run("run", str(tmp_path / "r18.yaml"), "--weights", str(tmp_path / "r18.npz"))
    assert ran.returncode == 0, ran.stderr
    data = json.loads(run("optimize", "specs/resnet18.yaml", "--set", "resolution=64",
                          "--passes", "fold_bn", "--json", "--verify", "--data", "").stdout)
    assert [p["name"] for p in data["passes"]] == ["fold_bn"]
    assert data["passes"][0]["nodes_after"] == 50 and data["verify"]["ok"] is True
    assert list(data["verify"]["max_relative_difference"]) == ["random"]


def test_optimize_a_trained_network_and_evaluate_it(tmp_path):
    trained = tmp_path / "run"
    assert run("train", "specs/lenet5.yaml", "--data", "digits", "--epochs", "2",
               "--out", str(trained)).returncode == 0
    out = run("optimize", "specs/lenet5.yaml", "--weights", str(trained), "--passes",
              "low_rank:mode=channel:budget=0.1", "--verify", "-o", str(tmp_path / "lr.yaml"),
              "--weights-out", str(tmp_path / "lr.npz"))
    assert out.returncode == 0, out.stderr
    assert "low_rank (approx.)" in out.stdout and "relative error" in out.stdout
    assert "ok" not in out.stdout  # approximate: the difference is reported, not judged
    ev = run("eval", str(tmp_path / "lr.yaml"), "--data", "digits", "--weights",
             str(tmp_path / "lr.npz"))
    assert ev.returncode == 0 and "test accuracy" in ev.stdout, ev.stderr


@pytest.mark.parametrize("args, message", [
    (["--passes", "fuse_everything"], "unknown pass 'fuse_everything'"),
    (["--passes", "low_rank"], "works on trained weights"),
    (["--passes", "separable:size=3"], "has no option 'size'"),
    (["--passes", "low_rank:budget=abc", "--weights", "x.npz"],
     "option 'budget': expected a relative error between 0 and 1, got 'abc'"),
    (["-O2", "--passes", "fold_bn"], "not allowed with argument"),
    (["--weights", "missing.npz"], "missing.npz"),
])
def test_optimize_bad_input_is_a_user_error(args, message):
    out = run("optimize", "specs/lenet5.yaml", *args)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


def test_summary_and_render_show_the_optimised_view(tmp_path):
    out = run("summary", "specs/resnet18.yaml", "-O2", "--json")
    data = json.loads(out.stdout)
    conv2 = next(n for n in data["nodes"] if n["name"] == "layer1.0.conv2")
    assert conv2["epilogue"] == " +add +relu" and conv2["fused"][1] == "layer1.0.add (add)"
    assert len(data["nodes"]) == 25
    table = run("summary", "specs/resnet18.yaml", "--passes", "fold_bn,fuse_activation").stdout
    assert "conv2d+relu" in table and "batchnorm2d" not in table
    assert run("render", "specs/resnet18.yaml", "-O2", "-o", str(tmp_path / "r.dot")).returncode == 0
    dot = (tmp_path / "r.dot").read_text()
    assert "fused: bn2 (batchnorm2d), add (add), relu_1 (relu)" in dot
