"""``Track``: the one name users import for tracking (``wandb``'s module-level API as a class).

``with Track.run("mnist", config=cfg) as run: run.log({"train/loss": 0.3})``; also
``Track.set_mode``, ``Track.set_dir``, ``Track.Artifact``, ``Track.Table``, ``Track.lineage``,
``Track.runs``, ``Track.load_run`` and ``Track.Sweep`` with its distributions (they live in
``aiotrain.sweeps``, which imports tracking, so they are looked up on first use).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import store
from .artifacts import Artifact
from .lineage import Lineage, lineage
from .media import Table
from .reader import RunRecord as _RunRecord
from .reader import list_runs, load_run
from .run import Run as _Run

if TYPE_CHECKING:
    from ..sweeps import Choice, IntUniform, LogUniform, Normal, Sweep, SweepResult, Uniform

__all__ = ["Track"]


class _FromSweeps:
    """A class attribute that is ``aiotrain.sweeps.<name>``, imported when first read."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        return getattr(importlib.import_module("aiotrain.sweeps"), self.name)


class Track:
    """Namespace for the tracking API (never instantiated)."""

    Run = _Run
    Artifact = Artifact
    Table = Table
    RunRecord = _RunRecord
    if TYPE_CHECKING:
        Sweep = Sweep
        SweepResult = SweepResult
        Uniform = Uniform
        LogUniform = LogUniform
        IntUniform = IntUniform
        Normal = Normal
        Choice = Choice
    else:
        Sweep = _FromSweeps()
        SweepResult = _FromSweeps()
        Uniform = _FromSweeps()
        LogUniform = _FromSweeps()
        IntUniform = _FromSweeps()
        Normal = _FromSweeps()
        Choice = _FromSweeps()

    def __init__(self) -> None:
        raise TypeError("Track is a namespace: call Track.run(...), not Track()")

    @staticmethod
    def run(project: str, name: str | None = None, config: Mapping[str, object] | None = None,
            tags: Iterable[str] = (), notes: str = "", dir: str | os.PathLike[str] | None = None,
            resume: bool | str = False, system_interval: float | None = 2.0,
            flush_interval: float | None = None, rewind: int | None = None,
            mlflow_uri: str | None = None) -> _Run:
        """A new run (use it as ``with`` / ``async with``, or call ``finish()`` yourself).

        ``run.log({...}, step=...)`` never blocks on the disk: records are written within the
        run's ``flush_interval``; ``flush()`` (``await aflush()``) returns once everything logged
        so far is on disk. Names, tags, notes and config that could not be stored are a
        ValueError here, not at ``finish``.

        Args:
            project: the project the run belongs to (a folder under ``runs/``).
            name: a display name (default: the run's id); ``resume=True`` looks runs up by it.
            config: the run's hyperparameters (plain values; stored in metadata.sdn).
            tags: labels to filter runs by (``aiotrain runs ls --filter tag=...``).
            notes: free text shown with the run.
            dir: the tracking root for this run (default: ``Track.get_dir()``).
            resume: True continues the newest run of this project with this ``name`` (a new
                one if there is none); ``"<id>"`` continues that run (ValueError if missing):
                same folder, config merged, steps going on. A run that a live process is still
                writing is refused (ValueError, one line).
            system_interval: seconds between system metrics samples (system.jsonl) while the
                run is open inside an event loop; None turns the sampler off.
            flush_interval: the run's loss window on a crash, in seconds (see
                ``set_flush_interval``).
            rewind: with ``resume``, first cut the history back to its first N records
                (``run.position`` when your checkpoint was saved); the records cut are kept in
                metrics.rewound.jsonl, so the resumed run logs each step once.
            mlflow_uri: mirror the run live to this MLflow tracking server
                (``tracking/mlflow_sink.py``); default: the ``MLFLOW_TRACKING_URI`` environment
                variable; "" turns it off.

        Example::

            >>> import tempfile
            >>> from aiotrain import Track
            >>> root = tempfile.TemporaryDirectory()
            >>> with Track.run("demo", config={"lr": 0.1}, dir=root.name, system_interval=None) as run:
            ...     for step in range(3):
            ...         run.log({"loss": 1.0 / (step + 1)}, step=step)
            >>> stored = Track.load_run(run.dir)
            >>> stored.status, stored.config, stored.summary["loss"]
            ('finished', {'lr': 0.1}, 0.3333333333333333)
            >>> [r["loss"] for r in stored.history(["loss"])]
            [1.0, 0.5, 0.3333333333333333]
            >>> root.cleanup()
        """
        return _Run(project, name=name, config=config, tags=tags, notes=notes, dir=dir, resume=resume,
                    rewind=rewind, system_interval=system_interval, flush_interval=flush_interval,
                    mlflow_uri=mlflow_uri)

    @staticmethod
    def set_mode(mode: str) -> None:
        """``"offline"`` (local files, the default) or ``"disabled"`` (no files at all)."""
        store.set_mode(mode)

    @staticmethod
    def get_mode() -> str:
        """The current mode."""
        return store.get_mode()

    @staticmethod
    def set_flush_interval(seconds: float | None) -> None:
        """The loss window of runs created from now on: a record logged more than ``seconds``
        ago is in metrics.jsonl even if the process is killed (SIGKILL) right now. Default 1;
        0 writes every record before ``log`` returns; None restores ``$AIOTRAIN_FLUSH_INTERVAL``
        or the default."""
        store.set_flush_interval(seconds)

    @staticmethod
    def set_dir(path: str | os.PathLike[str] | None) -> None:
        """The tracking root (default ``./.aiotrain``, or ``$AIOTRAIN_DIR``; None restores it)."""
        store.set_dir(path)

    @staticmethod
    def get_dir() -> Path:
        """The tracking root in use."""
        return store.get_dir()

    @staticmethod
    def runs(project: str | None = None) -> list[_RunRecord]:
        """Every stored run (of one project, or all), oldest first, with its status."""
        return list_runs(project)

    @staticmethod
    def load_run(run_dir: str | os.PathLike[str]) -> _RunRecord:
        """A stored run: ``.id``, ``.config``, ``.summary``, ``.history()``."""
        return load_run(run_dir)

    @staticmethod
    def lineage(ref: str, project: str | None = None) -> Lineage:
        """``{"inputs", "runs", "outputs"}`` of the artifact version ``ref`` (``"name:v1"``)."""
        return lineage(ref, project)
