"""runtime.job_server: job processes forked from a warm, single-threaded server."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from aiotrain import runtime
from aiotrain.runtime import job_server, jobs
from tests.runtime import job_server_targets as targets

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not job_server.enabled(), reason="the job server needs pidfds (Linux)")


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)  # the targets are imported as tests.runtime.*
    monkeypatch.delenv("AIOTRAIN_JOB_START", raising=False)


async def _run(target, *args, **kw):
    proc = runtime.JobProcess(target, *args, **kw)
    async with proc:
        return proc, await proc.wait()


def _served_by() -> int:
    """The pid of the server that forked a job started now, in a loop of its own."""

    async def main() -> int:
        _, d = await _run(targets.describe)
        return d["ppid"]

    return asyncio.run(main())


def _gone(pid: int, within: float = 20.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


async def test_a_job_forked_from_the_server_starts_clean(monkeypatch):
    monkeypatch.setenv("AIOTRAIN_TEST_MARK", "seen")
    (p1, a), (p2, b) = await asyncio.gather(_run(targets.describe), _run(targets.describe))
    (server,) = job_server.job_server_pids()
    for proc, d in ((p1, a), (p2, b)):
        assert proc._server is not None and d["ppid"] == server and d["pid"] == proc.pid
        assert d["pgid"] == d["pid"]  # a process group of its own
        assert d["threads"] == 1 and d["stdin"] == "/dev/null"
        assert d["cwd"] == str(ROOT) and d["env"] == "seen"
    for rng in ("torch", "numpy", "random"):  # fresh seeds: forks of one parent do not repeat
        assert a[rng] != b[rng], rng
    assert p1.returncode == p2.returncode == 0 and not jobs._live_jobs


async def test_seeded_jobs_draw_the_same_alone_and_side_by_side():
    _, alone = await _run(targets.seeded_weights, 7)
    (_, x), (_, y) = await asyncio.gather(_run(targets.seeded_weights, 7),
                                          _run(targets.seeded_weights, 8))
    assert torch.equal(alone, x) and not torch.equal(alone, y)


@pytest.mark.parametrize("how", ["exit", "segfault"])
async def test_a_crashing_job_does_not_take_the_server_down(how):
    proc = runtime.JobProcess(targets.crash, how)
    async with proc:
        with pytest.raises(runtime.JobProcessError, match="ended without a result"):
            await proc.wait()
    assert proc.returncode == (3 if how == "exit" else -signal.SIGSEGV)
    (server,) = job_server.job_server_pids()
    _, again = await _run(targets.describe)
    assert again["ppid"] == server  # the same server forked the next job


async def test_killing_the_server_kills_its_jobs_and_the_next_job_gets_a_new_one(tmp_path):
    seen: list[int] = []
    proc = runtime.JobProcess(targets.hold, str(tmp_path / "m"), on_message=lambda k, p: seen.append(p))
    await proc.astart()
    while not seen:  # noqa: ASYNC110 - the message callback is sync
        await asyncio.sleep(0.01)
    (server,) = job_server.job_server_pids()
    os.kill(server, signal.SIGKILL)
    with pytest.raises(runtime.JobProcessError, match="ended without a result"):
        await asyncio.wait_for(proc.wait(), 30)
    assert _gone(proc.pid) and _gone(server)
    _, d = await _run(targets.describe)
    assert d["ppid"] != server and d["ppid"] in job_server.job_server_pids()


async def test_the_server_preloads_a_jobs_imports_for_the_next_job_but_not_rng_or_thread_ones():
    _, first = await _run(targets.imports, "tests.runtime.preload_mods.quiet")
    _, second = await _run(targets.imports, "tests.runtime.preload_mods.quiet")
    assert (first, second) == (False, True)  # learnt from the first job
    for module in ("tests.runtime.preload_mods.seeds_at_import", "tests.runtime.preload_mods.starts_thread"):
        _, first = await _run(targets.imports, module)
        _, second = await _run(targets.imports, module)
        assert (first, second) == (False, False), module  # each job imports it itself
    server = await job_server.job_server()
    assert {"tests.runtime.preload_mods.seeds_at_import",
            "tests.runtime.preload_mods.starts_thread"} <= server.refused | job_server._refused


async def test_spawn_when_asked():
    os.environ["AIOTRAIN_JOB_START"] = "spawn"
    try:
        proc, d = await _run(targets.describe)
    finally:
        del os.environ["AIOTRAIN_JOB_START"]
    assert proc._server is None and d["ppid"] == os.getpid()


def test_the_server_closes_with_its_loop():
    async def main():
        await _run(targets.describe)
        return job_server.job_server_pids()

    (server,) = asyncio.run(main())
    assert _gone(server, 10) and not job_server.job_server_pids()


def test_a_server_started_before_the_loop_is_adopted_by_it():
    job_server.prestart_job_server(["tests.runtime.preload_mods.quiet"])
    (early,) = job_server.job_server_pids()

    async def main():
        _, d = await _run(targets.describe)
        _, preloaded = await _run(targets.imports, "tests.runtime.preload_mods.quiet")
        return d["ppid"], preloaded

    assert asyncio.run(main()) == (early, True)
    assert _gone(early, 10)  # closed with the loop that adopted it


def test_a_variable_torch_sets_on_import_does_not_replace_the_early_server(monkeypatch):
    """``aiotrain sweep`` prestarts its server, then imports torch._dynamo, which sets
    TORCHINDUCTOR_CACHE_DIR: the server (which imports it too) is still the one adopted."""
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    job_server.prestart_job_server()
    (early,) = job_server.job_server_pids()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/torchinductor_someone")
    assert _served_by() == early


def test_a_changed_environment_replaces_the_early_server(monkeypatch):
    job_server.prestart_job_server()
    (early,) = job_server.job_server_pids()
    monkeypatch.setenv("AIOTRAIN_TEST_SOMETHING_NEW", "1")
    assert _served_by() != early
    assert _gone(early, 10)


_PARENT = """
import asyncio, sys
sys.path[:0] = [{root!r}]
from aiotrain import runtime
from tests.runtime.job_server_targets import hold
from aiotrain.runtime import job_server
async def main():
    proc = runtime.JobProcess(hold, {marker!r},
                              on_message=lambda k, p: print(p, *job_server.job_server_pids(), flush=True))
    await proc.astart()
    await asyncio.sleep(3600)
runtime.run(main())
"""


def test_killing_the_parent_leaves_no_orphan_and_the_job_cleans_up(tmp_path):
    marker = tmp_path / "marker"
    parent = subprocess.Popen([sys.executable, "-c", _PARENT.format(root=str(ROOT), marker=str(marker))],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        job, server = map(int, parent.stdout.readline().split())
        parent.kill()
        parent.wait()
    finally:
        parent.kill()
        parent.stdout.close()
    assert _gone(job, 60) and _gone(server, 60)
    assert marker.read_text() == "cleaned up"  # the job read EOF and cancelled itself cleanly
