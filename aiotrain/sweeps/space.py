"""A sweep's search space: parameter distributions, their text form, and nested/dotted keys.

Distributions: ``Uniform(low, high)``, ``LogUniform(low, high)``, ``IntUniform(low, high)``,
``Normal(mu, sigma)``, ``Choice(values)``; anything else is a fixed value. Their text form (what
``aiotrain sweep`` reads after ``key=``, and what a sweep record stores) is
``uniform(a,b)``, ``loguniform(a,b)``, ``intuniform(a,b)`` (or ``int(a,b)``), ``normal(mu,sigma)``,
``choice(v1,v2,...)``, a Hydra-multirun list ``v1,v2,v3`` (a Choice: one grid axis), or one SDN
value (fixed). Values inside are SDN values (``relu``, ``"a,b"``, ``1e-3``, ``true``).
"""

from __future__ import annotations

import abc
import math
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..tracking.store import flatten

Params = dict[str, Any]
"""A trial's parameters by dotted key (``{"optim.lr": 0.01}``): the user's config values."""

__all__ = ["Choice", "Distribution", "IntUniform", "LogUniform", "Normal", "Params", "Uniform", "flatten",
           "grid_axes", "parse_parameter", "spec", "unflatten"]


class Distribution(abc.ABC):
    """A parameter's search space; ``sample(rng)`` draws one value."""

    @abc.abstractmethod
    def sample(self, rng: random.Random) -> object:
        """One value drawn with ``rng``."""

    def grid(self) -> list[object]:
        raise ValueError(f"grid search needs Choice, IntUniform or fixed values, not {self!r}")


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return value


@dataclass(frozen=True)
class Uniform(Distribution):
    """A float uniformly in [low, high]."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not _number("low", self.low) < _number("high", self.high):
            raise ValueError(f"Uniform needs low < high, got {self.low}, {self.high}")

    def sample(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)


@dataclass(frozen=True)
class LogUniform(Distribution):
    """A float whose logarithm is uniform in [log low, log high] (learning rates)."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not 0 < _number("low", self.low) < _number("high", self.high):
            raise ValueError(f"LogUniform needs 0 < low < high, got {self.low}, {self.high}")

    def sample(self, rng: random.Random) -> float:
        return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))


@dataclass(frozen=True)
class IntUniform(Distribution):
    """An integer uniformly in [low, high], both included."""

    low: int
    high: int

    def __post_init__(self) -> None:
        for name in ("low", "high"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int):
                raise ValueError(f"IntUniform {name} must be an int, got {getattr(self, name)!r}")
        if self.low > self.high:
            raise ValueError(f"IntUniform needs low <= high, got {self.low}, {self.high}")

    def sample(self, rng: random.Random) -> int:
        return rng.randint(self.low, self.high)

    def grid(self) -> list[object]:
        return list(range(self.low, self.high + 1))


@dataclass(frozen=True)
class Normal(Distribution):
    """A float from a normal distribution N(mu, sigma)."""

    mu: float = 0.0
    sigma: float = 1.0

    def __post_init__(self) -> None:
        _number("mu", self.mu)
        if not _number("sigma", self.sigma) > 0:
            raise ValueError(f"Normal needs sigma > 0, got {self.sigma}")

    def sample(self, rng: random.Random) -> float:
        return rng.gauss(self.mu, self.sigma)


@dataclass(frozen=True, init=False)
class Choice(Distribution):
    """One of ``values``, uniformly."""

    values: tuple[object, ...]

    def __init__(self, values: Iterable[object]) -> None:
        values = tuple(values)
        if not values:
            raise ValueError("Choice needs at least one value")
        object.__setattr__(self, "values", values)

    def sample(self, rng: random.Random) -> object:
        return rng.choice(self.values)

    def grid(self) -> list[object]:
        return list(self.values)


_CALL = re.compile(r"^\s*([A-Za-z_]+)\s*\((.*)\)\s*$", re.S)
_FUNCS = {"uniform": (Uniform, 2), "loguniform": (LogUniform, 2), "intuniform": (IntUniform, 2),
          "int": (IntUniform, 2), "normal": (Normal, 2)}


def parse_parameter(text: str) -> object:
    """A distribution or a fixed value from its text form (see the module docstring).

    Raises ValueError saying what was wrong and which forms are accepted."""
    from ..config import sdn

    def value(item: str) -> sdn.Value:
        try:
            return sdn.parse_value(item)
        except sdn.SdnError as exc:
            raise ValueError(f"bad value {item.strip()!r}: {exc.msg}") from None

    m = _CALL.match(text)
    if m and m.group(1).lower() in (*_FUNCS, "choice"):
        name, args = m.group(1).lower(), _split(m.group(2))
        if name == "choice":
            return Choice([value(a) for a in args])
        cls, arity = _FUNCS[name]
        if len(args) != arity:
            raise ValueError(f"{name}() takes {arity} numbers, got {len(args)}: {text.strip()!r}")
        return cls(*(value(a) for a in args))
    if m:
        raise ValueError(f"unknown distribution {m.group(1)!r}; use one of "
                         f"{', '.join([*_FUNCS, 'choice'])}, a list a,b,c or a value")
    items = _split(text)
    if len(items) > 1:
        return Choice([value(a) for a in items])
    return value(text)


def spec(param: object) -> str:
    """The text form of a distribution or fixed value (``parse_parameter`` reads it back)."""
    from ..config import sdn

    if isinstance(param, Choice):
        return "choice(" + ",".join(spec(v) for v in param.values) + ")"
    if isinstance(param, Distribution):
        name = {Uniform: "uniform", LogUniform: "loguniform", IntUniform: "intuniform",
                Normal: "normal"}[type(param)]
        if isinstance(param, Normal):
            a, b = param.mu, param.sigma
        else:
            assert isinstance(param, Uniform | LogUniform | IntUniform)
            a, b = param.low, param.high
        return f"{name}({a!r},{b!r})"
    text = sdn.dumps({"v": param}).strip()
    return text.partition("=")[2].strip() if "=" in text.splitlines()[0] else text.partition(":")[2].strip()


def _split(text: str) -> list[str]:
    """Split at top-level commas (not inside quotes, brackets or braces)."""
    items, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote and text[i - 1] != "\\":
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [it for it in items if it.strip()] if len(items) > 1 else items


def unflatten(flat: Mapping[str, object]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def grid_axes(params: Mapping[str, object]) -> tuple[list[str], list[list[object]]]:
    flat = flatten(params)
    axes = []
    for key, value in flat.items():
        try:
            axes.append(value.grid() if isinstance(value, Distribution) else [value])
        except ValueError as exc:
            raise ValueError(f"parameter {key!r}: {exc}") from None
    return list(flat), axes
