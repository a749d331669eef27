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


def _module_name(path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph():
    """module -> the archc and runtime modules it imports, anywhere in it (imports inside
    functions too: they hide a cycle, they do not break it; only ``if TYPE_CHECKING:``
    imports, which never run, are left out)."""
    import networkx as nx

    modules = {_module_name(p): p for package in ("archc", "runtime")
               for p in (ROOT / package).rglob("*.py")}
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        for block in ast.walk(tree):  # drop the imports only a type checker reads
            if isinstance(block, ast.If) and getattr(block.test, "id", "") == "TYPE_CHECKING":
                block.body = []
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                    + ([base] if base else []))
                for alias in node.names:  # a submodule, else a name of the module
                    full = f"{base}.{alias.name}"
                    targets.append(full if full in modules else base)
            for target in targets:
                if target in modules and target != name:
                    graph.add_edge(name, target)
    return graph


def test_no_import_cycles():
    import networkx as nx

    cycles = sorted(nx.simple_cycles(import_graph()), key=len)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c + c[:1]) for c in cycles[:5])


def test_the_cycle_check_sees_imports_inside_functions(tmp_path, monkeypatch):
    pkg = tmp_path / "archc"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from archc import b\n")
    (pkg / "b.py").write_text("def f():\n    from archc.a import g\n")
    (tmp_path / "runtime").mkdir()
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert {("archc.a", "archc.b"), ("archc.b", "archc.a")} <= set(import_graph().edges)


# the compiler modules that may import the runtime: the lowering stage, the error root's
# re-export, and the compositions (the CLI, optimize as a library call, the report page
# with a training run's folder)
RUNTIME_USERS = ("archc.lower", "archc.errors", "archc.optimize", "archc.cli", "archc.page")


def test_only_the_lowering_stage_and_the_compositions_import_the_runtime():
    graph = import_graph()
    users = {a for a, b in graph.edges if a.startswith("archc") and b.startswith("runtime")}
    assert {u for u in users if not u.startswith(RUNTIME_USERS)} == set()


def test_passes_run_networks_through_the_evaluator_they_are_given():
    graph = import_graph()
    assert not {(a, b) for a, b in graph.edges
                if a.startswith("archc.passes") and b in ("archc", "archc.lower")}


def test_no_test_file_imports_another():
    """Shared helpers live in tests/support/, oracles in tests/oracles/: a test module
    imports neither another test module nor anything through one."""
    offenders = []
    for path in (ROOT / "tests").rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names
                          if n.split(".")[-1].startswith("test_")]
    assert not offenders
