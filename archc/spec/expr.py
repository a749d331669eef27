"""A small, safe evaluator for the arithmetic in specs (never Python ``eval``).

Expressions are parsed with :mod:`ast` and walked over a whitelist: numbers, strings,
names (variables and block arguments), ``+ - * / // % **``, comparisons, ``and or not``,
``a if cond else b``, subscripts ``table[key]``, list literals, list comprehensions
(``[w * 2 for w in widths if w > 8]``) and the functions in :data:`FUNCTIONS`. Sizes are
bounded: the text, the number of syntax nodes, every integer result (so ``10 ** 10 ** 10``
is refused instead of hanging), and every list (``range`` and comprehensions included) at
:data:`MAX_LIST` items, so no spec can loop or allocate without limit.
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
MAX_LIST = 10_000  # items of a list an expression makes (range, comprehensions)


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


def _range(*args: int) -> list[int]:
    """``range`` as a list, of at most :data:`MAX_LIST` integers."""
    if not all(isinstance(a, int) and not isinstance(a, bool) for a in args):
        raise ExprError(f"range takes whole numbers, got {', '.join(map(repr, args))}")
    items = range(*args)
    if len(items) > MAX_LIST:
        raise ExprError(f"range({', '.join(map(str, args))}) has {len(items):,} items; a spec "
                        f"list holds at most {MAX_LIST:,}")
    return list(items)


def _sum(values: list, start: Any = 0) -> Any:
    if not isinstance(values, (list, tuple)):
        raise ExprError(f"sum takes a list, got {values!r}")
    return sum(values, start)


def _fail(message: Any) -> Any:
    """``fail('...')``: refuse the spec with this message, where the expression is (a
    spec's own check on its variables: ``fail('...') if stages > 6 else 0``)."""
    raise ExprError(str(message)[:300])


def _len(value: Any) -> int:
    if not isinstance(value, (list, tuple, str, dict)):
        raise ExprError(f"len takes a list, got {value!r}")
    return len(value)


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
    "exp": math.exp,
    "sum": _sum,
    "len": _len,
    "range": _range,
    "make_divisible": make_divisible,
    "fail": _fail,
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
    def __init__(self, text: str, scope: Mapping[str, Any], budget: list[int] | None = None):
        self.text = text
        self.scope = scope
        # list items one evaluation may make (comprehension steps, range items), shared
        # with the evaluators of its comprehensions: nesting cannot multiply it
        self.budget = budget if budget is not None else [MAX_LIST]

    def _spend(self, items: int) -> None:
        self.budget[0] -= items
        if self.budget[0] < 0:
            raise ExprError(f"'{self.text}' makes more than {MAX_LIST:,} list items",
                            hint="a spec expression may build lists of up to "
                            f"{MAX_LIST:,} items in all")

    def _child(self, scope: Mapping[str, Any]) -> "_Evaluator":
        return _Evaluator(self.text, scope, self.budget)

    def visit(self, node: ast.expr) -> Any:
        method = getattr(self, "_" + type(node).__name__, None)
        if method is None:
            raise ExprError(
                f"'{ast.unparse(node)}' is not allowed in a spec expression",
                hint="expressions may use numbers, 'quoted text', variables, + - * / // % **, "
                "comparisons, 'a if c else b', table[key], [x for x in list] and the "
                "functions " + ", ".join(FUNCTIONS),
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

    def _ListComp(self, node: ast.ListComp) -> list:
        """``[expr for name in list if cond ...]``: each ``for`` over a list (``range(...)``
        makes one), at most :data:`MAX_LIST` steps in all, names local to it."""
        out: list = []

        def walk(generators: list[ast.comprehension], scope: Mapping[str, Any]) -> None:
            if not generators:
                out.append(self._child(scope).visit(node.elt))
                return
            first, rest = generators[0], generators[1:]
            if first.is_async:
                raise ExprError(f"'async for' is not allowed in '{self.text}'")
            items = self._child(scope).visit(first.iter)
            if not isinstance(items, (list, tuple)):
                raise ExprError(f"'{ast.unparse(first.iter)}' is {items!r}, not a list to go "
                                f"through, in '{self.text}'",
                                hint="go through a list or range(n)")
            for item in items:
                self._spend(1)
                inner = {**scope, **_bind(first.target, item, self.text)}
                if all(self._child(inner).visit(c) for c in first.ifs):
                    walk(rest, inner)

        walk(node.generators, self.scope)
        return out

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

    def _operand(self, node: ast.expr) -> Any:
        """A comparison's side: an undefined bare word there is most likely text."""
        try:
            return self.visit(node)
        except ExprError as exc:
            if isinstance(node, ast.Name) and exc.name == node.id:
                raise ExprError(exc.message, name=exc.name,
                                hint=f"for the text {node.id!r}, quote it inside the "
                                f"expression: '{node.id}' (a bare word is a string only when "
                                f"it is the whole value)") from None
            raise

    def _Compare(self, node: ast.Compare) -> Any:
        left = self._operand(node.left)
        for op, comp in zip(node.ops, node.comparators):
            right = self._operand(comp)
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
        if node.func.id == "range":  # counted before the list is made
            try:
                self._spend(len(range(*args)))
            except (TypeError, ValueError):
                pass  # arguments range refuses: _range says what is wrong
        try:
            result = FUNCTIONS[node.func.id](*args, **kwargs)
        except ExprError:
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            raise ExprError(f"{node.func.id}(...) failed in '{self.text}': {exc}") from None
        return _check_number(result, self.text)


def _bind(target: ast.expr, value: Any, text: str) -> dict[str, Any]:
    """The names a comprehension's ``for`` target takes: ``w``, or ``(i, w)`` from a pair."""
    if isinstance(target, ast.Name):
        return {target.id: value}
    if isinstance(target, (ast.Tuple, ast.List)) and all(
            isinstance(e, ast.Name) for e in target.elts):
        if not isinstance(value, (list, tuple)) or len(value) != len(target.elts):
            raise ExprError(f"cannot unpack {value!r} into {ast.unparse(target)} in '{text}'")
        return {e.id: v for e, v in zip(target.elts, value)}
    raise ExprError(f"'for {ast.unparse(target)}' is not allowed in '{text}': name the item",
                    hint="for example [2 * w for w in widths]")


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
