"""The one module that owns threads and processes: the event-loop runner, the compute worker, the
I/O executor, the data worker processes and the job worker processes.

Everything else in aiotrain asks this module for a thread or a process; nobody else creates one.
That keeps the rules checkable: a ComputeWorker lives for one ``Engine.run`` (started when it
begins, joined when it ends), the I/O executor is a small shared pool for disk work, the only
threads that may outlive their caller are the ones ``spawn_daemon`` hands out for work that is
deliberately abandoned (a validation check that hangs, a dataset item that never returns), and
``DataWorkerPool`` processes live until their owner closes the pool (or the parent dies).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures as cf
import contextlib
import itertools
import mmap
import os
import pickle
import queue
import socket
import struct
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = [
    "ComputeWorker",
    "DataWorkerPool",
    "WorkerContext",
    "WorkerDied",
    "WorkerInitError",
    "JobChannel",
    "JobProcess",
    "JobProcessError",
    "await_future",
    "io_executor",
    "portable_error",
    "run",
    "shutdown_io",
    "spawn_daemon",
    "submit_abandonable",
    "submit_io",
    "to_compute",
    "to_io",
]

_ids = itertools.count(1)


def run(main: Coroutine[Any, Any, T] | Callable[[], Awaitable[T]], *, debug: bool = False) -> T:
    """Run ``main`` to completion on a fresh event loop (uvloop when installed) and return its result.

    The I/O executor is drained before returning so that every write it was given is on disk.
    """
    coro = main() if callable(main) else main
    factory = None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # uvloop is an optional extra
        pass
    try:
        with asyncio.Runner(debug=debug, loop_factory=factory) as runner:
            return runner.run(coro)  # type: ignore[arg-type]
    finally:
        shutdown_io(wait=True)


async def await_future(fut: cf.Future[T], on_cancel: Callable[[], None] | None = None) -> T:
    """Await a thread's future; if the awaiting task is cancelled, wait for the work to end, then re-raise.

    Work already running on a thread cannot be interrupted, so cancelling the caller must not
    return before that work stops touching shared state (the model, a file being written).
    ``on_cancel`` is called first, to ask long-running work to stop early.
    """
    afut = asyncio.wrap_future(fut)
    try:
        return await asyncio.shield(afut)
    except asyncio.CancelledError:
        if on_cancel is not None:
            on_cancel()
        if not fut.cancel():
            while not afut.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([afut])
            if not afut.cancelled():
                afut.exception()  # mark the exception retrieved; the cancellation wins
        raise


class ComputeWorker:
    """One dedicated thread that runs calls in submission order (the model's compute).

    On CUDA the worker owns a side stream: every call runs inside ``torch.cuda.stream(stream)``.
    Use it as ``with`` / ``async with`` or call ``start()`` / ``stop()``; ``stop`` joins the thread.
    """

    def __init__(self, name: str | None = None, device: Any = None) -> None:
        self.name = name or f"aiotrain-compute-{next(_ids)}"
        self.device = device
        self.stream: Any = None
        self._queue: queue.SimpleQueue[tuple[cf.Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]] | None]
        self._queue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # lifecycle -----------------------------------------------------------------------------
    def start(self) -> ComputeWorker:
        """Start the thread (idempotent)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self.stream = _cuda_stream(self.device)
                self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
                self._thread.start()
        return self

    def stop(self, wait: bool = True) -> None:
        """Ask the thread to finish the queued calls and exit; join it when ``wait``."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put(None)
        if wait and thread is not threading.current_thread():
            thread.join()

    async def astop(self) -> None:
        """Stop and join without blocking the event loop."""
        thread = self._thread
        self.stop(wait=False)
        if thread is not None and thread is not threading.current_thread():
            await _join_async(thread)

    @property
    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def in_worker(self) -> bool:
        """True when called from this worker's own thread."""
        return self._thread is not None and threading.current_thread() is self._thread

    def __enter__(self) -> ComputeWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> ComputeWorker:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.astop()

    # work ----------------------------------------------------------------------------------
    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> cf.Future[T]:
        """Queue ``fn(*args, **kwargs)`` on the worker; returns a concurrent future."""
        if self._thread is None:
            raise RuntimeError(f"ComputeWorker {self.name!r} is not running; call start() first")
        fut: cf.Future[T] = cf.Future()
        self._queue.put((fut, fn, args, kwargs))
        return fut

    async def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the worker and await its result (see ``await_future`` for cancellation)."""
        return await await_future(self.submit(fn, *args, **kwargs))

    def _main(self) -> None:
        ctx = _stream_context(self.stream)
        while True:
            item = self._queue.get()
            if item is None:
                return
            fut, fn, args, kwargs = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                with ctx():
                    result = fn(*args, **kwargs)
            except BaseException as exc:  # handed to the awaiting side, never swallowed
                fut.set_exception(exc)
            else:
                fut.set_result(result)
            del item, fut, fn, args, kwargs


async def to_compute(fn: Callable[..., T], /, *args: Any, worker: ComputeWorker | None = None,
                     **kwargs: Any) -> T:
    """Run ``fn`` on ``worker``, or on a worker started for this one call and joined after."""
    if worker is not None:
        return await worker.call(fn, *args, **kwargs)
    async with ComputeWorker() as own:
        return await own.call(fn, *args, **kwargs)


def _cuda_stream(device: Any) -> Any:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return None
    dev = torch.device(device) if device is not None else None
    if dev is None or dev.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.Stream(device=dev)


def _stream_context(stream: Any) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    if stream is None:
        return contextlib.nullcontext
    import torch

    return lambda: torch.cuda.stream(stream)


async def _join_async(thread: threading.Thread) -> None:
    """Join ``thread`` without blocking the loop: poll briefly, it is about to exit."""
    delay = 0.0005
    while thread.is_alive():
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.02)


# I/O executor ------------------------------------------------------------------------------
_io_lock = threading.Lock()
_io: cf.ThreadPoolExecutor | None = None


def io_executor() -> cf.ThreadPoolExecutor:
    """The shared pool for blocking I/O (disk writes, mmap opens, sync dataset reads)."""
    global _io
    with _io_lock:
        if _io is None:
            workers = int(os.environ.get("AIOTRAIN_IO_THREADS", "0")) or min(32, (os.cpu_count() or 1) + 4)
            _io = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="aiotrain-io")
        return _io


def submit_io(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> cf.Future[T]:
    """Queue ``fn`` on the I/O executor from any thread; returns a concurrent future."""
    return io_executor().submit(fn, *args, **kwargs)


async def to_io(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run blocking ``fn`` on the I/O executor and await it (cancellation waits for the call)."""
    return await await_future(submit_io(fn, *args, **kwargs))


def shutdown_io(wait: bool = True) -> None:
    """Finish queued I/O and stop the executor's threads; the next use starts a new pool."""
    global _io
    with _io_lock:
        pool, _io = _io, None
    if pool is not None:
        pool.shutdown(wait=wait)


def spawn_daemon(fn: Callable[..., T], /, *args: Any, name: str = "aiotrain-daemon",
                 **kwargs: Any) -> cf.Future[T]:
    """Run ``fn`` on a daemon thread nobody joins; for work that may hang and be abandoned.

    The validator uses it to bound a check by a timeout: if the check never returns, its thread
    is left behind (daemon, so interpreter exit does not wait for it) and the caller moves on.
    """
    fut: cf.Future[T] = cf.Future()

    def main() -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            fut.set_exception(exc)

    threading.Thread(target=main, name=f"{name}-{next(_ids)}", daemon=True).start()
    return fut


class _DaemonPool:
    """Reusable daemon threads for calls that may never return (sync dataset code).

    Like ``spawn_daemon`` nobody joins them, so a hung call is simply left behind; unlike it, a
    thread that finishes takes the next call (a thread start costs ~100 us of CPU, too much per
    item). A thread idle for ``IDLE_S`` exits. Invariant, under the lock: threads waiting on the
    queue == ``idle`` + calls queued.
    """

    IDLE_S = 30.0

    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: queue.SimpleQueue[tuple[cf.Future[Any], Callable[..., Any], tuple[Any, ...]]] = queue.SimpleQueue()
        self._idle = 0
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., T], /, *args: Any) -> cf.Future[T]:
        fut: cf.Future[T] = cf.Future()
        item = (fut, fn, args)
        with self._lock:
            if self._idle:
                self._idle -= 1
                self._queue.put(item)
                return fut
        threading.Thread(target=self._main, args=(item,), name=f"{self.name}-{next(_ids)}",
                         daemon=True).start()
        return fut

    def _main(self, item: tuple[cf.Future[Any], Callable[..., Any], tuple[Any, ...]]) -> None:
        while True:
            fut, fn, args = item
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(*args))
                except BaseException as exc:  # handed to the caller, never swallowed
                    fut.set_exception(exc)
            del item, fut, fn, args
            with self._lock:
                self._idle += 1
            while True:
                try:
                    item = self._queue.get(timeout=self.IDLE_S)
                    break
                except queue.Empty:
                    with self._lock:
                        if self._queue.empty() and self._idle:
                            self._idle -= 1
                            return


