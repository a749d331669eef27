"""Checkpoints that a crash cannot corrupt and damage cannot hide, in a run folder.

A run folder holds:

- ``ckpt-EPOCH/`` (after an epoch) and ``ckpt-EPOCH-STEP/`` (within one,
  ``--checkpoint-every``): ``weights.npz`` with PyTorch names, ``optimizer.npz``,
  ``state.json`` (epoch, step, RNG states, best metric and the log's rows so far: a
  checkpoint alone is enough to go on) and ``manifest.json`` (the SHA-256 of each). A
  checkpoint is written in a hidden folder, every file fsynced, and renamed into place
  when complete;
- ``last.json`` and ``best.json`` naming the newest and the best checkpoint with the
  SHA-256 of its manifest (``last.json`` also the one before), replaced atomically;
- ``log.jsonl`` (one line per epoch, for people and plots; resuming does not need it),
  ``config.json``, ``task.json``;
- ``lock``, held (``flock``) by the training that writes the folder: a second training
  into it is refused, and the lock of a process that died is free again (the kernel
  releases it), so it is taken over without a question.

So a process killed at any instant leaves a folder that resumes (the previous checkpoint
stays in force until the next is complete), and a checkpoint damaged later (a truncated
file, a garbled pointer) is detected by its checksums; resuming then says so and goes on
from the newest checkpoint that is intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import time
import warnings
from typing import Any
from pathlib import Path

import numpy as np

from runtime.errors import ArchcWarning, RunFolderError, TrainingError
from runtime.files import finite_number, json_lines, read_arrays, read_json

FILES = ("weights.npz", "optimizer.npz", "state.json")
_NAME = re.compile(r"ckpt-(\d+)(?:-(\d+))?")


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` and fsync it (a reader after a crash sees all of it or the old file
    where the caller then replaces one with the other)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _rename(source: Path, target: Path) -> None:
    os.replace(source, target)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically (written beside it, fsynced, renamed)."""
    tmp = path.with_name(f".{path.name}.tmp")
    write_file(tmp, data)
    _rename(tmp, path)


def _npz_bytes(arrays: dict) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def folder_name(state: dict) -> str:
    return f"ckpt-{state['epoch']:04d}" + (f"-{state['step']:06d}" if "step" in state else "")


def save(run: Path, model, optimizer, state: dict) -> str:
    """Write a complete checkpoint folder (not yet pointed at) and return its name:
    ``ckpt-EPOCH``, or ``ckpt-EPOCH-STEP`` within an epoch (``state["step"]`` batches
    into it). ``state`` should hold ``history``, the log's rows so far."""
    folder = folder_name(state)
    tmp = run / f".{folder}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    sums = {}
    for name, data in (("weights.npz", _npz_bytes(model.parameters())),
                       ("optimizer.npz", _npz_bytes(optimizer.state_dict())),
                       ("state.json", json.dumps(state).encode())):
        write_file(tmp / name, data)
        sums[name] = _sha256(data)
    write_file(tmp / "manifest.json", json.dumps({"sha256": sums}).encode())
    _fsync_dir(tmp)
    if (run / folder).exists():  # left by a run killed after writing it, before pointing
        shutil.rmtree(run / folder)
    _rename(tmp, run / folder)
    _fsync_dir(run)
    return folder


def point(run: Path, name: str, folder: str) -> None:
    """Make ``name`` (last.json, best.json) point at a checkpoint folder, with its
    manifest's checksum (last.json keeps the one it named before as ``previous``),
    atomically."""
    pointer = {"checkpoint": folder,
               "manifest": _sha256((run / folder / "manifest.json").read_bytes())}
    if name == "last.json":
        before = _pointer(run, name)
        if before and before.get("checkpoint") != folder:
            pointer["previous"] = before.get("checkpoint")
    replace_file(run / name, json.dumps(pointer).encode())
    _fsync_dir(run)


def _pointer(run: Path, name: str) -> dict | None:
    """A pointer file's content, or None if it is missing or damaged."""
    try:
        value = read_json(run / name, "pointer file", TrainingError)
    except TrainingError:
        return None
    return value if isinstance(value.get("checkpoint"), str) else None


