"""Name scopes used while expanding a spec: variables for expressions, and layer names."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Iterator

from archc.errors import Loc, SpecError, did_you_mean
from archc.spec.expr import CONSTANTS, FUNCTIONS, ExprError, resolve


class Env(Mapping):
    """Variables visible to expressions: a chain of mappings, innermost first."""

    def __init__(self, values: dict[str, Any], parent: "Env | None" = None):
        self.values = values
        self.parent = parent

    def __getitem__(self, key: str) -> Any:
        env: Env | None = self
        while env is not None:
            if key in env.values:
                return env.values[key]
            env = env.parent
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        seen: set[str] = set()
        env: Env | None = self
        while env is not None:
            for key in env.values:
                if key not in seen:
                    seen.add(key)
                    yield key
            env = env.parent

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def child(self, values: dict[str, Any]) -> "Env":
        return Env(values, self)


def evaluate_value(value: Any, env: Env, loc: Loc | None, what: str) -> Any:
    """Resolve a spec value (expressions in strings) or raise a located SpecError."""
    try:
        if isinstance(value, dict):
            return {k: evaluate_value(v, env, loc, what) for k, v in value.items()}
        return resolve(value, env)
    except ExprError as exc:
        hint = exc.hint
        if exc.name is not None and hint is None:
            hint = did_you_mean(exc.name, list(env) + list(CONSTANTS) + list(FUNCTIONS))
            if hint is None:
                known = ", ".join(sorted(env)) or "none"
                hint = f"variables in scope here: {known}"
        raise SpecError(f"{what}: {exc.message}", loc, hint) from None


@dataclass
class Frame:
    """One list of layer entries being expanded (the top level, a block body, a sequential).

    ``items`` holds the output node of each entry so far, preceded by the list's input,
    so ``items[-1]`` is what relative index -1 refers to. ``names`` maps the entries' local
    names to their output nodes. An inline ``sequential`` frame falls back to its parent's
    names; a block body does not (blocks are lexically scoped: they see only their inputs,
    their arguments and the global variables).
    """

    prefix: str
    env: Env
    scope: tuple[str, ...]
    trace: tuple[str, ...]
    block_stack: tuple[str, ...]
    trainable: bool
    items: list[str]
    names: dict[str, str] = field(default_factory=dict)
    ports: dict[str, str] = field(default_factory=dict)
    pending: dict[str, Loc] = field(default_factory=dict)  # names defined later in the list
    parent: "Frame | None" = None

    def full(self, local: str) -> str:
        return self.prefix + local

    def visible_names(self) -> list[str]:
        frame: Frame | None = self
        names: list[str] = []
        while frame is not None:
            names += list(frame.names) + list(frame.ports)
            frame = frame.parent
        return names
