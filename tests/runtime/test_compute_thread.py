"""runtime.compute_thread: the ComputeWorker runs calls in order on one thread, and joins."""

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


def test_to_compute_without_a_worker_starts_and_joins_its_own():
    async def main():
        return await runtime.to_compute(lambda: threading.current_thread().name)

    name = asyncio.run(main())
    assert name.startswith("aiotrain-compute-")
    assert not [t for t in threading.enumerate() if t.name == name]


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_cuda_worker_owns_a_side_stream():
    import torch

    with runtime.ComputeWorker(device="cuda") as worker:
        stream = worker.submit(torch.cuda.current_stream).result()
        assert worker.stream is not None and stream == worker.stream
        assert stream != torch.cuda.default_stream()
