"""Fuzzing the front end: random text, random YAML and mutated real specs must produce a
graph or a SpecError (with a location where the file has one), never anything else."""

from __future__ import annotations

import os

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import archc
from archc.errors import SpecError
from conftest import SPECS

FUZZ_N = int(os.environ.get("ARCHC_FUZZ_EXAMPLES", "150"))
REAL_SPECS = {p.name: p.read_text() for p in sorted(SPECS.glob("*.yaml"))}

TOKENS = ["conv2d", "relu", "add", "concat", "-1", "-7", "0", "1", "3", "64", "1000000000",
          "null", "~", "true", "'x'", "[1, 2]", "{a: 1}", "repeat", "name", "inputs", "input",
          "basic_block", "blocks", "layers", "i", "width * 2", "*a", "&a", ":", "- ", "{", "]",
          "2 ** 99", "1 / 0", "same", "valid", "-", "...", "---", "\t", "#", "\\x00", "é"]


def check(text: str, name: str = "fuzz.yaml") -> None:
    try:
        archc.load(name, text=text)
    except SpecError as exc:
        assert exc.message and "Traceback" not in exc.format()


@settings(max_examples=FUZZ_N)
@given(st.text(st.characters(codec=None, categories=None), max_size=300))
def test_random_text(text):
    check(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 2**70) | st.floats(allow_nan=True)
    | st.sampled_from(TOKENS) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(TOKENS + ["input", "layers", "variables", "outputs"]),
                      inner, max_size=4),
    max_leaves=25,
)


@settings(max_examples=FUZZ_N)
@given(st.fixed_dictionaries(
    {"input": st.one_of(json_values, st.just({"channels": 3, "height": 8, "width": 8}))},
    optional={"variables": json_values, "blocks": json_values, "layers": json_values,
              "outputs": json_values},
))
def test_random_structured_specs(doc):
    check(yaml.safe_dump(doc))


@st.composite
def mutated_spec(draw):
    name = draw(st.sampled_from(sorted(REAL_SPECS)))
    lines = REAL_SPECS[name].splitlines()
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "duplicate", "swap", "token", "truncate", "indent"]))
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        if kind == "delete":
            del lines[i]
        elif kind == "duplicate":
            lines.insert(i, lines[i])
        elif kind == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif kind == "token":
            words = lines[i].split(" ")
            k = draw(st.integers(0, len(words) - 1))
            words[k] = draw(st.sampled_from(TOKENS))
            lines[i] = " ".join(words)
        elif kind == "truncate":
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
        else:
            lines[i] = " " * draw(st.integers(0, 3)) + lines[i]
    return name, "\n".join(lines) + "\n"


@settings(max_examples=FUZZ_N * 2)
@given(mutated_spec())
def test_mutated_real_specs(case):
    name, text = case
    check(text, name)
