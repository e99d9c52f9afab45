"""The one package that owns threads and processes; nobody else in aiotrain creates one.

One small module per direction, as anyio lays it out:

- ``loop``: ``run(main)``, the event loop (uvloop when installed);
- ``compute_thread``: ``ComputeWorker``, the thread a run's steps execute on, and ``to_compute``;
- ``io_threads``: the shared I/O pool (``to_io``, ``submit_io``, ``io_executor``, ``shutdown_io``);
- ``daemons``: threads nobody joins, for work that may hang (``spawn_daemon``,
  ``submit_abandonable``);
- ``portal``: ``LoopPortal``, a thread's road back to the loop;
- ``waiting``: how the loop awaits work elsewhere (``await_future``);
- ``data_workers``: ``DataWorkerPool`` and its worker processes;
- ``jobs``: ``JobProcess``, one job in a process of its own;
- ``job_server``: the warm job server job processes are forked from (``start_job_server``);
- ``processes`` (starting a process, one way), ``messages`` + ``wire`` (the one typed wire
  between processes) and ``portable`` (``portable_error``) under them.

Importing this package starts nothing and registers nothing: pools, hooks and exit handlers
are set up on first use. The names below are imported on first use too (PEP 562).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..exports import lazy_exports

_EXPORTS = {
    "run": "loop",
    "ComputeWorker": "compute_thread", "to_compute": "compute_thread",
    "io_executor": "io_threads", "shutdown_io": "io_threads", "submit_io": "io_threads",
    "to_io": "io_threads",
    "spawn_daemon": "daemons", "submit_abandonable": "daemons",
    "LoopPortal": "portal",
    "await_future": "waiting",
    "DataWorkerPool": "data_workers", "WorkerContext": "data_workers",
    "WorkerDied": "data_workers", "WorkerInitError": "data_workers",
    "JobChannel": "jobs", "JobProcess": "jobs", "JobProcessError": "jobs",
    "start_job_server": "job_server", "prestart_job_server": "job_server",
    "close_job_server": "job_server", "discard_prestarted_job_server": "job_server",
    "job_server_pids": "job_server",
    "portable_error": "portable",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .compute_thread import ComputeWorker as ComputeWorker
    from .compute_thread import to_compute as to_compute
    from .daemons import spawn_daemon as spawn_daemon
    from .daemons import submit_abandonable as submit_abandonable
    from .data_workers import DataWorkerPool as DataWorkerPool
    from .data_workers import WorkerContext as WorkerContext
    from .data_workers import WorkerDied as WorkerDied
    from .data_workers import WorkerInitError as WorkerInitError
    from .io_threads import io_executor as io_executor
    from .io_threads import shutdown_io as shutdown_io
    from .io_threads import submit_io as submit_io
    from .io_threads import to_io as to_io
    from .job_server import close_job_server as close_job_server
    from .job_server import discard_prestarted_job_server as discard_prestarted_job_server
    from .job_server import job_server_pids as job_server_pids
    from .job_server import prestart_job_server as prestart_job_server
    from .job_server import start_job_server as start_job_server
    from .jobs import JobChannel as JobChannel
    from .jobs import JobProcess as JobProcess
    from .jobs import JobProcessError as JobProcessError
    from .loop import run as run
    from .portable import portable_error as portable_error
    from .portal import LoopPortal as LoopPortal
    from .waiting import await_future as await_future
