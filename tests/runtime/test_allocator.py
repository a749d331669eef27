"""The CPU backend keeps freed memory for the next pass (runtime.backends.cpu.allocator):
after the first passes, a pass takes no fresh pages from the kernel."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import numpy as np

import archc
from conftest import SPECS
from runtime.backends.cpu.allocator import keep_freed_memory


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def test_a_pass_reuses_the_memory_of_the_last():
    assert keep_freed_memory()
    model = archc.compile(archc.load(SPECS / "resnet20.yaml"), backend="cpu").eval()
    x = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    for _ in range(2):
        model.predict(x)
    before = _faults()
    model.predict(x)
    pages = model.memory_plan(16).naive_bytes // 4096  # every activation's pages
    assert pages > 2000
    # without the thresholds every large activation faults in afresh: about `pages`
    assert _faults() - before < pages // 20


def test_the_allocator_can_be_left_alone():
    code = ("from runtime.backends.cpu.allocator import keep_freed_memory as k; "
            "print(k(), k())")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "ARCHC_MALLOC": "system"}, check=True)
    assert run.stdout.split() == ["False", "False"]


def test_blocks_over_32_mb_are_reused_too():
    """glibc maps blocks over its largest threshold (32 MB) afresh on every request unless
    mmap is off: a 38.5 MB activation would fault in every page on every pass."""
    assert keep_freed_memory()
    graph = archc.Graph(name="wide")
    graph.add(archc.Node("input", "input", {"shape": (16, 112, 112)}, []))
    graph.add(archc.Node("expand", "conv2d", archc.layers.get_layer("conv2d").normalize(
        {"out_channels": 96, "kernel_size": 1, "in_channels": 16}), ["input"]))
    graph.inputs, graph.outputs = ["input"], {"expand": "expand"}
    archc.infer_shapes(graph)
    model = archc.compile(graph, backend="cpu").eval()
    x = np.zeros((8, 16, 112, 112), np.float32)
    for _ in range(2):
        model.predict(x)
    before = _faults()
    y = model.predict(x)
    pages = y.nbytes // 4096
    assert y.nbytes > 32 << 20
    assert _faults() - before < pages // 20
