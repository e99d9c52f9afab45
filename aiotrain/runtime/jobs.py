"""To job processes: ``JobProcess`` runs one ``async def`` target in a process of its own.

A job that must not share torch's per-process state (global RNG, thread settings, modes) with its
neighbours runs here. The child is forked from the loop's warm job server (``job_server.py``:
single-threaded, torch and the task already imported), or with ``AIOTRAIN_JOB_START=spawn`` (or
where the server cannot serve) it is a fresh interpreter (``processes.spawn``); never forked from
this multi-threaded process, and the caller's ``__main__`` is not re-imported. Parent and child
talk over one wire (``wire.py``): a ``Start`` message, then ``Post`` messages of the job's own
protocol both ways, ``Cancel`` from the parent, and one outcome (``Result``, ``Error`` or
``Cancelled``) from the child. The parent reads the wire with ``loop.add_reader``, so a job holds
no thread of the parent while it runs.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import gc
import itertools
import logging
import os
import socket
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, TypeVarTuple

from .io_threads import submit_io
from .loop import run
from .messages import (
    Cancel,
    Cancelled,
    Error,
    FromJob,
    Imported,
    Message,
    Post,
    Result,
    Start,
    ToJob,
    pickled,
    unpickled,
)
from .portable import portable_error
from .processes import Child, child_prologue, parent_end, spawn
from .waiting import await_future
from .wire import Wire, WireError

if TYPE_CHECKING:
    from .job_server import JobServer

__all__ = ["JobChannel", "JobProcess", "JobProcessError"]

log = logging.getLogger(__name__)

T = TypeVar("T", covariant=True)  # what a job process's target returns
Args = TypeVarTuple("Args")

_ids = itertools.count(1)
_live_jobs: set[JobProcess[object]] = set()
_atexit_lock = threading.Lock()
_atexit_registered = False
Outcome = Result | Error | Cancelled | None  # None: the child ended without a word


class JobProcessError(RuntimeError):
    """A job worker process ended without reporting a result (killed, or crashed in native code),
    or raised an exception that cannot cross the process boundary (its text is kept)."""


class JobChannel:
    """The child's end of a job process's wire, handed to the target as its first argument.

    ``send(kind, payload)`` may be called from any thread (the loop or the compute thread);
    ``on_message`` (a sync callable run on the child's loop) receives the parent's messages;
    messages that arrive before it is set are kept and delivered when it is.
    """

    def __init__(self, wire: Wire[Start | Post | Cancel]) -> None:
        self._wire = wire
        self._lock = threading.Lock()
        self._handler: Callable[[str, Any], None] | None = None
        self._early: list[tuple[str, Any]] = []

    def send(self, kind: str, payload: Any = None) -> None:
        """Send one message to the parent (pickled; keep it small and plain)."""
        self._send(Post(kind, pickled(payload)))

    def _send(self, msg: Message) -> None:
        with self._lock:
            self._wire.send(msg)

    @property
    def on_message(self) -> Callable[[str, Any], None] | None:
        return self._handler

    @on_message.setter
    def on_message(self, handler: Callable[[str, Any], None] | None) -> None:
        self._handler = handler
        if handler is None:
            return
        early, self._early = self._early, []
        for kind, payload in early:
            handler(kind, payload)

    def _deliver(self, kind: str, payload: Any) -> None:
        if self._handler is None:
            self._early.append((kind, payload))
        else:
            self._handler(kind, payload)


class JobProcess(Generic[T]):
    """Run ``await target(channel, *args)`` in a worker process of its own; the parent's handle.

    ``target`` is a module-level ``async def`` (it is sent by reference) and ``args`` are
    pickled. ``on_message(kind, payload)`` (sync, on the parent's loop) receives what the child
    ``send``s. ``await wait()`` returns the target's result, re-raises its exception, raises
    ``CancelledError`` when the child was cancelled, and ``JobProcessError`` when it died
    without a word. Cancelling the task that awaits ``wait()`` asks the child to cancel its
    target (cancellation in the child is normal control flow: the step in flight ends, writes
    are flushed), waits up to ``grace`` seconds for it to exit, kills it after that, and
    re-raises. The child ignores SIGINT (the parent decides when a job stops) and cancels its
    target by itself when the parent goes away (its end of the wire reads EOF), so no worker
    outlives its parent. Use ``async with JobProcess(...) as proc`` or ``astart()`` + ``wait()``.
    """

    def __init__(self, target: Callable[[JobChannel, *Args], Awaitable[T]], *args: *Args,
                 on_message: Callable[[str, Any], None] | None = None, grace: float = 60.0,
                 name: str | None = None) -> None:
        self.target: Callable[..., Awaitable[T]] = target
        self.args: tuple[object, ...] = args
        self.on_message = on_message
        self.grace = grace
        self.name = name or f"aiotrain-job-{next(_ids)}"
        self._proc: Child | None = None
        self._server: JobServer | None = None  # the job server it was forked from, if any
        self._wire: Wire[Post | Imported | Result | Error | Cancelled] | None = None
        self._outcome: asyncio.Future[Outcome] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def pid(self) -> int | None:
        """The worker's process id once started."""
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """How the worker ended (negative: killed by that signal); None while it runs."""
        return self._proc.returncode if self._proc is not None else None

    async def astart(self) -> JobProcess[T]:
        """Start the worker and hand it the target; returns once the process exists."""
        if self._proc is not None:
            raise RuntimeError(f"job process {self.name} was already started")
        _kill_live_jobs_at_exit()
        self._loop = asyncio.get_running_loop()
        self._outcome = self._loop.create_future()
        mine, theirs = Wire.socketpair()
        self._wire = Wire(parent_end(mine), FromJob)
        try:
            self._proc = await self._start_process(theirs)
        except BaseException:
            self._wire.close()
            raise
        finally:
            theirs.close()
        _live_jobs.add(self)
        self._loop.add_reader(self._wire.fileno(), self._readable)
        try:
            self._wire.send(Start(self.name, pickled((self.target, self.args))))
        except BaseException:  # an unpicklable argument: nothing may keep running
            self._kill()
            self._release()
            raise
        return self

    async def _start_process(self, job_end: socket.socket) -> Child:
        """Fork the job from the loop's job server, or spawn a fresh interpreter when the server
        is off or cannot serve (it died, or an import made forking unsafe)."""
        from . import job_server

        for _ in range(2 if job_server.enabled() else 0):  # a server that became unfit: one more
            try:
                server = await job_server.job_server()
                server.preload([self.target.__module__])
                child = await server.afork(job_end)
            except job_server.JobServerUnavailable as exc:
                log.info("job %s could not fork from the job server: %s", self.name, exc)
            else:
                self._server = server
                return child
        fut = submit_io(spawn, "aiotrain.runtime.jobs:job_main", [job_end.fileno()],
                        (job_end.fileno(),))
        try:
            return await await_future(fut)
        except asyncio.CancelledError:  # the process may exist by now: it must not be left behind
            if not fut.cancelled() and fut.exception() is None:
                fut.result().kill()
                fut.result().join()
            raise

    def send(self, kind: str, payload: Any = None) -> None:
        """Send one message to the child's ``channel.on_message``."""
        self._post(Post(kind, pickled(payload)))

    def cancel(self) -> None:
        """Ask the child to cancel its target (it finishes the step in flight and cleans up)."""
        with contextlib.suppress(RuntimeError):
            self._post(Cancel())

    def _post(self, msg: Message) -> None:
        if self._wire is None or self._wire.closed:
            raise RuntimeError(f"job process {self.name} is not running")
        with contextlib.suppress(OSError):  # the child may just have exited; wait() reports it
            self._wire.send(msg)

    async def wait(self) -> T:
        """The target's result (see the class docstring for errors and cancellation)."""
        if self._outcome is None:
            raise RuntimeError(f"job process {self.name} was not started")
        try:
            outcome = await asyncio.shield(self._outcome)
        except asyncio.CancelledError:
            await self._stop()
            raise
        await self._reap()
        if isinstance(outcome, Cancelled):
            raise asyncio.CancelledError(f"job process {self.name} was cancelled")
        if outcome is None:
            code = self.returncode
            raise JobProcessError(f"job process {self.name} (pid {self.pid}) ended without a result"
                                  + (f" (exit status {code})" if code is not None else ""))
        try:
            value = unpickled(outcome.body if isinstance(outcome, Result) else outcome.error)
        except Exception as exc:
            raise JobProcessError(f"job process {self.name} (pid {self.pid}) sent an outcome this "
                                  f"process cannot read: {type(exc).__name__}: {exc}") from exc
        if isinstance(outcome, Error):
            raise value
        result: T = value  # what the target returned, pickled by the child
        return result

    async def aclose(self) -> None:
        """Make sure the worker is gone: cancel it if it still runs, wait, kill after ``grace``."""
        if self._proc is None or self._outcome is None:
            return
        if not self._outcome.done():
            await self._stop()
        else:
            await self._reap()

    async def __aenter__(self) -> JobProcess[T]:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # internals ---------------------------------------------------------------------------------
    def _readable(self) -> None:
        assert self._wire is not None and self._loop is not None
        try:
            while (got := self._wire.recv(block=False)) is not None:
                msg, fds = got
                for fd in fds:
                    os.close(fd)
                if isinstance(msg, Imported):
                    if self._server is not None:
                        self._server.preload(msg.modules, msg.path)
                elif not isinstance(msg, Post):
                    self._settle(msg)
                elif self.on_message is not None:
                    self.on_message(msg.kind, unpickled(msg.body))
        except (EOFError, OSError, WireError):
            self._loop.remove_reader(self._wire.fileno())
            self._settle(None)

    def _settle(self, outcome: Outcome) -> None:
        if self._outcome is not None and not self._outcome.done():
            self._outcome.set_result(outcome)

    async def _stop(self) -> None:
        """Cancel the child, give it ``grace`` seconds to clean up, then kill it; always reap."""
        assert self._proc is not None
        self.cancel()
        try:
            await asyncio.wait_for(self._proc.exited(), self.grace)
        except TimeoutError:
            self._kill()
            await self._proc.exited()  # a killed job's exit status comes within milliseconds
        except asyncio.CancelledError:  # cancelled again while waiting: no more patience
            self._kill()
            raise
        finally:
            if not self._proc.has_ended():
                self._kill()
            self._release()

    async def _reap(self) -> None:
        assert self._proc is not None
        try:
            await self._proc.exited()
        except asyncio.CancelledError:
            self._kill()
            raise
        finally:
            self._release()

    def _kill(self) -> None:
        """SIGKILL and reap: the process is gone within milliseconds."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.join()

    def _release(self) -> None:
        wire = self._wire
        if wire is not None and not wire.closed:
            if self._loop is not None:
                with contextlib.suppress(ValueError, OSError):
                    self._loop.remove_reader(wire.fileno())
            wire.close()
        if self._proc is not None and self._proc.has_ended():
            _live_jobs.discard(self)
        self._settle(None)


def _kill_live_jobs_at_exit() -> None:
    """At interpreter exit, no job worker is left running (their own EOF watch is the backup)."""
    global _atexit_registered
    with _atexit_lock:
        if not _atexit_registered:
            atexit.register(_kill_live_jobs)
            _atexit_registered = True


def _kill_live_jobs() -> None:
    for proc in list(_live_jobs):
        proc._kill()


# the worker's side -------------------------------------------------------------------------------
def job_main(fd: int) -> None:
    """A spawned job process's main (a fresh interpreter)."""
    child_prologue()
    sys.exit(run_job_process(fd))


def run_job_process(fd: int, served: bool = False) -> int:
    """Receive the target on wire ``fd``, run it on a fresh loop, report the outcome; the exit
    status. ``served``: forked from a job server, which hears what this job imported."""
    before = set(sys.modules)
    wire: Wire[Start | Post | Cancel] = Wire(socket.socket(fileno=fd), ToJob)
    try:
        got = wire.recv()
    except EOFError:
        return 0
    assert got is not None  # a blocking recv
    channel = JobChannel(wire)
    start = got[0]
    try:
        if not isinstance(start, Start):
            raise WireError(f"a job process's first message was {type(start).__name__}")
        where = f"job process {start.name} (pid {os.getpid()})"
        target, args = unpickled(start.target)
    except BaseException as exc:  # the parent hears why instead of "ended without a result"
        channel._send(Error(pickled(portable_error(exc, "a starting job process",
                                                   fallback=JobProcessError))))
        return 1
    imported = (lambda: [m for m in list(sys.modules) if m not in before]) if served else None
    try:
        run(_serve_job(channel, wire, where, target, args, imported))
    except asyncio.CancelledError:
        pass  # a cancel that came after the outcome was sent
    wire.close()
    # the parent reaps this process before it goes on: keep the interpreter's final garbage
    # collections from walking torch's objects (about a second of CPU per job)
    gc.freeze()
    return 0


async def _serve_job(channel: JobChannel, wire: Wire[Start | Post | Cancel], where: str,
                     target: Callable[..., Awaitable[object]], args: tuple[object, ...],
                     imported: Callable[[], list[str]] | None) -> None:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None  # runs as the main task of run()

    def readable() -> None:
        try:
            while (got := wire.recv(block=False)) is not None:
                msg, fds = got
                for fd in fds:
                    os.close(fd)
                if isinstance(msg, Cancel):
                    main.cancel()
                elif isinstance(msg, Post):
                    channel._deliver(msg.kind, unpickled(msg.body))
        except (EOFError, OSError, WireError):  # the parent is gone: stop, nobody will read more
            loop.remove_reader(wire.fileno())
            main.cancel()

    loop.add_reader(wire.fileno(), readable)
    outcome: Message
    try:
        outcome = Result(pickled(await target(channel, *args)))
    except asyncio.CancelledError:
        outcome = Cancelled()
    except BaseException as exc:  # reported to the parent, which re-raises it
        outcome = Error(pickled(portable_error(exc, where, fallback=JobProcessError)))
    finally:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(wire.fileno())
    with contextlib.suppress(OSError):  # the parent may be gone: nobody to tell
        if imported is not None:
            channel._send(Imported(imported(), list(sys.path)))
        channel._send(outcome)
