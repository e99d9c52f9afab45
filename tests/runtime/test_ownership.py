"""Only aiotrain/runtime/ creates threads, processes and executors (docs/architecture.md).

The check reads every module of the package outside runtime/ and refuses any reference to
something that starts a thread or a process: ``threading.Thread``/``Timer``, ``_thread``,
executors, ``multiprocessing``, ``subprocess``, ``os.fork``/``spawn*``/``exec*``/``system``/
``popen``/``posix_spawn``, ``pty``, asyncio's subprocesses, ``run_in_executor`` and
``asyncio.to_thread``. Imports are resolved through their aliases, so ``from threading import
Thread as T`` is caught as well as ``threading.Thread``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "aiotrain"
OWNER = PACKAGE / "runtime"

FORBIDDEN_MODULES = {"multiprocessing", "subprocess", "_thread", "pty", "concurrent.futures.process",
                     "concurrent.futures.thread"}
FORBIDDEN_NAMES = {
    "threading.Thread", "threading.Timer", "concurrent.futures.ThreadPoolExecutor",
    "concurrent.futures.ProcessPoolExecutor", "asyncio.to_thread",
    "asyncio.create_subprocess_exec", "asyncio.create_subprocess_shell",
    *(f"os.{name}" for name in ("fork", "forkpty", "system", "popen", "posix_spawn",
                                 "posix_spawnp", "spawnl", "spawnle", "spawnlp", "spawnlpe",
                                 "spawnv", "spawnve", "spawnvp", "spawnvpe", "execl", "execle",
                                 "execlp", "execlpe", "execv", "execve", "execvp", "execvpe")),
}
FORBIDDEN_METHODS = {"run_in_executor", "subprocess_exec", "subprocess_shell"}


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """``a.b.c`` for a Name/Attribute chain, its head resolved through the imports."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    head = aliases.get(node.id, node.id)
    return ".".join([head, *reversed(parts)])


def violations(source: str) -> list[str]:
    """What in ``source`` starts a thread or a process (``line: name``)."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
                if _forbidden_module(a.name):
                    found.append(f"{node.lineno}: import {a.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if _forbidden_module(node.module):
                found.append(f"{node.lineno}: from {node.module} import ...")
            for a in node.names:
                full = f"{node.module}.{a.name}"
                aliases[a.asname or a.name] = full
                if full in FORBIDDEN_NAMES or _forbidden_module(full):
                    found.append(f"{node.lineno}: from {node.module} import {a.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute | ast.Name) and not isinstance(getattr(node, "ctx", None), ast.Store):
            name = _dotted(node, aliases)
            if name in FORBIDDEN_NAMES:
                found.append(f"{node.lineno}: {name}")
            elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_METHODS:
                found.append(f"{node.lineno}: .{node.attr}")
    return sorted(set(found))


def _forbidden_module(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in FORBIDDEN_MODULES)


def test_only_the_runtime_creates_threads_processes_or_executors():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if OWNER in path.parents:
            continue
        found = violations(path.read_text(encoding="utf-8"))
        if found:
            offenders[str(path.relative_to(PACKAGE))] = found
    assert not offenders, f"only aiotrain/runtime/ may start threads or processes: {offenders}"


def test_the_runtime_is_where_they_are_created():
    """The scan is not vacuous: the runtime's own modules are caught by it."""
    found = {p.name: violations(p.read_text(encoding="utf-8")) for p in OWNER.glob("*.py")}
    assert found["compute_thread.py"] and found["io_threads.py"] and found["processes.py"]


def test_every_way_of_starting_one_is_caught():
    snippets = {
        "import threading\nthreading.Thread(target=f).start()": "threading.Thread",
        "from threading import Thread as T\nT(target=f)": "threading.Thread",
        "import threading as th\nth.Timer(1, f)": "threading.Timer",
        "import concurrent.futures as cf\ncf.ThreadPoolExecutor()": "ThreadPoolExecutor",
        "from concurrent.futures import ProcessPoolExecutor": "ProcessPoolExecutor",
        "import multiprocessing": "multiprocessing",
        "from multiprocessing import Process": "multiprocessing",
        "import subprocess": "subprocess",
        "import os\nos.fork()": "os.fork",
        "from os import posix_spawn": "posix_spawn",
        "import os\nos.execv('x', [])": "os.execv",
        "import asyncio\nasyncio.to_thread(f)": "asyncio.to_thread",
        "loop.run_in_executor(None, f)": "run_in_executor",
        "import _thread\n_thread.start_new_thread(f, ())": "_thread",
    }
    for source, what in snippets.items():
        assert any(what in v for v in violations(source)), (source, violations(source))
    assert violations("import threading\nlock = threading.Lock()\nthreading.get_ident()") == []


def test_importing_the_runtime_starts_and_registers_nothing():
    """No thread, exit handler, at-fork hook or frozen heap until first use."""
    import subprocess
    import sys

    modules = sorted(p.stem for p in OWNER.glob("*.py") if p.stem != "__init__")
    code = f"""
import atexit, gc, os, threading
import asyncio, concurrent.futures, ctypes, logging, mmap, msgspec, selectors, socket, subprocess
n = atexit._ncallbacks()  # the standard library's own (logging's) are not the runtime's
hooks = []
real = os.register_at_fork
os.register_at_fork = lambda **kw: hooks.append(kw)
import importlib
for name in {modules!r}:
    importlib.import_module("aiotrain.runtime." + name)
from aiotrain.runtime import *
os.register_at_fork = real
assert atexit._ncallbacks() == n, "an exit handler was registered at import"
assert not hooks, "an at-fork hook was registered at import"
assert threading.active_count() == 1, threading.enumerate()
assert gc.get_freeze_count() == 0
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=PACKAGE.parent)
    assert out.stdout.strip() == "ok", out.stderr
