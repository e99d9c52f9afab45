"""The dashboard's HTTP surface against other sites and hostile run folders, through both faces
(aiohttp and ASGI under uvicorn) on real loopback servers (docs/security.md, "Other sites in the
browser" and "Whoever can write into the tracking folder")."""

from __future__ import annotations

import contextlib
import json
from urllib.parse import quote

import aiohttp
import pytest

from aiotrain.dashboard import asgi_app
from aiotrain.dashboard.app import dashboard_routes
from aiotrain.tracking import Track
from tests.web.servers import aiohttp_server, uvicorn_server

HOSTILE_PROJECT = "a?b#c%d&e"


@pytest.fixture
def root(track_root):
    with Track.run(HOSTILE_PROJECT, name="odd", config={"lr": 0.1}) as run:
        run.log({"loss": 1.0})
        run.log_image("sample", __import__("torch").rand(3, 4, 4))
    (run.dir / "evil.html").write_text("<script>alert(1)</script>")
    (run.dir / "evil.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>')
    return track_root, run


@contextlib.asynccontextmanager
async def dashboard(root, face):
    if face == "aiohttp":
        async with aiohttp_server(dashboard_routes(root)) as url:
            yield url
    else:
        async with uvicorn_server(asgi_app(dir=root)) as url:
            yield url


FACES = ["aiohttp", "asgi"]


@pytest.mark.parametrize("face", FACES)
async def test_a_rebound_name_reads_nothing(root, face):
    track, run = root
    async with dashboard(track, face) as url, aiohttp.ClientSession() as s:
        async with s.get(f"{url}/api/runs", headers={"Host": "evil.example:80"}) as r:
            body = await r.text()
            assert r.status == 421 and "odd" not in body and "evil.example" in body
        async with s.get(f"{url}/api/runs", headers={"Host": "localhost"}) as r:
            assert r.status == 200 and "odd" in await r.text()


@pytest.mark.parametrize("face", FACES)
async def test_other_sites_pages_are_refused(root, face):
    track, run = root
    async with dashboard(track, face) as url, aiohttp.ClientSession() as s:
        for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                        {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}):
            async with s.get(f"{url}/api/runs", headers=headers) as r:
                assert r.status == 403 and "odd" not in await r.text(), headers


@pytest.mark.parametrize("face", FACES)
async def test_the_page_runs_only_its_own_scripts(root, face):
    track, run = root
    async with dashboard(track, face) as url, aiohttp.ClientSession() as s:
        async with s.get(f"{url}/") as r:
            csp = r.headers["Content-Security-Policy"]
            assert r.status == 200 and r.headers["X-Content-Type-Options"] == "nosniff"
            script = next(d for d in csp.split(";") if d.strip().startswith("script-src"))
            assert script.split() == ["script-src", "'self'"] and "frame-ancestors 'none'" in csp
        async with s.get(f"{url}/api/runs") as r:
            assert r.headers["Content-Security-Policy"] == csp


@pytest.mark.parametrize("face", FACES)
async def test_run_files_never_run_script_in_the_dashboards_origin(root, face):
    track, run = root
    base = f"files/{quote(HOSTILE_PROJECT, safe='')}/{run.id}"
    async with dashboard(track, face) as url, aiohttp.ClientSession() as s:
        for name in ("evil.html", "evil.svg"):
            async with s.get(f"{url}/{base}/{name}") as r:
                assert r.status == 200
                assert r.headers["Content-Type"] == "application/octet-stream"
                assert r.headers["Content-Disposition"] == "attachment"
                assert "sandbox" in r.headers["Content-Security-Policy"]
        detail = f"{url}/api/runs/{quote(HOSTILE_PROJECT, safe='')}/{run.id}"
        async with s.get(detail) as r:  # a project named with ?, # and % opens when encoded
            assert r.status == 200, await r.text()
            image = (await r.json())["images"]["sample"][0]["path"]
        async with s.get(f"{url}/{base}/{quote(image)}") as r:
            assert r.status == 200 and r.headers["Content-Type"] == "image/png"
            assert (await r.read())[:4] == b"\x89PNG"


@pytest.mark.parametrize("face", FACES)
async def test_malformed_queries_are_client_errors(root, face):
    track, run = root
    ref = f"{HOSTILE_PROJECT}/{run.id}"
    async with dashboard(track, face) as url, aiohttp.ClientSession() as s:
        for params in ([("run", ref), ("key", "loss"), ("cursor", "[" * 3000 + "]" * 3000)],
                       [("run", ref), ("key", "loss"), ("cursor", '{"x": {"metrics": 1e400}}')],
                       [("run", ref), ("key", "loss"), ("cursor", json.dumps({ref: {"metrics": -5}}))],
                       [("run", ref), ("key", "loss"), ("cursor", "[]")]):
            async with s.get(f"{url}/api/stream", params=params) as r:
                assert r.status == 400, (params, await r.text())
        async with s.get(f"{url}/api/table/{quote(HOSTILE_PROJECT, safe='')}/{run.id}",
                         params={"path": "x", "limit": "-5"}) as r:
            assert r.status in (400, 403)
        async with s.post(f"{url}/api/runs", json={}) as r:
            assert r.status == 405


async def test_a_token_is_required_and_kept_in_a_cookie(root):
    import asyncio

    from aiotrain.dashboard.server import _url, serve
    from aiotrain.web.guard import Guard

    track, run = root
    assert "?token=" in _url("0.0.0.0", 8765, Guard.for_bind("0.0.0.0"))  # shown once, at start
    assert "?token=" not in _url("127.0.0.1", 8765, Guard.for_bind("127.0.0.1"))
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(serve(track, "127.0.0.1", 0, on_ready=ready.set_result, token="t0ken"))
    try:
        url = await asyncio.wait_for(ready, 30)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:  # as a browser
            async with s.get(f"{url}api/runs") as r:
                assert r.status == 401 and "odd" not in await r.text()
            async with s.get(f"{url}api/runs", headers={"Authorization": "Bearer nope"}) as r:
                assert r.status == 401
            async with s.get(f"{url}api/runs", headers={"Authorization": "Bearer t0ken"}) as r:
                assert r.status == 200 and "odd" in await r.text()
            async with s.get(f"{url}?token=t0ken", allow_redirects=False) as r:  # the URL printed
                assert r.status == 303 and r.headers["Location"] == "./"
            async with s.get(f"{url}api/runs") as r:  # the browser now sends the cookie
                assert r.status == 200 and "odd" in await r.text()
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server
