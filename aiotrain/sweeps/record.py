"""The sweep record: one typed shape for every sweep, whoever runs its trials.

``Sweep.agent`` (plain trial functions) and ``SweepRunner`` (training jobs) both keep a
``SweepRecord`` and write it, atomically, to ``{root}/sweeps/{project}/{sweep_id}.json`` at every
change; a shared sweep (``--storage``) builds the same record from its Optuna study. Readers
(``--resume``, the CLI's table, your own scripts) decode that one shape with ``read_record``.

A trial's ``status`` is one of ``running``, ``finished``, ``pruned``, ``crashed`` and
``interrupted``; ``error`` says why a trial crashed and nothing else, while ``note`` carries
what happened to a trial that still ended well (it restarted after its sweep was killed, it was
retried after its worker died).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import msgspec

from ..files import atomic_write

__all__ = ["ENDED", "SweepRecord", "TrialRecord", "best_trial", "find_record", "read_record", "record_path",
           "write_record"]

ENDED = ("finished", "pruned", "crashed")  # a trial in one of these is never run again


class TrialRecord(msgspec.Struct, kw_only=True):
    """One trial: its number and parameters (dotted ``params``, nested ``config``), how it ended
    (``status``, ``value``, ``error``), its scores per evaluation (``intermediate``: ``(step,
    score)`` pairs) and where its tracked run and checkpoints are."""

    number: int
    params: dict[str, object]
    config: dict[str, object] = {}
    status: str = "running"
    value: float | None = None
    intermediate: list[tuple[int, float]] = []
    name: str | None = None
    run_id: str | None = None
    run_dir: str | None = None
    checkpoint_dir: str | None = None
    error: str | None = None
    note: str | None = None
    started_at: float | None = None
    finished_at: float | None = None

    def conclude(self, metric: str, value: float | None, *, pruned: bool = False,
                 exit_code: int = 0) -> None:
        """How the trial's job ended: crashed (validation errors, or ``metric`` never
        evaluated), else pruned or finished with ``value``."""
        if exit_code != 0:
            self.status = "crashed"
            self.error = f"the job exited with status {exit_code} (validation errors)"
        elif value is None:
            self.status = "crashed"
            self.error = (f"no {metric!r} was evaluated (does the task have a val_loader and "
                          "metrics?)")
        else:
            self.status, self.value = ("pruned" if pruned else "finished"), float(value)


class SweepRecord(msgspec.Struct, kw_only=True):
    """A sweep: its definition (``parameters`` in their text form, see ``space.spec``), its
    status (running, finished, interrupted, crashed), its trials and the best of them.

    ``owner`` is the process running it (``aiotrain.owner``). The runner's fields say how its
    trials are run: the base ``config`` file and ``overrides``, the tracking ``root``,
    ``trials_wanted`` (None: the whole grid), ``parallel`` and ``isolate``; a shared sweep names
    its Optuna ``storage`` and ``study``. An agent's sweep leaves them unset.
    """

    id: str
    method: str
    metric: dict[str, str]
    parameters: dict[str, str]
    project: str = "sweeps"
    seed: int = 0
    early_terminate: dict[str, object] | None = None
    status: str = "running"
    trials: list[TrialRecord] = []
    best: TrialRecord | None = None
    created_at: float = msgspec.field(default_factory=time.time)
    updated_at: float = msgspec.field(default_factory=time.time)
    owner: dict[str, object] | None = None
    config: str | None = None
    overrides: list[str] = []
    root: str | None = None
    trials_wanted: int | None = None
    parallel: int = 1
    isolate: bool = True
    storage: str | None = None
    study: str | None = None

    def touch(self) -> None:
        """Note a change: ``updated_at`` now, ``best`` recomputed from the finished trials."""
        self.updated_at = time.time()
        self.best = best_trial(self.trials, self.metric["goal"])

    def trial(self, number: int) -> TrialRecord:
        """Trial ``number`` (KeyError when the record has none)."""
        for t in self.trials:
            if t.number == number:
                return t
        raise KeyError(f"sweep {self.id} has no trial {number}")


def best_trial(trials: list[TrialRecord], goal: str) -> TrialRecord | None:
    """The finished trial with the best finite value (None when there is none)."""
    scored = [t for t in trials if t.status == "finished" and t.value is not None
              and math.isfinite(t.value)]
    if not scored:
        return None
    key = (lambda t: t.value) if goal == "minimize" else (lambda t: -t.value)
    return min(scored, key=key)


def write_record(path: Path, record: SweepRecord) -> None:
    """Write ``record`` to ``path`` atomically (blocking: call it in the I/O executor)."""
    atomic_write(path, msgspec.json.encode(record))


def read_record(path: Path) -> SweepRecord:
    """The record stored at ``path``; ValueError naming the file when it is not one."""
    try:
        return msgspec.json.decode(path.read_bytes(), type=SweepRecord)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise ValueError(f"{path}: not a sweep record ({exc})") from None


def record_path(root: str | os.PathLike[str], project: str, sweep_id: str) -> Path:
    """Where sweep ``sweep_id`` of ``project`` keeps its record under the tracking ``root``."""
    return Path(root) / "sweeps" / project / f"{sweep_id}.json"


def find_record(sweep_id: str, root: str | os.PathLike[str]) -> Path:
    """The record file of ``sweep_id`` under the tracking ``root`` (LookupError if none)."""
    found = sorted(Path(root).glob(f"sweeps/*/{sweep_id}.json"))
    if not found:
        raise LookupError(f"no sweep {sweep_id!r} under {Path(root) / 'sweeps'} "
                          "(give --dir, the tracking root the sweep wrote to)")
    return found[0]
