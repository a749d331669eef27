"""Imports follow the data: the runtime never imports the compiler."""

from __future__ import annotations

import ast
import subprocess
import sys

from conftest import ROOT


def imported_modules(package: str) -> set[str]:
    names = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
    return names


def test_runtime_source_never_imports_the_compiler():
    bad = {m for m in imported_modules("runtime")
           if m.split(".")[0] in ("archc", "yaml", "networkx", "graphviz")}
    assert not bad


def test_importing_runtime_loads_no_compiler_module():
    code = ("import sys, runtime; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('archc', 'yaml', 'networkx')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_compiler_core_does_not_import_the_cli():
    for module in ("spec", "layers"):
        assert not any(m.startswith("archc.cli") for m in imported_modules(f"archc/{module}"))
