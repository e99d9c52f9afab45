"""runtime.io_threads and runtime.loop: the I/O pool, and run() drains it on the way out."""

from __future__ import annotations

import threading

from aiotrain import runtime


def test_to_io_and_run_drains_the_executor():
    async def main():
        return await runtime.to_io(lambda: threading.current_thread().name)

    name = runtime.run(main)
    assert name.startswith("aiotrain-io")
    assert not [t for t in threading.enumerate() if t.name.startswith("aiotrain-io")]


def test_submit_io_from_a_thread_and_a_new_pool_after_shutdown():
    first = runtime.io_executor()
    assert runtime.submit_io(lambda a, b=0: a + b, 2, b=3).result(timeout=10) == 5
    runtime.shutdown_io()
    assert runtime.io_executor() is not first
    runtime.shutdown_io()
