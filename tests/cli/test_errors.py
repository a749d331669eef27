"""One test per kind of user error: the exit code, file, line, column, message and hint."""

from __future__ import annotations

import pytest

from archc.cli import main
from error_cases import CASES


def run_case(case, tmp_path, capsys):
    path = tmp_path / "net.yaml"
    if isinstance(case.spec, bytes):
        path.write_bytes(case.spec)
    else:
        path.write_text(case.spec)
    code = main(["check", str(path), *case.args])
    return path, code, capsys.readouterr()


@pytest.mark.parametrize("case", CASES, ids=[c.kind for c in CASES])
def test_error_is_located_and_explained(case, tmp_path, capsys):
    path, code, out = run_case(case, tmp_path, capsys)
    assert code == 2
    assert out.out == ""
    first, *rest = out.err.splitlines()
    if case.line is None:
        assert first.startswith(f"{path}: error: ") or first.startswith("error: "), first
    else:
        assert first.startswith(f"{path}:{case.line}:{case.column}: error: "), first
    assert case.message in first, first
    if case.hint:
        hints = [line for line in rest if line.startswith("hint: ")]
        assert hints and case.hint in hints[0], out.err
    assert "Traceback" not in out.err


def test_every_case_kind_is_unique():
    kinds = [c.kind for c in CASES]
    assert len(kinds) == len(set(kinds))


def test_missing_file(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nope.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_directory_instead_of_file(tmp_path, capsys):
    assert main(["check", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_oversized_file_refused_without_reading(tmp_path, capsys):
    path = tmp_path / "big.yaml"
    with open(path, "wb") as f:
        f.truncate(64 * 1024 * 1024)
    assert main(["check", str(path)]) == 2
    assert "specs are limited to" in capsys.readouterr().err


def test_deep_nesting_refused(tmp_path, capsys):
    path = tmp_path / "deep.yaml"
    path.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    assert main(["check", str(path)]) == 2
    assert "nesting is deeper than" in capsys.readouterr().err


def test_internal_error_is_one_line(monkeypatch, tmp_path, capsys):
    import archc.shapes

    def broken(graph):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(archc.shapes, "infer_shapes", broken)
    monkeypatch.setattr("archc.infer_shapes", broken)
    path = tmp_path / "net.yaml"
    path.write_text("input: {channels: 1, height: 4, width: 4}\nlayers: [relu]\n")
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error" in err and "Traceback" not in err


def test_every_error_a_user_can_meet_has_one_root():
    """Every exception class archc defines is an ArchcError (the CLI's one catch), except
    GraphInvalid, which marks a bug in archc."""
    import ast

    from conftest import ROOT

    import archc

    found = {}
    for package in ("archc", "runtime"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef) and any(
                        getattr(b, "id", "").endswith(("Error", "Exception", "Unavailable",
                                                       "Invalid")) for b in node.bases):
                    found[node.name] = path.relative_to(ROOT).with_suffix("")
    import importlib

    classes = {name: getattr(importlib.import_module(".".join(where.parts).replace(
        ".__init__", "")), name) for name, where in found.items()}
    outside = sorted(n for n, c in classes.items()
                     if not issubclass(c, archc.ArchcError) and n != "GraphInvalid")
    assert len(classes) >= 12 and not outside
