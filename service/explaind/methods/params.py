"""Method parameters, declared once: type, default, bounds or choices, and a one-line description.

A method lists its `Param`s; that list alone validates a request's values (every error names
`method.field`, what was expected and what came), fills in defaults, answers ListMethods, parses
the CLI's `--param`, and writes docs/methods.md. tests/unit/test_method_params.py checks each
declaration against the method's proto message (names, types, defaults).

Bounds and defaults that depend on the model or the server's settings are callables of a `Limits`
(the model's view and the settings), with `shown` text for documentation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Union

from ..errors import InvalidArgument, echo

INT = "int32"
FLOAT = "float"
BOOL = "bool"
STRING = "string"
INTS = "repeated int32"
FLOATS = "repeated float"

IMAGE = frozenset({"image"})
TABULAR = frozenset({"tabular"})
ANY_KIND = frozenset({"image", "tabular"})


@dataclass(frozen=True)
class Limits:
    """What model- or server-dependent defaults and bounds may read."""

    model: Any      # methods.base.ModelView
    settings: Any   # config.Settings


Bound = Union[float, int, Callable[[Limits], float], None]
Default = Any  # a value, a callable of Limits, or None (unset: the method decides; see `shown`)


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    default: Default
    description: str
    low: Bound = None
    high: Bound = None
    exclusive_low: bool = False
    exclusive_high: bool = False
    choices: tuple[str, ...] = ()
    kinds: frozenset[str] = ANY_KIND    # model kinds it applies to; given for another kind: refused
    shown: str = ""                     # the default as documented, when it is not a plain value
    length: tuple[int, int] | None = None  # repeated: (fewest, most) values
    neutral: tuple[Any, ...] = ()       # values accepted (and ignored) for the kinds it does not apply to

    # Documentation --------------------------------------------------------------------------------

    @property
    def default_text(self) -> str:
        if self.shown:
            return self.shown
        return format_value(self.default)

    def bound_text(self, bound: Bound) -> str:
        if bound is None or callable(bound):
            return ""
        return format_value(bound)

    # Validation -----------------------------------------------------------------------------------

    def resolve(self, method: str, given: Mapping[str, Any], limits: Limits) -> Any:
        """The value to use: the request's, checked, or the default (None when unset without one)."""
        if self.name not in given:
            return self.default(limits) if callable(self.default) else self.default
        value = given[self.name]
        where = f"{method}.{self.name}"
        if self.type == BOOL:
            return bool(value)
        if self.type == STRING:
            text = str(value).lower() if self.choices else str(value)
            if self.choices and text not in self.choices:
                raise InvalidArgument(where, f"one of {', '.join(self.choices)}", echo(value))
            return text
        if self.type in (INTS, FLOATS):
            values = list(value)
            if self.length is not None and not self.length[0] <= len(values) <= self.length[1]:
                fewest, most = self.length
                raise InvalidArgument(where, f"{fewest} to {most} values" if fewest != most else f"{most} values",
                                      f"{len(values)} values")
            return [self._number(where, v, limits, format_value(values)) for v in values]
        return self._number(where, value, limits, value)

    def _number(self, where: str, value: Any, limits: Limits, shown: Any) -> int | float:
        integer = self.type in (INT, INTS)
        number = int(value) if integer else float(value)
        if not integer and not math.isfinite(number):
            raise InvalidArgument(where, "a finite number", shown)
        low = self.low(limits) if callable(self.low) else self.low
        high = self.high(limits) if callable(self.high) else self.high
        too_low = low is not None and (number <= low if self.exclusive_low else number < low)
        too_high = high is not None and (number >= high if self.exclusive_high else number > high)
        if too_low or too_high:
            many = self.type in (INTS, FLOATS)
            if integer and low == 1 and high is None:
                expected = "positive integers" if many else "a positive integer"
            elif not integer and low == 0 and self.exclusive_low and high is None:
                expected = "positive numbers" if many else "a positive number"
            else:
                what = ("integers" if integer else "numbers") if many else ("an integer" if integer else "a number")
                expected = f"{what} in {interval(low, high, self.exclusive_low, self.exclusive_high)}"
            raise InvalidArgument(where, expected, shown)
        return number


