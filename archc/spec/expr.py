"""A small, safe evaluator for the arithmetic in specs (never Python ``eval``).

Expressions are parsed with :mod:`ast` and walked over a whitelist: numbers, strings,
names (variables and block arguments), ``+ - * / // % **``, comparisons, ``and or not``,
``a if cond else b``, subscripts ``table[key]``, list literals and the functions in
:data:`FUNCTIONS`. Sizes are bounded: the text, the number of syntax nodes, and every
integer result (so ``10 ** 10 ** 10`` is refused instead of hanging).
"""

from __future__ import annotations

import ast
import functools
import math
import operator
from typing import Any, Callable, Mapping

from archc.errors import ArchcError, did_you_mean

MAX_EXPR_CHARS = 1000
MAX_EXPR_NODES = 400
MAX_INT = 2**63


class ExprError(ArchcError):
    """An expression cannot be evaluated; ``hint`` suggests a fix where one helps. The spec
    loader turns it into a located SpecError."""

    def __init__(self, message: str, hint: str | None = None, name: str | None = None):
        super().__init__(message, hint)
        self.name = name  # the undefined name, when that is the problem


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never below 90% of it.

    The rule torchvision uses for MobileNet and EfficientNet channel counts
    (``torchvision.models._utils._make_divisible``).

    Examples
    --------
    >>> make_divisible(32 * 1.1), make_divisible(24 * 0.75), make_divisible(3.0)
    (32, 24, 8)
    """
    if divisor <= 0:
        raise ExprError(f"make_divisible: divisor must be positive, got {divisor}")
    if min_value is None:
        min_value = divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return int(new_value)


def _round(x: float, ndigits: int | None = None) -> float:
    return round(x) if ndigits is None else round(x, ndigits)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "min": min,
    "max": max,
    "abs": abs,
    "round": _round,
    "ceil": math.ceil,
    "floor": math.floor,
    "int": int,
    "float": float,
    "sqrt": math.sqrt,
    "log": math.log,
    "make_divisible": make_divisible,
}

CONSTANTS: dict[str, Any] = {"true": True, "false": False, "null": None, "pi": math.pi}

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_COMPARE = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
_SYMBOL = {
    ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/",
    ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**",
}


@functools.lru_cache(maxsize=4096)
def parse_expression(text: str) -> ast.expr:
    """Parse ``text`` as one expression, or raise :class:`ExprError`.

    Cached: specs repeat the same expressions in every block instance and repeat, and
    the evaluator only reads the tree.
    """
    if len(text) > MAX_EXPR_CHARS:
        raise ExprError(f"expression is longer than {MAX_EXPR_CHARS} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExprError(f"invalid expression '{text}': {exc.msg}") from None
    except (ValueError, MemoryError, RecursionError):
        raise ExprError(f"invalid expression '{text}'") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_EXPR_NODES:
        raise ExprError(f"expression has more than {MAX_EXPR_NODES} parts")
    return tree.body


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float))  # bool is an int, as in Python


def _check_number(x: Any, text: str) -> Any:
    if isinstance(x, bool):
        return x
    if isinstance(x, int) and abs(x) > MAX_INT:
        raise ExprError(f"'{text}' gives a number too large for a spec (over 2**63)")
    if isinstance(x, float) and not math.isfinite(x):
        raise ExprError(f"'{text}' does not give a finite number")
    return x


def _power(base: Any, exp: Any, text: str) -> Any:
    if isinstance(base, int) and isinstance(exp, int) and exp > 0 and abs(base) > 1:
        if (abs(base).bit_length() - 1) * exp > 63:
            raise ExprError(f"'{text}' gives a number too large for a spec (over 2**63)")
    try:
        return base**exp
    except OverflowError:
        raise ExprError(f"'{text}' gives a number too large for a spec") from None


class _Evaluator:
    def __init__(self, text: str, scope: Mapping[str, Any]):
        self.text = text
        self.scope = scope

    def visit(self, node: ast.expr) -> Any:
        method = getattr(self, "_" + type(node).__name__, None)
        if method is None:
            raise ExprError(
                f"'{ast.unparse(node)}' is not allowed in a spec expression",
                hint="expressions may use numbers, variables, + - * / // % **, comparisons, "
                "'a if c else b', table[key] and the functions " + ", ".join(FUNCTIONS),
            )
        return method(node)

    def _Constant(self, node: ast.Constant) -> Any:
        if isinstance(node.value, (int, float, str, bool)) or node.value is None:
            return _check_number(node.value, self.text)
        raise ExprError(f"'{ast.unparse(node)}' is not allowed in a spec expression")

    def _Name(self, node: ast.Name) -> Any:
        if node.id in self.scope:
            return self.scope[node.id]
        if node.id in CONSTANTS:
            return CONSTANTS[node.id]
        raise ExprError(f"undefined name '{node.id}' in '{self.text}'", name=node.id)

    def _List(self, node: ast.List) -> Any:
        return [self.visit(e) for e in node.elts]

    _Tuple = _List

    def _UnaryOp(self, node: ast.UnaryOp) -> Any:
        value = self.visit(node.operand)
        if isinstance(node.op, ast.Not):
            return not value
        if not _is_number(value):
            raise ExprError(f"cannot negate {value!r} in '{self.text}'")
        return -value if isinstance(node.op, ast.USub) else +value

    def _BinOp(self, node: ast.BinOp) -> Any:
        left, right = self.visit(node.left), self.visit(node.right)
        op_type = type(node.op)
        if op_type not in _BINARY:
            raise ExprError(f"operator in '{ast.unparse(node)}' is not allowed in a spec")
        if not (_is_number(left) and _is_number(right)):
            raise ExprError(
                f"'{ast.unparse(node)}' applies '{_SYMBOL[op_type]}' to "
                f"{left!r} and {right!r}; arithmetic needs numbers"
            )
        if op_type is ast.Pow:
            return _check_number(_power(left, right, self.text), self.text)
        try:
            return _check_number(_BINARY[op_type](left, right), self.text)
        except ZeroDivisionError:
            raise ExprError(f"division by zero in '{self.text}'") from None

    def _BoolOp(self, node: ast.BoolOp) -> Any:
        if isinstance(node.op, ast.And):
            result: Any = True
            for v in node.values:
                result = self.visit(v)
                if not result:
                    return result
            return result
        result = False
        for v in node.values:
            result = self.visit(v)
            if result:
                return result
        return result

    def _Compare(self, node: ast.Compare) -> Any:
        left = self.visit(node.left)
        for op, comp in zip(node.ops, node.comparators):
            right = self.visit(comp)
            try:
                ok = _COMPARE[type(op)](left, right)
            except TypeError:
                raise ExprError(f"cannot compare {left!r} and {right!r} in '{self.text}'") from None
            if not ok:
                return False
            left = right
        return True

    def _IfExp(self, node: ast.IfExp) -> Any:
        return self.visit(node.body) if self.visit(node.test) else self.visit(node.orelse)

    def _Subscript(self, node: ast.Subscript) -> Any:
        container = self.visit(node.value)
        key = self.visit(node.slice)
        if not isinstance(container, (list, tuple, dict)):
            raise ExprError(f"'{ast.unparse(node.value)}' is {container!r}, which cannot be indexed")
        try:
            return container[key]
        except (KeyError, IndexError, TypeError):
            if isinstance(container, dict):
                keys = ", ".join(map(str, container))
                raise ExprError(
                    f"'{ast.unparse(node.value)}' has no entry {key!r}", hint=f"valid keys: {keys}"
                ) from None
            raise ExprError(
                f"index {key!r} is out of range for '{ast.unparse(node.value)}' "
                f"(length {len(container)})"
            ) from None

    def _Call(self, node: ast.Call) -> Any:
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            name = ast.unparse(node.func)
            raise ExprError(
                f"unknown function '{name}' in '{self.text}'",
                hint=did_you_mean(name, FUNCTIONS)
                or "available functions: " + ", ".join(FUNCTIONS),
            )
        args = [self.visit(a) for a in node.args]
        kwargs = {}
        for kw in node.keywords:
            if kw.arg is None:
                raise ExprError(f"'**' is not allowed in '{self.text}'")
            kwargs[kw.arg] = self.visit(kw.value)
        try:
            result = FUNCTIONS[node.func.id](*args, **kwargs)
        except ExprError:
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            raise ExprError(f"{node.func.id}(...) failed in '{self.text}': {exc}") from None
        return _check_number(result, self.text)


def evaluate(text: str, scope: Mapping[str, Any]) -> Any:
    """Evaluate a spec expression against ``scope`` (variables and block arguments).

    Raises
    ------
    ExprError
        For syntax errors, undefined names, disallowed constructs and oversized numbers.

    Examples
    --------
    >>> evaluate("make_divisible(32 * width)", {"width": 1.4})
    48
    >>> evaluate("2 if i == 0 else 1", {"i": 3})
    1
    """
    return _Evaluator(text, scope).visit(parse_expression(text))


def resolve(value: Any, scope: Mapping[str, Any]) -> Any:
    """Resolve a value written in a spec: strings are expressions, other values stay.

    A string that does not parse as an expression, or that is a single name defined
    nowhere (``nearest``, ``relu``, ``b3``), is a literal string. Lists are resolved
    item by item. Mappings are returned as they are.

    Examples
    --------
    >>> resolve("width * 2", {"width": 32}), resolve("nearest", {}), resolve([1, "k"], {"k": 3})
    (64, 'nearest', [1, 3])
    """
    if isinstance(value, list):
        return [resolve(v, scope) for v in value]
    if not isinstance(value, str):
        return value
    try:
        tree = parse_expression(value)
    except ExprError:
        return value
    if isinstance(tree, ast.Name) and tree.id not in scope and tree.id not in CONSTANTS:
        return value
    if isinstance(tree, ast.Constant) and isinstance(tree.value, str):
        return tree.value
    return _Evaluator(value, scope).visit(tree)
