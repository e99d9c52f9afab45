"""runtime.data_workers: the DataWorkerPool's calls, errors, deaths and its workers' exit."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from aiotrain import runtime

ROOT = Path(__file__).resolve().parents[2]


def _echo(msg, ctx):
    if msg == "boom":
        raise KeyError("boom")
    if msg == "die":
        ctx.note(41)
        os._exit(3)
    return (os.getpid(), ctx.index, len(msg) if isinstance(msg, bytes) else msg), []


_before: set[int] = set()


@pytest.fixture(autouse=True)
def _children_before():
    """What a test checks is the processes it leaves, not those of earlier tests."""
    _before.clear()
    _before.update(p.pid for p in psutil.Process().children())


def _children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children()
            if p.status() != psutil.STATUS_ZOMBIE and p.pid not in _before]


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_data_worker_pool_calls_large_messages_errors_death_and_close(start):
    async def main():
        pool = runtime.DataWorkerPool(2, _echo, start=start)
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
    assert not _children()


def _failing_init(ctx):
    raise FileNotFoundError(2, "tokenizer file not found", "/data/vocab.json")


def test_an_initializer_that_raises_fails_every_call_with_its_message_until_closed():
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
    assert not _children()


def test_close_from_sync_code_kills_and_reaps():
    async def main():
        pool = runtime.DataWorkerPool(2, _echo)
        await asyncio.gather(pool.call(0), pool.call(1))
        return pool

    pool = asyncio.run(main())
    pids = pool.pids
    pool.close()
    assert len(pids) == 2 and not pool.pids
    assert not [p for p in _children() if p.pid in pids]


PARENT_DIES = """
import asyncio, os, sys, time
from aiotrain import runtime
from tests.runtime.worker_targets import hold

async def main():
    pool = runtime.DataWorkerPool(2, hold, start={start!r})
    await asyncio.gather(pool.call(0), pool.call(1))
    print(*pool.pids, flush=True)
    os.kill(os.getpid(), 9)

asyncio.run(main())
"""


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_workers_exit_when_their_parent_is_killed(start):
    proc = subprocess.run([sys.executable, "-c", PARENT_DIES.format(start=start)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
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
