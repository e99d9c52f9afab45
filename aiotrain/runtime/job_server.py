"""The warm job server: job processes forked from a pre-imported, single-threaded parent.

A job process spawned as a fresh interpreter pays for importing torch, aiotrain and its task
(seconds of CPU) before its first step. ``JobServer`` pays it once: a spawned server process
imports them, and every job process is forked from it. The server never runs a loop, a thread
or a job of its own, so a fork inherits no thread, no held lock and no event loop (forking the
multi-threaded parent directly would). Each job starts clean: its own process group, the
parent's working directory, ``sys.path``, environment, stdout and stderr (stdin is /dev/null),
fresh RNG seeds (torch, numpy, ``random``) as a fresh interpreter has, and the interpreter's
exit handlers at its end.

What the server imports: numpy, torch and the job machinery at start, each job's target module,
then whatever a finished job imported (``Imported``, sent with its outcome), so the next job finds
its task and its lazy imports loaded. An import that would make forking unsafe or inexact (it
starts a thread, initialises CUDA or seeds torch's RNG) is refused: that server forks no more
jobs, a new one starts without the module, and each job imports it itself as a fresh
interpreter would. One limit: a module that seeds numpy's or Python's global RNG when imported
is not detected (a job forked after it reseeds them from the OS, a fresh interpreter would keep
that seed); seed in the job, as aiotrain's ``seed`` does, not at import.

Lifetime: one server per event loop (and working directory, ``sys.path`` and environment, which
the server's imports depend on), started with the loop's first job process and closed with the
loop (``asyncio.run`` and ``aiotrain.run`` cancel its warden task on the way out) or by
``close_job_server()``. Its jobs die with it (``PR_SET_PDEATHSIG``); if the parent dies, the
server reads EOF, waits for its jobs (each reads EOF too and cancels itself cleanly), then exits.
Set ``AIOTRAIN_JOB_START=spawn`` to start every job as a fresh interpreter instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import hashlib
import importlib
import itertools
import os
import selectors
import signal
import socket
import sys
import threading
import weakref
from collections.abc import Sequence
from typing import Any

from .messages import Exited, Fork, Forked, FromServer, Preload, Preloaded, ToServer
from .processes import ChildProcess, fork, parent_end, spawn
from .wire import Wire, WireError

__all__ = ["JobServer", "JobServerUnavailable", "ServedChild", "close_job_server",
           "discard_prestarted_job_server", "job_server", "job_server_pids", "prestart_job_server",
           "start_job_server"]

BASE_PRELOAD = ["numpy", "torch", "aiotrain.runtime.jobs"]
PARENT_GONE_GRACE_S = 120.0  # how long an orphaned server waits for its jobs before killing them
CLOSE_GRACE_S = 5.0  # how long a closing server may take to exit before it is killed
_PR_SET_PDEATHSIG = 1


class JobServerUnavailable(RuntimeError):
    """The job server could not fork this job (it died, or cannot fork safely any more)."""


# the parent's side -------------------------------------------------------------------------------
class ServedChild:
    """A job process forked by a ``JobServer``: the parent holds its pidfd (kill it, wait on it)
    and learns its exit status from the server, which reaps it."""

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid, self._pidfd = pid, pidfd
        self.returncode: int | None = None  # None until the server reports it (or if it died first)
        self._ended = False
        self._reported: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def has_ended(self) -> bool:
        if not self._ended and _readable_now(self._pidfd):
            self._ended = True
        return self._ended

    def kill(self) -> None:
        if not self.has_ended():
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    def join(self, timeout: float | None = None) -> None:
        if not self._ended and _readable_now(self._pidfd, timeout):
            self._ended = True

    async def exited(self) -> None:
        if not self.has_ended():
            from .waiting import wait_readable

            await wait_readable(self._pidfd)
            self._ended = True
        await asyncio.shield(self._reported)

    def _report(self, code: int | None) -> None:
        """The server reaped it (``code``), or is gone (None: the status is lost)."""
        self.returncode = code
        self._ended = True
        if not self._reported.done():
            self._reported.set_result(None)
        with contextlib.suppress(OSError):
            os.close(self._pidfd)
        self._pidfd = -1


def _kill_unwanted(fut: asyncio.Future[ServedChild]) -> None:
    if not fut.cancelled() and fut.exception() is None:
        fut.result().kill()


def _readable_now(fd: int, timeout: float | None = 0) -> bool:
    if fd < 0:
        return True
    sel = selectors.DefaultSelector()
    try:
        sel.register(fd, selectors.EVENT_READ)
        return bool(sel.select(timeout))
    finally:
        sel.close()


class JobServer:
    """The parent's handle on one server process (see the module docstring)."""

    def __init__(self, key: tuple[Any, ...]) -> None:
        self.key = key
        self._loop: asyncio.AbstractEventLoop | None = None  # set by attach()
        self._proc: ChildProcess | None = None
        self._wire: Wire[Preloaded | Forked | Exited] | None = None
        self._ids = itertools.count(1)
        self._forks: dict[int, asyncio.Future[ServedChild]] = {}
        self._children: dict[int, ServedChild] = {}
        self._asked: set[str] = set(BASE_PRELOAD) | _refused  # sent for preloading, or refused
        self.refused: set[str] = set()
        self.usable = True
        self._warden: asyncio.Task[None] | None = None
        self._attached = asyncio.Event()  # set once it serves a loop (or failed to start)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def astart(self) -> None:
        """Spawn the server (on an I/O thread) and attach it to the running loop."""
        from .io_threads import to_io

        try:
            await to_io(self.spawn)
            self.attach()
        finally:
            if self._loop is None:
                self.usable = False
                self._attached.set()

    def spawn(self) -> None:
        """Start the server process; it begins importing at once (forks queue behind the
        imports). Blocks for the exec: a loop calls ``astart``."""
        mine, theirs = Wire.socketpair()
        self._wire = Wire(parent_end(mine), FromServer)
        try:
            self._proc = spawn("aiotrain.runtime.job_server:server_main", [theirs.fileno()],
                               (theirs.fileno(),))
        except BaseException:
            self._wire.close()
            raise
        finally:
            theirs.close()
        self.preload(list(_learned))  # what earlier jobs of this process imported

    def attach(self) -> None:
        """Serve the running loop: read the server's wire there, close the server with it."""
        assert self._wire is not None
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._wire.fileno(), self._readable)
        self._warden = self._loop.create_task(self._watch(), name="aiotrain-job-server-warden")
        self._attached.set()

    def preload(self, modules: list[str], path: Sequence[str] = ()) -> None:
        """Ask the server to import ``modules`` (those not asked for before), with ``path``
        added to its ``sys.path`` (a job's, which found them)."""
        new = [m for m in modules if m not in self._asked and not m.startswith("__")]
        if new and self.usable and self._wire is not None:
            self._asked.update(new)
            _learned.update(dict.fromkeys(new))
            self._send(Preload(new, list(path)))

    async def afork(self, job_end: socket.socket) -> ServedChild:
        """Fork one job process that gets ``job_end`` (its end of the job wire)."""
        if not self.usable or self._wire is None or self._loop is None:
            raise JobServerUnavailable("the job server is not running")
        fork_id = next(self._ids)
        fut: asyncio.Future[ServedChild] = self._loop.create_future()
        self._forks[fork_id] = fut
        msg = Fork(fork_id, os.getcwd(), [p or os.getcwd() for p in sys.path], dict(os.environ))
        self._send(msg, [job_end.fileno(), 1, 2])
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:  # the fork may still happen: its child must not live on
            fut.add_done_callback(_kill_unwanted)
            raise

    def _send(self, msg: Preload | Fork, fds: list[int] | None = None) -> None:
        assert self._wire is not None
        try:
            self._wire.send(msg, fds or [])
        except OSError as exc:
            self._gone(f"the job server could not be reached: {exc}")

    def _readable(self) -> None:
        assert self._wire is not None
        try:
            while (got := self._wire.recv(block=False)) is not None:
                self._on_message(*got)
        except (EOFError, OSError, WireError) as exc:
            self._gone(f"the job server ended ({exc})")

    def _on_message(self, msg: Preloaded | Forked | Exited, fds: list[int]) -> None:
        if isinstance(msg, Preloaded):
            self.refused.update(msg.refused)
            _refused.update(msg.refused)
            for name in msg.refused:
                _learned.pop(name, None)
            if not msg.ready:
                self.usable = False  # it exits once its jobs are done; the next job gets a new one
        elif isinstance(msg, Forked):
            fut = self._forks.pop(msg.id, None)
            if msg.error or not fds:
                for fd in fds:
                    os.close(fd)
                if fut is not None and not fut.done():
                    fut.set_exception(JobServerUnavailable(msg.error or "no pidfd came with the fork"))
                return
            child = ServedChild(msg.pid, fds[0])
            self._children[msg.pid] = child
            if fut is not None and not fut.done():
                fut.set_result(child)
            else:
                child.kill()  # nobody waits for it any more
        elif isinstance(msg, Exited):
            ended = self._children.pop(msg.pid, None)
            if ended is not None:
                ended._report(msg.code)

    def _gone(self, why: str) -> None:
        """The server died or its wire broke: fail what waits on it, forget its children."""
        self.usable = False
        if self._wire is not None and not self._wire.closed:
            if self._loop is not None:
                with contextlib.suppress(ValueError, OSError):
                    self._loop.remove_reader(self._wire.fileno())
            self._wire.close()
        for fut in self._forks.values():
            if not fut.done():
                fut.set_exception(JobServerUnavailable(why))
        self._forks.clear()
        for child in self._children.values():
            child._report(None)
        self._children.clear()
        if self._proc is not None:
            self._proc.poll()

    def kill(self) -> None:
        """Stop the server at once (it kills its jobs), from sync code; reaps it."""
        self._gone("the job server was killed")
        if self._proc is not None:
            self._proc.kill()
            self._proc.join()

    async def _watch(self) -> None:
        """Live as long as the loop: cancelled when the loop shuts down, it closes the server."""
        try:
            await asyncio.Event().wait()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the wire (the server exits once its jobs have), kill it after a grace, reap it."""
        self._gone("the job server was closed")
        if self._loop is not None and _registry.get(self._loop) is self:
            del _registry[self._loop]
        proc = self._proc
        if proc is None:
            return
        try:
            await asyncio.wait_for(proc.exited(), CLOSE_GRACE_S)
        except (TimeoutError, asyncio.CancelledError):
            proc.kill()
            proc.join()
        if self._warden is not None and self._warden is not asyncio.current_task():
            self._warden.cancel()


_registry: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, JobServer] = weakref.WeakKeyDictionary()
_learned: dict[str, None] = {}  # modules earlier jobs imported (in order): the next server's preload
_refused: set[str] = set()  # modules a server would not keep (see ``_Server.preload``)
_prestarted: JobServer | None = None  # spawned by prestart_job_server, not yet adopted by a loop


def enabled() -> bool:
    """Job processes fork from a server unless ``AIOTRAIN_JOB_START=spawn`` (or no pidfds)."""
    return (os.environ.get("AIOTRAIN_JOB_START", "fork-server") != "spawn"
            and hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal"))


async def job_server() -> JobServer:
    """The running loop's server for this working directory, ``sys.path`` and environment;
    a new one (or the one ``prestart_job_server`` spawned) when there is none or those changed."""
    global _prestarted
    loop = asyncio.get_running_loop()
    key = _key()
    server = _registry.get(loop)
    if server is not None and server.usable and server.key == key:
        await server._attached.wait()  # another job may be starting it right now
        return server
    if server is not None:
        loop.create_task(server.aclose())
    early, _prestarted = _prestarted, None
    if early is not None and early.usable and early.key == key:
        _registry[loop] = early
        early.attach()
        return early
    if early is not None:
        early.kill()
    server = _registry[loop] = JobServer(key)
    try:
        await server.astart()
    except BaseException:
        _registry.pop(loop, None)
        raise
    return server


def prestart_job_server(preload: Sequence[str] = ()) -> None:
    """Spawn the job server now, before any event loop runs, and have it import ``preload``:
    a command-line tool calls it first thing, so that the server's imports overlap its own; the
    first loop that starts a job process adopts it (with the same working directory,
    ``sys.path`` and environment; else it is replaced); ``discard_prestarted_job_server`` stops
    it if none does. No-op with ``AIOTRAIN_JOB_START=spawn``."""
    global _prestarted
    if not enabled():
        return
    if _prestarted is None:
        _prestarted = JobServer(_key())
        _prestarted.spawn()
    _prestarted.preload(list(preload))


def discard_prestarted_job_server() -> None:
    """Stop a server ``prestart_job_server`` spawned that no loop adopted (the tool failed
    before its first job); no-op otherwise. Interpreter exit stops it too (it reads EOF)."""
    global _prestarted
    early, _prestarted = _prestarted, None
    if early is not None:
        early.kill()


async def start_job_server(preload: Sequence[str] = ()) -> None:
    """Start the running loop's job server now and have it import ``preload`` (module names),
    so that the first job process starts warm too; returns at once, the imports go on in the
    server. A service calls it when it starts. No-op with ``AIOTRAIN_JOB_START=spawn``."""
    if enabled():
        server = await job_server()
        server.preload(list(preload))


def job_server_pids() -> list[int]:
    """The process ids of the job servers running now (one per event loop at most, and one
    spawned early and not yet adopted)."""
    servers = [*_registry.values(), *([_prestarted] if _prestarted is not None else [])]
    return [s.pid for s in servers if s.pid is not None]


async def close_job_server() -> None:
    """Close the running loop's job server now (it also closes with its loop)."""
    server = _registry.get(asyncio.get_running_loop())
    if server is not None:
        await server.aclose()


