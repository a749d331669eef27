"""docs/ stays true: generated pages are current and every complete example spec loads."""

from __future__ import annotations

import re
import sys

import pytest

import archc
from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import gen_docs  # noqa: E402

DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]


@pytest.mark.parametrize("rel", sorted(gen_docs.GENERATED))
def test_generated_docs_are_current(rel):
    assert (ROOT / rel).read_text() == gen_docs.GENERATED[rel](), f"run 'make docs' to update {rel}"


def complete_specs():
    for path in DOCS:
        if path.name == "errors.md":  # its specs are wrong on purpose (checked by gen_docs)
            continue
        blocks = re.findall(r"```yaml\n(.*?)```", path.read_text(), re.S)
        for index, text in enumerate(blocks):
            if re.search(r"^(input|inputs):", text, re.M) and re.search(r"^layers:", text, re.M):
                yield pytest.param(text, id=f"{path.name}-{index}")


@pytest.mark.parametrize("text", list(complete_specs()))
def test_documented_spec_loads(text):
    graph = archc.load("example.yaml", text=text)
    assert len(graph) > 1


def test_spec_language_examples_are_numerous():
    assert len(list(complete_specs())) >= 15


def shown_commands():
    for path in DOCS:
        for block in re.findall(r"```text\n(.*?)```", path.read_text(), re.S):
            parts = re.split(r"^\$ ", block, flags=re.M)
            for part in parts[1:]:
                command, _, output = part.partition("\n")
                if " specs/" in command:
                    yield pytest.param(command, output, id=f"{path.name}:{command[:40]}")


@pytest.mark.parametrize("command, output", list(shown_commands()))
def test_shown_command_output_is_real(command, output, capsys, monkeypatch):
    import shlex

    from archc.cli import main

    monkeypatch.chdir(ROOT)
    args = shlex.split(command)
    assert args[0] == "archc"
    main(args[1:])
    # throughputs vary from run to run; a line "..." in the docs stands for lines left out
    actual, shown = (re.sub(r"\d+ img/s", "N img/s", text).splitlines()
                     for text in (capsys.readouterr().out, output))
    if "..." in shown:
        cut = shown.index("...")
        head, tail = shown[:cut], shown[cut + 1:]
        assert actual[:len(head)] == head and actual[len(actual) - len(tail):] == tail
    else:
        assert actual == shown
