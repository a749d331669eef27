"""The layer registry's building blocks: attribute types, :class:`LayerType`, errors.

Each layer type is one :class:`LayerType` value holding everything archc knows about it:
its attributes (types, defaults, validation), how a spec may write it (positional
attributes, number of inputs), its shape rule and its parameter shapes. Later stages
(analysis, lowering, rendering, export) read the same entry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from archc.errors import ArchcError, did_you_mean

Shape = tuple[int, ...]
"""A tensor shape without the batch dimension: (C, H, W) or (F,)."""


class AttrError(ArchcError):
    """A layer attribute has a bad value. ``attr`` names it (None: the layer as a whole).
    The spec loader turns it into a located SpecError."""

    def __init__(self, message: str, attr: str | None = None, hint: str | None = None):
        super().__init__(message, hint)
        self.attr = attr


class ShapeError(ArchcError):
    """A shape rule rejects its inputs. ``input_index`` names the input at fault, if one is.
    Shape inference turns it into a SpecError located at the node."""

    def __init__(self, message: str, input_index: int | None = None, hint: str | None = None):
        super().__init__(message, hint)
        self.input_index = input_index


def describe(value: Any) -> str:
    """A value as an error message names it: ``the text 'x'``, ``the boolean true``."""
    if isinstance(value, str):
        return f"the text '{value}'"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple, dict)):
        return f"{type(value).__name__} {value!r}"
    return repr(value)


MAX_INT = 2**63  # as the spec language's numbers


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        raise AttrError(f"expected an integer, got {describe(value)}")
    if isinstance(value, (int, float)) and abs(value) > MAX_INT:
        raise AttrError(f"{value:.3g} is too large for an integer attribute (over 2**63)")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, float):
        raise AttrError(
            f"expected an integer, got {value!r}",
            hint="round it in the expression with round(), floor(), ceil() or make_divisible()",
        )
    raise AttrError(f"expected an integer, got {describe(value)}")


class AttrType:
    """How one attribute's value is checked and normalised."""

    name = "value"

    def coerce(self, value: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class Int(AttrType):
    minimum: int | None = None
    maximum: int | None = None

    @property
    def name(self) -> str:
        return "integer" if self.minimum is None else f"integer >= {self.minimum}"

    def coerce(self, value: Any) -> int:
        v = _as_int(value)
        if self.minimum is not None and v < self.minimum:
            raise AttrError(f"must be at least {self.minimum}, got {v}")
        if self.maximum is not None and v > self.maximum:
            raise AttrError(f"must be at most {self.maximum}, got {v}")
        return v


@dataclass(frozen=True)
class Float(AttrType):
    minimum: float | None = None
    maximum: float | None = None
    below_maximum: bool = False

    name = "number"

    def coerce(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise AttrError(f"expected a number, got {describe(value)}")
        v = float(value)
        if not math.isfinite(v):
            raise AttrError(f"expected a finite number, got {v}")
        if self.minimum is not None and v < self.minimum:
            raise AttrError(f"must be at least {self.minimum}, got {v}")
        if self.maximum is not None and (v > self.maximum or (self.below_maximum and v == self.maximum)):
            bound = "below" if self.below_maximum else "at most"
            raise AttrError(f"must be {bound} {self.maximum}, got {v}")
        return v


@dataclass(frozen=True)
class Bool(AttrType):
    name = "true or false"

    def coerce(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise AttrError(f"expected true or false, got {describe(value)}")
        return value


@dataclass(frozen=True)
class Choice(AttrType):
    choices: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return " | ".join(self.choices)

    def coerce(self, value: Any) -> str:
        if not isinstance(value, str) or value not in self.choices:
            hint = did_you_mean(value, self.choices) if isinstance(value, str) else None
            raise AttrError(
                f"expected one of {', '.join(self.choices)}; got {describe(value)}",
                hint=hint,
            )
        return value


@dataclass(frozen=True)
class Pair(AttrType):
    """An (height, width) pair, written as one integer (both) or ``[h, w]``."""

    minimum: int = 1

    @property
    def name(self) -> str:
        return f"integer or [h, w] (each >= {self.minimum})"

    def coerce(self, value: Any) -> tuple[int, int]:
        if isinstance(value, (list, tuple)):
            if len(value) != 2:
                raise AttrError(f"expected one integer or a pair [h, w], got {len(value)} values")
            pair = (_as_int(value[0]), _as_int(value[1]))
        else:
            v = _as_int(value)
            pair = (v, v)
        if min(pair) < self.minimum:
            raise AttrError(f"each value must be at least {self.minimum}, got {_fmt_pair(pair)}")
        return pair


@dataclass(frozen=True)
class FloatPair(AttrType):
    name = "number or [h, w] (each > 0)"

    def coerce(self, value: Any) -> tuple[float, float]:
        items = value if isinstance(value, (list, tuple)) else [value, value]
        if len(items) != 2:
            raise AttrError(f"expected one number or a pair [h, w], got {len(items)} values")
        pair = tuple(Float(minimum=0.0).coerce(v) for v in items)
        if min(pair) <= 0:
            raise AttrError(f"each value must be positive, got {list(pair)}")
        return pair  # type: ignore[return-value]


PADDING_MODES = ("valid", "same", "full")


@dataclass(frozen=True)
class Padding(AttrType):
    """Explicit ``p`` / ``[ph, pw]`` (zeros on both sides) or a mode name."""

    modes: tuple[str, ...] = PADDING_MODES

    @property
    def name(self) -> str:
        return "integer, [h, w] or " + " | ".join(self.modes)

    def coerce(self, value: Any) -> tuple[int, int] | str:
        if isinstance(value, str):
            return Choice(self.modes).coerce(value)
        return Pair(minimum=0).coerce(value)


@dataclass(frozen=True)
class Ints(AttrType):
    """A list of integers (e.g. a target shape)."""

    minimum: int | None = None
    name = "list of integers"

    def coerce(self, value: Any) -> tuple[int, ...]:
        if not isinstance(value, (list, tuple)) or not value:
            raise AttrError(f"expected a non-empty list of integers, got {describe(value)}")
        items = tuple(_as_int(v) for v in value)
        if self.minimum is not None and min(items) < self.minimum:
            raise AttrError(f"each value must be at least {self.minimum}, got {list(items)}")
        return items


@dataclass(frozen=True)
class Scales(AttrType):
    """One positive number or a list of them (one per input: a pyramid's scales)."""

    name = "number > 0 or a list of them"

    def coerce(self, value: Any) -> tuple[float, ...]:
        items = value if isinstance(value, (list, tuple)) else [value]
        if not items:
            raise AttrError("expected a number or a non-empty list of numbers, got []")
        out = tuple(Float(minimum=0.0).coerce(v) for v in items)
        if min(out) <= 0:
            raise AttrError(f"each value must be positive, got {list(out)}")
        return out


@dataclass(frozen=True)
class Optional(AttrType):
    """``null`` or a value of the inner type."""

    inner: AttrType = field(default_factory=Int)

    @property
    def name(self) -> str:
        return f"{self.inner.name}, or null"

    def coerce(self, value: Any) -> Any:
        return None if value is None else self.inner.coerce(value)


@dataclass(frozen=True)
class OnnxOp:
    """An ONNX operator that computes a layer type exactly: its ``op_type`` and
    ``(archc attribute, ONNX attribute)`` pairs (``negative_slope`` is ``alpha``)."""

    op_type: str
    attrs: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Init:
    """How one parameter starts: ``uniform`` in ``+-bound`` or ``constant`` ``value``."""

    kind: str = "constant"
    value: float = 0.0

    @staticmethod
    def uniform(bound: float) -> "Init":
        return Init("uniform", bound)


def default_init(role: str, attrs: dict, shapes: dict) -> Init:
    """Scales and running variances start at 1, shifts, means and counters at 0."""
    return Init(value=1.0 if role in ("weight", "running_var") else 0.0)


def fan_in_uniform(role: str, attrs: dict, shapes: dict) -> Init:
    """PyTorch's conv and linear initialisation: weight and bias uniform in ``+-1 /
    sqrt(fan_in)`` (Kaiming-uniform with ``a = sqrt(5)``), fan_in being the weight's size
    past its first axis (``torch.nn.init._calculate_fan_in_and_fan_out``: for a transposed
    conv's (in, out / groups, kh, kw) weight too)."""
    return Init.uniform(1.0 / math.sqrt(math.prod(shapes["weight"][1:])))


REQUIRED = object()


@dataclass(frozen=True)
class Attr:
    """One attribute of a layer type: its name, type, default (or REQUIRED) and meaning."""

    name: str
    type: AttrType
    default: Any = REQUIRED
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


def _fmt_pair(pair: tuple[int, int]) -> str:
    return str(pair[0]) if pair[0] == pair[1] else f"[{pair[0]}, {pair[1]}]"


def fmt_shape(shape: Shape, items: int = 1) -> str:
    """Format a shape as torchinfo does, without the batch: ``64x56x56``; a value with
    several items per image (a region layer's, one per box) leads with their count:
    ``512 x 256x7x7``."""
    text = "x".join(str(d) for d in shape)
    return f"{items} x {text}" if items > 1 else text


ShapeRule = Callable[[dict, list], Shape]
ParamRule = Callable[[dict, list], dict]


def no_params(attrs: dict, inputs: list) -> dict:
    return {}


@dataclass(frozen=True)
class LayerType:
    """Everything archc knows about one layer type (one registry entry).

    Attributes
    ----------
    op : the name used in YAML and in code (``conv2d``).
    family : the kind of layer (conv, pool, norm, activation, merge, reshape, ...),
        for grouping in reports and colours in diagrams.
    doc : one paragraph for the layer reference.
    attrs : the attribute schema.
    infer_shape : ``(attrs, input_shapes) -> output_shape``; raises ShapeError.
    example : a YAML entry using the layer, checked by the test suite.
    positional : attribute names a list/scalar value fills, in order.
    arity : (min, max) number of inputs; max None means any number.
    validate : cross-attribute checks, ``attrs -> None``; raises AttrError.
    parameters : ``(attrs, input_shapes) -> {name: shape}`` of trainable parameters,
        named and laid out as PyTorch names them.
    buffers : the same for non-trainable state (batch-norm running statistics).
    aliases : other names accepted in YAML (``swish`` for ``silu``).
    internal : not written as a layer entry (graph inputs).
    input_ops : ``((position, allowed_ops), ...)``: inputs that must come from given ops
        (``max_unpool2d`` takes positions from a ``max_pool2d``).
    cost : MACs, element-wise FLOPs and bytes saved for backward (see ``costs.Cost``).
    receptive_field : ``(attrs, input_shapes) -> RFStep | None`` (None: the whole input).
    rf_inputs : the inputs whose receptive fields the output unites (None: all of them).
    view : the output can share its input's memory (flatten, reshape, identity).
    label : ``attrs -> str``, the short text diagrams show (``conv 3x3/2, 64``); None: the op.
    elementwise : a scalar function applied to each element (an activation): conv and
        linear layers can fuse it, and the runtime computes it from the formula of the same
        name (``runtime/backends/activations.py``).
    onnx : the ONNX operator of the same meaning, one input to one output, when there is
        one (export writes it and import reads it back, attributes renamed as given).
    lower : ``(attrs, input_shapes, output_shape) -> {name: value}``: what a kernel needs
        beyond the attributes (explicit per-side padding, a default stride filled in, an
        output size), added to the attributes when the graph is lowered.
    init : ``(role, attrs, parameter_shapes) -> Init``: how a fresh parameter starts
        (PyTorch's ``reset_parameters``); None: scales and variances 1, the rest 0.
    items : ``(attrs, input_shapes) -> int``: how many outputs per image the layer makes
        (a region layer: one per box, the boxes joining the batch); None: as many as its
        inputs have (1 for a graph input).
    last_axis : works over the last axis (linear, layernorm): a flat vector, or a map
        (CxHxW) only when it is channels-last, i.e. comes from a ``permute`` through layers
        that keep the layout (archc.shapes checks it: a map straight from a conv is the
        usual missing ``flatten``).
    """

    op: str
    family: str
    doc: str
    attrs: tuple[Attr, ...]
    infer_shape: ShapeRule
    example: str
    positional: tuple[str, ...] = ()
    arity: tuple[int, int | None] = (1, 1)
    validate: Callable[[dict], None] | None = None
    parameters: ParamRule = no_params
    buffers: ParamRule = no_params
    aliases: tuple[str, ...] = ()
    internal: bool = False
    input_ops: tuple[tuple[int, tuple[str, ...]], ...] = ()
    cost: Any = None
    receptive_field: Callable[[dict, list], Any] | None = None
    rf_inputs: tuple[int, ...] | None = None
    view: bool = False
    label: Callable[[dict], str] | None = None
    elementwise: bool = False
    onnx: OnnxOp | None = None
    lower: Callable[[dict, list, Shape], dict] | None = None
    init: Callable[[str, dict, dict], Init] | None = None
    items: Callable[[dict, list], int] | None = None
    last_axis: bool = False

    def short_label(self, attrs: dict) -> str:
        return self.label(attrs) if self.label is not None else self.op

    @property
    def attr_names(self) -> list[str]:
        return [a.name for a in self.attrs]

    def normalize(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Check ``raw`` attribute values and fill in defaults; raises AttrError."""
        by_name = {a.name: a for a in self.attrs}
        for key in raw:
            if key not in by_name:
                valid = ", ".join(self.attr_names) or "none"
                raise AttrError(
                    f"'{self.op}' has no attribute '{key}' (its attributes: {valid})",
                    attr=key,
                    hint=did_you_mean(key, self.attr_names),
                )
        out: dict[str, Any] = {}
        for attr in self.attrs:
            if attr.name in raw:
                try:
                    out[attr.name] = attr.type.coerce(raw[attr.name])
                except AttrError as exc:
                    raise AttrError(
                        f"'{self.op}' attribute '{attr.name}': {exc.message}",
                        attr=attr.name,
                        hint=exc.hint,
                    ) from None
            elif attr.required:
                raise AttrError(
                    f"'{self.op}' needs attribute '{attr.name}' ({attr.doc})",
                    hint=f"e.g. {self.example.strip()}",
                )
            else:
                out[attr.name] = attr.default
        if self.validate is not None:
            self.validate(out)
        return out


def weight_and_bias(weight: Shape, out: int, bias: bool) -> dict:
    """The parameters of a conv or linear layer, PyTorch-named."""
    return {"weight": tuple(weight), "bias": (out,)} if bias else {"weight": tuple(weight)}


def check_declared(attrs: dict, key: str, actual: int, what: str) -> None:
    """Raise ShapeError when an optional declared size (``in_channels``) disagrees."""
    declared = attrs.get(key)
    if declared is not None and declared != actual:
        raise ShapeError(f"{key} is {declared} but the input has {actual} {what}", input_index=0)


def need_rank(shape: Shape, rank: int, op: str, index: int = 0, hint: str | None = None) -> None:
    """Raise ShapeError unless the input has the given rank (without batch)."""
    if len(shape) != rank:
        what = {3: "a feature map CxHxW", 1: "a flat vector of features"}.get(rank, f"rank {rank}")
        raise ShapeError(
            f"'{op}' expects {what}, got shape {fmt_shape(shape)}", input_index=index, hint=hint
        )
