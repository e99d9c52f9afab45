"""Retention: how checkpoints are named, which are kept, and what an earlier run left behind.

- Names: ``{stem}_{step}{suffix}``, or ``{stem}_{step}_{score_name}={score:.4f}{suffix}`` with a
  score (``score`` stands in for a missing ``score_name``; the name shows ``score_sign * score``,
  the metric's own value when the score function negated a minimised metric); the suffix is ``.pt`` for a single
  file and empty for a sharded checkpoint directory. The step is always in the name so that two
  saves never share a name by accident.
- By step the ``n_saved`` most recent saves are kept (a new save is the most recent even if a
  previous run left higher steps behind); by score the best ``n_saved``, and, as Ignite, a save
  whose score does not beat the worst kept one is skipped. ``n_saved=None`` keeps all. A save
  whose name is already kept replaces it (the newer state wins).
- A Retention created over a folder that already holds its checkpoints counts them, so retention
  works across restarts, by the same rule: a name shows its score to 4 decimals, so the exact
  scores of the kept checkpoints are recorded in ``.{stem}.scores.json`` beside them (written
  before the checkpoint appears); a restart ranks by them, so a save whose score equals a kept
  one's is skipped after a restart exactly as within one process.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from ...files import TEMP_SUFFIX, atomic_write

__all__ = ["NAME_RE", "Kept", "Retention"]

log = logging.getLogger("aiotrain.checkpoint")

# one checkpoint name: <stem>_<step>[_<score name>=<score>][.pt] (the stem holds prefix and name)
NAME_RE = re.compile(r"^(?P<stem>.+?)_(?P<step>\d+)(?:_(?P<sname>[^=/]+)=(?P<score>[^/]+?))?(?P<suffix>\.pt)?$")


@dataclass(frozen=True)
class Kept:
    """One checkpoint this Checkpoint keeps: its path and retention priority."""

    path: Path
    priority: tuple[float, ...]


class Retention:
    """The kept checkpoints of one Checkpoint, lowest priority first; thread-safe (the writer
    thread commits, the loop plans)."""

    def __init__(self, folder: Path, stem: str, suffix: str, n_saved: int | None,
                 score_name: str | None, scored: bool, score_sign: float = 1.0) -> None:
        self.folder, self.stem, self.suffix = folder, stem, suffix
        self.score_sign = score_sign
        self.n_saved, self.score_name, self.scored = n_saved, score_name, scored
        self._lock = threading.Lock()
        self._kept: list[Kept] = []
        self._seq = 0
        self.scores_path = folder / f".{stem}.scores.json"

    @property
    def last(self) -> Path | None:
        """The kept checkpoint with the highest priority (the newest, or the best by score)."""
        with self._lock:
            return self._kept[-1].path if self._kept else None

    def name(self, step: int, score: float | None) -> str:
        if score is None:
            return f"{self.stem}_{step}{self.suffix}"
        shown = self.score_sign * score  # the metric's own value, not the ranked one
        return f"{self.stem}_{step}_{self.score_name or 'score'}={shown:.4f}{self.suffix}"

    def is_temp(self, name: str) -> bool:
        """A temp file or folder of an earlier save of this Checkpoint (never a finished one)."""
        return re.match(rf"^\.{re.escape(self.stem)}_\d+.*{re.escape(TEMP_SUFFIX)}$", name) is not None

    def adopt(self) -> list[Path]:
        """Count the checkpoints a previous run left; return the stale temp paths found."""
        score = rf"_{re.escape(self.score_name or 'score')}=(?P<score>[^/]+)" if self.scored else ""
        own = re.compile(rf"^{re.escape(self.stem)}_(?P<step>\d+){score}{re.escape(self.suffix)}$")
        found, stale = [], []
        with os.scandir(self.folder) as entries:
            listing = [(e.name, Path(e.path), e.is_dir()) for e in entries]
        exact = self._recorded_scores() if self.scored else {}
        for name, path, is_dir in listing:
            if self.is_temp(name):
                stale.append(path)
                continue
            m = own.match(name)
            if m is None or is_dir != (self.suffix == ""):
                continue
            step = int(m["step"])
            if not self.scored:
                found.append(Kept(path, (step, path.stat().st_mtime_ns)))
                continue
            try:
                shown = float(m["score"])
            except ValueError:  # a score we did not write
                continue
            ranked = exact.get(name)
            if ranked is None or f"{self.score_sign * ranked:.4f}" != m["score"]:
                ranked = rank_score(self.score_sign * shown)  # not recorded: as the name shows it
            found.append(Kept(path, (ranked, step)))
        with self._lock:
            self._kept = sorted(found, key=lambda k: k.priority)
        return stale

    def plan(self, step: int, score: float | None) -> tuple[Path, tuple[float, ...]] | None:
        """Where this save goes and its priority, or None when retention would not keep it."""
        path = self.folder / self.name(step, score)
        if score is None:
            self._seq += 1
            # a new save outranks everything kept: it is the latest state, whatever its step
            return path, (math.inf, self._seq)
        priority = (rank_score(score), step)
        with self._lock:
            others = [k for k in self._kept if k.path != path]
        full = self.n_saved is not None and len(others) >= self.n_saved
        if full and priority[0] <= others[0].priority[0]:
            return None
        return path, priority

    def record(self, path: Path, priority: tuple[float, ...]) -> None:
        """Before a scored save appears: record its exact score beside the kept ones' (the files
        name them to 4 decimals only)."""
        if not self.scored:
            return
        with self._lock:
            scores = {k.path.name: repr(k.priority[0]) for k in self._kept}
        scores[path.name] = repr(priority[0])
        atomic_write(self.scores_path, json.dumps({"format": 1, "scores": scores}, indent=1, sort_keys=True))

    def _recorded_scores(self) -> dict[str, float]:
        """The exact scores recorded by :meth:`record`; none (with a warning) if unreadable."""
        try:
            recorded = json.loads(self.scores_path.read_text("utf-8"))["scores"]
            return {str(name): float(score) for name, score in recorded.items()}
        except FileNotFoundError:
            return {}
        except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as exc:
            log.warning("%s: unreadable (%s); ranking kept checkpoints by the scores their names show",
                        self.scores_path, exc)
            return {}

    def commit(self, path: Path, priority: tuple[float, ...]) -> list[Path]:
        """Record a durable save; return the checkpoints that fell out of retention."""
        with self._lock:
            kept = sorted([k for k in self._kept if k.path != path] + [Kept(path, priority)],
                          key=lambda k: k.priority)
            cut = 0 if self.n_saved is None else max(0, len(kept) - self.n_saved)
            drop, self._kept = kept[:cut], kept[cut:]
        return [k.path for k in drop]


def rank_score(score: float) -> float:
    """Scores as retention compares them: NaN is worse than anything."""
    return -math.inf if math.isnan(score) else score
