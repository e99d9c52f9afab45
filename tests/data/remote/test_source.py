"""One client for every store, against a real S3 server: retries when the server answers 503 or
stalls (a loopback proxy in front of it), bounded; missing objects and refused credentials are
final at once, in one line."""

from __future__ import annotations

import pytest

from aiotrain.data.remote.retry import Retry, is_transient
from aiotrain.data.remote.source import ObjectError, ObjectSource

FAST = Retry(attempts=4, base_s=0.01, cap_s=0.05, timeout_s=1.0)


async def test_put_get_range_and_head(s3):
    src = ObjectSource(s3.url + "/p", retry=FAST)
    await src.aput("a/b.bin", bytes(range(256)) * 10)
    assert bytes(await src.aget("a/b.bin", 10, 20)) == bytes(range(10, 20))
    info = await src.ahead("a/b.bin")
    assert info.size == 2560 and info.etag
    assert len(await src.aget("a/b.bin", etag=info.etag)) == 2560
    assert src.stats.requests == 4 and src.stats.bytes == 2570 and src.stats.retries == 0


async def test_local_files_through_the_same_client(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"0123456789")
    for url in (str(tmp_path), f"file://{tmp_path}"):
        src = ObjectSource(url)
        assert bytes(await src.aget("x.bin", 2, 5)) == b"234"
        assert (await src.ahead("x.bin")).size == 10


async def test_503s_are_retried_and_counted(s3, proxy):
    await ObjectSource(s3.url, retry=FAST).aput("k", b"payload")
    proxy(fail_every=2)  # every second request answers 503 SlowDown
    src = ObjectSource(s3.url, retry=FAST, seed=0)
    for _ in range(4):
        assert bytes(await src.aget("k")) == b"payload"
    assert src.stats.retries >= 1


async def test_a_stalled_response_times_out_and_is_retried(s3, proxy):
    await ObjectSource(s3.url, retry=FAST).aput("k", b"payload")
    proxy(stall_every=2, stall_s=3.0)  # every second request waits 3 s before answering
    src = ObjectSource(s3.url, retry=Retry(attempts=3, base_s=0.01, cap_s=0.02, timeout_s=0.8))
    for _ in range(2):
        assert bytes(await src.aget("k")) == b"payload"
    assert src.stats.retries >= 1 and src.stats.requests == 2 + src.stats.retries


async def test_retries_are_bounded_then_the_error_names_object_and_attempts(s3, proxy):
    proxy(fail_first=1000)
    src = ObjectSource(s3.url + "/data", retry=FAST)
    with pytest.raises(ObjectError) as err:
        await src.aget("shard-7.atp")
    assert err.value.attempts == 4 and err.value.transient
    assert str(err.value).startswith(f"{s3.url}/data/shard-7.atp: ")
    assert "503" in str(err.value) and str(err.value).endswith("after 4 attempts")
    assert "\n" not in str(err.value)


async def test_missing_object_fails_at_once(s3):
    src = ObjectSource(s3.url, retry=FAST)
    with pytest.raises(ObjectError, match="no such object") as err:
        await src.ahead("nope")
    assert err.value.attempts == 1 and not err.value.transient


async def test_refused_credentials_fail_at_once_in_one_line(s3):
    await ObjectSource(s3.url).aput("k", b"private")
    anonymous = ObjectSource(s3.url, retry=FAST, options={"skip_signature": True})
    with pytest.raises(ObjectError, match="access refused") as err:
        await anonymous.aget("k")
    assert err.value.attempts == 1 and "\n" not in str(err.value)


@pytest.mark.parametrize("text, transient", [
    ("Server returned non-2xx status code: 503 Service Unavailable", True),
    ("status code: 429 Too Many Requests", True),
    ("status code: 404 Not Found", False),
    ("error sending request for url", True),
    ("Connection reset by peer", True),
    ("Unauthenticated: bad signature", False),
])
def test_which_failures_are_transient(text, transient):
    assert is_transient(RuntimeError(text)) is transient
    assert is_transient(TimeoutError()) and not is_transient(FileNotFoundError("x"))