_abandonable = _DaemonPool("aiotrain-abandonable")


def submit_abandonable(fn: Callable[..., T], /, *args: Any) -> cf.Future[T]:
    """Run sync user code (a dataset's ``__getitem__``) on a reusable daemon thread that nobody
    joins: if it never returns, its caller may abandon it, and neither the I/O executor nor
    interpreter exit waits for it."""
    return _abandonable.submit(fn, *args)


# Data worker processes -----------------------------------------------------------------------
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


_NOTE = struct.Struct("q")
_INIT_FAILED = 0  # the call id of a worker's report that its initializer raised (calls count from 1)
_INLINE_MAX = 32 * 1024  # bigger messages travel as a memfd, so a datagram always fits the socket
_MAX_FDS = 64
_parent_ends: weakref.WeakSet[socket.socket] = weakref.WeakSet()


def _close_parent_ends() -> None:
    """In any forked child: drop the parent's ends of every worker socket, so a worker sees EOF
    (and exits) when the parent dies, whoever else forked since."""
    for sock in list(_parent_ends):
        with contextlib.suppress(OSError):
            sock.close()


os.register_at_fork(after_in_child=_close_parent_ends)


def _send_msg(sock: socket.socket, obj: Any, fds: list[int]) -> None:
    """One datagram: a pickle inline, or (when large) a memfd holding it; ``fds`` ride along."""
    _send_pickled(sock, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), fds)


