"""aiotrain.service in a FastAPI app on a real uvicorn server, driven with httpx: the router
(submit, show, events over SSE, cancel, the dashboard) and the ASGI mount of the same service."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from aiotrain.service import JobService, Policy, service_asgi_app
from tests.web.servers import uvicorn_server

fastapi = pytest.importorskip("fastapi", reason="needs fastapi: pip install 'aiotrain[asgi]'")
httpx = pytest.importorskip("httpx", reason="needs httpx (the dev extra)")

ROOT = Path(__file__).resolve().parents[2]
TINY = ["train.max_epochs=2", "train.patience=null", "model.channels=4"]


@pytest.fixture
def service(tmp_path, monkeypatch, track_root):
    monkeypatch.chdir(ROOT)
    store = tmp_path / "store"
    monkeypatch.setenv("AIOTRAIN_DIR", str(store))
    policy = Policy([str(ROOT / "examples" / "digits.sdn")], ["examples.digits:build"], [str(store)])
    return JobService(policy, isolate=False, dashboard=store)


async def sse(client, url):
    events, name = [], None
    async with client.stream("GET", url) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
                if name == "end":
                    break
    return events


async def test_the_router_trains_streams_cancels_and_serves_the_dashboard(service):
    from aiotrain.service.fastapi import job_router

    app = fastapi.FastAPI()
    app.include_router(job_router(service), prefix="/train")
    try:
        async with uvicorn_server(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as c:
            r = await c.post("/train/jobs", json={"config": "digits.sdn", "overrides": TINY})
            assert r.status_code == 201, r.text
            job = r.json()["id"]
            events = await asyncio.wait_for(sse(c, f"/train/jobs/{job}/events"), 240)
            assert [d["epoch"] for n, d in events if n == "epoch_completed"] == [1, 2]
            assert events[-1] == ("end", {"status": "completed"})
            shown = (await c.get(f"/train/jobs/{job}")).json()
            assert shown["status"] == "completed" and shown["metrics"]["accuracy"] > 0
            r = await c.post("/train/jobs", json={"config": "digits.sdn",
                                                   "overrides": ["train.max_epochs=50", "train.patience=null"]})
            second = r.json()["id"]
            for _ in range(2400):  # the client polls, as a client of the API would
                if (await c.get(f"/train/jobs/{second}")).json()["iteration"] >= 3:
                    break
                await asyncio.sleep(0.05)
            assert (await c.delete(f"/train/jobs/{second}")).json()["status"] == "cancelled"
            # the same policy and guard as every face
            r = await c.post("/train/jobs", json={"config": "digits.sdn", "overrides": ['model.x="\\u0024{env:HOME}"']})
            assert r.status_code == 403 and "interpolation" in r.json()["error"]
            r = await c.post("/train/jobs", content=b"{}", headers={"Origin": "http://evil.example",
                                                                     "Content-Type": "text/plain"})
            assert r.status_code == 403
            assert (await c.get("/train/health", headers={"Host": "evil.example"})).status_code == 421
            # the dashboard under the router: the jobs' runs, its page, its redirect
            runs = (await c.get("/train/dashboard/api/runs")).json()
            assert runs["total"] == 2 and {r["status"] for r in runs["rows"]} >= {"finished"}
            page = await c.get("/train/dashboard/")
            assert page.status_code == 200 and "static/app.js" in page.text
            assert "script-src 'self'" in page.headers["content-security-policy"]
            moved = await c.get("/train/dashboard")
            assert moved.status_code == 308 and moved.headers["location"] == "dashboard/"
            schema = (await c.get("/openapi.json")).json()
            assert {"/train/jobs", "/train/jobs/{id}", "/train/jobs/{id}/events"} <= set(schema["paths"])
    finally:
        await service.shutdown()


async def test_the_service_mounts_as_an_asgi_app(service):
    app = fastapi.FastAPI()
    app.mount("/svc", service_asgi_app(service))
    try:
        async with uvicorn_server(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as c:
            assert (await c.get("/svc/health")).json()["running_jobs"] == 0
            r = await c.post("/svc/jobs", content=b"[" * 100_000 + b"]" * 100_000,
                             headers={"Content-Type": "application/json"})
            assert r.status_code == 400 and "nests too deeply" in r.json()["error"]
            assert (await c.get("/svc/jobs/7")).status_code == 404
            assert (await c.get("/svc/dashboard/api/runs")).json()["total"] == 0
    finally:
        await service.shutdown()