def interval(low: float | None, high: float | None, exclusive_low: bool, exclusive_high: bool) -> str:
    left = "(" if exclusive_low or low is None else "["
    right = ")" if exclusive_high or high is None else "]"
    return f"{left}{'-inf' if low is None else format_value(low)}, {'inf' if high is None else format_value(high)}{right}"


def format_value(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


# Declarations ---------------------------------------------------------------------------------------

def Int(name: str, default: Default, description: str, low: Bound = None, high: Bound = None, **kw: Any) -> Param:
    return Param(name, INT, default, description, low=low, high=high, **kw)


def Float(name: str, default: Default, description: str, low: Bound = None, high: Bound = None, **kw: Any) -> Param:
    return Param(name, FLOAT, default, description, low=low, high=high, **kw)


def Bool(name: str, default: bool, description: str, **kw: Any) -> Param:
    return Param(name, BOOL, default, description, **kw)


def Choice(name: str, default: Default, choices: tuple[str, ...], description: str, **kw: Any) -> Param:
    return Param(name, STRING, default, description, choices=choices, **kw)


def Text(name: str, default: Default, description: str, **kw: Any) -> Param:
    return Param(name, STRING, default, description, **kw)


def Ints(name: str, default: Default, description: str, low: Bound = None, high: Bound = None, **kw: Any) -> Param:
    return Param(name, INTS, default, description, low=low, high=high, **kw)


def Floats(name: str, default: Default, description: str, low: Bound = None, high: Bound = None, **kw: Any) -> Param:
    return Param(name, FLOATS, default, description, low=low, high=high, **kw)


def resolve_all(method: str, declared: tuple[Param, ...], given: Mapping[str, Any], limits: Limits) -> dict[str, Any]:
    """Every declared parameter that applies to this model kind: checked value or default. A given
    parameter that does not apply to the model's kind is refused, not ignored; None values (unset
    without a fixed default) are left out, for the method to settle."""
    kind = limits.model.kind
    known = {p.name for p in declared}
    for name in given:
        if name not in known:  # the proto and the declaration disagree: a bug, caught by a test
            raise InvalidArgument(f"{method}.{name}", f"one of {', '.join(sorted(known))}", echo(name))
    params: dict[str, Any] = {}
    for p in declared:
        if kind not in p.kinds:
            if p.name in given and not _neutral(p, method, given, limits):
                other = "images" if p.kinds == IMAGE else "tabular models"
                article = "an" if kind == "image" else "a"
                value = given[p.name]
                raise InvalidArgument(f"{method}.{p.name}", f"unset for {article} {kind} model (it applies to {other})",
                                      format_value(value) if isinstance(value, (list, tuple)) else echo(value))
            continue
        value = p.resolve(method, given, limits)
        if value is not None:
            params[p.name] = value
    return params


def _neutral(p: Param, method: str, given: Mapping[str, Any], limits: Limits) -> bool:
    """A value given for a kind the parameter does not apply to, but one that changes nothing there."""
    if not p.neutral:
        return False
    try:
        return p.resolve(method, given, limits) in p.neutral
    except InvalidArgument:
        return False


def parse_text(p: Param, raw: str) -> Any:
    """The CLI's text for one parameter, as the type the proto field takes."""
    def number(token: str) -> int | float:
        return int(token) if p.type in (INT, INTS) else float(token)

    try:
        if p.type == BOOL:
            lowered = raw.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return lowered in ("true", "1", "yes")
        if p.type == STRING:
            return raw
        if p.type in (INTS, FLOATS):
            return [number(t) for t in raw.split(",") if t.strip()]
        return number(raw)
    except ValueError:
        raise ValueError(f"{p.name}: expected {p.type}{' (true or false)' if p.type == BOOL else ''}, got {raw!r}") \
            from None
