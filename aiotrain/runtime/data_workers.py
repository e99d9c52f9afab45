"""To data worker processes: ``DataWorkerPool``, N processes that run one handler on messages.

The data layer's CPU stage runs here (``aiotrain.data.stage``). Each worker talks to the parent
over its own wire (``wire.py``: typed messages, large ones as a memfd, file descriptors of
shared-memory batches riding along); the parent reads every wire with ``loop.add_reader``, so a
call holds no thread. Forked workers inherit the handler; spawned ones (fresh interpreters) get
it pickled in a ``Setup`` message and import only what unpickling it needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import mmap
import os
import socket
import struct
import sys
import weakref
from collections.abc import Callable
from typing import Any

from .messages import (
    Call,
    Failed,
    FromWorker,
    InitFailed,
    Reply,
    Setup,
    ToWorker,
    pickled,
    unpickled,
)
from .portable import portable_error
from .processes import ChildProcess, child_prologue, fork, fork_turn, parent_end, spawn
from .wire import Wire, WireError

__all__ = ["DataWorkerPool", "WorkerContext", "WorkerDied", "WorkerInitError"]

Handler = Callable[[Any, "WorkerContext"], tuple[Any, list[int]]]
Initializer = Callable[["WorkerContext"], None]

_NOTE = struct.Struct("q")
_WHERE = "a data worker process"


class WorkerDied(RuntimeError):
    """A data worker process ended while it held calls; ``note`` is the last value it noted
    (the data layer notes the index of the item it is working on), ``exitcode`` how it ended."""

    def __init__(self, pid: int, exitcode: int | None, note: int) -> None:
        how = (f"killed by signal {-exitcode}" if exitcode is not None and exitcode < 0
               else f"exit code {exitcode}")
        super().__init__(f"data worker process {pid} died ({how})")
        self.pid, self.exitcode, self.note = pid, exitcode, note


class WorkerInitError(RuntimeError):
    """A data worker's initializer raised (a tokenizer file that does not load, say); the
    original error is ``__cause__``. Every later call of the pool raises it too, instead of
    starting worker after worker that would fail the same way."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(f"data worker initialisation failed: {type(exc).__name__}: {exc}")
        self.__cause__ = exc


class WorkerContext:
    """What a worker-side handler gets besides its message: which worker it is, whether it was
    spawned, and ``note(n)`` to record progress that the parent reads if the process dies."""

    def __init__(self, index: int, workers: int, notes: Any, spawned: bool = False) -> None:
        self.index, self.workers, self._notes = index, workers, notes
        self.spawned = spawned  # a fresh interpreter (nothing inherited), not a fork
        self._received: list[int] = []

    def take_received(self) -> list[int]:
        """The file descriptors sent with the current message; the caller owns them now."""
        fds, self._received = self._received, []
        return fds

    def note(self, value: int) -> None:
        """Record ``value`` (an item index) in memory the parent can read after a crash."""
        _NOTE.pack_into(self._notes, 8 * self.index, value)


# the worker's side ---------------------------------------------------------------------------------
def _forked_main(index: int, workers: int, sock: socket.socket, notes: Any, handler: Handler,
                 initializer: Initializer | None) -> None:
    """A forked worker (``processes.fork`` ran the prologue): serve until EOF."""
    _serve(Wire(sock, ToWorker), WorkerContext(index, workers, notes), handler, initializer)


def spawned_main(index: int, workers: int, sock_fd: int, notes_fd: int) -> None:
    """A spawned worker (a fresh interpreter): receive the handler, then serve. Its imports are
    only what unpickling the handler needs."""
    child_prologue()
    wire: Wire[Setup | Call] = Wire(socket.socket(fileno=sock_fd), ToWorker)
    notes = mmap.mmap(notes_fd, 8 * workers)
    os.close(notes_fd)
    try:
        got = wire.recv()
    except EOFError:
        sys.exit(0)
    assert got is not None  # a blocking recv
    try:
        setup = got[0]
        if not isinstance(setup, Setup):
            raise WireError(f"a spawned data worker's first message was {type(setup).__name__}")
        handler, initializer = unpickled(setup.parts)
    except BaseException as exc:
        _report_init_failure(wire, exc)
        sys.exit(1)
    _serve(wire, WorkerContext(index, workers, notes, spawned=True), handler, initializer)


