"""The safe expression evaluator: arithmetic as Python does it, and nothing else."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from archc.spec.expr import ExprError, evaluate, make_divisible, resolve


@given(a=st.integers(-1000, 1000), b=st.integers(1, 50), op=st.sampled_from(["+", "-", "*", "//", "%", "/"]))
def test_integer_arithmetic_matches_python(a, b, op):
    expected = {"+": a + b, "-": a - b, "*": a * b, "//": a // b, "%": a % b, "/": a / b}[op]
    assert evaluate(f"a {op} b", {"a": a, "b": b}) == expected


@given(x=st.floats(0.1, 100), d=st.sampled_from([4, 8, 16]))
def test_make_divisible_is_torchvisions_rule(x, d):
    # torchvision.models._utils._make_divisible, restated
    new_v = max(d, int(x + d / 2) // d * d)
    if new_v < 0.9 * x:
        new_v += d
    assert make_divisible(x, d) == new_v
    assert make_divisible(x, d) % d == 0


def test_functions_and_conditionals():
    scope = {"w": 1.1, "table": {"b0": [1.0, 1.0], "b3": [1.2, 1.4]}, "v": "b3"}
    assert evaluate("ceil(3 * w)", scope) == 4
    assert evaluate("floor(3 * w)", scope) == 3
    assert evaluate("round(2.5)", {}) == 2  # Python rounding: half to even
    assert evaluate("max(1, min(5, 9))", {}) == 5
    assert evaluate("table[v][1]", scope) == 1.4
    assert evaluate("1 if v == 'b3' and w > 1 else 0", scope) == 1
    assert evaluate("2 ** 10", {}) == 1024
    assert evaluate("make_divisible(32 * 1.4, divisor=8)", {}) == 48
    assert evaluate("sqrt(16)", {}) == 4.0
    assert evaluate("[1, 2][-1]", {}) == 2
    assert evaluate("not true", {}) is False
    assert evaluate("-x", {"x": 3}) == -3
    assert evaluate("pi", {}) == math.pi


@pytest.mark.parametrize("text, message", [
    ("__import__('os')", "unknown function '__import__'"),
    ("().__class__", "is not allowed"),
    ("open('x')", "unknown function 'open'"),
    ("[x for x in [1]]", "is not allowed"),
    ("lambda: 1", "is not allowed"),
    ("'a' * 1000000", "arithmetic needs numbers"),
    ("10 ** 10 ** 10", "too large"),
    ("2 ** 64", "too large"),
    ("1 / 0", "division by zero"),
    ("9 % 0", "division by zero"),
    ("1e308 * 10", "finite"),
    ("nope + 1", "undefined name 'nope'"),
    ("{'a': 1}['b']", "is not allowed"),
    ("t['b']", "has no entry 'b'"),
    ("t['a'][5]", "cannot be indexed"),
    ("1 +", "invalid expression"),
    ("x" * 2000, "longer than"),
    ("+".join(["1"] * 300), "more than"),
    ("max()", "failed"),
    ("sqrt(-1)", "failed"),
])
def test_refused(text, message):
    with pytest.raises(ExprError) as info:
        evaluate(text, {"t": {"a": 1}})
    assert message in info.value.message


def test_resolve_keeps_literal_words_and_evaluates_expressions():
    assert resolve("nearest", {}) == "nearest"
    assert resolve("3x3", {}) == "3x3"  # not an expression: literal text
    assert resolve("mode", {"mode": "bilinear"}) == "bilinear"
    assert resolve("c * 2", {"c": 8}) == 16
    assert resolve("'quoted'", {}) == "quoted"
    assert resolve(["k", 1], {"k": 3}) == [3, 1]
    assert resolve(7, {}) == 7
    with pytest.raises(ExprError):
        resolve("c * 2", {})
