import os
import sys
import tempfile
from pathlib import Path

# CUDA kernels run under Numba's simulator unless a real GPU run is asked for
# (ARCHC_CUDA=real); the variable must be set before numba is first imported.
if os.environ.get("ARCHC_CUDA") != "real":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
# the algorithms the rules choose, not those a developer's `archc tune` measured (the
# tuning tests point this at files of their own); subprocesses inherit it
os.environ["ARCHC_TUNE_CACHE"] = os.path.join(
    tempfile.mkdtemp(prefix="archc-tests-"), "no-tuning.json")

# one process compiles: helper processes (runtime.warmup) would start on the first pass
# of every model that meets a new kernel; tests/runtime/test_warmup.py turns them on
os.environ["ARCHC_COMPILE_JOBS"] = "1"

# `make test` runs two pytest-xdist workers on two cores, each with Numba's and BLAS's two
# threads. GNU OpenMP's threads spin for a while after each parallel region (300,000 turns
# by default); with two processes the spinning threads take the cores from those doing the
# work, and a Mask R-CNN training test ran 12-25x slower beside another than alone (370 s
# against 24 s). 1,000 turns keeps a pair within 20% of one alone (measured; see
# docs/performance.md, "Several processes on the same cores"). Set before numba or torch
# loads libgomp, which reads it once.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
# shared helpers and oracles import by their module names from every test folder
for _folder in ("support", "oracles", ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent / _folder))

# small inputs of networks that cover every kind of layer between them, for whole-network
# runtime tests
SMALL_NETWORKS = [
    ("lenet5", {}),
    ("resnet18", {"resolution": 64}),
    ("mobilenet_v2", {"resolution": 64}),
    ("googlenet", {"resolution": 64}),
    ("unet", {"resolution": 64, "padding": 1}),
]

# every library spec, and the variables that make it small enough to run in a test
LIBRARY = sorted(p.stem for p in SPECS.glob("*.yaml"))
LIBRARY_SMALL = {"alexnet": {"resolution": 96}, "vgg16": {"resolution": 64},
                 "vgg16_bn": {"resolution": 64}, "fcn": {"resolution": 96},
                 "deeplab": {"resolution": 96}, "unet": {"resolution": 188}, "yolo": {"S": 2},
                 # the auxiliary classifier needs the 299x299 input's 17x17 grid
                 "inception_v3": {"resolution": 75, "aux_logits": False}}

settings.register_profile(
    "archc", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "archc"))


@pytest.fixture
def write_spec(tmp_path):
    """Write spec text to a file and return its path."""

    def write(text: str, name: str = "net.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


def pytest_addoption(parser):
    parser.addoption("--emulated-cublas", action="store_true",
                     help="under the CUDA simulator, run every GEMM through the emulated "
                     "cuBLAS (tests/support/emulated_cublas.py) instead of archc's kernel: "
                     "the library path through every CUDA test, every dense conv image by "
                     "image (the tests' images are smaller than the GPU's threshold)")


def pytest_configure(config):
    if config.getoption("--emulated-cublas"):
        import emulated_cublas
        from runtime.backends.cuda import blas, kernels, strategy

        if not kernels.SIMULATED:
            raise pytest.UsageError("--emulated-cublas runs under the CUDA simulator only")
        kernels._GEMM[:] = [(blas.Cublas(emulated_cublas, "emulated cuBLAS"),
                             "emulated cuBLAS (--emulated-cublas)")]
        strategy.IMAGE_BATCH_MIN_PIXELS = 1
