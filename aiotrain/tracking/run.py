"""Run: one tracked experiment (config, metrics, media, summary), W&B's ``wandb.Run``.

``log`` never touches the disk on the caller's thread (unless ``flush_interval=0`` asks it to):
it converts tensor scalars once with ``.item()`` and appends one record to an in-memory queue,
which reaches metrics.jsonl within ``flush_interval`` seconds (see ``writer.py``). Step semantics follow W&B: with no ``step``, each
call takes the next step (0, 1, 2, ...); an explicit ``step`` is written as given and the next
automatic step continues after it. ``log`` is meant to be called from one thread at a time
(the loop or the compute thread); calls from several threads at once need explicit steps.

The folder and metadata.sdn are created lazily, by the first drain (or by entering the
``with`` block), so creating a run costs no disk work on the caller either; ``async with``
does its file work in the I/O executor. Leaving the block finishes the run: metrics are made
durable, summary.sdn is written (last value of every key plus ``run.summary`` updates) and
metadata.sdn gets ``finished_at`` and status ``finished``, ``interrupted`` when the block was
left by a cancellation or Ctrl-C (``CancelledError``, ``KeyboardInterrupt``: normal control
flow, as TrainJob marks them), or ``crashed`` (with the error) when it raised anything else.
Runs still open when the interpreter exits are finished by an ``atexit`` hook (``crashed`` when
an uncaught exception ended the program): ``open_runs.py`` keeps the runs this process has open.

Resuming (``resume=True`` or ``resume=ID``) continues the stored run: same folder, config
merged, steps going on. A run that a live process is still writing is refused (two writers
would interleave their steps and the second's summary would hide the first's). ``rewind=N``
first cuts the history back to its first ``N`` records, what ``run.position`` said when the
checkpoint you resume from was saved: what W&B calls rewinding a run, here by record position,
so it is exact even where several records share a step. The records cut (logged after that
checkpoint by the process that died) go to ``metrics.rewound.jsonl``, not away, and the resumed
run logs those steps again: its history holds each step once. TrainJob does this for you.

A failed image or table write never costs the metrics: ``flush`` and ``finish`` write every
logged record, the summary and the metadata first, then raise an OSError naming the media
files that failed. What a run stores is checked when it is created (project name, name, tags,
notes, config), so a run that starts can always finish.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import itertools
import os
import secrets
import socket
import string
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVarTuple

from ..config import SdnError, sdn
from ..distributed import is_main
from ..owner import current_owner
from ..runtime import submit_io, to_io
from . import open_runs
from .index import write_row
from .media import Table, histogram_entry, image_array, require_pillow, safe_filename, write_png
from .metric_values import PLAIN, RESERVED, check_step, convert
from .open_runs import LiveRunError, drain_open_run
from .reader import iter_history, list_runs, load_run
from .status import outcome
from .store import (
    atomic_write,
    check_interval,
    check_name,
    check_text,
    encode_nonfinite,
    get_dir,
    get_flush_interval,
    get_mode,
    jsonable,
    write_sdn,
)
from .system import system_info, warm_up
from .writer import MetricsWriter, rewind_history

if TYPE_CHECKING:
    import torch

    from .artifacts import Artifact
    from .live_chart import LiveChart
    from .mlflow_sink import MlflowSink
    from .watch import Watch

__all__ = ["LiveRunError", "Run", "drain_open_run"]

Args = TypeVarTuple("Args")
_ID_ALPHABET = string.ascii_lowercase + string.digits
_time = time.time


class Run:
    """One tracked run; create it with ``Track.run(...)`` and use it as ``with`` / ``async with``.

    Fields: ``id``, ``name``, ``project``, ``dir``, ``config`` (a dict), ``summary`` (a dict:
    last logged value of every key; ``run.summary.update({...})`` adds or overrides), ``tags``,
    ``notes``, ``start_time``, ``end_time``, ``status``, ``mode``. On a non-zero torch.distributed
    rank, or with ``Track.set_mode("disabled")``, the run is disabled: every method works and
    nothing is written. ``flush_interval`` (seconds; default ``Track.set_flush_interval``'s, else
    1) bounds what a killed process loses: records logged in its last ``flush_interval``.
    ``resume`` and ``rewind``: see the module docstring; ``rewound`` is how many records a
    rewind moved out of the history.
    """

    def __init__(self, project: str, name: str | None = None, config: Mapping[str, Any] | None = None,
                 tags: str | Iterable[object] = (), notes: str = "", dir: str | os.PathLike[str] | None = None,
                 resume: bool | str = False, *, rewind: int | None = None, mode: str | None = None,
                 system_interval: float | None = 2.0, flush_interval: float | None = None,
                 mlflow_uri: str | None = None) -> None:
        self.project = check_name("project", project)
        if config is not None and not isinstance(config, Mapping):
            raise TypeError(f"config must be a mapping, got {type(config).__name__}")
        if flush_interval is None:
            flush_interval = get_flush_interval()
        self.flush_interval = None if flush_interval is None else check_interval(flush_interval)
        self.mode = mode or get_mode()
        if not is_main():
            self.mode = "disabled"  # checkpoint and tracking write on rank 0 only
        self.config: dict[str, Any] = jsonable(dict(config or {}))
        self.tags = [check_text("tag", str(t)) for t in ([tags] if isinstance(tags, str) else tags)]
        self.notes = check_text("notes", str(notes))
        if name is not None:
            check_text("run name", str(name))
        _check_storable(self.config)
        self.summary: dict[str, Any] = {}
        self.root = Path(dir) if dir is not None else get_dir()
        self.start_time = _time()
        self.end_time: float | None = None
        self.status = "running"
        self.error: str | None = None
        self._step = 0
        self._logged = 0  # records in the history: what ``position`` reports
        self.rewound = 0
        self._media_seq = itertools.count()
        self._media: set[cf.Future[None]] = set()
        self._media_errors: list[BaseException] = []
        self._watches: list[Watch] = []
        self._sampler: asyncio.Task[None] | None = None
        self._sampler_loop: asyncio.AbstractEventLoop | None = None
        self._system: MetricsWriter | None = None
        self._chart: LiveChart | None = None  # in a notebook cell (tracking/live_chart.py)
        if system_interval is not None and not system_interval > 0:
            raise ValueError(f"system_interval must be > 0 seconds (or None to turn it off), got {system_interval!r}")
        self.system_interval = system_interval
        self._finished = False
        self._finish_lock = threading.Lock()
        if rewind is not None and (not resume or isinstance(rewind, bool) or not isinstance(rewind, int)
                                   or rewind < 0):
            raise ValueError(f"rewind must be a record count >= 0 with resume=, got {rewind!r}")
        self.id = self._resume(resume, name, rewind) if resume else _new_id()
        self.name = name or getattr(self, "name", None) or self.id
        self.dir = self.root / "runs" / self.project / self.id
        self.disabled = self.mode == "disabled"
        self._writer = None if self.disabled else MetricsWriter(
            self.dir / "metrics.jsonl", self._create_files, self.flush_interval)
        self._queue = self._writer.queue if self._writer is not None else None
        if not self.disabled:
            warm_up(sampler=system_interval is not None)  # first-use work now, not in the first drain
            open_runs.register(self)
        self._mirror = None if self.disabled else self._open_mirror(mlflow_uri)

    def _open_mirror(self, uri: str | None) -> MlflowSink | None:
        """The MLflow mirror (started) when a tracking server is named, else None."""
        uri = os.environ.get("MLFLOW_TRACKING_URI", "") if uri is None else uri
        if not uri:
            return None
        from .mlflow_sink import MlflowSink, RunFacts

        facts = RunFacts(run_dir=self.dir, project=self.project, name=self.name, run_id=self.id,
                         config=self.config, tags=self.tags, notes=self.notes,
                         start_time=self.start_time, host=socket.gethostname())
        mirror = MlflowSink(facts, uri)
        mirror.start()
        return mirror

    # logging (the hot path) --------------------------------------------------------------------
    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Record ``metrics`` at ``step`` (default: the next step). Never blocks on disk."""
        if self._queue is None:
            return
        for key, value in metrics.items():  # the common case costs a few class checks
            cls = value.__class__
            if (cls not in PLAIN or key.__class__ is not str or not key.isascii()
                    or (cls is str and not value.isascii())):
                metrics = convert(metrics)
                break
        if step is None:
            step = self._step
        elif step.__class__ is not int or step < 0:
            step = check_step(step)
        now = _time()
        record = {"step": step, "timestamp": now, **metrics}
        if len(record) != len(metrics) + 2:
            raise ValueError(f"metric names {RESERVED} are reserved by the record itself")
        if self._finished:
            raise RuntimeError(f"run {self.id} is finished; log() after finish() is lost")
        self._step = step + 1
        self._logged += 1
        self._queue.append(record)
        self.summary.update(metrics)
        self._queued()

    def _queued(self) -> None:
        """A record was queued: write it now (``flush_interval=0``) or see that it will be."""
        writer = self._writer
        assert writer is not None  # a queue means a writer
        if writer.sync:
            writer.drain(durable=False)
        elif not writer.scheduled:
            writer.schedule()
        elif len(writer.queue) >= writer.FLUSH_RECORDS:
            writer.kick()

    @property
    def step(self) -> int:
        """The step the next ``log`` call without ``step`` will get."""
        return self._step

    @property
    def position(self) -> int:
        """How many records the run's history holds, those queued included: save it with a
        checkpoint, and resume with ``rewind=position`` to cut what came after it."""
        return self._logged

    def log_histogram(self, name: str, values: object, bins: int = 64, step: int | None = None) -> None:
        """Log a histogram of ``values`` (tensor, array or sequence; non-finite values dropped)."""
        if self._queue is None:
            return
        self.log({name: histogram_entry(values, bins)}, step=step)

    def log_image(self, name: str, image: object, caption: str = "", step: int | None = None) -> None:
        """Log an image (CHW tensor or HWC array; floats in [0, 1]); stored as PNG under media/."""
        if self._queue is None:
            return
        require_pillow()
        arr = image_array(image)
        step = self._step if step is None else check_step(step)
        rel = f"media/images/{safe_filename(name)}_{step}_{next(self._media_seq)}.png"
        self._background(write_png, self.dir / rel, arr)
        self.log({name: {"_type": "image", "path": rel, "caption": str(caption),
                         "width": int(arr.shape[1]), "height": int(arr.shape[0])}}, step=step)

    def log_table(self, name: str, table: Table, step: int | None = None) -> None:
        """Log a ``Track.Table``; its rows go to tables/ as JSON lines."""
        if not isinstance(table, Table):
            raise TypeError(f"log_table expects a Track.Table, got {type(table).__name__}")
        if self._queue is None:
            return
        step = self._step if step is None else check_step(step)
        rel = f"tables/{safe_filename(name)}_{step}_{next(self._media_seq)}.jsonl"
        self._background(atomic_write, self.dir / rel, table.to_bytes())
        self.log({name: {"_type": "table", "path": rel, "columns": list(table.columns),
                         "nrows": len(table)}}, step=step)

    def watch(self, model: torch.nn.Module, log: str = "gradients", log_freq: int = 100) -> None:
        """Log parameter and/or gradient norms and histograms every ``log_freq`` forward calls."""
        from .watch import Watch

        self._watches.append(Watch(self._log_side, model, log, log_freq))

    def _log_system(self, sample: dict[str, float]) -> None:
        """Queue one system metrics sample for system.jsonl, at the current step."""
        writer = self._system
        if writer is None or self._finished:
            return
        now = _time()
        writer.queue.append({"step": self._step, "timestamp": now, **sample})
        writer.kick()

    def _log_side(self, metrics: Mapping[str, object]) -> None:
        """Enqueue a record at the current step without advancing it (``watch``'s records)."""
        if self._queue is None or self._finished:
            return
        metrics = convert(metrics)
        self._logged += 1
        self._queue.append({"step": self._step, "timestamp": _time(), **metrics})
        self.summary.update(metrics)
        self._queued()

    def drain_soon(self) -> None:
        """Queue a drain of the pending metrics and system records on the I/O executor, so a
        live reader sees them now (``drain_open_run``); never blocks."""
        for writer in (self._writer, self._system):
            if writer is not None and writer.queue:
                writer.kick()

    def unwatch(self) -> None:
        """Remove every hook ``watch`` installed."""
        watches, self._watches = self._watches, []
        for w in watches:
            w.remove()

    def _background(self, fn: Callable[[*Args], None], *args: *Args) -> None:
        fut = submit_io(fn, *args)
        self._media.add(fut)
        fut.add_done_callback(self._media_done)

    def _media_done(self, fut: cf.Future[None]) -> None:
        if fut not in self._media:  # already seen by _wait_media or by this callback
            return
        self._media.discard(fut)
        exc = None if fut.cancelled() else fut.exception()
        if exc is not None:
            self._media_errors.append(exc)

    def _wait_media(self) -> None:
        """Wait for every media write; their failures are kept, not raised (see ``_report``)."""
        for fut in list(self._media):
            cf.wait([fut])
            self._media_done(fut)  # the callback may not have run yet

    def _report(self) -> None:
        """Raise (once) what went wrong in the background: a metrics drain, then media writes."""
        assert self._writer is not None  # only enabled runs write
        self._writer.check()
        errors = list(dict.fromkeys(self._media_errors))
        self._media_errors.clear()
        if errors:
            raise OSError(f"run {self.id}: {len(errors)} image/table write(s) failed (first: "
                          f"{errors[0]}); every logged metric was written") from errors[0]

    # durability ---------------------------------------------------------------------------------
    def flush(self) -> None:
        """Return once everything logged so far (metrics and media) is on disk (fsync).

        Blocks the calling thread; inside a coroutine use ``await run.aflush()``. A media
        write that failed is raised after the metrics are written.
        """
        if self._writer is None:
            return
        self._wait_media()
        self._writer.drain(durable=True)
        self._report()

    async def aflush(self) -> None:
        """``flush`` from a coroutine, run in the I/O executor."""
        await to_io(self.flush)

    def finish(self, status: str = "finished", error: str | None = None) -> None:
        """End the run: flush, write summary.sdn and the final metadata. Idempotent."""
        if self._begin_finish():
            self._complete(status, error)

    async def afinish(self, status: str = "finished", error: str | None = None) -> None:
        """``finish`` from a coroutine; the file work runs in the I/O executor."""
        if self._begin_finish():
            await to_io(self._complete, status, error)

    def _begin_finish(self) -> bool:
        with self._finish_lock:
            if self._finished:
                return False
            self._finished = True
        self._stop_sampler()
        self.unwatch()
        open_runs.unregister(self)
        return True

    def _complete(self, status: str, error: str | None) -> None:
        self.end_time = _time()
        self.status = status
        self.error = error
        if self._writer is None:
            return
        self._wait_media()
        if self._system is not None:  # first: its first write opens the main writer, not after
            self._system.close()
            self._system.check()
        self._writer.close()  # creates the folder and metadata if nothing was logged yet
        write_sdn(self.dir / "summary.sdn", self.summary)
        self._write_metadata(self.summary)
        if self._chart is not None:
            self._chart.close()
        if self._mirror is not None and not self._mirror.finish(status):
            print(f"aiotrain: {self._mirror.pending()}", file=sys.stderr)
        self._report()

    # artifacts ------------------------------------------------------------------------------------
    def log_artifact(self, artifact: Artifact, aliases: Iterable[str] = ()) -> Artifact:
        """Store ``artifact`` as a new version (or find its identical one); returns it versioned."""
        from .artifacts import log_artifact

        return log_artifact(self, artifact, list(aliases))

    def use_artifact(self, ref: str, project: str | None = None) -> Artifact:
        """Record this run as a consumer of ``name:vN`` / ``name:latest`` / ``name:alias``."""
        from .artifacts import use_artifact

        return use_artifact(self, ref, project)

    async def alog_artifact(self, artifact: Artifact, aliases: Iterable[str] = ()) -> Artifact:
        """``log_artifact`` from a coroutine (hashing and copying run in the I/O executor)."""
        return await to_io(self.log_artifact, artifact, aliases)

    async def ause_artifact(self, ref: str, project: str | None = None) -> Artifact:
        """``use_artifact`` from a coroutine."""
        return await to_io(self.use_artifact, ref, project)

    # files ------------------------------------------------------------------------------------------
    def _create_files(self) -> None:
        for sub in ("media/images", "tables", "artifacts"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self._write_metadata()

    def _write_metadata(self, summary: dict[str, Any] | None = None) -> None:
        """Write metadata.sdn, then row.json (for the runs table) from the same values, with
        ``summary`` when summary.sdn was just written from it."""
        metadata = {
            "id": self.id, "name": self.name, "project": self.project, "tags": self.tags,
            "notes": self.notes, "status": self.status, "created_at": self.start_time,
            "finished_at": self.end_time, "error": self.error, "pid": os.getpid(),
            "owner": current_owner(),
            "config": self.config, "system": system_info(),
        }
        write_sdn(self.dir / "metadata.sdn", metadata)
        write_row(self.dir, metadata, summary)

    def _resume(self, resume: bool | str, name: str | None, rewind: int | None) -> str:
        """Pick up an earlier run: its id, created_at, config, summary, history position and
        next step; with ``rewind``, its history cut back first."""
        runs = list_runs(self.project, self.root)
        if isinstance(resume, str):
            found = [r for r in runs if r.id == resume]
            if not found:
                raise ValueError(f"resume={resume!r}: no such run in project {self.project!r}")
        else:
            found = [r for r in runs if name is None or r.name == name]
            if not found:
                return _new_id()
        record = load_run(found[-1].dir)
        open_runs.refuse_live(record)
        history = record.dir / "metrics.jsonl"
        cut: set[str] = set()
        if rewind is not None:
            self.rewound, cut = rewind_history(history, rewind)
        self.name = record.name
        self.start_time = record.created_at or self.start_time
        self.config = {**record.config, **self.config}
        self.tags = self.tags or record.tags
        last, kept = -1, {}
        for entry in iter_history(history):
            self._logged += 1
            last = max(last, int(entry.get("step", last)))
            kept.update(entry)
        # a value cut with the history is not the run's any more; summary.sdn's overrides stay
        self.summary.update({k: v for k, v in kept.items() if k in cut})
        self.summary.update({k: v for k, v in record.summary.items() if k not in cut})
        self._step = last + 1
        return record.id

    def open_files(self) -> None:
        """Create the run's folder and metadata.sdn now, if the run is enabled and they are not
        there yet (the first drain would; ``with`` and ``log_artifact`` need them at once)."""
        if self._writer is not None:
            self._writer.open()

    # context managers -------------------------------------------------------
    def __enter__(self) -> Run:
        self.open_files()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.finish(*outcome(exc))

    async def __aenter__(self) -> Run:
        await self.astart()
        return self

    async def astart(self) -> None:
        """Create the run's files and start the system metrics sampler on the running loop: what ``async with`` does on entry, for runs created
        without a ``with`` block."""
        if self._writer is not None:
            await to_io(self._writer.open)
            from .live_chart import open_live_chart

            self._chart = open_live_chart(self.dir / "metrics.jsonl", f"{self.project}/{self.name}")
        self._start_sampler()

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.afinish(*outcome(exc))

    def _start_sampler(self) -> None:
        """Inside a running loop, sample system metrics every ``system_interval`` seconds into
        system.jsonl (flushes need no loop: the writer's flusher thread does them)."""
        if self._writer is None or self._sampler is not None or self.system_interval is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # a sync script: no sampler (it is a task on the loop)
        from .system_metrics import sample_forever

        self._system = MetricsWriter(self.dir / "system.jsonl", self._writer.open, self.flush_interval)
        self._sampler_loop = loop
        self._sampler = loop.create_task(sample_forever(self._log_system, self.system_interval),
                                         name=f"aiotrain-system-{self.id}")

    def _stop_sampler(self) -> None:
        task, loop, self._sampler = self._sampler, self._sampler_loop, None
        if task is None or loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            task.cancel()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(task.cancel)

    def __repr__(self) -> str:
        return f"Run(project={self.project!r}, id={self.id!r}, name={self.name!r}, status={self.status!r})"



def _new_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


def _check_storable(config: Mapping[str, object]) -> None:
    """Fail now, not at ``finish``, on a config that metadata.sdn cannot hold."""
    try:
        sdn.dumps(encode_nonfinite(config))
    except SdnError as exc:
        raise ValueError(f"the run's config cannot be stored: {exc}") from None