def _send_pickled(sock: socket.socket, raw: bytes, fds: list[int] | None = None) -> None:
    """Send an already pickled message (inline, or as a memfd when large)."""
    fds = fds or []
    if len(raw) <= _INLINE_MAX:
        socket.send_fds(sock, [b"I" + raw], fds)
        return
    mfd = os.memfd_create("aiotrain-msg", os.MFD_CLOEXEC)
    try:
        view, done = memoryview(raw), 0
        while done < len(raw):
            done += os.write(mfd, view[done:])
        socket.send_fds(sock, [b"F" + _NOTE.pack(len(raw))], [mfd, *fds])
    finally:
        os.close(mfd)


def _decode_msg(data: bytes, fds: list[int]) -> tuple[Any, list[int]]:
    if data[:1] == b"I":
        return pickle.loads(data[1:]), fds
    (size,) = _NOTE.unpack_from(data, 1)
    mfd, rest = fds[0], fds[1:]
    try:
        raw = bytearray(size)
        view, done = memoryview(raw), 0
        while done < size:
            n = os.preadv(mfd, [view[done:]], done)
            if n <= 0:
                raise EOFError("data worker message shorter than announced")
            done += n
    finally:
        os.close(mfd)
    return pickle.loads(raw), rest


def _worker_main(index: int, workers: int, sock: socket.socket, notes: Any,
                 handler: Callable[[Any, WorkerContext], tuple[Any, list[int]]],
                 initializer: Callable[[WorkerContext], None] | None) -> None:
    """A forked worker process: undo what fork inherited from the parent's loop, then serve."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops us
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)  # the inherited fd belongs to the parent's event loop
    asyncio.events._set_running_loop(None)  # forked from the loop's thread: no loop runs here
    _serve_worker(sock, WorkerContext(index, workers, notes), handler, initializer)


def _spawned_worker_main(index: int, workers: int, sock_fd: int, notes_fd: int) -> None:
    """A spawned worker process (a fresh interpreter): receive the handler, then serve. Its
    imports are only what unpickling the handler needs."""
    import signal
    import sys

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=sock_fd)
    notes = mmap.mmap(notes_fd, 8 * workers)
    os.close(notes_fd)
    data, fds, _flags, _addr = socket.recv_fds(sock, _INLINE_MAX + 64, _MAX_FDS)
    if not data:
        sys.exit(0)
    try:
        handler, initializer = _decode_msg(data, fds)[0]
    except BaseException as exc:
        _report_init_failure(sock, exc)
        sys.exit(1)
    _serve_worker(sock, WorkerContext(index, workers, notes, spawned=True), handler, initializer)


def _report_init_failure(sock: socket.socket, exc: BaseException) -> None:
    """Tell the parent this worker cannot start; it fails the pool's calls with the error."""
    import traceback

    with contextlib.suppress(Exception):
        _send_msg(sock, (_INIT_FAILED, False, portable_error(exc, traceback.format_exc())), [])


