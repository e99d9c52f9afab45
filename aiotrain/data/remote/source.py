"""One async client for objects wherever they live: S3-compatible stores, GCS, Azure, HTTP(S) and
local files, through obstore (the Rust ``object_store`` crate's Python binding).

``ObjectSource(url)`` names a prefix (``s3://bucket/train``, ``gs://...``, ``az://...``,
``https://host/data``, ``file:///data`` or a plain local path); ``aget(name, start, end)``,
``ahead(name)``, ``aput(name, data)`` act on objects under it. Credentials come from where each
store's own tools look: the environment (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``,
``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_STORAGE_ACCOUNT_NAME``, ...) and, for S3 without
keys in the environment, the AWS config files through boto3 when it is installed. Nothing is
hard-coded.

Retries are this module's, not the client's (its own are turned off), so they are counted and
bounded in one place: a transient failure (see ``retry``) is tried again with jittered backoff,
at most ``Retry.attempts`` times; then ``ObjectError`` names the object and the attempts. A
missing object or a refused credential is final on the first try.

obstore is an optional dependency (extra ``remote``), imported on first use on an I/O thread, so
neither importing this module nor creating a source blocks the event loop.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from ...runtime import to_io
from .retry import Retry, is_transient
from .stats import TransferStats

if TYPE_CHECKING:  # obstore is the optional 'remote' extra, imported on first use
    from obstore import GetOptions
    from obstore.auth.boto3 import Boto3CredentialProvider
    from obstore.store import ObjectStore

_T = TypeVar("_T")

__all__ = ["ObjectError", "ObjectInfo", "ObjectSource", "join_url"]

EXTRA_HINT = "install the 'remote' extra: pip install 'aiotrain[remote]'"
STREAM_PIECE = 256 << 10  # a streamed range is handed over in pieces of at least this size


class ObjectError(OSError):
    """An object could not be read or written: ``url`` names it, ``attempts`` says how many tries
    were made; ``transient`` is False for failures no retry can fix (missing, refused)."""

    def __init__(self, url: str, attempts: int, cause: BaseException, transient: bool) -> None:
        reason = _one_line(cause)
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"{url}: {reason}{tries}")
        self.url, self.attempts, self.transient = url, attempts, transient


@dataclass(frozen=True)
class ObjectInfo:
    """What a HEAD says about an object: its size in bytes and its ETag (None where the store
    has none)."""

    size: int
    etag: str | None


def join_url(base: str, name: str) -> str:
    """``name`` under the prefix ``base`` (a URL or a local path)."""
    return f"{base.rstrip('/')}/{name.lstrip('/')}"


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        text = str(exc)
        return text if text.startswith("no such folder") else "no such object (check the URL and the bucket)"
    if isinstance(exc, PermissionError):
        return "access refused (check the credentials in the environment or config files)"
    text = " ".join(str(exc).split()) or type(exc).__name__
    lowered = text.lower()
    if "unauthenticated" in lowered or "403" in text or "invalidaccesskeyid" in lowered \
            or "signaturedoesnotmatch" in lowered:
        return "access refused (check the credentials in the environment or config files): " \
               + text[:200]
    return f"{type(exc).__name__}: {text[:300]}"


def _local_url(url: str) -> str | None:
    """The absolute folder of a local prefix (a plain path or file://), or None for a store."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        return parts.path
    if parts.scheme == "" or (len(parts.scheme) == 1 and os.name == "nt"):
        return str(Path(url).expanduser().resolve())
    return None


class ObjectSource:
    """Objects under one URL prefix, read and written asynchronously with counted retries.

    ``options`` are the store's configuration keys (obstore's names, e.g. ``endpoint``,
    ``region``, ``skip_signature``) on top of what the environment says; ``stats`` receives
    bytes, requests and retries. A source is bound to no event loop and may be shared.
    """

    def __init__(self, url: str, *, retry: Retry | None = None,
                 options: Mapping[str, object] | None = None, stats: TransferStats | None = None,
                 seed: int | None = None) -> None:
        self.url = url.rstrip("/") if _local_url(url) is None else url
        self.retry = retry or Retry()
        self.options = dict(options or {})
        self.stats = stats if stats is not None else TransferStats()
        self._rng = random.Random(seed)
        self._store: ObjectStore | None = None
        self._local = _local_url(url)

    def __repr__(self) -> str:
        return f"ObjectSource({self.url!r})"

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        state["_store"] = None  # rebuilt on first use where it is unpickled
        return state

    def url_of(self, name: str) -> str:
        """The full URL of object ``name``."""
        return join_url(self.url, name)

    # the store ------------------------------------------------------------------------------------
    async def _client(self) -> ObjectStore:
        """The store, made on first use on an I/O thread (which imports obstore: the requests'
        own ``from obstore import ...`` then find it loaded)."""
        if self._store is None:
            try:
                self._store = await to_io(self._make_store)
            except ImportError:
                raise
            except Exception as exc:  # a bad URL or option, a local folder that is not there
                raise ObjectError(self.url, 1, exc, False) from exc
        return self._store

    def _make_store(self) -> ObjectStore:
        try:
            import obstore  # noqa: F401
            from obstore.store import LocalStore, from_url
        except ImportError as exc:
            raise ImportError(f"reading object storage needs obstore; {EXTRA_HINT}") from exc
        if self._local is not None:
            if not self.options.get("mkdir") and not Path(self._local).is_dir():
                raise FileNotFoundError("no such folder")
            return LocalStore(self._local, mkdir=bool(self.options.get("mkdir")))
        parts = urlsplit(self.url)
        options = dict(self.options)
        client: dict[str, Any] = {"timeout": timedelta(seconds=self.retry.timeout_s)}
        endpoint = options.get("endpoint") or os.environ.get("AWS_ENDPOINT_URL_S3") \
            or os.environ.get("AWS_ENDPOINT_URL")
        if parts.scheme in ("http",) or (endpoint and str(endpoint).startswith("http://")):
            client["allow_http"] = True
        kwargs: dict[str, Any] = {"client_options": client, "retry_config": {"max_retries": 0}}
        if parts.scheme == "s3" and not os.environ.get("AWS_ACCESS_KEY_ID") \
                and "access_key_id" not in options and not options.get("skip_signature"):
            provider = _boto3_credentials()
            if provider is not None:
                kwargs["credential_provider"] = provider
        return from_url(self.url, config=options or None, **kwargs)  # type: ignore[arg-type]

    # requests -------------------------------------------------------------------------------------
    async def aget(self, name: str, start: int | None = None, end: int | None = None,
                  etag: str | None = None) -> memoryview:
        """The bytes of ``name`` (``[start, end)`` when given: one range request). With ``etag``
        the read fails unless the object still has that ETag (no mixing of two versions)."""
        async def once(store: ObjectStore) -> tuple[memoryview, int]:
            from obstore import get_async

            options: GetOptions = {}
            if start is not None and end is not None:
                options["range"] = (start, end)
            if etag and self._local is None:
                options["if_match"] = etag
            result = await get_async(store, name, options=options or None)
            data = memoryview(await result.bytes_async())
            return data, len(data)

        return await self._call(name, once)

    async def aget_into(self, name: str, into: memoryview, start: int = 0,
                        on_data: Callable[[int], None] | None = None,
                        etag: str | None = None) -> None:
        """Read bytes ``[start, start + len(into))`` of ``name`` into ``into`` as they arrive (one
        range request, streamed), calling ``on_data(n)`` with the count of bytes in place so far
        after each piece, so a reader can use the front of the range before its end is here. A
        transient failure part way is tried again from where it stopped; ``etag`` pins the
        version as in ``aget``. A response longer or shorter than asked is an ``ObjectError``."""
        got, end = 0, start + len(into)

        async def once(store: ObjectStore) -> tuple[None, int]:
            from obstore import get_async

            nonlocal got
            options: GetOptions = {"range": (start + got, end)}
            if etag and self._local is None:
                options["if_match"] = etag
            result = await get_async(store, name, options=options)
            async for piece in result.stream(min_chunk_size=STREAM_PIECE):
                n = len(piece)
                if got + n > len(into):
                    raise ValueError(f"range {start}-{end} came back longer than asked")
                into[got:got + n] = piece
                got += n
                self.stats.bytes += n  # as it arrives, so bytes/s is live
                if on_data is not None:
                    on_data(got)
            if got != len(into):
                raise ValueError(f"range {start}-{end} came back with {got} bytes")
            return None, 0

        if len(into):
            await self._call(name, once)

    async def ahead(self, name: str) -> ObjectInfo:
        """Size and ETag of ``name``; ``ObjectError`` at once when it is missing or refused."""
        async def once(store: ObjectStore) -> tuple[ObjectInfo, int]:
            from obstore import head_async

            meta = await head_async(store, name)
            return ObjectInfo(int(meta["size"]), meta.get("e_tag")), 0

        return await self._call(name, once)

    async def aput(self, name: str, data: bytes | memoryview) -> None:
        """Write ``name`` (whole; the store makes it visible atomically)."""
        async def once(store: ObjectStore) -> tuple[None, int]:
            from obstore import put_async

            await put_async(store, name, bytes(data) if isinstance(data, memoryview) else data)
            return None, 0

        await self._call(name, once)

    async def _call(self, name: str, once: Callable[[ObjectStore], Awaitable[tuple[_T, int]]]) -> _T:
        store = await self._client()
        stats, policy = self.stats, self.retry
        for attempt in range(1, policy.attempts + 1):
            stats.request_started()
            received = 0
            try:
                async with asyncio.timeout(policy.timeout_s):
                    value, received = await once(store)
                return value
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                transient = is_transient(exc)
                if not transient or attempt == policy.attempts:
                    raise ObjectError(self.url_of(name), attempt, exc, transient) from exc
                stats.retries += 1
            finally:
                stats.request_done(received)
            await asyncio.sleep(policy.delay(attempt - 1, self._rng))
        raise AssertionError("unreachable: the last attempt returns or raises")


def _boto3_credentials() -> Boto3CredentialProvider | None:
    """obstore's boto3 credential provider (AWS config files, SSO, profiles), if boto3 is here."""
    try:
        import boto3  # type: ignore[import-untyped]  # noqa: F401
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError:
        return None
    try:
        provider = Boto3CredentialProvider()
    except Exception:  # no credentials anywhere: anonymous access or a clear refusal later
        return None
    return provider
