"""runtime: the compute worker, the I/O executor and aiotrain.run."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import job_targets
import psutil
import pytest

from aiotrain import runtime


def test_compute_worker_runs_in_order_on_one_thread_and_joins():
    seen = []
    with runtime.ComputeWorker(name="aiotrain-compute-test") as worker:
        futs = [worker.submit(lambda i=i: seen.append((i, threading.current_thread().name)))
                for i in range(20)]
        for f in futs:
            f.result()
        thread = worker._thread
    assert [i for i, _ in seen] == list(range(20))
    assert {name for _, name in seen} == {"aiotrain-compute-test"}
    assert not thread.is_alive()


def test_worker_exception_keeps_type_and_submit_needs_start():
    worker = runtime.ComputeWorker()
    with pytest.raises(RuntimeError, match="not running"):
        worker.submit(print)

    async def main():
        async with runtime.ComputeWorker() as w:
            with pytest.raises(KeyError, match="boom"):
                await w.call(lambda: {}["boom"])

    asyncio.run(main())


def test_cancelled_call_waits_for_running_work():
    finished = threading.Event()

    def slow():
        time.sleep(0.2)
        finished.set()

    async def main():
        async with runtime.ComputeWorker() as w:
            task = asyncio.create_task(w.call(slow))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert finished.is_set(), "cancellation returned before the running call ended"

    asyncio.run(main())


def test_to_io_and_run_drains_the_executor():
    async def main():
        return await runtime.to_io(lambda: threading.current_thread().name)

    name = runtime.run(main)
    assert name.startswith("aiotrain-io")
    assert not [t for t in threading.enumerate() if t.name.startswith("aiotrain-io")]


def test_spawn_daemon_is_abandonable():
    gate = threading.Event()
    fut = runtime.spawn_daemon(gate.wait)
    with pytest.raises(TimeoutError):
        fut.result(timeout=0.05)
    gate.set()
    assert fut.result(timeout=5) is True


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_cuda_worker_owns_a_side_stream():
    import torch

    with runtime.ComputeWorker(device="cuda") as worker:
        stream = worker.submit(torch.cuda.current_stream).result()
        assert worker.stream is not None and stream == worker.stream
        assert stream != torch.cuda.default_stream()


# DataWorkerPool ------------------------------------------------------------------------------
def _echo(msg, ctx):
    import os

    if msg == "boom":
        raise KeyError("boom")
    if msg == "die":
        ctx.note(41)
        os._exit(3)
    return (os.getpid(), ctx.index, len(msg) if isinstance(msg, bytes) else msg), []


def test_data_worker_pool_calls_large_messages_errors_death_and_close():
    import multiprocessing
    import os

    async def main():
        pool = runtime.DataWorkerPool(2, _echo)
        replies = await asyncio.gather(*(pool.call(i) for i in range(6)))
        assert sorted(r[0][2] for r in replies) == list(range(6))
        assert {r[0][0] for r in replies} == set(pool.pids) and len(pool.pids) == 2
        big = await pool.call(b"x" * 5_000_000)  # past the datagram size: travels as a memfd
        assert big[0][2] == 5_000_000
        with pytest.raises(KeyError, match="boom") as info:
            await pool.call("boom")
        assert "in a data worker process" in "".join(info.value.__notes__)
        with pytest.raises(runtime.WorkerDied, match=r"died \(exit code 3\)") as died:
            await pool.call("die")
        assert died.value.note == 41
        assert len(pool.pids) == 1
        assert (await pool.call(7))[0][2] == 7  # a replacement starts on demand
        pids = pool.pids
        await pool.aclose()
        return pids

    pids = asyncio.run(main())
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert multiprocessing.active_children() == []


def _failing_init(ctx):
    raise FileNotFoundError(2, "tokenizer file not found", "/data/vocab.json")


def test_an_initializer_that_raises_fails_every_call_with_its_message_until_closed():
    import multiprocessing

    async def main():
        pool = runtime.DataWorkerPool(2, _echo, initializer=_failing_init)
        pool.start()
        started = set(pool.pids)
        for _ in range(2):  # the second call raises at once: no worker is started again
            with pytest.raises(runtime.WorkerInitError) as info:
                await asyncio.wait_for(pool.call(1), 30)
            assert set(pool.pids) <= started
        await pool.aclose()
        return info.value

    error = asyncio.run(main())
    assert str(error) == ("data worker initialisation failed: FileNotFoundError: [Errno 2] "
                          "tokenizer file not found: '/data/vocab.json'")
    assert isinstance(error.__cause__, FileNotFoundError)
    assert multiprocessing.active_children() == []


PARENT_DIES = """
import asyncio, os, sys, time
from aiotrain import runtime

def hold(msg, ctx):
    return os.getpid(), []

async def main():
    pool = runtime.DataWorkerPool(2, hold)
    await asyncio.gather(pool.call(0), pool.call(1))
    print(*pool.pids, flush=True)
    os.kill(os.getpid(), 9)

asyncio.run(main())
"""


def test_workers_exit_when_their_parent_is_killed():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", PARENT_DIES], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -9, proc.stderr
    pids = [int(p) for p in proc.stdout.split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 10
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in pids if _alive(p)]
        time.sleep(0.05)
    assert not alive, f"workers {alive} outlived their parent"


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper, init, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_submit_abandonable_reuses_threads_and_a_hung_call_blocks_nothing():
    before = {t.name for t in threading.enumerate()}  # idle threads of earlier tests may serve too
    names = [runtime.submit_abandonable(lambda: threading.current_thread().name).result(timeout=10)
             for _ in range(5)]
    assert len(set(names) - before) <= 1 and names[0].startswith("aiotrain-abandonable")
    release = threading.Event()
    hung = runtime.submit_abandonable(release.wait)
    assert runtime.submit_abandonable(lambda: 42).result(timeout=10) == 42  # another thread
    assert not hung.done()
    release.set()
    assert hung.result(timeout=10) is True
# job worker processes ------------------------------------------------------------------------
_baseline: set[int] = set()


@pytest.fixture(autouse=True)
def _children_before():
    """What this test checks is the processes it leaves, not those of earlier tests."""
    _baseline.clear()
    _baseline.update(p.pid for p in psutil.Process().children(recursive=True))


def _children():
    return [p for p in psutil.Process().children(recursive=True)
            if p.status() != psutil.STATUS_ZOMBIE and p.pid not in _baseline]


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
    assert proc._popen.returncode == 0 and not _children() and not runtime._live_jobs


async def test_job_process_reraises_the_child_exception():
    async with runtime.JobProcess(job_targets.failing) as proc:
        with pytest.raises(KeyError, match="missing in the child") as info:
            await proc.wait()
    assert any("raised in job process" in note for note in info.value.__notes__)
    assert not _children()


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
    assert proc._popen.returncode == 0 and not _children() and not runtime._live_jobs


async def test_a_child_that_ignores_cancel_is_killed_after_grace():
    seen = []
    proc = runtime.JobProcess(job_targets.stubborn, grace=0.5, on_message=lambda k, p: seen.append(k))
    await proc.astart()
    await _started(seen)
    await proc.aclose()
    assert proc._popen.returncode == -signal.SIGKILL and not _children()


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
    script = _ORPHAN_PARENT.format(tests=str(Path(__file__).parent), root=str(Path(__file__).parents[1]),
                                   marker=str(marker))
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