def _serve_worker(sock: socket.socket, ctx: WorkerContext,
                  handler: Callable[[Any, WorkerContext], tuple[Any, list[int]]],
                  initializer: Callable[[WorkerContext], None] | None) -> None:
    """Receive (call id, message), run ``handler``, send (call id, ok, result), until EOF."""
    import traceback

    if initializer is not None:
        try:
            initializer(ctx)
        except BaseException as exc:
            _report_init_failure(sock, exc)
            return
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, _INLINE_MAX + 64, _MAX_FDS)
        except (ConnectionError, OSError):
            return
        if not data:
            return  # the parent closed its end (or died): nothing more will come
        (call_id, msg), ctx._received = _decode_msg(data, fds)
        out_fds: list[int] = []
        try:
            result, out_fds = handler(msg, ctx)
            reply: tuple[int, bool, Any] = (call_id, True, result)
        except BaseException as exc:  # handed to the caller, never swallowed
            reply = (call_id, False, portable_error(exc, traceback.format_exc()))
        try:
            _send_msg(sock, reply, out_fds)
        except (ConnectionError, BrokenPipeError):
            return
        except Exception as exc:  # the result would not pickle: say so instead
            _send_msg(sock, (call_id, False, portable_error(exc, traceback.format_exc())), [])
        finally:
            for fd in out_fds + ctx.take_received():  # what the handler did not take
                os.close(fd)


def portable_error(exc: BaseException, tb: str | None = None,
                   fallback: type[Exception] = RuntimeError) -> BaseException:
    """``exc`` if it survives pickling (to cross a process boundary), else a ``fallback`` that
    carries its text; with the worker's traceback ``tb`` attached as a note when given."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        exc = fallback(f"{type(exc).__name__}: {exc}")
    if tb:
        exc.add_note(f"in a data worker process:\n{tb.rstrip()}")
    return exc


class _Worker:
    """The parent's side of one worker process: its socket and the calls it holds, in order."""

    def __init__(self, proc: Any, sock: socket.socket) -> None:
        self.proc, self.sock = proc, sock
        self.calls: dict[int, asyncio.Future[tuple[Any, list[int]]]] = {}
        self.dead = False


