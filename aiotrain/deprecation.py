"""Renamed public names: the old name keeps working for one release and warns.

Version 0.1 renamed ``Checkpoint.flush`` (a coroutine) to ``Checkpoint.aflush`` under the naming
rule for sync/async twins (docs/architecture.md). Aliases made here are removed in 0.3.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

__all__ = ["renamed_method"]

REMOVED_IN = "0.3"

S = TypeVar("S")
P = ParamSpec("P")
R = TypeVar("R")


def renamed_method(new: Callable[Concatenate[S, P], R], old_name: str) -> Callable[Concatenate[S, P], R]:
    """A method named ``old_name`` that warns (DeprecationWarning) and then behaves as ``new``.

    For a coroutine method the alias returns ``new``'s coroutine, so ``await obj.old()`` works.
    """

    @functools.wraps(new)
    def alias(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        warnings.warn(f"{type(self).__name__}.{old_name} is deprecated and will be removed in "
                      f"{REMOVED_IN}; use {type(self).__name__}.{new.__name__} (same behaviour)",
                      DeprecationWarning, stacklevel=2)
        return new(self, *args, **kwargs)

    alias.__name__ = alias.__qualname__ = old_name
    alias.__doc__ = f"Deprecated alias of :meth:`{new.__name__}` (removed in {REMOVED_IN})."
    return alias
