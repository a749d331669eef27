"""The benchmark scripts run (a smoke test: one repetition; timings are not asserted)."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_bench_check_prints_a_ratio_per_network():
    out = subprocess.run([sys.executable, "bench/bench_check.py", "--repeat", "1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, check=True).stdout
    rows = [line for line in out.splitlines() if line.rstrip().endswith("x")]
    assert [r.split()[0] for r in rows] == ["lenet5", "resnet18", "resnet34"]
