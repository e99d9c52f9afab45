"""A real S3 API server (moto's, started once for this package's tests on 127.0.0.1, stopped when
they end, so other tests' leftover-process checks see nothing) and a loopback proxy in front of it
for faults; tests that need them skip, saying why, where moto is not installed."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

_buckets = itertools.count()


@pytest.fixture(scope="package")
def s3_server() -> Iterator[object]:
    pytest.importorskip("obstore", reason="the remote extra (obstore) is not installed")
    pytest.importorskip("moto.server", reason="moto[server] (dev extra) is not installed")
    from examples.local_s3 import LocalS3

    with LocalS3() as server:
        yield server


@pytest.fixture
def s3(s3_server, monkeypatch):
    """The server, this test's environment pointing at it, and a fresh bucket (``s3.url``)."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    s3_server.url = s3_server.bucket(f"test-{next(_buckets)}")
    return s3_server


@pytest.fixture
def proxy(s3, monkeypatch):
    """``proxy(**faults)``: a LoopbackProxy in front of the server, made this test's endpoint."""
    from examples.local_s3 import LoopbackProxy

    started = []

    def start(**faults):
        px = LoopbackProxy(s3.port, **faults)
        started.append(px)
        monkeypatch.setenv("AWS_ENDPOINT_URL", px.endpoint)
        return px

    yield start
    for px in started:
        px.close()