class _SpawnedProcess:
    """A spawned worker's ``subprocess.Popen`` with the few ``multiprocessing.Process`` methods
    the pool uses, so forked and spawned workers are handled alike."""

    def __init__(self, popen: Any) -> None:
        self._popen = popen
        self.pid: int = popen.pid

    @property
    def exitcode(self) -> int | None:
        code: int | None = self._popen.poll()
        return code  # negative: killed by that signal, as multiprocessing says

    def is_alive(self) -> bool:
        return self._popen.poll() is None

    def kill(self) -> None:
        if self._popen.poll() is None:
            self._popen.kill()

    def join(self, timeout: float | None = None) -> None:
        import subprocess

        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(timeout)

    def close(self) -> None:
        self._popen.wait()


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

    def __init__(self, workers: int, handler: Callable[[Any, WorkerContext], tuple[Any, list[int]]],
                 *, initializer: Callable[[WorkerContext], None] | None = None,
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
    def pids(self) -> list[int]:
        """Process ids of the live workers."""
        return [w.proc.pid for w in self._slots if w is not None and not w.dead]

    def _spawn(self, index: int) -> _Worker:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        _NOTE.pack_into(self._notes, 8 * index, -1)
        _parent_ends.add(parent)  # before the fork: the child must not keep its own peer open
        try:
            proc = self._start_process(index, child)
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        parent.setblocking(False)
        worker = _Worker(proc, parent)
        assert self._loop is not None
        self._loop.add_reader(parent.fileno(), self._on_readable, index, worker)
        self._slots[index] = worker
        if self._setup is not None:  # a spawned worker's first message: what to run
            _send_pickled(parent, self._setup)
        return worker

    def _start_process(self, index: int, child: socket.socket) -> Any:
        if self.start_method == "fork":
            import multiprocessing

            proc = multiprocessing.get_context("fork").Process(
                target=_worker_main, name=f"{self.name}-{index}", daemon=True,
                args=(index, self.workers, child, self._notes, self.handler, self.initializer))
            proc.start()
            return proc
        if self._setup is None:
            try:
                self._setup = pickle.dumps((self.handler, self.initializer),
                                           protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                raise TypeError(f"spawned data workers get the dataset, transform, collate_fn and "
                                f"worker_init by pickling, which failed: {type(exc).__name__}: "
                                f"{exc}; define them at module level, or fork the workers") from exc
        fds = (child.fileno(), self._notes_fd)
        # the workers are the parallelism: one intra-op thread each, as forked workers set
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "OPENBLAS_NUM_THREADS": "1"}
        return _SpawnedProcess(_spawn_python(
            "_spawned_worker_main", [index, self.workers, *fds], fds, env))

    def start(self) -> None:
        """Start every worker now (``call`` also starts them on demand). Loop thread only."""
        self._loop = asyncio.get_running_loop()
        for i, w in enumerate(self._slots):
            if w is None or w.dead:
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
        self.start()
        index, worker = min(((i, w) for i, w in enumerate(self._slots) if w is not None),
                            key=lambda iw: len(iw[1].calls))
        call_id = next(self._ids)
        fut: asyncio.Future[tuple[Any, list[int]]] = asyncio.get_running_loop().create_future()
        worker.calls[call_id] = fut
        try:
            await self._send(worker, (call_id, message), fds)
        except BaseException:
            worker.calls.pop(call_id, None)
            raise
        try:
            return await fut
        finally:
            worker.calls.pop(call_id, None)

    async def _send(self, worker: _Worker, obj: Any, fds: list[int]) -> None:
        while True:
            if worker.dead:
                raise self._init_error or WorkerDied(worker.proc.pid, worker.proc.exitcode, -1)
            try:
                _send_msg(worker.sock, obj, fds)
                return
            except BlockingIOError:  # the worker's queue is full: wait until it drains a little
                await asyncio.sleep(0.001)
            except (BrokenPipeError, ConnectionError):
                await asyncio.sleep(0.001)  # the reader will see EOF and mark it dead

    def _on_readable(self, index: int, worker: _Worker) -> None:
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(worker.sock, _INLINE_MAX + 64, _MAX_FDS)
            except BlockingIOError:
                return
            except (ConnectionError, OSError):
                data, fds = b"", []
            if not data:
                for fd in fds:
                    os.close(fd)
                self._mark_dead(index, worker)
                return
            try:
                (call_id, ok, value), fds = _decode_msg(data, fds)
            except Exception as exc:  # a reply we cannot read: fail the oldest call with it
                for fd in fds:
                    os.close(fd)
                if worker.calls:
                    fut = worker.calls[next(iter(worker.calls))]
                    if not fut.done():
                        fut.set_exception(RuntimeError(f"unreadable reply from data worker "
                                                       f"{worker.proc.pid}: {exc}"))
                continue
            if call_id == _INIT_FAILED:
                self._init_failed(worker, value)
                continue
            reply = worker.calls.get(call_id)
            if reply is None or reply.done():  # cancelled meanwhile: the result is discarded
                for fd in fds:
                    os.close(fd)
            elif ok:
                reply.set_result((value, fds))
            else:
                for fd in fds:
                    os.close(fd)
                reply.set_exception(value)

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
        self._loop.remove_reader(worker.sock.fileno())
        worker.sock.close()
        worker.proc.join(0.05)  # EOF came because it exited: reaping takes microseconds
        (note,) = _NOTE.unpack_from(self._notes, 8 * index)
        error = self._init_error or WorkerDied(worker.proc.pid, worker.proc.exitcode, note)
        for fut in worker.calls.values():
            if not fut.done():
                fut.set_exception(error)
        if self._slots[index] is worker:
            self._slots[index] = None

    async def aclose(self) -> None:
        """Kill the workers and reap them without blocking the loop; fail calls still waiting.
        The pool can be used again afterwards (fresh processes start on the next call)."""
        workers = [w for w in self._slots if w is not None]
        self._slots, self._init_error = [None] * self.workers, None
        for w in workers:
            if not w.dead:
                w.proc.kill()
        for w in workers:
            while w.proc.is_alive():  # noqa: ASYNC110 - a process exit has no awaitable; poll
                await asyncio.sleep(0.002)
            self._close_worker(w)

    def close(self) -> None:
        """``aclose`` for synchronous callers (finalizers): kill and reap, blocking briefly."""
        workers = [w for w in self._slots if w is not None]
        self._slots, self._init_error = [None] * self.workers, None
        for w in workers:
            if not w.dead:
                w.proc.kill()
            w.proc.join()
            self._close_worker(w)

    def _close_worker(self, w: _Worker) -> None:
        if not w.dead:
            w.dead = True
            if self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(w.sock.fileno())
            w.sock.close()
        w.proc.close()
        for fut in w.calls.values():
            if not fut.done():
                fut.set_exception(RuntimeError("the data worker pool was closed"))
# Job worker processes ----------------------------------------------------------------------
# A job that must not share torch's per-process state (global RNG, thread settings, modes) with
# its neighbours runs in a worker process of its own. The child is a fresh interpreter started
# with subprocess (spawned, never forked from a process that holds threads), so no
# multiprocessing helper process (resource tracker, fork server) is left behind and the caller's
# __main__ is not re-imported. Parent and child talk over one socket pair with
# multiprocessing.connection's framing; the parent reads it with loop.add_reader, so a job holds
# no thread of the parent (nor of the I/O executor) while it runs.

_CANCEL, _RESULT, _ERROR, _CANCELLED = "__cancel__", "__result__", "__error__", "__cancelled__"
_live_jobs: set[JobProcess] = set()


class JobProcessError(RuntimeError):
    """A job worker process ended without reporting a result (killed, or crashed in native code),
    or raised an exception that cannot cross the process boundary (its text is kept)."""


class JobChannel:
    """The child's end of a job process's connection, handed to the target as its first argument.

    ``send(kind, payload)`` may be called from any thread (the loop or the compute thread);
    ``on_message`` (a sync callable run on the child's loop) receives the parent's messages;
    messages that arrive before it is set are kept and delivered when it is.
    """

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._handler: Callable[[str, Any], None] | None = None
        self._early: list[tuple[str, Any]] = []

    def send(self, kind: str, payload: Any = None) -> None:
        """Send one message to the parent (pickled; keep it small and plain)."""
        with self._lock:
            self._conn.send((kind, payload))

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


class JobProcess:
    """Run ``await target(channel, *args)`` in a worker process of its own; the parent's handle.

    ``target`` is a module-level ``async def`` (it is sent by reference) and ``args`` are
    pickled. ``on_message(kind, payload)`` (sync, on the parent's loop) receives what the child
    ``send``s. ``await wait()`` returns the target's result, re-raises its exception, raises
    ``CancelledError`` when the child was cancelled, and ``JobProcessError`` when it died
    without a word. Cancelling the task that awaits ``wait()`` asks the child to cancel its
    target (cancellation in the child is normal control flow: the step in flight ends, writes
    are flushed), waits up to ``grace`` seconds for it to exit, kills it after that, and
    re-raises. The child ignores SIGINT (the parent decides when a job stops) and cancels its
    target by itself when the parent goes away (its end of the socket reads EOF), so no worker
    outlives its parent. Use ``async with JobProcess(...) as proc`` or ``astart()`` + ``wait()``.
    """

    def __init__(self, target: Callable[..., Awaitable[Any]], *args: Any,
                 on_message: Callable[[str, Any], None] | None = None, grace: float = 60.0,
                 name: str | None = None) -> None:
        self.target, self.args = target, args
        self.on_message = on_message
        self.grace = grace
        self.name = name or f"aiotrain-job-{next(_ids)}"
        # set by start(); Any rather than Optional: every use below comes after start()
        self._popen: Any = None
        self._conn: Any = None
        self._outcome: Any = None  # asyncio.Future[tuple[str, Any]]
        self._loop: Any = None  # the asyncio loop that started the process

    @property
    def pid(self) -> int | None:
        """The worker's process id once started."""
        return self._popen.pid if self._popen is not None else None

    async def astart(self) -> JobProcess:
        """Start the worker and hand it the target; returns once the process exists."""
        import socket
        from multiprocessing.connection import Connection

        if self._popen is not None:
            raise RuntimeError(f"job process {self.name} was already started")
        self._loop = asyncio.get_running_loop()
        self._outcome = self._loop.create_future()
        mine, theirs = socket.socketpair()
        self._conn = Connection(mine.detach())
        fut = submit_io(_spawn_python, "_job_child", [theirs.fileno()], (theirs.fileno(),))
        try:
            self._popen = await await_future(fut)
        except asyncio.CancelledError:  # the process may exist by now: it must not be left behind
            if not fut.cancelled() and fut.exception() is None:
                popen = fut.result()
                popen.kill()
                popen.wait()
            self._conn.close()
            raise
        finally:
            theirs.close()
        _live_jobs.add(self)
        self._loop.add_reader(self._conn.fileno(), self._readable)
        try:
            self._conn.send((self.target, self.args))
        except BaseException:  # an unpicklable argument: nothing may keep running
            self._kill()
            self._release()
            raise
        return self

    def send(self, kind: str, payload: Any = None) -> None:
        """Send one message to the child's ``channel.on_message``."""
        if self._conn is None or self._conn.closed:
            raise RuntimeError(f"job process {self.name} is not running")
        with contextlib.suppress(OSError):  # the child may just have exited; wait() reports it
            self._conn.send((kind, payload))

    def cancel(self) -> None:
        """Ask the child to cancel its target (it finishes the step in flight and cleans up)."""
        with contextlib.suppress(RuntimeError):
            self.send(_CANCEL)

    async def wait(self) -> Any:
        """The target's result (see the class docstring for errors and cancellation)."""
        if self._outcome is None:
            raise RuntimeError(f"job process {self.name} was not started")
        try:
            kind, payload = await asyncio.shield(self._outcome)
        except asyncio.CancelledError:
            await self._stop()
            raise
        await self._reap()
        if kind == _RESULT:
            return payload
        if kind == _CANCELLED:
            raise asyncio.CancelledError(f"job process {self.name} was cancelled")
        raise payload

    async def aclose(self) -> None:
        """Make sure the worker is gone: cancel it if it still runs, wait, kill after ``grace``."""
        if self._popen is None:
            return
        if not self._outcome.done():
            await self._stop()
        else:
            await self._reap()

    async def __aenter__(self) -> JobProcess:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # internals ---------------------------------------------------------------------------------
    def _readable(self) -> None:
        conn = self._conn
        try:
            while conn.poll():
                kind, payload = conn.recv()
                if kind in (_RESULT, _ERROR, _CANCELLED):
                    self._settle(kind, payload)
                elif self.on_message is not None:
                    self.on_message(kind, payload)
        except (EOFError, OSError):
            self._loop.remove_reader(conn.fileno())
            self._settle(_ERROR, None)

    def _settle(self, kind: str, payload: Any) -> None:
        if self._outcome.done():
            return
        if kind == _ERROR:
            payload = _remote_error(self, payload)
        self._outcome.set_result((kind, payload))

    async def _stop(self) -> None:
        """Cancel the child, give it ``grace`` seconds to clean up, then kill it; always reap."""
        self.cancel()
        try:
            await asyncio.wait_for(self._exited(), self.grace)
        except TimeoutError:
            pass
        except asyncio.CancelledError:  # cancelled again while waiting: no more patience
            self._kill()
            raise
        finally:
            if self._popen.returncode is None:
                self._kill()
            self._release()

    async def _exited(self) -> None:
        """Wait for the process to exit without blocking the loop (a pidfd where Linux has one)."""
        popen = self._popen
        if popen.poll() is not None:
            return
        try:
            fd = os.pidfd_open(popen.pid)
        except (AttributeError, OSError):  # no pidfd: poll, the exit is usually imminent
            delay = 0.001
            while popen.poll() is None:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.05)
            return
        done = self._loop.create_future()
        self._loop.add_reader(fd, lambda: done.done() or done.set_result(None))
        try:
            await done
        finally:
            self._loop.remove_reader(fd)
            os.close(fd)
        popen.wait()  # already exited: only reaps

    async def _reap(self) -> None:
        try:
            await self._exited()
        except asyncio.CancelledError:
            self._kill()
            raise
        finally:
            self._release()

    def _kill(self) -> None:
        """SIGKILL and reap: the process is gone within milliseconds."""
        if self._popen.poll() is None:
            self._popen.kill()
            self._popen.wait()

    def _release(self) -> None:
        if not self._conn.closed:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self._conn.fileno())
            self._conn.close()
        if self._popen.returncode is not None:
            _live_jobs.discard(self)
        if self._outcome is not None and not self._outcome.done():
            self._settle(_ERROR, None)


