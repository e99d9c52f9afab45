"""Argument values shared by every part: integer arguments, and numbers out of tensors.

:func:`check_int` is the one check behind every count-like argument (``batch_size``, ``every``,
``n_saved``, ``max_epochs``...), so they accept the same things and say the same thing when
wrong. :func:`as_number` is the one conversion of a step output or metric to a plain Python
number (for logs, progress lines and observers). Neither imports torch.
"""

from __future__ import annotations

import math
import operator
from typing import Protocol, SupportsIndex, TypeVar, runtime_checkable

__all__ = ["ScalarLike", "as_number", "check_int", "number_or_value"]

T = TypeVar("T")


def check_int(name: str, value: object, *, minimum: int = 1) -> int:
    """``value`` as an int when it is an integer >= ``minimum``; a ValueError naming ``name`` if not.

    Any integer type is accepted (int, numpy integers, 0-d integer tensors), bools are not:
    ``True`` is far more often a mistake than a count.
    """
    try:
        number = operator.index(value) if isinstance(value, SupportsIndex) and \
            not isinstance(value, bool) else None
    except TypeError:  # an __index__ that does not give an int
        number = None
    if number is None or number < minimum:
        wanted = {1: "a positive integer", 0: "a non-negative integer"}.get(
            minimum, f"an integer >= {minimum}")
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    return number


@runtime_checkable
class ScalarLike(Protocol):
    """What torch tensors and numpy arrays / scalars share: a shape and ``item()``."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def item(self) -> object: ...


def as_number(value: object) -> int | float | None:
    """A plain int or float for a number or a one-element tensor / array; None for anything
    else (bools, strings, tensors of several values), so callers can skip what is not a number."""
    if type(value) is int or type(value) is float:
        return value
    if isinstance(value, bool):
        return None
    if isinstance(value, ScalarLike):
        if math.prod(value.shape) != 1:
            return None
        value = value.item()
        return value if type(value) is int or type(value) is float else None
    if isinstance(value, int | float):  # int / float subclasses (numpy.float64, IntEnum)
        return float(value) if isinstance(value, float) else int(value)
    return None


def number_or_value(value: T) -> T | int | float:
    """``as_number(value)`` where that is a number, else ``value`` unchanged (metrics that
    are lists, tensors of several values or strings stay what they are)."""
    number = as_number(value)
    return value if number is None else number
