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
