"""Checkpoints that a crash cannot corrupt, in a run directory.

A run directory holds ``log.jsonl`` (one line of metrics per epoch), checkpoint folders
``ckpt-EPOCH/`` (``weights.npz`` with PyTorch names, ``optimizer.npz``, ``state.json``:
epoch, RNG state, best metric; ``ckpt-EPOCH-STEP/`` within an epoch) and ``last.json`` /
``best.json`` naming the newest and the best checkpoint. A checkpoint folder is complete
(every file written and fsynced) before the pointer file is replaced atomically, so a
process killed at any moment leaves the previous checkpoint in force.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from runtime.errors import TrainingError


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` and fsync it (a reader after a crash sees all of it or the old file
    where the caller then replaces one with the other)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def replace_file(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically (written beside it, fsynced, renamed)."""
    tmp = path.with_name(f".{path.name}.tmp")
    write_file(tmp, data)
    os.replace(tmp, path)


def _save_npz(path: Path, arrays: dict) -> None:
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def point(run: Path, name: str, folder: str) -> None:
    """Make ``name`` (last.json, best.json) point at a checkpoint folder, atomically."""
    replace_file(run / name, json.dumps({"checkpoint": folder}).encode())
    fd = os.open(run, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(run: Path, model, optimizer, state: dict) -> str:
    """Write a checkpoint folder (not yet pointed at) and return its name: ``ckpt-EPOCH``,
    or ``ckpt-EPOCH-STEP`` within an epoch (``state["step"]`` batches into it)."""
    folder = f"ckpt-{state['epoch']:04d}" + (f"-{state['step']:06d}" if "step" in state else "")
    path = run / folder
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    _save_npz(path / "weights.npz", model.parameters())
    _save_npz(path / "optimizer.npz", optimizer.state_dict())
    write_file(path / "state.json", json.dumps(state).encode())
    return folder


def best_weights(path: str | Path) -> Path:
    """A weights file as given, or a run directory's best (else last) checkpoint's."""
    path = Path(path)
    if path.is_dir():
        for pointer in ("best.json", "last.json"):
            if (path / pointer).is_file():
                return path / json.loads((path / pointer).read_text())["checkpoint"] / \
                    "weights.npz"
        raise TrainingError(f"{path} is not a run directory with a checkpoint (no best.json)")
    return path


def load(run: Path, model, optimizer, which: str = "last.json") -> dict:
    """Read the checkpoint ``which`` names into ``model`` and ``optimizer``; its state."""
    pointer = run / which
    if not pointer.is_file():
        raise TrainingError(f"{run} has no checkpoint to resume from ({which} is missing)")
    path = run / json.loads(pointer.read_text())["checkpoint"]
    model.load(path / "weights.npz")
    with np.load(path / "optimizer.npz", allow_pickle=False) as saved:
        optimizer.load_state_dict(dict(saved))
    return json.loads((path / "state.json").read_text())


def prune(run: Path) -> None:
    """Remove the checkpoints that neither last.json nor best.json names."""
    keep = {json.loads((run / n).read_text())["checkpoint"]
            for n in ("last.json", "best.json") if (run / n).is_file()}
    for path in run.glob("ckpt-*"):
        if path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)


def read_log(run: Path) -> list[dict]:
    """The epochs' metrics logged so far."""
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()
            if line.strip()]


def write_log(run: Path, history: list[dict]) -> None:
    replace_file(run / "log.jsonl", "".join(json.dumps(h) + "\n" for h in history).encode())
