"""The dashboard's HTTP API through aiohttp's test client: runs, filters, chart data,
downsampling, live server-sent events, run detail, artifacts, and refused traversal."""

from __future__ import annotations

import asyncio
import json

import msgspec
import numpy as np
import pytest
import torch
from aiohttp.test_utils import TestClient, TestServer

from aiotrain.dashboard import dashboard_app
from aiotrain.tracking import Track
from aiotrain.tracking.columns import read_cache


@pytest.fixture
def runs(track_root):
    made = []
    for i, lr in enumerate([0.1, 0.01, 0.001]):
        with Track.run("mnist", name=f"lr{i}", config={"lr": lr, "model": {"width": 64}},
                       tags=["base"] if i < 2 else ["wide"], notes=f"run {i}") as run:
            for step in range(20):
                run.log({"train/loss": (1 + i) / (step + 1), "acc": step / 20 * (1 - i / 10)})
            run.log_histogram("weights", torch.arange(10.0))
            run.log_image("sample", torch.rand(3, 4, 4))
            run.log_table("preds", Track.Table(columns=["x", "y"], data=[[1, 2], [3, 4]]))
        made.append(run)
    return made


async def client_for(root):
    client = TestClient(TestServer(dashboard_app(root)))
    await client.start_server()
    return client


async def get_json(client, url, status=200, **params):
    resp = await client.get(url, params=params)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def test_runs_list_filters_sort_search(track_root, runs):
    client = await client_for(track_root)
    try:
        data = await get_json(client, "/api/runs")
        assert data["total"] == 3 and [r["name"] for r in data["rows"]] == ["lr0", "lr1", "lr2"]
        row = data["rows"][0]
        assert row["status"] == "finished" and row["config"]["model.width"] == 64
        assert row["summary"]["acc"] == pytest.approx(19 / 20) and row["duration"] >= 0
        assert "lr" in data["varying_config"] and "model.width" not in data["varying_config"]
        assert "train/loss" in data["metric_keys"]
        lows = await get_json(client, "/api/runs", filter="config.lr<0.05", sort="-config.lr")
        assert [r["name"] for r in lows["rows"]] == ["lr1", "lr2"]
        ranged = await client.get("/api/runs", params=[("filter", "acc>=0.8"), ("filter", "acc<0.9")])
        assert [r["name"] for r in (await ranged.json())["rows"]] == ["lr1"]
        tagged = await get_json(client, "/api/runs", filter="tag=wide")
        assert [r["name"] for r in tagged["rows"]] == ["lr2"]
        status = await get_json(client, "/api/runs", filter="status=crashed")
        assert status["rows"] == []
        found = await get_json(client, "/api/runs", q="RUN 1")
        assert [r["name"] for r in found["rows"]] == ["lr1"]
        narrow = await get_json(client, "/api/runs", columns="config.lr,acc")
        assert narrow["rows"][0]["config"] == {"lr": 0.1} and set(narrow["rows"][0]["summary"]) == {"acc"}
        bad = await get_json(client, "/api/runs", status=400, filter="lr")
        assert "KEY OP VALUE" in bad["error"]
    finally:
        await client.close()


async def test_series_and_detail(track_root, runs):
    client = await client_for(track_root)
    try:
        a, b = (f"mnist/{r.id}" for r in runs[:2])
        resp = await client.get("/api/series", params=[("run", a), ("run", b), ("key", "train/loss"), ("key", "nope")])
        data = await resp.json()
        assert [(s["run"], s["key"]) for s in data["series"]] == [(a, "train/loss"), (b, "train/loss")]
        assert data["series"][1]["step"] == list(range(20))
        assert data["series"][1]["value"] == pytest.approx([2 / (s + 1) for s in range(20)])
        assert data["cursor"][a]["metrics"] == (runs[0].dir / "metrics.jsonl").stat().st_size
        detail = await get_json(client, f"/api/runs/{a}")
        assert detail["config"]["lr"] == 0.1 and detail["notes"] == "run 0" and "hostname" in detail["system"]
        assert {"train/loss", "acc"} <= set(detail["metric_keys"])
        assert detail["histograms"]["weights"][0]["counts"] and detail["images"]["sample"][0]["path"].endswith(".png")
        table = detail["tables"]["preds"][0]
        rows = await get_json(client, f"/api/table/{a}", path=table["path"])
        assert rows["rows"] == [[1, 2], [3, 4]]
        image = await client.get(f"/files/{a}/{detail['images']['sample'][0]['path']}")
        assert image.status == 200 and (await image.read())[:4] == b"\x89PNG"
        await get_json(client, "/api/runs/mnist/nosuchrun", status=404)
    finally:
        await client.close()


