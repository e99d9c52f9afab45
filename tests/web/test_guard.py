"""aiotrain.web.guard: the Host, Origin, body-type and token checks as pure functions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiotrain.web.guard import Guard, host_name, is_loopback, is_wildcard
from aiotrain.web.http import Request


def req(method="GET", path="/", host="127.0.0.1:8765", query=(), local="127.0.0.1", **headers):
    hs = {k.replace("_", "-"): v for k, v in headers.items()}
    if host is not None:
        hs["host"] = host
    return Request(method=method, path=path, query=tuple(query), headers=hs, local=local)


def status(guard, request):
    answer = guard.check(request)
    return None if answer is None else answer.status


@pytest.mark.parametrize("value,name", [("127.0.0.1:80", "127.0.0.1"), ("[::1]:8080", "::1"),
                                        ("LocalHost.:1", "localhost"), ("evil.example", "evil.example"),
                                        ("a b", None), ("x:99999", None), ("u@h", None), ("", None)])
def test_host_name(value, name):
    assert host_name(value) == name


def test_loopback_and_wildcard():
    assert all(is_loopback(h) for h in ("localhost", "127.0.0.2", "::1", "[::1]", "::ffff:127.0.0.1", "a.localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "10.0.0.1", "example.com", "::"))
    assert all(is_wildcard(h) for h in ("", "0.0.0.0", "::"))
    assert not is_wildcard("127.0.0.1")


def test_host_must_be_a_bound_name():
    g = Guard.for_bind("127.0.0.1")
    assert g.token is None
    for host in ("127.0.0.1:8765", "localhost:8765", "[::1]:8765", "LOCALHOST"):
        assert status(g, req(host=host)) is None, host
    for host in ("evil.example:8765", "127.0.0.1.evil.example", "", None, "10.0.0.5:8765"):
        assert status(g, req(host=host)) == 421, host
    refusal = g.check(req(host="evil.example"))
    assert b"allowed hosts" in refusal.body and b"\n" not in refusal.body


def test_foreign_origins_and_cross_site_fetches_are_refused():
    g = Guard()
    same = "http://127.0.0.1:8765"
    assert status(g, req("POST", origin=same, content_type="application/json")) is None
    assert status(g, req("POST", origin="http://localhost:8765", content_type="application/json")) is None
    for origin in ("http://evil.example", "null", "http://127.0.0.1:9999", "file://", "http://127.0.0.1.evil.example:8765"):
        assert status(g, req("POST", origin=origin, content_type="application/json")) == 403, origin
        assert status(g, req("GET", origin=origin)) == 403, origin
    assert status(g, req("GET", sec_fetch_site="cross-site", sec_fetch_mode="no-cors")) == 403
    assert status(g, req("GET", sec_fetch_site="same-site", sec_fetch_mode="cors")) == 403
    assert status(g, req("DELETE", sec_fetch_site="cross-site", sec_fetch_mode="navigate")) == 403
    assert status(g, req("GET", sec_fetch_site="cross-site", sec_fetch_mode="navigate")) is None  # a link
    assert status(g, req("GET", sec_fetch_site="same-origin", sec_fetch_mode="cors")) is None


def test_state_changing_bodies_must_be_json():
    g = Guard()
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {"content_type": kind} if kind else {}
        assert status(g, req("POST", **headers)) == 415, kind
    assert status(g, req("POST", content_type="application/json; charset=utf-8")) is None
    assert status(g, req("DELETE")) is None


def test_a_network_bind_needs_a_token():
    g = Guard.for_bind("0.0.0.0")
    assert g.token and len(g.token) >= 24 and g.any_ip
    assert Guard.for_bind("10.1.2.3", token="t").token == "t"
    assert status(g, req(host="10.1.2.3:8765", local="10.1.2.3")) == 401
    assert status(g, req(host="10.1.2.3:8765", local="10.1.2.3", authorization=f"Bearer {g.token}")) is None
    assert status(g, req(host="evil.example:8765", authorization=f"Bearer {g.token}")) == 421  # rebinding
    assert status(g, req(host="10.1.2.3", authorization="Bearer wrong")) == 401
    cookie = f"{g.cookie_name}={g.token}"
    assert status(g, req(host="10.1.2.3", cookie=f"a=b; {cookie}")) is None
    # ?token= is exchanged for a cookie once, and the URL loses it
    answer = g.check(req(path="/api/runs", host="10.1.2.3", query=[("token", g.token), ("q", "x")]))
    assert answer.status == 303 and answer.headers["Location"] == "runs?q=x"
    assert answer.headers["Set-Cookie"].startswith(cookie) and "HttpOnly" in answer.headers["Set-Cookie"]
    assert g.check(req(host="10.1.2.3", query=[("token", "nope")])).status == 401
    # a tokenless guard refuses what arrives on a network address (a mount served to the network)
    assert status(Guard(), req(local="192.168.1.4")) == 403
    assert status(Guard(), req(local=None)) is None


@given(st.dictionaries(st.sampled_from(["host", "origin", "content-type", "authorization", "cookie",
                                        "sec-fetch-site", "sec-fetch-mode"]), st.text(max_size=40)),
       st.sampled_from(["GET", "POST", "DELETE", "PUT", "HEAD", "OPTIONS", "X"]),
       st.lists(st.tuples(st.text(max_size=8), st.text(max_size=8)), max_size=3))
def test_any_headers_get_an_answer_or_pass(headers, method, query):
    for g in (Guard(), Guard.for_bind("0.0.0.0", token="secret")):
        answer = g.check(Request(method=method, path="/x", query=tuple(query), headers=headers))
        assert answer is None or answer.status in (303, 401, 403, 415, 421)
        if answer is None and g.token:
            assert "secret" in headers.get("authorization", "") + headers.get("cookie", "")