def _report_init_failure(wire: Wire[Any], exc: BaseException) -> None:
    """Tell the parent this worker cannot start; it fails the pool's calls with the error."""
    with contextlib.suppress(Exception):
        wire.send(InitFailed(pickled(portable_error(exc, _WHERE))))


def _serve(wire: Wire[Setup | Call], ctx: WorkerContext, handler: Handler,
           initializer: Initializer | None) -> None:
    """Receive a Call, run ``handler``, send its Reply (or Failed), until EOF."""
    if initializer is not None:
        try:
            initializer(ctx)
        except BaseException as exc:
            _report_init_failure(wire, exc)
            return
    while True:
        try:
            got = wire.recv()
        except (EOFError, OSError):
            return  # the parent closed its end (or died): nothing more will come
        assert got is not None  # a blocking recv
        call, ctx._received = got
        if not isinstance(call, Call):
            continue  # a late Setup: nothing to do
        out_fds: list[int] = []
        reply: Reply | Failed
        try:
            result, out_fds = handler(unpickled(call.body), ctx)
            reply = Reply(call.id, pickled(result))
        except BaseException as exc:  # handed to the caller, never swallowed
            reply = Failed(call.id, pickled(portable_error(exc, _WHERE)))
        try:
            wire.send(reply, out_fds if isinstance(reply, Reply) else ())
        except (ConnectionError, BrokenPipeError):
            return
        except Exception as exc:  # the reply would not go (too many fds, say): say so instead
            wire.send(Failed(call.id, pickled(portable_error(exc, _WHERE))))
        finally:
            for fd in out_fds + ctx.take_received():  # what the handler did not take
                os.close(fd)


# the parent's side ---------------------------------------------------------------------------------
class _Worker:
    """The parent's side of one worker process: its wire and the calls it holds, in order."""

    def __init__(self, proc: ChildProcess, wire: Wire[Reply | Failed | InitFailed]) -> None:
        self.proc, self.wire = proc, wire
        self.calls: dict[int, asyncio.Future[tuple[Any, list[int]]]] = {}
        self.dead = False


