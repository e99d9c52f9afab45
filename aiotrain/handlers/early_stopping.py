"""EarlyStopping: stop a trainer when a score has not improved for ``patience`` evaluations."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ..values import check_int

if TYPE_CHECKING:
    from ..engine import Engine

__all__ = ["EarlyStopping"]


class Terminable(Protocol):
    """What EarlyStopping stops: an Engine, or anything that ends its run on ``terminate()``."""

    def terminate(self) -> None: ...


class EarlyStopping:
    """Attach to an evaluator (``evaluator.add_event_handler(Events.COMPLETED, handler)``); each
    call scores the evaluator with ``score_function(engine)`` (higher is better) and, after
    ``patience`` calls without an improvement of more than ``min_delta``, calls
    ``trainer.terminate()`` and logs why.

    With ``cumulative_delta=False`` (Ignite's default) a small gain that does not count as an
    improvement still raises the best score; with ``True`` the best score only moves on a real
    improvement, so slow creep cannot postpone stopping forever. ``state_dict`` /
    ``load_state_dict`` carry the counter and best score through checkpoints.
    """

    def __init__(self, patience: int, score_function: Callable[[Engine], float], trainer: Terminable,
                 min_delta: float = 0.0, cumulative_delta: bool = False) -> None:
        if not callable(score_function):
            raise TypeError(f"EarlyStopping: score_function must be callable, got {score_function!r}")
        patience = check_int("EarlyStopping: patience", patience)
        if min_delta < 0.0:
            raise ValueError(f"EarlyStopping: min_delta must be >= 0, got {min_delta!r}")
        if not callable(getattr(trainer, "terminate", None)):
            raise TypeError(f"EarlyStopping: trainer must be an Engine, got {type(trainer).__name__}")
        self.patience = patience
        self.score_function = score_function
        self.trainer = trainer
        self.min_delta = float(min_delta)
        self.cumulative_delta = bool(cumulative_delta)
        self.counter = 0
        self.best_score: float | None = None
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")

    def __call__(self, engine: Engine) -> None:
        score = float(self.score_function(engine))
        if self.best_score is None or score > self.best_score + self.min_delta:
            self.best_score, self.counter = score, 0
            return
        if not self.cumulative_delta and score > self.best_score:
            self.best_score = score
        self.counter += 1
        self.logger.debug("EarlyStopping: %d / %d", self.counter, self.patience)
        if self.counter >= self.patience:
            self.logger.info("EarlyStopping: stopping training: score %.6g has not improved on %.6g "
                             "by more than %g for %d evaluations", score, self.best_score,
                             self.min_delta, self.patience)
            self.trainer.terminate()

    def state_dict(self) -> dict[str, float | None]:
        """Counter and best score, for checkpoints."""
        return {"counter": self.counter, "best_score": self.best_score}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        self.counter = int(state_dict["counter"])
        best = state_dict["best_score"]
        self.best_score = None if best is None else float(best)
