"""The job service against hostile clients and other sites, on a real loopback server
(docs/security.md, "Network clients of the service" and "Other sites in the browser")."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiohttp
import pytest

from aiotrain.service import JobService, Policy
from tests.web.servers import aiohttp_server

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-v4lue-never-shown"


@pytest.fixture
def policy(tmp_path, monkeypatch, track_root):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("AIOTRAIN_DIR", str(tmp_path / "store"))
    monkeypatch.setenv("SECRET_TOKEN", SECRET)
    return Policy([str(ROOT / "examples" / "digits.sdn")], ["examples.digits:build"], [str(tmp_path / "store")])


class SlowJob:
    """Stands in for a TrainJob: runs until released, and counts how many run at once."""

    running = 0
    most = 0

    def __init__(self, release: asyncio.Event) -> None:
        self.release, self.trainer, self.evaluator = release, None, None
        self.ready = asyncio.Event()

    async def run(self):
        SlowJob.running += 1
        SlowJob.most = max(SlowJob.most, SlowJob.running)
        try:
            await self.release.wait()
        finally:
            SlowJob.running -= 1
        return type("Result", (), {"exit_code": 0})()


@contextlib.asynccontextmanager
async def served(service):
    try:
        async with aiohttp_server(service.routes()) as url, aiohttp.ClientSession() as s:
            yield url, s
    finally:
        await service.shutdown()


@pytest.mark.parametrize("override", [
    'model.leak="\\u0024{env:SECRET_TOKEN}"',
    'model.leak={"a": ["\\u0024{env:SECRET_TOKEN}"]}',
    'model={"\\u0024{env:SECRET_TOKEN}": 1}',
    'train.notes="$\\u007benv:SECRET_TOKEN}"',
    "train.notes=${env:SECRET_TOKEN}",
])
async def test_an_escaped_interpolation_never_reaches_the_config(policy, override):
    async with served(JobService(policy, isolate=False)) as (url, s):
        async with s.post(f"{url}/jobs", json={"config": "digits.sdn", "overrides": [override]}) as r:
            body = await r.text()
        assert r.status == 403 and "interpolation" in body and SECRET not in body, body
        async with s.get(f"{url}/health") as r:
            assert (await r.json())["running_jobs"] == 0


async def test_other_sites_cannot_start_read_or_cancel_jobs(policy, monkeypatch):
    release = asyncio.Event()
    service = JobService(policy, isolate=False)
    monkeypatch.setattr(service, "_build", lambda body: _ready(SlowJob(release)))
    async with served(service) as (url, s):
        evil = {"Origin": "http://evil.example", "Content-Type": "text/plain"}
        async with s.post(f"{url}/jobs", data='{"config": "digits.sdn"}', headers=evil) as r:
            assert r.status == 403, await r.text()
        async with s.post(f"{url}/jobs", data='{"config": "digits.sdn"}', headers={"Content-Type": "text/plain"}) as r:
            assert r.status == 415  # a simple (unpreflighted) body type is refused from anyone
        assert service.jobs == {}
        async with s.post(f"{url}/jobs", json={"config": "digits.sdn"}) as r:
            assert r.status == 201
            job = (await r.json())["id"]
        async with s.delete(f"{url}/jobs/{job}", headers={"Origin": "http://evil.example"}) as r:
            assert r.status == 403
        async with s.get(f"{url}/jobs/{job}", headers={"Host": "evil.example"}) as r:
            assert r.status == 421  # DNS rebinding reads nothing
        async with s.get(f"{url}/jobs/{job}") as r:
            assert (await r.json())["status"] == "running"
        release.set()


async def _ready(job):
    return job


async def test_jobs_past_the_cap_wait_and_past_the_queue_are_refused(policy, monkeypatch):
    release = asyncio.Event()
    SlowJob.running = SlowJob.most = 0
    service = JobService(policy, isolate=False, max_running=2, max_queued=2)
    monkeypatch.setattr(service, "_build", lambda body: _ready(SlowJob(release)))
    async with served(service) as (url, s):
        answers = []
        for _ in range(6):  # one after another, as the client did
            async with s.post(f"{url}/jobs", json={"config": "digits.sdn"}) as r:
                answers.append((r.status, await r.json()))
            await asyncio.sleep(0.01)
        assert [a[0] for a in answers] == [201, 201, 201, 201, 429, 429]
        assert "busy: 2 jobs running and 2 waiting" in answers[4][1]["error"]
        ids = [a[1]["id"] for a in answers[:4]]
        statuses = [(await (await s.get(f"{url}/jobs/{i}")).json())["status"] for i in ids]
        assert statuses == ["running", "running", "pending", "pending"]
        async with s.delete(f"{url}/jobs/{ids[3]}") as r:  # a waiting job can be cancelled
            assert (await r.json())["status"] == "cancelled"
        release.set()
        for i in ids[:3]:
            await service.jobs[i].task
        assert SlowJob.most == 2 and service.jobs[ids[2]].view()["status"] == "completed"
        async with s.post(f"{url}/jobs", json={"config": "digits.sdn"}) as r:
            assert r.status == 201  # room again


async def test_hostile_bodies_are_client_errors(policy):
    async with served(JobService(policy, isolate=False)) as (url, s):
        deep = "[" * 100_000 + "]" * 100_000
        cases = [(deep, 400, "nests too deeply"), ("{", 400, "not valid JSON"), ("[1]", 400, "JSON object"),
                 ('{"config": 5}', 403, "config must be a string"),
                 ('{"config": "digits.sdn", "overrides": "seed=1"}', 400, "list of"),
                 ('{"config": "digits.sdn", "overrides": ["seed=99999999999999999999999"]}', 422, "seed"),
                 ('{"config": "digits.sdn", "overrides": ["seed=[[[["]}', 422, "seed"),
                 ('{"config": "digits.sdn", "mode": "rm -rf"}', 400, "rm -rf"),
                 ("x" * (2 << 20), 413, "over")]
        for body, status, fragment in cases:
            async with s.post(f"{url}/jobs", data=body, headers={"Content-Type": "application/json"}) as r:
                text = await r.text()
            assert r.status == status and fragment in text, (body[:60], r.status, text)
            assert "\n" not in text.strip() and "Traceback" not in text
        async with s.get(f"{url}/jobs/nope") as r:
            assert r.status == 404


async def test_fifty_jobs_and_a_cancel_storm_leave_nothing_behind(policy):
    import gc
    import os

    def fds():  # files and pipes (the HTTP connections of the storm are sockets, kept alive)
        links = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                links.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                continue
        return sum(not link.startswith("socket:") for link in links)

    service = JobService(policy, isolate=False, keep=10, max_running=2, max_queued=60)
    async with served(service) as (url, s):
        async with s.get(f"{url}/health") as r:
            assert r.status == 200
        before = fds()
        ids = []
        for _ in range(50):
            async with s.post(f"{url}/jobs", json={"config": "digits.sdn", "overrides": ["train.max_epochs=1"]}) as r:
                assert r.status == 201, await r.text()
                ids.append((await r.json())["id"])
        storm = [s.delete(f"{url}/jobs/{i}") for i in ids for _ in range(3)] + [s.delete(f"{url}/jobs/nope")] * 20
        answers = await asyncio.gather(*storm)
        assert sorted({a.status for a in answers}) == [200, 404]
        for a in answers:
            a.release()
        assert {service.jobs[i].view()["status"] for i in ids if i in service.jobs} <= {"cancelled", "completed"}
        assert len(service.jobs) == 10 and all(j.job is None for j in service.jobs.values())
        assert not [t for t in asyncio.all_tasks() if t.get_coro().__qualname__.startswith("JobService")]
        for _ in range(100):  # a thread that delivered a batch may hold a file for a moment
            gc.collect()
            if fds() <= before:
                break
            await asyncio.sleep(0.1)
        assert fds() <= before, (before, fds())