# Variables an import writes into os.environ itself: torch._dynamo's import sets inductor's
# default cache folder. A command-line tool prestarts its server and then does the same imports,
# which the server does too; the variable they add says nothing about what imports do, and
# counting it would replace the prestarted server (its imports, seconds of CPU, thrown away).
_SET_BY_IMPORTS = frozenset({"TORCHINDUCTOR_CACHE_DIR"})


def _key() -> tuple[str, tuple[str, ...], str]:
    """What a server's imports depend on: working directory, ``sys.path``, environment."""
    env = sorted(kv for kv in os.environ.items() if kv[0] not in _SET_BY_IMPORTS)
    return os.getcwd(), tuple(sys.path), hashlib.sha256(repr(env).encode()).hexdigest()


# the server's side ---------------------------------------------------------------------------------
class _Server:
    """The server process: import, fork, reap; single-threaded, no event loop."""

    def __init__(self, wire: Wire[Preload | Fork]) -> None:
        self.wire = wire
        self.sel = selectors.DefaultSelector()
        self.sel.register(wire.sock, selectors.EVENT_READ)
        self.children: dict[int, tuple[ChildProcess, int]] = {}  # pidfd -> (child, pidfd)
        self.threads = 1  # native threads after the base preload (measured by ``serve``)
        self.safe = True
        self.parent_alive = True

    def serve(self) -> None:
        for name in BASE_PRELOAD:  # known not to touch an RNG, start a thread or CUDA
            importlib.import_module(name)
        # numpy's OpenBLAS keeps worker threads from import on; it stops them around a fork
        # (pthread_atfork), so they are the baseline: any thread beyond them makes forking unsafe
        self.threads = _native_threads()
        gc.freeze()
        while self.parent_alive or self.children:
            timeout = None if self.parent_alive else PARENT_GONE_GRACE_S
            events = self.sel.select(timeout)
            if not events:  # orphaned and the jobs did not end in time
                for child, _ in self.children.values():
                    child.kill()
            for key, _ in events:
                if key.fileobj is self.wire.sock:
                    self.on_message()
                else:
                    self.reap(key.fd)

    def on_message(self) -> None:
        try:
            got = self.wire.recv()
        except (EOFError, OSError, WireError):  # the parent is gone: wait for the jobs, then exit
            self.parent_alive = False
            self.sel.unregister(self.wire.sock)
            return
        assert got is not None  # a blocking recv
        msg, fds = got
        if isinstance(msg, Preload):
            sys.path.extend(p for p in msg.path if p not in sys.path)
            self.preload(msg.modules)
        else:
            self.on_fork(msg, fds)

    def preload(self, modules: list[str]) -> None:
        refused = []
        for name in modules:
            if name in sys.modules or not self.safe:
                continue
            if not _imports_cleanly(name) or _native_threads() > self.threads:
                refused.append(name)  # forking is unsafe or inexact from now on
                self.safe = False
            elif name not in sys.modules:
                refused.append(name)  # it did not import: the job will say why, if it needs it
        gc.freeze()  # the jobs share these objects copy-on-write, and never collect them
        self.send(Preloaded(refused, self.safe))

    def on_fork(self, msg: Fork, fds: list[int]) -> None:
        if not self.safe or len(fds) != 3:
            for fd in fds:
                os.close(fd)
            self.send(Forked(msg.id, 0, "the job server cannot fork safely any more"
                             if not self.safe else "a fork needs the job's wire, stdout and stderr"))
            return
        server_pid = os.getpid()
        try:
            child = fork(lambda: _job_child(self, msg, fds, server_pid), exit_handlers=True)
        finally:
            for fd in fds:
                os.close(fd)
        pidfd = os.pidfd_open(child.pid)
        self.children[pidfd] = (child, pidfd)
        self.sel.register(pidfd, selectors.EVENT_READ)
        self.send(Forked(msg.id, child.pid), [pidfd])

    def reap(self, pidfd: int) -> None:
        child, _ = self.children.pop(pidfd)
        self.sel.unregister(pidfd)
        os.close(pidfd)
        code = child.join()
        self.send(Exited(child.pid, code if code is not None else 0))

    def send(self, msg: Preloaded | Forked | Exited, fds: list[int] | None = None) -> None:
        if self.parent_alive:
            with contextlib.suppress(OSError):
                self.wire.send(msg, fds or [])

    def close_in_child(self) -> None:
        """In a forked job: drop everything of the server's (its wire, its children's pidfds)."""
        for pidfd in list(self.children):
            os.close(pidfd)
        self.children.clear()
        self.sel.close()
        self.wire.close()


