"""runtime.jobs: a JobProcess's round trip, errors, cancellation, kill, and its parent's death."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import job_targets
import psutil
import pytest

from aiotrain import runtime
from aiotrain.runtime import job_server, jobs

_baseline: set[int] = set()


@pytest.fixture(autouse=True)
def _children_before():
    """What this test checks is the processes it leaves, not those of earlier tests."""
    _baseline.clear()
    _baseline.update(p.pid for p in psutil.Process().children(recursive=True))


def _children():
    """Processes left behind, but the loop's warm job server (tests/runtime/test_job_server.py
    checks its own lifetime); its jobs, its children, do count."""
    servers = set(job_server.job_server_pids())
    return [p for p in psutil.Process().children(recursive=True)
            if p.status() != psutil.STATUS_ZOMBIE and p.pid not in _baseline | servers]


async def _started(proc_messages):
    while not proc_messages:  # noqa: ASYNC110 - the message callback is sync
        await asyncio.sleep(0.01)


async def test_job_process_round_trip_messages_and_result():
    seen = []
    proc = runtime.JobProcess(job_targets.echo, "hi", on_message=lambda k, p: seen.append((k, p)))
    async with proc:
        await _started(seen)
        proc.send("ping", [1, 2, 3])
        result = await proc.wait()
    assert seen == [("hello", {"greeting": "hi", "pid": proc.pid})]
    assert result == {"kind": "ping", "payload": [1, 2, 3], "pid": proc.pid} and proc.pid != os.getpid()
    assert proc.returncode == 0 and not _children() and not jobs._live_jobs


async def test_job_process_reraises_the_child_exception():
    async with runtime.JobProcess(job_targets.failing) as proc:
        with pytest.raises(KeyError, match="missing in the child") as info:
            await proc.wait()
    assert any(note.startswith(f"raised in job process {proc.name} (pid {proc.pid})")
               for note in info.value.__notes__)
    assert not _children()


async def test_an_unpicklable_result_is_an_error_that_names_it():
    async with runtime.JobProcess(job_targets.unpicklable) as proc:
        with pytest.raises(Exception, match="pickle") as info:
            await proc.wait()
    assert any("raised in job process" in note for note in info.value.__notes__)
    assert proc.returncode == 0 and not _children()


async def test_an_unpicklable_argument_raises_and_leaves_nothing():
    proc = runtime.JobProcess(job_targets.echo, lambda: None)
    with pytest.raises(Exception, match="pickle|lambda"):
        await proc.astart()
    assert not _children() and not jobs._live_jobs


async def test_cancelling_the_waiter_cancels_the_child_which_cleans_up(tmp_path):
    marker = tmp_path / "marker"
    seen = []
    proc = runtime.JobProcess(job_targets.cleanup, str(marker), on_message=lambda k, p: seen.append(k))
    await proc.astart()
    waiter = asyncio.create_task(proc.wait())
    await _started(seen)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert marker.read_text() == "cleaned up"  # the child's own cancellation path ran
    assert proc.returncode == 0 and not _children() and not jobs._live_jobs


async def test_a_child_that_ignores_cancel_is_killed_after_grace():
    seen = []
    proc = runtime.JobProcess(job_targets.stubborn, grace=0.5, on_message=lambda k, p: seen.append(k))
    await proc.astart()
    await _started(seen)
    await proc.aclose()
    assert proc.returncode == -signal.SIGKILL and not _children()


async def test_a_killed_child_is_an_error_not_a_hang():
    seen = []
    async with runtime.JobProcess(job_targets.cleanup, "/nonexistent/x",
                                  on_message=lambda k, p: seen.append(k)) as proc:
        await _started(seen)
        os.kill(proc.pid, signal.SIGKILL)
        with pytest.raises(runtime.JobProcessError, match="ended without a result"):
            await proc.wait()
    assert not _children()


_ORPHAN_PARENT = """
import asyncio, sys
sys.path[:0] = [{tests!r}, {root!r}]
from aiotrain import runtime
from job_targets import cleanup
async def main():
    proc = runtime.JobProcess(cleanup, {marker!r}, on_message=lambda k, p: print(proc.pid, flush=True))
    await proc.astart()
    await asyncio.sleep(3600)
runtime.run(main())
"""


def test_a_worker_cancels_itself_when_its_parent_is_killed(tmp_path):
    marker = tmp_path / "marker"
    script = _ORPHAN_PARENT.format(tests=str(Path(__file__).parents[1]),
                                   root=str(Path(__file__).parents[2]), marker=str(marker))
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        child_pid = int(parent.stdout.readline())
        parent.kill()
        parent.wait()
        child = psutil.Process(child_pid)
        child.wait(timeout=30)  # it reads EOF, cancels its target, exits
    finally:
        parent.kill()
        parent.stdout.close()
    assert marker.read_text() == "cleaned up"