def verify(run: Path, folder: str, manifest_sum: str | None = None) -> str | None:
    """Why checkpoint ``folder`` of ``run`` cannot be used, or None if it is intact (its
    files match its manifest, and the manifest the pointer's checksum when given)."""
    if not isinstance(folder, str) or not _NAME.fullmatch(folder):
        return f"'{str(folder)[:40]}' is not a checkpoint folder's name"
    path = run / folder
    if not path.is_dir():
        return f"{folder} is missing"
    try:
        raw = (path / "manifest.json").read_bytes()
        sums = json.loads(raw)["sha256"]
        if manifest_sum is not None and _sha256(raw) != manifest_sum:
            return f"{folder}/manifest.json does not match its pointer's checksum"
        for name in FILES:
            if _sha256((path / name).read_bytes()) != sums[name]:
                return f"{folder}/{name} is damaged (its checksum does not match)"
    except FileNotFoundError as exc:
        return f"{folder}/{Path(exc.filename).name} is missing"
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return f"{folder}/manifest.json is damaged"
    return None


def _legacy(run: Path, pointer: dict) -> bool:
    """A checkpoint written before checkpoints had manifests (archc 0.x): named by a
    pointer without a checksum, no manifest.json, its three files present. It cannot be
    verified; its files are still checked as they are read."""
    path = run / str(pointer["checkpoint"])
    return ("manifest" not in pointer and _NAME.fullmatch(str(pointer["checkpoint"])) is not None
            and not (path / "manifest.json").exists()
            and all((path / name).is_file() for name in FILES))


def _order(folder: str) -> tuple[int, float]:
    match = _NAME.fullmatch(folder)
    return (int(match[1]), float(match[2]) if match[2] else float("inf"))


def find(run: Path, which: str = "last.json") -> tuple[str, list[str]]:
    """The checkpoint to use: the one ``which`` names if it is intact, else its
    ``previous``, else the newest intact checkpoint in the folder; with the reasons
    the ones passed over were (for a warning). Raises RunFolderError when none is
    intact."""
    run = Path(run)
    reasons: list[str] = []
    pointer = _pointer(run, which)
    tried: list[str] = []
    if pointer is None:
        reasons.append(f"{which} is {'damaged' if (run / which).exists() else 'missing'}")
    else:
        tried.append(pointer["checkpoint"])
        why = verify(run, pointer["checkpoint"], pointer.get("manifest"))
        if why is None or _legacy(run, pointer):
            return pointer["checkpoint"], reasons
        reasons.append(why)
        if isinstance(pointer.get("previous"), str):
            tried.append(pointer["previous"])
            if verify(run, pointer["previous"]) is None:
                return pointer["previous"], reasons
    found = sorted((p.name for p in run.glob("ckpt-*") if _NAME.fullmatch(p.name)),
                   key=_order, reverse=True) if run.is_dir() else []
    for folder in found:
        if folder not in tried and verify(run, folder) is None:
            return folder, reasons
    raise RunFolderError(
        f"{run} has no intact checkpoint to {'resume from' if which == 'last.json' else 'read'}"
        + (f" ({'; '.join(reasons)})" if reasons else ""),
        hint="start a new run (without --resume), or into another --out folder")


def _warn(run: Path, folder: str, reasons: list[str]) -> None:
    if reasons:
        warnings.warn(f"{run}: {'; '.join(reasons)}: using {folder}, the newest intact "
                      f"checkpoint", ArchcWarning, stacklevel=3)


def best_weights(path: str | Path) -> Path:
    """A weights file as given, or a run folder's best (else newest intact) checkpoint's."""
    path = Path(path)
    if not path.is_dir():
        return path
    if not any((path / n).exists() for n in ("best.json", "last.json")) \
            and not any(path.glob("ckpt-*")):
        raise RunFolderError(f"{path} is a folder but not a run folder of archc train (it "
                             f"has no best.json, last.json or checkpoint)")
    which = "best.json" if (path / "best.json").exists() else "last.json"
    folder, reasons = find(path, which)
    _warn(path, folder, reasons)
    return path / folder / "weights.npz"


def load(run: Path, model, optimizer, which: str = "last.json") -> dict:
    """Read the checkpoint to resume from (:func:`find`) into ``model`` and
    ``optimizer``; its state."""
    run = Path(run)
    if not run.is_dir():
        raise RunFolderError(f"{run} is not a run folder: there is nothing to resume",
                             hint="give the --out folder of an earlier archc train")
    folder, reasons = find(run, which)
    _warn(run, folder, reasons)
    path = run / folder
    state = read_json(path / "state.json", "checkpoint state", TrainingError)
    if "history" not in state:  # a checkpoint from before the log's rows were kept in it
        state["history"] = json_lines(run / "log.jsonl", "log", TrainingError)
    _check_state(state, path / "state.json")
    model.load(path / "weights.npz", allow_nonfinite=True)  # written by this run
    saved = read_arrays(path / "optimizer.npz", "optimizer state", TrainingError,
                        finite=False)
    _check_optimizer(saved, optimizer, model.program, path / "optimizer.npz")
    optimizer.load_state_dict(saved)
    return state