async def test_downsampling_keeps_extremes(track_root):
    n = 200_000
    values = np.sin(np.arange(n) / 500.0)
    spikes = {12_345: 50.0, 150_001: -40.0, 77_777: 9.0}
    for i, v in spikes.items():
        values[i] = v
    run_dir = track_root / "runs" / "big" / "r1"
    run_dir.mkdir(parents=True)

    from aiotrain.tracking.store import write_sdn
    write_sdn(run_dir / "metadata.sdn", {"id": "r1", "name": "big", "project": "big", "status": "finished",
                                        "created_at": 1.0, "finished_at": 2.0, "config": {}})
    enc = msgspec.json.Encoder()
    (run_dir / "metrics.jsonl").write_bytes(enc.encode_lines(
        [{"step": i, "timestamp": 1.0 + i, "y": float(v)} for i, v in enumerate(values)]))
    client = await client_for(track_root)
    try:
        data = await get_json(client, "/api/series", run="big/r1", key="y", points=1000)
        s = data["series"][0]
        assert s["total"] == n and len(s["value"]) <= 1002
        assert max(s["value"]) == 50.0 and min(s["value"]) == -40.0
        assert 77_777 in s["step"] and s["step"][0] == 0 and s["step"][-1] == n - 1
        assert s["step"] == sorted(s["step"])
        # every bucket's own extremes survive, not only the global ones
        size = -(-n // 500)
        for b in (0, 137, 499):
            chunk = values[b * size:(b + 1) * size]
            kept = [v for st, v in zip(s["step"], s["value"], strict=True) if b * size <= st < (b + 1) * size]
            assert max(kept) == pytest.approx(chunk.max()) and min(kept) == pytest.approx(chunk.min())
        await get_json(client, "/api/series", status=400, run="big/r1", key="y", points="3")
    finally:
        await client.close()
    # that history had no column cache (written by hand, as by an older version): the dashboard
    # builds one in the background, and the next start reads it instead of the JSON
    jsonl = run_dir / "metrics.jsonl"
    for _ in range(1200):
        cached = read_cache(jsonl)
        if cached is not None and cached.offset == jsonl.stat().st_size:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the dashboard built no column cache for a history it decoded from JSON")
    fresh = await client_for(track_root)
    try:
        again = await get_json(fresh, "/api/series", run="big/r1", key="y", points=1000)
        assert again["series"] == data["series"]
    finally:
        await fresh.close()


async def test_stream_delivers_new_steps_of_a_run_being_written(track_root):
    async with Track.run("live", name="writing", system_interval=0.2) as run:
        run.log({"loss": 1.0})
        await run.aflush()
        client = await client_for(track_root)
        try:
            ref = f"live/{run.id}"
            first = await get_json(client, "/api/series", run=ref, key="loss")
            assert first["series"][0]["step"] == [0]
            resp = await client.get("/api/stream", params=[("run", ref), ("key", "loss"), ("key", "system/cpu_percent"),
                                                           ("cursor", json.dumps(first["cursor"]))])
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            got, system = [], []

            async def read():
                async for line in resp.content:
                    if line.startswith(b"data: "):
                        msg = json.loads(line[6:])
                        (got if msg["key"] == "loss" else system).extend(msg["step"])
                        if len(got) >= 5 and system:
                            return

            for step in range(1, 6):  # not flushed by the run: the stream must still see them
                run.log({"loss": 1.0 / (step + 1)})
                await asyncio.sleep(0.05)
            await asyncio.wait_for(read(), timeout=30)
            assert got == [1, 2, 3, 4, 5]
            resp.close()
        finally:
            await client.close()
    assert (run.dir / "system.jsonl").is_file()


@pytest.mark.parametrize("path", [
    "/files/mnist/{id}/../../../../etc/passwd",
    "/files/mnist/{id}/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/files/mnist/{id}/%2e%2e/%2e%2e/%2e%2e/secret.txt",
    "/files/mnist/{id}/media/..%252F..%252Fsecret.txt",
    "/files/..%2F..%2F/{id}/secret.txt",
    "/files/mnist/..%2F..%2F..%2F/secret.txt",
    "/files/mnist/{id}/%2Fetc%2Fpasswd",
    "/files/mnist/{id}/escape/secret.txt",
    "/api/table/mnist/{id}?path=..%2F..%2F..%2Fsecret.txt",
    "/api/table/mnist/{id}?path=%2Fetc%2Fpasswd",
    "/static/..%2F..%2Fapp.py",
    "/static/%2e%2e%2F__init__.py",
])
async def test_traversal_is_refused(track_root, runs, path):
    secret = track_root.parent / "secret.txt"
    secret.write_text("TOP SECRET")
    (runs[0].dir / "escape").symlink_to(track_root.parent)  # a link inside the run pointing out
    client = await client_for(track_root)
    try:
        resp = await client.get(path.replace("{id}", runs[0].id), allow_redirects=False)
        body = await resp.read()
        assert resp.status in (400, 403, 404), (resp.status, body[:200])
        assert b"TOP SECRET" not in body and b"root:" not in body
    finally:
        await client.close()


async def test_page_assets_and_artifacts(track_root, runs):
    data = track_root.parent / "data.txt"
    data.write_text("x")
    with Track.run("mnist", name="producer") as run:
        art = Track.Artifact("ds", type="dataset")
        art.add_file(str(data))
        run.log_artifact(art, aliases=["gold"])
    with Track.run("mnist", name="consumer") as user:
        user.use_artifact("ds:gold")
    client = await client_for(track_root)
    try:
        page = await client.get("/")
        assert page.status == 200 and "static/app.js" in await page.text()
        plotly_js = await client.get("/static/plotly.min.js")
        assert plotly_js.status == 200 and len(await plotly_js.read()) > 1_000_000
        assert (await client.get("/static/app.js")).status == 200
        arts = await get_json(client, "/api/artifacts")
        (ds,) = arts["artifacts"]
        assert ds["name"] == "ds" and ds["versions"][0]["aliases"] == ["gold", "latest"]
        edges = {(e["from"], e["to"]) for e in arts["graph"]["edges"]}
        assert edges == {(f"mnist/{run.id}", "mnist/ds:v0"), ("mnist/ds:v0", f"mnist/{user.id}")}
    finally:
        await client.close()


async def test_mounted_under_a_prefix(track_root, runs):
    from aiohttp import web

    outer = web.Application()
    outer.add_subapp("/dashboard/", dashboard_app(track_root))
    client = TestClient(TestServer(outer))
    await client.start_server()
    try:
        data = await get_json(client, "/dashboard/api/runs")
        assert data["total"] == 3
        assert (await client.get("/dashboard/")).status == 200
    finally:
        await client.close()


async def test_the_job_service_mounts_it(track_root, runs):
    from aiotrain.service import JobService, Policy
    from aiotrain.web.aiohttp_face import aiohttp_app
    from aiotrain.web.guard import Guard

    client = TestClient(TestServer(aiohttp_app(JobService(Policy(["examples/digits.sdn"]), dashboard=track_root).routes(), Guard())))
    await client.start_server()
    try:
        data = await get_json(client, "/dashboard/api/runs")
        assert {r["name"] for r in data["rows"]} == {"lr0", "lr1", "lr2"}
    finally:
        await client.close()
