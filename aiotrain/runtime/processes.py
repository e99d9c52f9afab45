"""Starting processes, one way: every child of the runtime is a ``ChildProcess``.

A child is either forked from this process (``fork``: a data worker that inherits its dataset)
or a fresh interpreter (``spawn``: a module-level entry point given integer arguments and the
file descriptors it needs, with this process's ``sys.path``). Either way it begins with
``child_prologue`` (Ctrl-C is the parent's; nothing of the parent's event loop is kept) and the
parent holds a ``ChildProcess``: its pid, its exit status, ``kill``, and ``await exited()``, which
waits on a pidfd so the loop never blocks on a child.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol

from .waiting import wait_readable

__all__ = ["Child", "ChildProcess", "child_prologue", "fork", "fork_turn", "parent_end", "spawn"]


# a fork's pause is its own; after it, the loop runs its due timers before the next fork
_FORK_GAP_S = 0.002
_forks = [0]  # forks made by this process (``fork`` counts them)
_fork_turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = \
    weakref.WeakKeyDictionary()


class Child(Protocol):
    """What a parent holds of a child process, however it was started (``ChildProcess`` here,
    ``job_server.ServedChild`` for a job forked by the job server)."""

    pid: int
    returncode: int | None  # None while it runs (or when its exit status could not be learnt)

    def has_ended(self) -> bool: ...

    def kill(self) -> None: ...

    def join(self, timeout: float | None = None) -> object: ...

    async def exited(self) -> object: ...


class ChildProcess:
    """A process this runtime started and reaps: ``pid``, ``returncode`` once it has ended
    (negative: killed by that signal, as ``Popen.returncode``)."""

    def __init__(self, pid: int, popen: subprocess.Popen[bytes] | None = None) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._popen = popen  # a spawned child's Popen, told its exit status so it never reaps

    def poll(self) -> int | None:
        """The exit status if the process has ended (and reap it), else None."""
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else: 0, as Popen says then
                pid, status = self.pid, 0
            if pid:
                self._ended(os.waitstatus_to_exitcode(status))
        return self.returncode

    def has_ended(self) -> bool:
        return self.poll() is not None

    def kill(self) -> None:
        """SIGKILL, unless it has already ended."""
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def join(self, timeout: float | None = None) -> int | None:
        """Block until it ends (at most ``timeout`` seconds); the exit status or None. Only for
        synchronous callers (finalizers, a child that is already exiting)."""
        if timeout is None:
            if self.returncode is None:
                with contextlib.suppress(ChildProcessError):
                    self._ended(os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1]))
            return self.returncode
        deadline = time.monotonic() + timeout
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        return self.returncode

    async def exited(self) -> int | None:
        """Wait for the process to end without blocking the loop (a pidfd where Linux has one,
        else polling: the exit is usually imminent); returns the exit status."""
        if self.poll() is not None:
            return self.returncode
        try:
            fd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            delay = 0.001
            while self.poll() is None:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.05)
            return self.returncode
        try:
            await wait_readable(fd)
        finally:
            os.close(fd)
        return self.join()  # already ended: only reaps

    def _ended(self, code: int) -> None:
        self.returncode = code
        if self._popen is not None:
            self._popen.returncode = code


_parent_ends: weakref.WeakSet[socket.socket] = weakref.WeakSet()
_hook_lock = threading.Lock()
_hooked = False


def parent_end(sock: socket.socket) -> socket.socket:
    """Register ``sock`` as the parent's end of a child's wire: any process forked from here
    later (a data worker, a user's own fork) closes it at once, so the child on the other end
    still reads EOF when this process dies. Returns ``sock``."""
    global _hooked
    with _hook_lock:
        if not _hooked:
            os.register_at_fork(after_in_child=_close_parent_ends)
            _hooked = True
        _parent_ends.add(sock)
    return sock


def _close_parent_ends() -> None:
    for sock in list(_parent_ends):
        with contextlib.suppress(OSError):
            sock.close()


def child_prologue() -> None:
    """What every child does first: leave Ctrl-C to the parent (which decides when work
    stops), and drop what a fork kept of the parent's event loop (its wakeup fd, the running
    loop of the forking thread)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)
    asyncio.events._set_running_loop(None)


def fork(main: Callable[[], int | None], *, exit_handlers: bool = False) -> ChildProcess:
    """Fork this process; the child runs ``child_prologue`` and ``main()``, then exits with the
    status ``main`` returns (0 for None; 1 with the traceback on stderr if it raised). The
    parent's exit handlers run in the child only with ``exit_handlers`` (a job forked from the
    job server, whose handlers are those a fresh interpreter with its imports would run); a data
    worker must not run its parent's (they would finish the parent's tracked runs)."""
    pid = os.fork()
    if pid:
        _forks[0] += 1
        return ChildProcess(pid)
    code = 1
    try:
        child_prologue()
        code = main() or 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        if exit_handlers:
            with contextlib.suppress(BaseException):
                atexit._run_exitfuncs()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


@contextlib.asynccontextmanager
async def fork_turn() -> AsyncIterator[None]:
    """Fork from the loop in turns: one fork at a time on this loop, then a pause of
    ``_FORK_GAP_S`` in which its timers run. ``os.fork`` holds the GIL while the kernel copies
    this process's page tables (5-15 ms with torch loaded), so two pools starting at once (two
    jobs in a service) would otherwise stall the loop for all their forks in one go.

        async with fork_turn():
            child = fork(main)
    """
    loop = asyncio.get_running_loop()
    turn = _fork_turns.setdefault(loop, asyncio.Lock())
    async with turn:
        before = _forks[0]
        yield
        if _forks[0] != before:  # a turn that did not fork needs no pause
            await asyncio.sleep(_FORK_GAP_S)


def spawn(entry: str, args: Sequence[int], fds: Sequence[int] = (),
          env: dict[str, str] | None = None) -> ChildProcess:
    """A fresh interpreter running ``entry`` (``"package.module:function"``) with integer
    ``args``, this process's ``sys.path`` and ``fds`` passed open; stdin is /dev/null. No
    multiprocessing helper process is involved. Blocks for the exec: call it on a thread."""
    module, func = entry.split(":")
    code = ("import sys, json; sys.path[:0] = json.loads(sys.argv[1]); "
            f"from {module} import {func}; {func}(*map(int, sys.argv[2:]))")
    path = [p or os.getcwd() for p in sys.path]
    popen = subprocess.Popen([sys.executable, "-c", code, json.dumps(path), *map(str, args)],
                             pass_fds=tuple(fds), stdin=subprocess.DEVNULL, close_fds=True, env=env)
    return ChildProcess(popen.pid, popen)


