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


@given(xs=st.lists(st.integers(-50, 50), max_size=30), k=st.integers(-5, 5),
       n=st.integers(0, 40))
def test_comprehensions_match_python(xs, k, n):
    scope = {"xs": xs, "k": k, "n": n}
    assert evaluate("[x * k for x in xs if x > k]", scope) == [x * k for x in xs if x > k]
    assert evaluate("[[i, x] for i in range(n) for x in xs if i % 3 == 0]", scope) == \
        [[i, x] for i in range(n) for x in xs if i % 3 == 0]
    assert evaluate("sum([x for x in xs]) + len(xs)", scope) == sum(xs) + len(xs)


def test_comprehensions_and_list_functions():
    # RegNet's widths, as the paper's design space states them
    scope = {"w0": 24, "wm": 2.5, "ks": [0, 1, 2], "widths": [8, 16, 32]}
    assert evaluate("[round(w0 * wm ** k / 8) * 8 for k in ks]", scope) == [24, 64, 152]
    assert evaluate("[2 * w for w in widths if w > 8]", scope) == [32, 64]
    assert evaluate("[i * w for i, w in [[1, 8], [2, 16]]]", scope) == [8, 32]
    assert evaluate("[[i, j] for i in range(2) for j in range(i)]", {}) == [[1, 0]]
    assert evaluate("sum([d * 2 for d in range(4)])", {}) == 12
    assert evaluate("len(widths) + max(widths) + min(range(3, 7))", scope) == 3 + 32 + 3
    assert evaluate("range(2, 10, 3)", {}) == [2, 5, 8]
    assert evaluate("exp(log(5))", {}) == pytest.approx(5)
    assert evaluate("7 // 2 + 7 % 2 + abs(-1)", {}) == 5
    assert evaluate("[w for w in widths][k]", {**scope, "k": -1}) == 32
    # the names a comprehension binds stay inside it
    assert evaluate("[k for k in range(2)][1] + k", {"k": 9}) == 10


def test_quoted_text_in_expressions():
    assert evaluate("act != 'identity'", {"act": "relu"}) is True
    assert evaluate('"a" if x else "b"', {"x": 0}) == "b"
    with pytest.raises(ExprError) as info:
        evaluate("act != identity", {"act": "relu"})
    assert info.value.hint.startswith("for the text 'identity', quote it inside the expression")


@pytest.mark.parametrize("text, message", [
    ("__import__('os')", "unknown function '__import__'"),
    ("().__class__", "is not allowed"),
    ("open('x')", "unknown function 'open'"),
    ("[x for x.y in [1]]", "is not allowed"),
    ("[x async for x in [1]]", "is not allowed"),
    ("{x for x in [1]}", "is not allowed"),
    ("(x for x in [1])", "is not allowed"),
    ("[x for x in 3]", "not a list to go through"),
    ("[a for a, b in [1, 2]]", "cannot unpack 1"),
    ("range(10 ** 6)", "more than 10,000 list items"),
    ("[i for i in range(200) for j in range(200)]", "more than 10,000 list items"),
    ("[[j for j in range(100)] for i in range(200)]", "more than 10,000 list items"),
    ("[range(6000) for i in range(2)]", "more than 10,000 list items"),
    ("range(2.5)", "range takes whole numbers"),
    ("range(1, 9, 0)", "failed"),
    ("sum(3)", "sum takes a list"),
    ("len(3)", "len takes a list"),
    ("exp(1000)", "failed"),
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
