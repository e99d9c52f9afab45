"""aiotrain.dashboard.asgi_app mounted in Starlette/FastAPI under uvicorn, read with httpx: the
same routes as the aiohttp face (runs, detail, series, files, live SSE, refused traversal)."""

from __future__ import annotations

import asyncio
import json

import pytest

from aiotrain.dashboard import asgi_app
from aiotrain.tracking import Track
from tests.web.servers import uvicorn_server

fastapi = pytest.importorskip("fastapi", reason="needs fastapi: pip install 'aiotrain[asgi]'")
httpx = pytest.importorskip("httpx", reason="needs httpx (the dev extra)")


def mounted(root):
    app = fastapi.FastAPI()
    app.mount("/runs", asgi_app(dir=root))
    return app


async def test_routes_through_the_mount(track_root):
    with Track.run("mnist", name="a", config={"lr": 0.1}) as run:
        for step in range(5):
            run.log({"loss": 1 / (step + 1)})
        run.log_image("sample", __import__("torch").rand(3, 4, 4))
    ref = f"mnist/{run.id}"
    async with uvicorn_server(mounted(track_root)) as url, httpx.AsyncClient(base_url=url) as c:
        moved = await c.get("/runs")  # Starlette (or the app itself) adds the slash the page needs
        assert moved.status_code in (307, 308) and moved.headers["location"].endswith("/runs/")
        page = await c.get("/runs/")
        assert page.status_code == 200 and "static/app.js" in page.text
        assert (await c.get("/runs/static/app.js")).headers["content-type"].startswith("text/javascript")
        assert (await c.head("/runs/static/style.css")).status_code == 200
        rows = (await c.get("/runs/api/runs")).json()
        assert rows["total"] == 1 and rows["rows"][0]["config"]["lr"] == 0.1
        detail = (await c.get(f"/runs/api/runs/{ref}")).json()
        image = await c.get(f"/runs/files/{ref}/{detail['images']['sample'][0]['path']}")
        assert image.status_code == 200 and image.content[:4] == b"\x89PNG"
        series = (await c.get("/runs/api/series", params={"run": ref, "key": "loss"})).json()
        assert series["series"][0]["step"] == [0, 1, 2, 3, 4]
        head = await c.head("/runs/api/stream", params={"run": ref, "key": "loss"})  # headers, no stream
        assert head.status_code == 200 and head.headers["content-type"].startswith("text/event-stream")
        for path in ("/runs/files/mnist/{id}/../../../../etc/passwd", "/runs/files/mnist/{id}/%2e%2e/%2e%2e/x",
                     "/runs/api/table/mnist/{id}?path=..%2F..%2Fx", "/runs/static/..%2Fapp.py"):
            r = await c.get(path.replace("{id}", run.id))
            assert r.status_code in (400, 403, 404) and b"root:" not in r.content, path
        assert (await c.get("/runs/api/runs", headers={"Host": "evil.example"})).status_code == 421


async def test_live_stream_through_the_mount(track_root):
    async with Track.run("live", name="writing") as run:
        run.log({"loss": 1.0})
        await run.aflush()
        ref = f"live/{run.id}"
        async with uvicorn_server(mounted(track_root)) as url, httpx.AsyncClient(base_url=url, timeout=30) as c:
            first = (await c.get("/runs/api/series", params={"run": ref, "key": "loss"})).json()
            got = []

            async def read():
                params = {"run": ref, "key": "loss", "cursor": json.dumps(first["cursor"])}
                async with c.stream("GET", "/runs/api/stream", params=params) as r:
                    assert r.headers["content-type"].startswith("text/event-stream")
                    async for line in r.aiter_lines():
                        if line.startswith("data: "):
                            got.extend(json.loads(line[6:])["step"])
                            if len(got) >= 3:
                                return

            reader = asyncio.create_task(read())
            for step in range(1, 4):
                run.log({"loss": 1.0 / (step + 1)})
                await asyncio.sleep(0.05)
            await asyncio.wait_for(reader, 30)
            assert got == [1, 2, 3]
