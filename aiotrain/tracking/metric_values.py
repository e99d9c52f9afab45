"""What one logged metrics record may hold, and the conversion of what ``log`` was given to it.

A record is ``{"step": int, "timestamp": float, name: value, ...}``: names are strings,
values are plain JSON values. Tensor and numpy scalars become Python numbers with one
``.item()`` on the caller's thread; anything else goes through the store's ``jsonable``.
``Run.log`` takes the fast path for records that are already plain (``PLAIN`` values under
ASCII names) and calls :func:`convert` only for the others.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from ..values import ScalarLike, as_number
from .store import check_text, jsonable

__all__ = ["PLAIN", "RESERVED", "check_step", "convert"]

PLAIN = frozenset((float, int, str, bool, type(None)))
"""Value classes a record holds as they are (``str`` still checked for what it may contain)."""
RESERVED = ("step", "timestamp")
"""Names the record itself uses; no metric may take them."""


def check_step(step: object) -> int:
    """``step`` as an int >= 0 (a one-element tensor's value too); TypeError or ValueError if not."""
    if isinstance(step, bool) or not isinstance(step, int):
        if hasattr(step, "item"):  # a tensor or numpy scalar
            return check_step(step.item())
        raise TypeError(f"step must be an int, got {type(step).__name__}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return step


def convert(metrics: Mapping[str, object]) -> dict[str, object]:
    """Metrics with tensor / numpy scalars as Python numbers (``.item()``, once, on the caller)."""
    out = {}
    for key, value in metrics.items():
        if not isinstance(key, str):
            raise TypeError(f"metric names must be strings, got {key!r}")
        check_text("metric name", key)
        if isinstance(value, str) and value.__class__ is str:
            check_text(f"metric {key!r}", value)
        elif value.__class__ in PLAIN:
            pass
        elif isinstance(value, ScalarLike):  # torch / numpy scalar
            value = _item(value)
        else:
            value = jsonable(value)
        out[key] = value
    return out


def _item(value: ScalarLike) -> object:
    if math.prod(value.shape) != 1:
        raise ValueError(f"only one-element tensors can be logged as metrics, got shape "
                         f"{tuple(value.shape)}; use log_histogram for many values")
    number = as_number(value)
    return value.item() if number is None else number  # a one-element bool stays a bool
