"""The benchmark scripts run (a smoke test: one repetition; timings are not asserted)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT


def test_bench_check_prints_a_ratio_per_network():
    out = subprocess.run([sys.executable, "bench/bench_check.py", "--repeat", "1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, check=True).stdout
    rows = [line for line in out.splitlines() if line.rstrip().endswith("x")]
    assert [r.split()[0] for r in rows] == ["lenet5", "resnet18", "resnet34"]


def test_bench_runtime_quick_prints_ratios():
    out = subprocess.run([sys.executable, "bench/bench_runtime.py", "--quick", "--repeat", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600, check=True).stdout
    assert "BLAS:" in out and "sgemm" in out
    rows = [line for line in out.splitlines() if line.startswith("lenet5")]
    assert [r.split()[2] for r in rows] == ["forward", "fwd+bwd"]
    assert all(r.split()[5].endswith("x") for r in rows)


def test_bench_engines_quick_prints_every_engine_and_the_ratios():
    """archc -O0/-O2, PyTorch and ONNX Runtime (OpenVINO too where installed) on one row."""
    out = subprocess.run([sys.executable, "bench/bench_engines.py", "--quick", "--repeat", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600, check=True).stdout
    out, training = out.split("training step")
    header = next(line for line in out.splitlines() if line.startswith("| network"))
    for column in ("archc -O0", "archc -O2", "PyTorch", "ONNX Runtime", "-O2 / ONNX Runtime",
                   "of sgemm"):
        assert f"| {column} |" in header, header
    (row,) = [line for line in out.splitlines() if line.startswith("| lenet5 | 8 |")]
    columns = [c.strip() for c in header.strip("|").split("|")]
    cells = dict(zip(columns, (c.strip() for c in row.strip("|").split("|"))))
    assert len(cells) == len(columns)
    for column, cell in cells.items():
        if column.startswith("-O2 / "):
            assert cell.endswith("x") and float(cell[:-1]) > 0, (column, cell)
        elif column.startswith(("archc", "PyTorch", "ONNX", "OpenVINO")):
            assert float(cell) > 0, (column, cell)
    # and the training step against PyTorch's
    (row,) = [line for line in training.splitlines() if line.startswith("| lenet5 | 8 |")]
    archc_ms, torch_ms, ratio, rate = (c.strip() for c in row.strip("|").split("|")[2:])
    assert float(archc_ms) > 0 and float(torch_ms) > 0 and float(rate) > 0
    # the ratio of the unrounded times
    assert float(ratio[:-1]) == pytest.approx(float(archc_ms) / float(torch_ms), rel=0.1, abs=0.02)


def test_bench_blocks_puts_archc_beside_onnx_runtime_block_by_block():
    """Every block of the network in one table, with both engines' kernel times and the
    total; the blocks come from the layer names (resnet20's basic blocks)."""
    pytest.importorskip("onnxruntime")
    out = subprocess.run([sys.executable, "bench/bench_blocks.py", "resnet20", "--batch", "2",
                          "--repeat", "2", "--set", "resolution=16"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, check=True).stdout
    rows = {cells[0]: cells[1:] for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in out.splitlines()
             if line.startswith("| ") and not line.startswith("| block"))}
    assert {"layer1.0", "layer2.2", "layer3.1", "total"} <= set(rows), sorted(rows)
    ours, theirs, ratio, loss = rows["total"]
    assert float(ours) > 0 and float(theirs) > 0
    assert float(ratio[:-1]) == pytest.approx(float(ours) / float(theirs), rel=0.05, abs=0.02)
    assert float(loss) == pytest.approx(float(ours) - float(theirs), abs=2)
    assert sum(float(cells[0]) for name, cells in rows.items() if name != "total") == \
        pytest.approx(float(ours), abs=len(rows))


def test_bench_activations_names_the_faster_choice():
    out = subprocess.run([sys.executable, "bench/bench_activations.py", "--repeat", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, check=True).stdout
    rows = [line.split() for line in out.splitlines()[2:]]
    assert {r[0] for r in rows} >= {"relu", "tanh", "hardswish"}
    assert all(r[-1] in ("numba", "numpy") for r in rows)


def test_bench_runtime_start_times_cold_then_warm():
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_runtime

    cold, warm = bench_runtime.start_times("lenet5")
    assert 0 < warm < cold  # the second fresh process finds the kernels compiled on disk


def test_bench_conv_times_every_general_algorithm_and_tile_geometry():
    out = subprocess.run([sys.executable, "bench/bench_conv.py", "--quick", "--repeat", "1",
                          "--geometries"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, check=True).stdout
    header = next(line.split() for line in out.splitlines() if line.startswith("layer"))
    assert header[4:11] == ["archc", "direct", "grid", "im2col", "tiles/8", "tiles/16", "torch"]
    rows = [line.split() for line in out.splitlines() if line.startswith("resnet18 layer1")]
    assert [r[4] for r in rows] == ["forward", "fwd+bwd"]
    for r in rows:  # archc's pick; its time, each algorithm's and geometry's, torch's; ratio
        assert r[5] in ("direct", "grid", "im2col", "winograd")
        assert all(float(v) > 0 for v in r[6:13]) and r[13].endswith("x")


def test_bench_train_reports_both_runs():
    out = subprocess.run([sys.executable, "bench/bench_train.py", "--epochs", "1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, check=True).stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.startswith(("archc", "torch "))}
    assert {"archc", "torch"} <= set(rows) and "ratio archc / torch" in out


def test_bench_passes_quick_prints_both_tables():
    out = subprocess.run([sys.executable, "bench/bench_passes.py", "--quick", "--repeat", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600, check=True).stdout
    lines = out.splitlines()
    (row,) = [line for line in lines if line.startswith("lenet5")]
    assert row.split()[2] == "13->9" and row.split()[5].endswith("x")
    variants = [line for line in lines if line.startswith(("original", "separable", "low_rank"))]
    assert len(variants) == 4 and all("0." in v.split()[-2] for v in variants)


@pytest.mark.cuda
def test_bench_cuda_quick_runs_under_the_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    out = subprocess.run([sys.executable, "bench/bench_cuda.py", "--quick", "--repeat", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600, check=True,
                         env=env).stdout
    assert out.startswith("archc on the CUDA simulator")
    rows = {line[:28].strip(): line[28:].split() for line in out.splitlines()
            if line.startswith(("forward", "kernels", "inference", "training"))}
    assert set(rows) == {"forward with copies (ms)", "kernels only (TFLOP/s)", "inference",
                         "inference, -O2 (folded BN)", "training step"}
    assert all(float(cells[0]) > 0 for label, cells in rows.items() if "TFLOP" not in label)
    assert re.search(r"^host time queuing a training step: [\d.]+ ms of the step's", out, re.M)


@pytest.mark.cuda
def test_bench_cuda_launches_counts_what_each_pass_queues():
    """bench/bench_cuda_launches.py counts ResNet-18's launches without running them: the
    graph as written runs its batch norms, -O2 folds them into the convs (fewer launches),
    and a training step runs archc train's graph (no activation pass of its own: fused into
    the batch norms) with one SGD update per trainable tensor."""
    out = subprocess.run([sys.executable, "bench/bench_cuda_launches.py", "--batch", "4",
                          "--top", "100"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600, check=True).stdout
    assert out.startswith("resnet18, batch 4: kernel launches per pass")
    sections = {}
    for block in out.split("\n\n")[1:]:
        head, *rows = block.splitlines()
        total = int(re.match(r"[^:]+: (\d+) launches", head).group(1))
        counts = {name: int(n) for n, name in (row.split() for row in rows)}
        assert sum(counts.values()) == total, head
        sections[head.split(":")[0]] = counts
    plain, folded = sections["inference -O0"], sections["inference -O2"]
    step = sections["training step (archc train's graph)"]
    assert plain["batchnorm_kernel"] == 20 and "batchnorm_kernel" not in folded
    assert sum(folded.values()) < sum(plain.values())
    assert plain["cuBLAS"] == folded["cuBLAS"] == 21  # a product per conv, and the classifier
    assert step["sgd_kernel"] == 62 and "activation_forward_kernel" not in step


@pytest.mark.parametrize("fails", [False, True])
def test_gpu_check_script_runs_every_step_into_one_folder(tmp_path, fails):
    """scripts/gpu_check.sh (the real-GPU check, issue 25) with a stand-in Python that
    records what it is asked to run: every step runs on the real device
    (ARCHC_CUDA=real), each into its own file of the folder, and a failing step neither
    stops the others nor goes unreported in the exit status."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho \"ran with ARCHC_CUDA=$ARCHC_CUDA: $*\"\n"
                    f"exit {1 if fails else 0}\n")
    fake.chmod(0o755)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    done = subprocess.run(["bash", "scripts/gpu_check.sh", str(out)], cwd=ROOT,
                          env={**env, "PYTHON": str(fake)}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == (1 if fails else 0), done.stdout + done.stderr
    wanted = {"tests": "-m pytest -m cuda", "bench_cuda": "bench/bench_cuda.py",
              "bench_cuda_numba": "bench/bench_cuda.py --repeat 1",
              "bench_cuda_tf32": "bench/bench_cuda.py --repeat 2 --precision tf32",
              "bench_cuda_bf16": "bench/bench_cuda.py --repeat 2 --precision bf16",
              "train_resnet18": "bench specs/resnet18.yaml --backend cuda --batch 64 --train "
              "--repeat 3 --kernels",
              "infer_resnet18": "bench specs/resnet18.yaml --backend cuda --batch 64 --repeat 3 "
              "--kernels"}
    for name, command in wanted.items():
        text = (out / f"{name}.txt").read_text()
        assert "ran with ARCHC_CUDA=real:" in text and command in text, text
        assert f"== {name}: exit {1 if fails else 0}" in text
    assert (out / "device.txt").exists()
    # the steps' time limits fit one device call (600 s)
    script = (ROOT / "scripts/gpu_check.sh").read_text()
    limits = [int(limit) for limit in re.findall(r"^step \w+ (\d+) ", script, re.M)]
    assert len(limits) == len(wanted) and sum(limits) <= 600


# archc's dependencies and test extras that the GPU machines' image lacks (the device
# tool's KINDS.md lists what it holds), by distribution and the module it imports as
NOT_ON_THE_GPU_IMAGE = {"graphviz": "graphviz", "nvmath-python": "nvmath",
                        "tensorboardX": "tensorboardX", "pycocotools": "pycocotools",
                        "ray": "ray", "optuna": "optuna", "openvino": "openvino",
                        "selenium": "selenium"}

HIDE = """import sys


class Hide:  # the modules the GPU image lacks, and scripts/gpu_wheels.sh does not carry
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {hidden!r}:
            raise ImportError(f"No module named {{name!r}} (not on the GPU image)")


sys.meta_path.insert(0, Hide())
"""


def test_the_cuda_tests_collect_with_only_what_the_gpu_image_and_the_wheels_hold(tmp_path):
    """scripts/gpu_check.sh on a GPU machine (no package index: the image's packages and
    the wheels gpu_wheels.sh carries) rehearsed here: with every other module hidden,
    `pytest -m cuda` still collects (a module-level import of a missing package would
    stop the whole run before its first test, the device minutes spent for nothing)."""
    wheels = (ROOT / "scripts/gpu_wheels.sh").read_text()
    carried = set(re.findall(r'"([\w.-]+)==', wheels))
    assert {"nvmath-python", "numba-cuda", "graphviz"} <= carried
    hidden = sorted(module for name, module in NOT_ON_THE_GPU_IMAGE.items()
                    if name not in carried)
    (tmp_path / "sitecustomize.py").write_text(HIDE.format(hidden=set(hidden)))
    env = {k: v for k, v in os.environ.items() if k != "ARCHC_CUDA"}
    env["PYTHONPATH"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-c", "import tensorboardX"], env=env,
                          capture_output=True, text=True)
    assert "not on the GPU image" in done.stderr  # the hiding works
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m",
                           "cuda", "-p", "no:cacheprovider"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    collected = int(re.search(r"^(\d+)/\d+ tests collected", done.stdout, re.M).group(1))
    assert collected >= 150


def test_bench_sums_measures_each_accumulator_against_the_exact_sum():
    """bench/bench_sums.py (issue 25's "measure which"): the GPU reduction's order emulated
    for each accumulator. Its own checks: the emulation is exact where it must be (one
    value a thread, float64 throughout), float64 accumulators are at least as close as
    the CPU backend's order in every case, and float32 ones are not (the large sums)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_sums

    values = np.arange(1, 2 * bench_sums.THREADS + 1, dtype=np.float32)
    assert bench_sums.gpu_sum(values, np.float64, 2) == values.sum(dtype=np.float64)
    results = bench_sums.measure(trials=4)  # seeded: the same channels every run
    assert set(results) == set(bench_sums.CASES)
    for rows in results.values():
        assert rows["float64 accumulators (archc)"][1] <= rows["CPU backend's order"][1]
    mean = results["batch-norm mean, 64ch 112x112 b64 (offset 3)"]
    assert mean["float32, split among blocks"][1] > 3 * mean["CPU backend's order"][1]
