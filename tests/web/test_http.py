"""aiotrain.web.http: the route table, the mount redirect, errors as one line, file answers."""

from __future__ import annotations

import json

import pytest

from aiotrain.web.guard import Guard
from aiotrain.web.http import (
    HTTPError,
    Request,
    Response,
    Routes,
    decode_json,
    file_response,
    json_response,
    serve,
)


async def echo(request, params):
    return json_response({"params": params})


async def boom(request, params):
    raise RuntimeError("secret detail")


def table():
    inner = Routes()
    inner.add("GET", "/", echo)
    inner.add("GET", "/files/{run}/{path*}", echo)
    outer = Routes()
    outer.add("GET", "/jobs/{id}", echo)
    outer.add("DELETE", "/jobs/{id}", echo)
    outer.add("GET", "/boom", boom)
    outer.mount("/dashboard", inner)
    return outer


async def answer(path, method="GET", prefix=""):
    headers = {"host": "localhost", "content-type": "application/json"}
    response = await serve(table(), Guard(), Request(method=method, path=path, headers=headers, prefix=prefix))
    body = json.loads(response.body) if isinstance(response.body, bytes) and response.body else None
    return response.status, body, response.headers


async def test_routes_mounts_and_params():
    assert (await answer("/jobs/7"))[:2] == (200, {"params": {"id": "7"}})
    assert (await answer("/jobs/7", "DELETE"))[0] == 200
    assert (await answer("/jobs/7", "HEAD"))[0] == 200
    status, body, headers = await answer("/jobs/7", "POST")
    assert status == 405 and headers["Allow"] == "GET, DELETE" and "POST is not allowed" in body["error"]
    assert (await answer("/dashboard/files/r/a/b/c.png"))[1] == {"params": {"run": "r", "path": "a/b/c.png"}}
    assert (await answer("/dashboard/files/r/a//c.png"))[0] == 404  # an empty segment is no path
    assert (await answer("/dashboard/"))[1] == {"params": {}}
    assert (await answer("/dashboard"))[2]["Location"] == "dashboard/"
    assert (await answer("", prefix="/x/runs"))[2]["Location"] == "runs/"
    assert (await answer("/jobs"))[0] == 404 and (await answer("/jobs/1/2"))[0] == 404


async def test_an_unexpected_error_is_a_500_without_details(caplog):
    status, body, headers = await answer("/boom")
    assert status == 500 and "secret" not in body["error"] and "secret detail" in caplog.text
    assert headers["X-Content-Type-Options"] == "nosniff" and "Content-Security-Policy" in headers


def test_deep_or_broken_json_is_a_client_error():
    with pytest.raises(HTTPError, match="nests too deeply") as err:
        decode_json(b"[" * 100_000 + b"]" * 100_000, "the body")
    assert err.value.status == 400
    with pytest.raises(HTTPError, match="not valid JSON"):
        decode_json(b"{", "the body")
    assert decode_json('{"a": [1]}', "x") == {"a": [1]}


def test_files_others_wrote_are_inline_only_as_raster_images(tmp_path):
    kinds = {}
    for name in ("a.png", "a.jpg", "a.svg", "a.html", "a.js", "a"):
        answer = file_response(tmp_path / name)
        kinds[name] = (answer.content_type, answer.headers.get("Content-Disposition"))
        assert "sandbox" in answer.headers["Content-Security-Policy"]
    assert kinds["a.png"] == ("image/png", None) and kinds["a.jpg"] == ("image/jpeg", None)
    for name in ("a.svg", "a.html", "a.js", "a"):
        assert kinds[name] == ("application/octet-stream", "attachment"), name
    trusted = file_response(tmp_path / "app.js", trusted=True)
    assert trusted.content_type == "text/javascript; charset=utf-8" and "Content-Security-Policy" not in trusted.headers
    assert isinstance(Response().body, bytes)
