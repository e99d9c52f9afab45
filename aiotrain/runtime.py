"""The one module that owns threads and processes: the event-loop runner, the compute worker, the
I/O executor and job worker processes.

Everything else in aiotrain asks this module for a thread or a process; nobody else creates one. That keeps
the rules checkable: a ComputeWorker lives for one ``Engine.run`` (started when it begins,
joined when it ends), the I/O executor is a small shared pool for disk work, and the only
threads that may outlive their caller are the ones ``spawn_daemon`` hands out for work that is
deliberately abandoned (a validation check that hangs).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures as cf
import contextlib
import itertools
import os
import queue
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = [
    "ComputeWorker",
    "JobChannel",
    "JobProcess",
    "JobProcessError",
    "await_future",
    "io_executor",
    "run",
    "shutdown_io",
    "spawn_daemon",
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
        fut = submit_io(_spawn, theirs.fileno())
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


def _spawn(fd: int) -> Any:
    import json
    import subprocess
    import sys

    code = ("import sys, json; sys.path[:0] = json.loads(sys.argv[2]); "
            "from aiotrain.runtime import _job_child; _job_child(int(sys.argv[1]))")
    path = [p or os.getcwd() for p in sys.path]
    return subprocess.Popen([sys.executable, "-c", code, str(fd), json.dumps(path)],
                            pass_fds=(fd,), stdin=subprocess.DEVNULL, close_fds=True)


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
    import pickle
    import traceback

    text = "".join(traceback.format_exception(exc))
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        exc = JobProcessError(f"{type(exc).__name__}: {exc}")
    return exc, text


def _kill_live_jobs() -> None:
    """At interpreter exit, no job worker is left running (their own EOF watch is the backup)."""
    for proc in list(_live_jobs):
        proc._kill()


atexit.register(_kill_live_jobs)
