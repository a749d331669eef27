"""A training run killed with SIGKILL at any instant resumes to the weights of the run that
was never interrupted, bit for bit; a damaged newest checkpoint resumes from the one
before; two trainings into one folder: the second is refused, the first ends intact.

The kills happen in ``tests/train/crash/crasher.py``, which forks a child per trial: right
after every kind of write a checkpoint makes (each file of a checkpoint folder, its
manifest, the rename into place, each pointer, the log), in the middle of a file being
written (half of it on disk), and at random instants on a timer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


from runtime.files import json_lines
from runtime.train import checkpoint

WORKER = Path(__file__).parent / "crash" / "crasher.py"
ROOT = Path(__file__).resolve().parents[2]


def trials(mode: str, folder: Path) -> list[dict]:
    done = subprocess.run([sys.executable, str(WORKER), mode, str(folder)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_killed_right_after_every_kind_of_write_resumes_bit_for_bit(tmp_path):
    rows = trials("after-write", tmp_path)
    assert set(rows[0]["kinds"]) >= set(rows[0]["expected"]) and len(rows[0]["kinds"]) >= 9, \
        rows[0]
    assert len(rows) > 10
    for row in rows[1:]:
        assert row["status"] == -signal.SIGKILL, row
        assert row["equal"], row


def test_killed_in_the_middle_of_writing_a_file_resumes_bit_for_bit(tmp_path):
    rows = trials("half-write", tmp_path)
    assert len(rows) == 6
    for row in rows:
        assert row["status"] == -signal.SIGKILL and row["equal"], row


def test_killed_at_random_instants_resumes_bit_for_bit(tmp_path):
    rows = trials("random", tmp_path)
    assert len(rows) == 6
    for row in rows:
        assert row["equal"], row


def test_a_damaged_newest_checkpoint_resumes_from_the_one_before(tmp_path):
    (row,) = trials("damaged", tmp_path)
    assert row["equal"], row
    assert f"{row['trial'].split()[0]}/weights.npz is damaged" in row["notes"], row
    assert f"using {row['previous']}, the newest intact checkpoint" in row["notes"], row


SPEC = """name: tiny
input: {channels: 1, height: 8, width: 8}
layers:
  - flatten
  - linear: {out_features: 10}
"""


def test_a_run_folder_in_use_is_refused_and_a_stale_lock_taken_over(tmp_path):
    run = tmp_path / "run"
    (tmp_path / "tiny.yaml").write_text(SPEC)
    # long enough that the first run outlasts the second's start-up (60 epochs once did
    # not, on a busy machine)
    epochs = 300
    command = [sys.executable, "-m", "archc", "train", "tiny.yaml", "--data", "digits",
               "--epochs", str(epochs), "--backend", "reference", "--out", "run"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 120
        while not (run / "last.json").exists() and time.time() < deadline:
            time.sleep(0.05)  # the first has locked the folder and written a checkpoint
        second = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True,
                                timeout=120, env=env)
        still_running = first.poll() is None
        out, err = first.communicate(timeout=300)
    finally:
        first.kill()
    assert still_running, "the first training ended before the second started: lengthen it"
    assert second.returncode == 2, second.stderr
    assert f"error: run folder run is in use by another training (pid {first.pid}" \
        in second.stderr, second.stderr
    assert first.returncode == 0, err
    assert f"epoch {epochs}/{epochs}" in out
    folder, reasons = checkpoint.find(run)  # the first run's checkpoints are intact
    assert folder == f"ckpt-{epochs - 1:04d}" and not reasons
    assert [row["epoch"] for row in json_lines(run / "log.jsonl", "log")] == \
        list(range(1, epochs + 1))
    # the lock of a process that died is taken over without a word
    (run / "lock").write_text("pid 999999 on elsewhere, since 2026-01-01 00:00:00")
    with checkpoint.RunLock(run):
        assert f"pid {os.getpid()} " in (run / "lock").read_text()
