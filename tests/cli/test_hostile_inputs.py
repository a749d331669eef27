"""Every damaged, hostile or oversized input archc reads ends in its one-line error.

The table (``tests/support/hostile_cases.py``, also the source of ``docs/errors.md``) is
run case by case through the CLI in this process: exit code 2, the first line an
``error:`` naming the file, no traceback, no "internal error", within seconds. A
subprocess runs the bombs under a memory watch (well under 1 GB), and hypothesis damages
every reader's files at random (truncations, flipped and random bytes).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from archc.cli import main
from hostile_cases import CASES, TINY, Kit, release_locks
from runtime.files import json_lines

ROOT = Path(__file__).resolve().parents[2]
SECONDS = 20  # per case, including compiling the tiny network on a cold cache


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A run folder of the tiny network: two epochs, checkpoints within them."""
    folder = tmp_path_factory.mktemp("trained")
    Path(folder, "tiny.yaml").write_text(TINY)
    code = main(["train", str(folder / "tiny.yaml"), "--data", "digits", "--epochs", "2",
                 "--checkpoint-every", "20", "--out", str(folder / "run")])
    assert code == 0
    return folder / "run"


def run_case(case, kit, folder: Path, capsys) -> tuple[int, str, float]:
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        argv = case.make(kit)
        capsys.readouterr()
        start = time.perf_counter()
        code = main(argv)
        elapsed = time.perf_counter() - start
    finally:
        os.chdir(cwd)
        release_locks()
    return code, capsys.readouterr().err, elapsed


@pytest.mark.parametrize("case", CASES, ids=[c.kind for c in CASES])
def test_hostile_input_gets_one_clear_line(case, trained, tmp_path, capsys):
    code, err, elapsed = run_case(case, Kit(trained), tmp_path, capsys)
    lines = [line for line in err.splitlines() if not line.startswith("warning: ")]
    assert code == 2, err
    assert lines and lines[0].startswith(("error: ", "tiny.yaml", "net.yaml", "/dev/zero")) \
        or ": error: " in lines[0], err
    assert "internal error" not in err and "Traceback" not in err, err
    assert case.message in lines[0], err
    assert len(lines[0]) < 400, lines[0]
    if case.hint:
        assert any(case.hint in line for line in lines if line.startswith("hint: ")), err
    assert elapsed < SECONDS, f"{case.kind} took {elapsed:.1f} s"


def test_every_case_kind_is_unique():
    kinds = [c.kind for c in CASES]
    assert len(kinds) == len(set(kinds))


# --- bounded memory: the bombs in a fresh process ---------------------------------------

BOMBS = ["weights-zip-bomb", "weights-huge-header", "idx-gzip-bomb", "image-bomb",
         "spec-dev-zero", "size-batch", "size-out-channels", "coco-deep"]


def test_bombs_stay_well_under_a_gigabyte(trained, tmp_path):
    """Each bomb in a fresh interpreter: the peak resident memory of the whole process
    (Python, NumPy, Numba and archc included: the kernel's high-water mark VmHWM, which
    starts afresh at exec, unlike ru_maxrss) stays under 1 GB."""
    script = (
        "import os, sys, json\n"
        "def peak():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmHWM:'):\n"
        "            return int(line.split()[1])\n"
        f"sys.path.insert(0, {str(ROOT / 'tests' / 'support')!r})\n"
        "from hostile_cases import CASES, Kit\n"
        "from archc.cli import main\n"
        "case = next(c for c in CASES if c.kind == sys.argv[1])\n"
        "os.chdir(sys.argv[3])\n"
        "argv = case.make(Kit(sys.argv[2]))\n"
        "base = peak()\n"
        "code = main(argv)\n"
        "print(json.dumps({'code': code, 'base_kb': base, 'peak_kb': peak()}))\n")
    for kind in BOMBS:
        folder = tmp_path / kind
        folder.mkdir()
        out = subprocess.run([sys.executable, "-c", script, kind, str(trained), str(folder)],
                             capture_output=True, text=True, timeout=120)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["code"] == 2, (kind, out.stderr)
        assert result["peak_kb"] < 1_000_000, (kind, result)


# --- random damage to every reader's files ----------------------------------------------

