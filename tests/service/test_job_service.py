"""aiotrain.service.JobService in this process: policy, admission, the running cap and its
queue, retention and release of ended jobs."""

from __future__ import annotations

import asyncio
import gc
import os
import time
import weakref
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from aiotrain.runtime import to_io
from aiotrain.service import JobService, Policy, jobs
from aiotrain.web.aiohttp_face import aiohttp_app
from aiotrain.web.guard import Guard

ROOT = Path(__file__).resolve().parents[2]

# the Service object in this process: policy, admission, retention -------------------------------
TINY = ["train.max_epochs=1", "train.patience=null", "model.channels=4"]


@pytest.fixture
def policy(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("AIOTRAIN_DIR", str(tmp_path / "store"))
    outside = tmp_path / "outside.sdn"
    outside.write_text((ROOT / "examples" / "digits.sdn").read_text().replace(
        "dir: ${env:AIOTRAIN_DIR,./.aiotrain}", f"dir: {tmp_path / 'elsewhere'}"))
    return Policy([str(ROOT / "examples" / "digits.sdn"), str(outside)], ["examples.digits:build"],
                      [str(tmp_path / "store")])


async def _client(service):
    client = TestClient(TestServer(aiohttp_app(service.routes(), Guard())))
    await client.start_server()
    return client


async def test_the_client_is_held_to_the_allow_lists(policy):
    client = await _client(JobService(policy))
    try:
        cases = [({"config": "/etc/passwd"}, "not allowed"),
                 ({"config": "digits.sdn", "overrides": ["task=builtins:print"]}, "'task' is not allowed"),
                 ({"config": "digits.sdn", "overrides": ["checkpoint.dir=/tmp/x"]}, "'checkpoint.dir' is not"),
                 ({"config": "digits.sdn", "overrides": ["data.root=/tmp/x"]}, "'data.root' is not"),
                 ({"config": "digits.sdn", "overrides": ["train.notes=${env:HOME}"]}, "interpolations"),
                 ({"config": "outside.sdn"}, "outside the writable directories")]
        for body, fragment in cases:
            r = await client.post("/jobs", json=body)
            assert r.status == 403 and fragment in (await r.json())["error"], (body, await r.text())
    finally:
        await client.close()


async def test_config_loading_is_admitted_two_at_a_time(policy, monkeypatch):
    def slow_load(path, overrides):  # stands in for a pathological config
        time.sleep(1.5)
        raise OSError("slow config")

    monkeypatch.setattr(jobs, "load_config", slow_load)
    client = await _client(JobService(policy, config_slots=2))
    try:
        posts = [asyncio.create_task(client.post("/jobs", json={"config": "digits.sdn"})) for _ in range(6)]
        await asyncio.sleep(0.5)
        assert await asyncio.wait_for(to_io(lambda: "free"), 10) == "free"  # I/O threads still serve
        statuses = sorted([(await p).status for p in posts])
        assert statuses.count(422) == 2 and statuses.count(429) == 4, statuses
    finally:
        await client.close()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _settled_fds(bound: int) -> int:
    """The open descriptors once at most ``bound``, or after 10 s: a thread that delivered the
    job's last batch may still hold it (and the mapping behind it) for a moment on a loaded
    machine; what is tested is that nothing is kept."""
    for _ in range(100):
        gc.collect()
        if _fds() <= bound:
            break
        await asyncio.sleep(0.1)
    return _fds()


async def test_ended_jobs_release_their_resources(policy):
    service = JobService(policy, isolate=False, keep=2)
    client = await _client(service)
    try:
        fds, refs = [], []
        for _ in range(4):
            r = await client.post("/jobs", json={"config": "digits.sdn", "overrides": TINY})
            assert r.status == 201, await r.text()
            job = service.jobs[(await r.json())["id"]]
            refs.append(weakref.ref(job.job))
            await job.task
            assert job.job is None and job.view()["status"] == "completed"
            gc.collect()
            fds.append(_fds() if len(fds) < 2 else await _settled_fds(fds[1]))
        assert all(ref() is None for ref in refs)  # the TrainJob, its engines and model are gone
        # the first jobs open what a process opens once (lazy initialisation); after that, no
        # file descriptor is kept per ended job
        assert fds[-1] <= fds[1], fds
        assert list(service.jobs) == ["3", "4"]  # only the newest summaries are kept
        r = await client.get("/jobs/4")
        assert (await r.json())["metrics"]["accuracy"] > 0
    finally:
        await client.close()
