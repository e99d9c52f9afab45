"""Hyperparameter sweeps: the search space, the search backends, the sweep record and the runner.

- ``space``: distributions (``Uniform``, ``LogUniform``, ``IntUniform``, ``Normal``, ``Choice``),
  their text form, dotted/nested keys
- ``search``: one ask/report/tell shape (``Search``) for grid, random and bayes; the pruners
- ``sweep``: ``Sweep.define(...)`` and ``Sweep.agent`` for plain trial functions
- ``runner``: ``SweepRunner``, a sweep's trials as training jobs (parallel, pruned, crash-safe)

The names are imported on first use, so ``aiotrain.tracking`` can offer ``Track.Sweep`` without
importing the runner (and torch) and without an import cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..exports import lazy_exports

_EXPORTS = {
    "Choice": "space", "Distribution": "space", "IntUniform": "space", "LogUniform": "space",
    "Normal": "space", "Uniform": "space",
    "Search": "search",
    "Sweep": "sweep", "SweepResult": "sweep",
    "SweepRunner": "runner",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .runner import SweepRunner as SweepRunner
    from .search import Search as Search
    from .space import Choice as Choice
    from .space import Distribution as Distribution
    from .space import IntUniform as IntUniform
    from .space import LogUniform as LogUniform
    from .space import Normal as Normal
    from .space import Uniform as Uniform
    from .sweep import Sweep as Sweep
    from .sweep import SweepResult as SweepResult