_STATE_KEYS = {"epoch": int, "best": (int, float), "rng": dict, "history": list}


def _check_state(state: dict, path: Path) -> None:
    for key, kind in _STATE_KEYS.items():
        if not isinstance(state.get(key), kind):
            raise TrainingError(f"checkpoint state {path} lacks '{key}' or it is not a "
                                f"{kind.__name__ if isinstance(kind, type) else 'number'}")
    if "step" in state and not (isinstance(state["step"], int) and "sums" in state
                                and "aug_rng" in state):
        raise TrainingError(f"checkpoint state {path} is within an epoch but lacks where")
    if not is_loss_curve(state.get("curve", [])):
        raise TrainingError(f"checkpoint state {path}: its loss curve is not a list of "
                            "[step, loss] pairs")


def is_loss_curve(points: Any) -> bool:
    """A loss curve as the log and a mid-epoch checkpoint hold it: [step, loss] pairs of
    finite numbers."""
    return isinstance(points, list) and all(
        isinstance(p, list) and len(p) == 2 and all(map(finite_number, p)) for p in points)


def _check_optimizer(saved: dict, optimizer, program, path: Path) -> None:
    """The state fits the optimiser and the parameters it would update."""
    if "step" not in saved or "lr" not in saved or saved["step"].size != 1:
        raise TrainingError(f"optimizer state {path} lacks its step count or learning rate")
    for key, value in saved.items():
        if key in ("step", "lr"):
            continue
        name, _, slot = key.rpartition(".")
        if slot not in type(optimizer).slots or name not in program.params:
            raise TrainingError(f"optimizer state {path} has '{key[:80]}', which is not a "
                                f"{type(optimizer).__name__} state of {program.name}'s "
                                f"parameters (another optimiser or network?)")
        if tuple(value.shape) != program.params[name].shape:
            raise TrainingError(f"optimizer state {path}: '{key[:80]}' is {value.shape}, "
                                f"expected {program.params[name].shape}")


def prune(run: Path) -> None:
    """Remove the checkpoints that neither last.json (its checkpoint and the one before)
    nor best.json names, and hidden folders a killed run left half-written."""
    keep = set()
    for name in ("last.json", "best.json"):
        pointer = _pointer(run, name) or {}
        keep.update(v for k, v in pointer.items() if k in ("checkpoint", "previous"))
    for path in list(run.glob("ckpt-*")) + list(run.glob(".ckpt-*.tmp")):
        if path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)


def write_log(run: Path, history: list[dict]) -> None:
    replace_file(run / "log.jsonl", "".join(json.dumps(h) + "\n" for h in history).encode())


_HELD: dict[Path, int] = {}  # run folders this process holds the lock of, with their fd


class RunLock:
    """Hold ``run/lock`` (an exclusive ``flock``) while training writes the folder; a
    second training into it is refused with who holds it. The kernel drops the lock
    when its process dies, so a stale lock is simply taken over. Re-entrant within a
    process (the CLI takes it before loading data, ``fit`` again)."""

    def __init__(self, run: Path):
        self.run = Path(run)
        self.key: Path | None = None

    def __enter__(self) -> "RunLock":
        import fcntl

        try:
            self.run.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise RunFolderError(f"run folder {self.run} is a file, not a folder") from None
        except OSError as exc:
            raise RunFolderError(f"cannot create run folder {self.run}: "
                                 f"{exc.strerror or exc}") from None
        key = self.run.resolve()
        if key in _HELD:
            return self
        fd = os.open(self.run / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip()
            os.close(fd)
            raise RunFolderError(f"run folder {self.run} is in use by another training "
                                 f"({holder[:200] or 'process unknown'})",
                                 hint="wait for it to finish, or train into another --out "
                                 "folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, (f"pid {os.getpid()} on {socket.gethostname()}, since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}").encode())
        _HELD[key], self.key = fd, key
        return self

    def __exit__(self, *exc) -> None:
        if self.key is not None:
            os.close(_HELD.pop(self.key))  # closing drops the flock
            self.key = None