def _spawn_python(entry: str, args: list[int], fds: tuple[int, ...],
                  env: dict[str, str] | None = None) -> Any:
    """A fresh interpreter with this one's ``sys.path`` running ``aiotrain.runtime.<entry>(*args)``
    (integers), with ``fds`` passed open; no multiprocessing helper process is involved."""
    import json
    import subprocess
    import sys

    code = ("import sys, json; sys.path[:0] = json.loads(sys.argv[1]); "
            f"from aiotrain.runtime import {entry}; {entry}(*map(int, sys.argv[2:]))")
    path = [p or os.getcwd() for p in sys.path]
    return subprocess.Popen([sys.executable, "-c", code, json.dumps(path), *map(str, args)],
                            pass_fds=fds, stdin=subprocess.DEVNULL, close_fds=True, env=env)


def _remote_error(proc: JobProcess, payload: Any) -> BaseException:
    if payload is None:
        code = proc._popen.poll() if proc._popen is not None else None
        return JobProcessError(f"job process {proc.name} (pid {proc.pid}) ended without a result"
                               + (f" (exit status {code})" if code is not None else ""))
    exc: BaseException = payload[0]
    remote_tb: str = payload[1]
    exc.add_note(f"raised in job process {proc.name} (pid {proc.pid}):\n{remote_tb}")
    return exc