def server_main(fd: int) -> None:
    """The server process's main (spawned): serve until the parent and all its jobs are gone."""
    from .processes import child_prologue

    child_prologue()
    server = _Server(Wire(socket.socket(fileno=fd), ToServer))
    server.serve()


def _imports_cleanly(name: str) -> bool:
    """Import ``name``; True unless the import failed or left the server unfit to fork from.

    Unfit: it started a thread, initialised CUDA, or seeded torch's RNG (a fresh interpreter
    that imports it is seeded from then on, while a forked job is reseeded from the OS). What
    an import did cannot be undone (native registrations stay), so an unfit server forks no
    more jobs and a new one starts without the module; a failed import is simply not kept.
    Draws from an unseeded RNG (``rich`` takes a random id when imported) are harmless: every
    job reseeds."""
    import torch

    seed = torch.initial_seed()
    try:
        importlib.import_module(name)
    except BaseException:  # noqa: BLE001 - a module that does not import is simply not preloaded
        return True
    return torch.initial_seed() == seed and threading.active_count() == 1 and not _cuda_initialised()


def _native_threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # no procfs: count Python's own
        return threading.active_count()


def _cuda_initialised() -> bool:
    torch = sys.modules.get("torch")
    return bool(torch is not None and hasattr(torch, "cuda") and torch.cuda.is_initialized())


def _job_child(server: _Server, msg: Fork, fds: list[int], server_pid: int) -> int:
    """In the forked job process: become a clean job process, then run the job."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != server_pid:  # the server died before the line above: do not live on
        os._exit(1)
    os.setpgid(0, 0)
    job_fd, out, err = fds
    for fd, target in ((out, 1), (err, 2)):
        os.dup2(fd, target)
        os.close(fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    server.close_in_child()
    os.chdir(msg.cwd)
    sys.path[:] = msg.path
    os.environ.clear()
    os.environ.update(msg.env)
    _fresh_rng()
    from .jobs import run_job_process

    return run_job_process(job_fd, served=True)


def _fresh_rng() -> None:
    """Seed the global RNGs from the OS, as a fresh interpreter does (``random`` reseeds itself
    after a fork)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.seed()
    np_random = sys.modules.get("numpy.random")
    if np_random is not None:
        np_random.seed()