class DataWorkerPool:
    """``workers`` processes that run ``handler(message, ctx) -> (result, fds)``.

    Used from one event loop: ``await pool.call(message)`` sends the message to the least busy
    worker and returns ``(result, fds)``; the file descriptors (shared-memory segments) become
    the caller's to close. Messages travel over a Unix datagram socket per worker, large ones as
    a memfd, so nothing blocks the loop and nothing is left in /dev/shm.

    ``start="fork"``: the processes are forked (Linux), so the handler and what it closes over
    (a dataset, a transform) are inherited, not pickled; so is the parent's memory (shared until
    written, but counted in each worker's RSS). ``start="spawn"``: fresh interpreters that get
    the handler pickled and import only what unpickling it needs, so a worker's memory is its
    own work's, not the parent's (torch is not loaded unless the handler uses it); the handler
    must pickle (module-level functions and classes, not ``__main__``'s). Either way they start
    on ``start()`` or the first call and are reused until ``aclose()`` kills them. An
    ``initializer`` that raises (or, spawned, a handler that does not unpickle) fails the calls,
    this and every later one until ``aclose()``, with ``WorkerInitError``. A worker that dies
    fails its calls with ``WorkerDied`` (carrying its last ``ctx.note``) and is replaced on the
    next call; a worker whose parent dies exits on EOF.
    A cancelled call's result is discarded when it arrives (its fds closed).
    """

    def __init__(self, workers: int, handler: Handler, *, initializer: Initializer | None = None,
                 name: str = "aiotrain-data", start: str = "fork") -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        if start not in ("fork", "spawn"):
            raise ValueError(f"start must be 'fork' or 'spawn', got {start!r}")
        if not hasattr(os, "memfd_create") or not hasattr(socket, "send_fds"):
            raise RuntimeError("data worker processes need Linux (memfd_create, fd passing); "
                               "use workers=0 on this platform")
        self.workers, self.handler, self.initializer, self.name = workers, handler, initializer, name
        self.start_method = start
        self._slots: list[_Worker | None] = [None] * workers
        # the workers' notes: shared memory, inherited by fork or passed to a spawned worker
        self._notes_fd = os.memfd_create("aiotrain-notes", os.MFD_CLOEXEC)
        os.ftruncate(self._notes_fd, 8 * workers)
        self._notes = mmap.mmap(self._notes_fd, 8 * workers)
        weakref.finalize(self, os.close, self._notes_fd)
        self._setup: bytes | None = None  # the pickled (handler, initializer) for spawned workers
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._init_error: WorkerInitError | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the workers' wires are read on (set by the first start)."""
        return self._loop

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers."""
        return [w.proc.pid for w in self._slots if w is not None and not w.dead]

    def _spawn(self, index: int) -> _Worker:
        parent, child = Wire.socketpair()
        _NOTE.pack_into(self._notes, 8 * index, -1)
        parent_end(parent)  # before the fork: the child must not keep its own peer open
        try:
            proc = self._start_process(index, child)
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        parent.setblocking(False)
        worker = _Worker(proc, Wire(parent, FromWorker))
        assert self._loop is not None
        self._loop.add_reader(parent.fileno(), self._on_readable, index, worker)
        self._slots[index] = worker
        if self._setup is not None:  # a spawned worker's first message: what to run
            worker.wire.send(Setup(self._setup))
        return worker

    def _start_process(self, index: int, child: socket.socket) -> ChildProcess:
        if self.start_method == "fork":
            return fork(lambda: _forked_main(index, self.workers, child, self._notes,
                                             self.handler, self.initializer))
        if self._setup is None:
            try:
                self._setup = pickled((self.handler, self.initializer))
            except Exception as exc:
                raise TypeError(f"spawned data workers get the dataset, transform, collate_fn and "
                                f"worker_init by pickling, which failed: {type(exc).__name__}: "
                                f"{exc}; define them at module level, or fork the workers") from exc
        fds = (child.fileno(), self._notes_fd)
        # the workers are the parallelism: one intra-op thread each, as forked workers set
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "OPENBLAS_NUM_THREADS": "1"}
        return spawn("aiotrain.runtime.data_workers:spawned_main",
                     [index, self.workers, *fds], fds, env)

    def start(self) -> None:
        """Start every worker now (``call`` also starts them on demand). Loop thread only."""
        self._loop = asyncio.get_running_loop()
        for i, w in enumerate(self._slots):
            if w is None or w.dead:
                self._spawn(i)

    async def astart(self) -> None:
        """``start``, one worker per turn (``fork_turn``, shared by every pool on this loop): a
        fork holds the GIL while the kernel copies this process's page tables, so forking them
        all in one go would stall the loop that long times the workers."""
        self._loop = asyncio.get_running_loop()
        for i in range(self.workers):
            w = self._slots[i]
            if w is None or w.dead:
                async with fork_turn():
                    w = self._slots[i]
                    if w is None or w.dead:  # another call may have started it meanwhile
                        self._spawn(i)

    async def call(self, message: Any, fds: list[int] | None = None) -> tuple[Any, list[int]]:
        """Run ``message`` on the least busy worker; ``(result, fds)`` or the handler's error.
        ``fds`` travel with the message (the handler takes them with ``ctx.take_received()``);
        they are closed here once sent."""
        fds = fds or []
        try:
            return await self._call(message, fds)
        finally:
            for fd in fds:
                os.close(fd)

    async def _call(self, message: Any, fds: list[int]) -> tuple[Any, list[int]]:
        if self._init_error is not None:
            raise self._init_error
        await self.astart()
        worker = min((w for w in self._slots if w is not None), key=lambda w: len(w.calls))
        call_id = next(self._ids)
        fut: asyncio.Future[tuple[Any, list[int]]] = asyncio.get_running_loop().create_future()
        worker.calls[call_id] = fut
        try:
            await self._send(worker, Call(call_id, pickled(message)), fds)
        except BaseException:
            worker.calls.pop(call_id, None)
            raise
        try:
            return await fut
        finally:
            worker.calls.pop(call_id, None)

    async def _send(self, worker: _Worker, call: Call, fds: list[int]) -> None:
        while True:
            if worker.dead:
                raise self._init_error or WorkerDied(worker.proc.pid, worker.proc.returncode, -1)
            try:
                worker.wire.send(call, fds)
                return
            except BlockingIOError:  # the worker's queue is full: wait until it drains a little
                await asyncio.sleep(0.001)
            except (BrokenPipeError, ConnectionError):
                await asyncio.sleep(0.001)  # the reader will see EOF and mark it dead

    def _on_readable(self, index: int, worker: _Worker) -> None:
        while True:
            try:
                got = worker.wire.recv(block=False)
            except WireError as exc:  # a reply we cannot read: fail the oldest call with it
                self._fail_oldest(worker, exc)
                continue
            except (EOFError, OSError):
                self._mark_dead(index, worker)
                return
            if got is None:
                return
            self._on_message(worker, *got)

    def _on_message(self, worker: _Worker, msg: Reply | Failed | InitFailed, fds: list[int]) -> None:
        if isinstance(msg, InitFailed):
            _close(fds)
            self._init_failed(worker, unpickled(msg.error))
            return
        fut = worker.calls.get(msg.id)
        if fut is None or fut.done() or isinstance(msg, Failed):
            _close(fds)  # cancelled meanwhile (the result is discarded), or nothing to keep
            fds = []
        if fut is None or fut.done():
            return
        try:
            value = unpickled(msg.body if isinstance(msg, Reply) else msg.error)
        except Exception as exc:  # a class the parent cannot import, say
            _close(fds)
            fut.set_exception(RuntimeError(f"unreadable reply from data worker "
                                           f"{worker.proc.pid}: {type(exc).__name__}: {exc}"))
            return
        if isinstance(msg, Reply):
            fut.set_result((value, fds))
        else:
            fut.set_exception(value)

    def _fail_oldest(self, worker: _Worker, exc: BaseException) -> None:
        if worker.calls:
            fut = worker.calls[next(iter(worker.calls))]
            if not fut.done():
                fut.set_exception(RuntimeError(f"unreadable reply from data worker "
                                               f"{worker.proc.pid}: {exc}"))

    def _init_failed(self, worker: _Worker, exc: BaseException) -> None:
        if self._init_error is None:
            self._init_error = WorkerInitError(exc)
        for fut in worker.calls.values():
            if not fut.done():
                fut.set_exception(self._init_error)

    def _mark_dead(self, index: int, worker: _Worker) -> None:
        if worker.dead:
            return
        worker.dead = True
        assert self._loop is not None
        self._loop.remove_reader(worker.wire.fileno())
        worker.wire.close()
        worker.proc.join(0.05)  # EOF came because it exited: reaping takes microseconds
        (note,) = _NOTE.unpack_from(self._notes, 8 * index)
        error = self._init_error or WorkerDied(worker.proc.pid, worker.proc.returncode, note)
        for fut in worker.calls.values():
            if not fut.done():
                fut.set_exception(error)
        if self._slots[index] is worker:
            self._slots[index] = None

    async def aclose(self) -> None:
        """Kill the workers and reap them without blocking the loop; fail calls still waiting.
        The pool can be used again afterwards (fresh processes start on the next call)."""
        workers = self._take_all()
        for w in workers:
            await w.proc.exited()
            self._close_worker(w)

    def close(self) -> None:
        """``aclose`` for synchronous callers (finalizers): kill and reap, blocking briefly."""
        for w in self._take_all():
            w.proc.join()
            self._close_worker(w)

    def _take_all(self) -> list[_Worker]:
        """Empty the slots and kill every worker still alive; the caller reaps them."""
        workers = [w for w in self._slots if w is not None]
        self._slots, self._init_error = [None] * self.workers, None
        for w in workers:
            if not w.dead:
                w.proc.kill()
        return workers

    def _close_worker(self, w: _Worker) -> None:
        if not w.dead:
            w.dead = True
            if self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(w.wire.fileno())
            w.wire.close()
        for fut in w.calls.values():
            if not fut.done():
                fut.set_exception(RuntimeError("the data worker pool was closed"))


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
