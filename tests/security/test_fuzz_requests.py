"""Fuzzing the request parsing of the job service and its dashboard with hypothesis: raw HTTP/1.1
requests (any method, path, query, headers, body) to real servers on 127.0.0.1, through the
aiohttp face and the ASGI face under uvicorn. No request may get a 5xx answer."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiotrain.service import JobService, Policy, service_asgi_app
from aiotrain.tracking import Track
from tests.web.servers import aiohttp_server, uvicorn_server

ROOT = Path(__file__).resolve().parents[2]

SEGMENTS = st.one_of(
    st.sampled_from(["", "jobs", "1", "events", "health", "dashboard", "api", "runs", "series", "stream",
                     "table", "artifacts", "files", "static", "app.js", "..", ".", "%2e%2e", "%2F", "%00",
                     "p", "r1", "plotly.min.js", "%ff", "%", "a%zz"]),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF, exclude_characters="?#/ "),
            max_size=12).map(lambda s: quote(s, safe="%;:@&=+$,")))
QUERY = st.lists(st.tuples(st.sampled_from(["run", "key", "cursor", "points", "limit", "path", "filter",
                                            "sort", "q", "columns", "token", "x"]),
                           st.one_of(st.text(max_size=30), st.sampled_from(["p/r1", "{}", "[[[", "1e400", "-1",
                                                                            '{"p/r1": {"metrics": 1e30}}']))),
                 max_size=4)
ODD_HEADERS = st.dictionaries(
    st.sampled_from(["Origin", "Content-Type", "Cookie", "Authorization", "Sec-Fetch-Site", "Sec-Fetch-Mode",
                     "Accept", "Range", "If-None-Match", "Transfer-Encoding"]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40), max_size=3)
JSON = {"Content-Type": "application/json"}
HEADERS = st.one_of(st.just({}), st.just(JSON), st.just(JSON), ODD_HEADERS,
                    ODD_HEADERS.map(lambda h: {**h, **JSON}))
BODIES = st.one_of(st.binary(max_size=200), st.sampled_from([
    b'{"config": "digits.sdn"}', b'{"config": "digits.sdn", "overrides": ["seed=1e999"]}',
    b'{"config": "digits.sdn", "overrides": ["model.x=\\"\\\\u0024{env:HOME}\\""]}',
    b'{"config": "digits.sdn", "overrides": [' + b"[" * 3000 + b"]" * 3000 + b"]}",
    b"[" * 50_000 + b"]" * 50_000, b'{"config": "digits.sdn", "overrides": ["train.max_epochs=[[[["]}']))
TEMPLATES = ["health", "jobs", "jobs/{}", "jobs/{}/events", "dashboard/", "dashboard/api/runs",
             "dashboard/api/runs/{}/{}", "dashboard/api/series", "dashboard/api/stream",
             "dashboard/api/table/{}/{}", "dashboard/api/artifacts", "dashboard/files/{}/{}/{}",
             "dashboard/static/{}", "dashboard/files/p/{}/{}"]
ROUTED = st.tuples(st.sampled_from(TEMPLATES), st.lists(SEGMENTS, min_size=3, max_size=3)).map(
    lambda t: t[0].format(*t[1]).split("/"))
SUBMITS = st.tuples(st.just("POST"), st.just(["jobs"]), st.just([]), st.just(JSON), BODIES, st.just("127.0.0.1"))
REQUESTS = st.one_of(SUBMITS, st.tuples(st.sampled_from(["GET", "GET", "POST", "DELETE", "PUT", "HEAD", "OPTIONS", "PATCH", "BREW"]),
                     st.one_of(ROUTED, st.lists(SEGMENTS, min_size=1, max_size=6)), QUERY, HEADERS, BODIES,
                     st.sampled_from(["127.0.0.1", "127.0.0.1", "localhost", "evil.example", "", "[::1]"])))


async def send(url: str, run_id: str, method: str, segments: list[str], query, headers, body: bytes,
               host: str) -> int:
    """One raw request ("r1" stands for the run's id); the answer's status (0: none came)."""
    port = int(url.rsplit(":", 1)[1])
    segments = [run_id if s == "r1" else s for s in segments]
    query = [(k, v.replace("p/r1", f"p/{run_id}")) for k, v in query]
    target = "/" + "/".join(segments)
    if query:
        target += "?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in query)
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}" if host else "Host:",
             *(f"{k}: {v}" for k, v in headers.items() if k != "Transfer-Encoding"),
             f"Content-Length: {len(body)}", "Connection: close", "", ""]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write("\r\n".join(lines).encode("latin-1") + body)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 30)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
    parts = status_line.split()
    return int(parts[1]) if len(parts) >= 2 else 0


@pytest.fixture
def service(tmp_path, monkeypatch, track_root):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("AIOTRAIN_DIR", str(tmp_path / "store"))
    with Track.run("p", name="r1", config={"lr": 0.1}) as run:
        run.log({"loss": 1.0})
        run.log_table("t", Track.Table(columns=["a"], data=[[1]]))
    # every config loads, then the task is refused: parsing is fuzzed, nothing trains
    return run.id, JobService(Policy([str(ROOT / "examples" / "digits.sdn")], tasks=[], writable=[str(tmp_path)]),
                      isolate=False, dashboard=track_root)


@pytest.mark.parametrize("face", ["aiohttp", "asgi"])
def test_no_request_gets_a_server_error(service, face):
    run_id, service = service
    loop = asyncio.new_event_loop()

    async def start():
        server = aiohttp_server(service.routes()) if face == "aiohttp" else uvicorn_server(service_asgi_app(service))
        return server, await server.__aenter__()

    server, url = loop.run_until_complete(start())
    seen: list[tuple[int, str]] = []

    @settings(max_examples=150, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(REQUESTS)
    def probe(request):
        method, segments, query, headers, body, host = request
        status = loop.run_until_complete(send(url, run_id, method, segments, query, headers, body, host))
        seen.append((status, method))
        assert status < 500, (status, request)
        assert status != 0 or method == "HEAD", request

    try:
        probe()
    finally:
        loop.run_until_complete(server.__aexit__(None, None, None))
        loop.run_until_complete(service.shutdown())
        loop.close()
    assert not service.jobs  # no fuzzed request started a job
    statuses = {s for s, _ in seen}  # the examples reached the routes, not only the refusals
    assert {200, 400, 403, 404, 421, 422} <= statuses, statuses
