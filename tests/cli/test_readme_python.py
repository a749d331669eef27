"""The README's Python example runs and prints what it says."""

from __future__ import annotations

import re

import archc
from conftest import ROOT


def test_readme_python_block():
    block = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    namespace = {"archc": archc}
    for line in block.splitlines():
        code, _, comment = line.partition("#")
        code = code.strip()
        if not code or code.startswith("import"):
            continue
        expected = re.sub(r"\s\([A-Za-z][^()]*\)$", "", comment.strip())
        if "=" in code.split("(")[0] and not code.startswith("report.totals"):
            exec(code, namespace)  # an assignment
            continue
        value = eval(code, namespace)
        if expected.startswith(("{", "(", "[")):
            assert repr(value) == expected, code