def _job_child(fd: int) -> None:
    """The worker process's main: receive the target, run it on a fresh loop, report the outcome."""
    import signal
    import sys
    from multiprocessing.connection import Connection

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which decides
    conn = Connection(fd)
    target, args = conn.recv()
    channel = JobChannel(conn)
    try:
        run(_serve_job(channel, conn, target, args))
    except asyncio.CancelledError:
        pass  # a cancel that came after the outcome was sent
    conn.close()
    # the parent reaps this process before it goes on: keep the interpreter's final garbage
    # collections from walking torch's objects (about a second of CPU per job)
    import gc

    gc.freeze()
    sys.exit(0)


async def _serve_job(channel: JobChannel, conn: Any, target: Callable[..., Awaitable[Any]],
                     args: tuple[Any, ...]) -> None:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None  # runs as the main task of run()

    def readable() -> None:
        try:
            while conn.poll():
                kind, payload = conn.recv()
                if kind == _CANCEL:
                    main.cancel()
                else:
                    channel._deliver(kind, payload)
        except (EOFError, OSError):  # the parent is gone: stop cleanly, nobody will read more
            loop.remove_reader(conn.fileno())
            main.cancel()

    loop.add_reader(conn.fileno(), readable)
    try:
        outcome: tuple[str, Any] = (_RESULT, await target(channel, *args))
    except asyncio.CancelledError:
        outcome = (_CANCELLED, None)
    except BaseException as exc:  # reported to the parent, which re-raises it
        outcome = (_ERROR, _portable(exc))
    finally:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(conn.fileno())
    try:
        channel.send(*outcome)
    except Exception as exc:  # an unpicklable result: say so rather than vanish
        with contextlib.suppress(OSError):
            channel.send(_ERROR, _portable(exc))


def _portable(exc: BaseException) -> tuple[BaseException, str]:
    """A job's error as it crosses to the parent, with the job's traceback text."""
    import traceback  # in the job process only

    text = "".join(traceback.format_exception(exc))
    return portable_error(exc, fallback=JobProcessError), text


def _kill_live_jobs() -> None:
    """At interpreter exit, no job worker is left running (their own EOF watch is the backup)."""
    for proc in list(_live_jobs):
        proc._kill()


atexit.register(_kill_live_jobs)