FUZZ = settings(max_examples=12, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def damage(data: bytes, how: str, at: float, noise: bytes) -> bytes:
    k = int(at * len(data))
    if how == "truncate":
        return data[:k]
    if how == "flip":
        return data[:k] + bytes([data[k] ^ 0xFF]) + data[k + 1:] if k < len(data) else data
    if how == "splice":
        return data[:k] + noise + data[k + len(noise):]
    return noise


DAMAGE = st.tuples(st.sampled_from(["truncate", "flip", "splice", "replace"]),
                   st.floats(0, 1, exclude_max=True), st.binary(min_size=1, max_size=64))


def clean_outcome(code: int, err: str, allowed=(0, 2)) -> None:
    assert code in allowed, err
    assert "internal error" not in err and "Traceback" not in err, err
    if code == 2:
        first = next(line for line in err.splitlines() if not line.startswith("warning: "))
        assert "error: " in first and len(first) < 400, err


def _in(folder: Path, argv: list[str], capsys) -> tuple[int, str]:
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        capsys.readouterr()
        code = main(argv)
    finally:
        os.chdir(cwd)
    return code, capsys.readouterr().err


@FUZZ
@given(DAMAGE, st.sampled_from(["weights.npz", "optimizer.npz", "state.json",
                                "manifest.json", "last.json", "best.json", "task.json",
                                "log.jsonl", "config.json"]))
def test_damaged_run_folder_resumes_or_says_why(trained, tmp_path_factory, capsys, damage_,
                                                name):
    """Whatever byte damage one file of a run folder suffers, resuming and evaluating
    either work (falling back to an intact checkpoint, with a warning) or give the
    one-line error; a damaged checkpoint is never used."""
    folder = tmp_path_factory.mktemp("fuzzrun")
    shutil.copytree(trained, folder / "run")
    (folder / "tiny.yaml").write_text(Path(trained.parent / "tiny.yaml").read_text())
    last = json.loads((folder / "run" / "last.json").read_text())["checkpoint"]
    path = folder / "run" / (last + "/" + name if name in ("weights.npz", "optimizer.npz",
                                                          "state.json", "manifest.json")
                             else name)
    path.write_bytes(damage(path.read_bytes(), *damage_))
    code, err = _in(folder, ["eval", "tiny.yaml", "--data", "digits", "--weights", "run"],
                    capsys)
    clean_outcome(code, err)
    code, err = _in(folder, ["train", "tiny.yaml", "--data", "digits", "--epochs", "3",
                             "--resume", "run"], capsys)
    clean_outcome(code, err)


@FUZZ
@given(DAMAGE)
def test_damaged_weights_file(tmp_path_factory, capsys, damage_):
    folder = tmp_path_factory.mktemp("fuzzweights")
    kit = Kit(folder)
    os.chdir(folder)
    try:
        kit.spec()
        path = folder / kit.weights()
    finally:
        os.chdir(ROOT)
    path.write_bytes(damage(path.read_bytes(), *damage_))
    code, err = _in(folder, ["run", "tiny.yaml", "--weights", "w.npz"], capsys)
    clean_outcome(code, err)


@FUZZ
@given(DAMAGE, st.sampled_from(["train-images-idx3-ubyte", "train-labels-idx1-ubyte"]),
       st.booleans())
def test_damaged_idx_file(tmp_path_factory, capsys, damage_, name, gz):
    from hostile_cases import mnist_folder

    folder = tmp_path_factory.mktemp("fuzzidx")
    os.chdir(folder)
    try:
        Kit(folder).spec()
        mnist_folder(gz=gz)
    finally:
        os.chdir(ROOT)
    path = folder / "mnist" / (name + (".gz" if gz else ""))
    path.write_bytes(damage(path.read_bytes(), *damage_))
    code, err = _in(folder, ["train", "tiny.yaml", "--data", "mnist:mnist", "--epochs", "1"],
                    capsys)
    clean_outcome(code, err)


@FUZZ
@given(DAMAGE)
def test_damaged_coco_file(tmp_path_factory, capsys, damage_):
    from hostile_cases import TINY_RGB, coco_file

    folder = tmp_path_factory.mktemp("fuzzcoco")
    os.chdir(folder)
    try:
        Kit(folder).spec(TINY_RGB, "tiny_rgb.yaml")
        name = coco_file()
    finally:
        os.chdir(ROOT)
    path = folder / name
    path.write_bytes(damage(path.read_bytes(), *damage_))
    code, err = _in(folder, ["train", "tiny_rgb.yaml", "--data", "coco:coco.json", "--task",
                             "detect", "--epochs", "1"], capsys)
    clean_outcome(code, err)


@FUZZ
@given(DAMAGE, st.sampled_from(["x.png", "x.jpg", "x.bmp", "x.gif"]))
def test_damaged_image(tmp_path_factory, capsys, damage_, name):
    from hostile_cases import TINY_RGB, png

    folder = tmp_path_factory.mktemp("fuzzimg")
    for cls in ("a", "b"):
        (folder / "imgs" / cls).mkdir(parents=True)
        for k in range(2):
            png(str(folder / "imgs" / cls / f"{k}{Path(name).suffix}"), (12, 10))
    (folder / "tiny_rgb.yaml").write_text(TINY_RGB)
    path = folder / "imgs" / "a" / f"0{Path(name).suffix}"
    path.write_bytes(damage(path.read_bytes(), *damage_))
    code, err = _in(folder, ["train", "tiny_rgb.yaml", "--data", "folder:imgs", "--epochs",
                             "1"], capsys)
    clean_outcome(code, err)


@FUZZ
@given(DAMAGE)
def test_damaged_onnx_file(tmp_path_factory, capsys, damage_):
    folder = tmp_path_factory.mktemp("fuzzonnx")
    (folder / "tiny.yaml").write_text(TINY)
    assert _in(folder, ["export", "tiny.yaml", "--format", "onnx", "-o", "m.onnx"],
               capsys)[0] == 0
    path = folder / "m.onnx"
    path.write_bytes(damage(path.read_bytes(), *damage_))
    code, err = _in(folder, ["import", "m.onnx", "-o", "m.yaml"], capsys)
    clean_outcome(code, err)


@FUZZ
@given(st.binary(max_size=2000))
def test_random_npz_data(tmp_path_factory, capsys, data):
    folder = tmp_path_factory.mktemp("fuzznpz")
    (folder / "tiny.yaml").write_text(TINY)
    (folder / "d.npz").write_bytes(data)
    code, err = _in(folder, ["train", "tiny.yaml", "--data", "npz:d.npz", "--epochs", "1"],
                    capsys)
    clean_outcome(code, err, allowed=(2,))



# --- warnings and options ----------------------------------------------------------------


def test_library_warnings_never_stand_before_the_error(monkeypatch, capsys):
    """NumPy's RuntimeWarning and ComplexWarning stay out of a user's way (shown with
    ARCHC_DEBUG); archc's own warnings are one ``warning:`` line."""
    import warnings

    import numpy as np

    from archc.cli.common import COMMANDS
    from runtime.errors import ArchcWarning, InputError

    def noisy(args):
        with np.errstate(over="warn"):
            np.float32(3e38) * np.float32(10)  # RuntimeWarning: overflow
        warnings.warn("casting complex values", np.exceptions.ComplexWarning)
        warnings.warn("run: ckpt-0002 is damaged: using ckpt-0001", ArchcWarning)
        raise InputError("the real problem")

    help_text, setup, _ = COMMANDS["check"]
    monkeypatch.setitem(COMMANDS, "check", (help_text, setup, noisy))
    monkeypatch.delenv("ARCHC_DEBUG", raising=False)
    assert main(["check", "net.yaml"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "warning: run: ckpt-0002 is damaged: using ckpt-0001", "error: the real problem"]


def test_nonfinite_weights_load_when_allowed(tmp_path, capsys):
    import numpy as np

    os.chdir(tmp_path)
    try:
        kit = Kit(tmp_path)
        kit.spec()
        kit.weights(**{"fc.bias": np.full(10, np.nan, np.float32)})
        assert main(["run", "tiny.yaml", "--weights", "w.npz"]) == 2
        assert main(["run", "tiny.yaml", "--weights", "w.npz", "--allow-nonfinite"]) == 0
    finally:
        os.chdir(ROOT)
    assert "fc: 1 x 10" in capsys.readouterr().out


def test_memory_limit_from_the_environment(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ARCHC_MAX_MEMORY", "1K")
    (tmp_path / "tiny.yaml").write_text(TINY)
    assert main(["run", str(tmp_path / "tiny.yaml")]) == 2
    assert "more than the 1.0 KiB ARCHC_MAX_MEMORY" in capsys.readouterr().err
    monkeypatch.setenv("ARCHC_MAX_MEMORY", "lots")
    assert main(["run", str(tmp_path / "tiny.yaml")]) == 2
    assert "'lots' is not an amount of memory" in capsys.readouterr().err


def test_a_run_folder_from_before_manifests_still_resumes(trained, tmp_path, capsys):
    """Checkpoints written before manifests (no checksums, the log's rows only in
    log.jsonl) are read as they are: evaluated and resumed."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    for name in ("last.json", "best.json"):
        pointer = json.loads((run / name).read_text())
        (run / name).write_text(json.dumps({"checkpoint": pointer["checkpoint"]}))
    for folder in run.glob("ckpt-*"):
        (folder / "manifest.json").unlink()
        state = json.loads((folder / "state.json").read_text())
        del state["history"]
        (folder / "state.json").write_text(json.dumps(state))
    (tmp_path / "tiny.yaml").write_text(TINY)
    code, err = _in(tmp_path, ["eval", "tiny.yaml", "--data", "digits", "--weights", "run"],
                    capsys)
    assert code == 0 and not err, err
    code, err = _in(tmp_path, ["train", "tiny.yaml", "--data", "digits", "--epochs", "3",
                               "--resume", "run"], capsys)
    assert code == 0 and not err, err
    assert [row["epoch"] for row in json_lines(run / "log.jsonl", "log")] == [1, 2, 3]
