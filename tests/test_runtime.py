"""runtime: the compute worker, the I/O executor and aiotrain.run."""

from __future__ import annotations

import asyncio
import threading
import time

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
    names = [runtime.submit_abandonable(lambda: threading.current_thread().name).result(timeout=10)
             for _ in range(5)]
    assert len(set(names)) == 1 and names[0].startswith("aiotrain-io-item")
    release = threading.Event()
    hung = runtime.submit_abandonable(release.wait)
    assert runtime.submit_abandonable(lambda: 42).result(timeout=10) == 42  # another thread
    assert not hung.done()
    release.set()
    assert hung.result(timeout=10) is True
