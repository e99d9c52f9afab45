"""A real S3 API server on this machine, and a loopback proxy that makes it behave like a remote
one: for the remote-data example, its tests and ``benchmarks/bench_remote.py``.

``LocalS3()`` starts moto's server (``moto[server]``, in the ``dev`` extra) as a child process on
127.0.0.1, waits until it answers, and stops it on ``close()`` / leaving the ``with``; it sets
nothing global: ``env`` holds the variables a client needs (endpoint, region, test keys).

``LoopbackProxy(upstream_port, ...)`` starts ``python -m examples.local_s3 proxy`` as a child
process: a TCP proxy on 127.0.0.1 that waits ``delay_s`` before the first byte of every response,
caps every connection at ``rate`` bytes/s, and can answer some requests with 503 or stall them
(``fail_every``, ``fail_first``, ``stall_every``/``stall_s``), or hold every response for
``hold_s`` once ``hold_after`` bytes of it (headers included) have passed, to test retries and
partial arrivals against a real server. It speaks bytes, not HTTP, except that it waits for a request's head before deciding its
fate; the S3 server closes its connection after each response, so a connection is a request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[Any], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited at start (code {proc.returncode})")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout_s:.0f} s")


class _Child:
    proc: subprocess.Popen[Any] | None = None

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalS3(_Child):
    """moto's S3 server on 127.0.0.1 (see the module docstring)."""

    def __init__(self, port: int | None = None) -> None:
        try:
            import moto.server  # noqa: F401
        except ImportError as exc:
            raise RuntimeError("the local S3 server needs moto[server] (pip install "
                               "'moto[server]', part of the dev extra)") from exc
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **KEYS})
        _wait_port(self.port, self.proc, "moto server")

    @property
    def env(self) -> dict[str, str]:
        """Environment for a client of this server (aiotrain, boto3, obstore alike)."""
        return {**KEYS, "AWS_ENDPOINT_URL": self.endpoint, "AWS_ALLOW_HTTP": "true"}

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=KEYS["AWS_REGION"],
                            aws_access_key_id=KEYS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=KEYS["AWS_SECRET_ACCESS_KEY"])

    def bucket(self, name: str) -> str:
        """Create bucket ``name`` (if new); returns ``s3://name``."""
        with contextlib.suppress(Exception):
            self.client().create_bucket(Bucket=name)
        return f"s3://{name}"


class LoopbackProxy(_Child):
    """The latency / bandwidth / fault proxy in a child process (see the module docstring)."""

    def __init__(self, upstream_port: int, *, delay_s: float = 0.0, rate: float = 0.0,
                 fail_every: int = 0, fail_first: int = 0, stall_every: int = 0,
                 stall_s: float = 0.0, hold_after: int = 0, hold_s: float = 0.0) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "examples.local_s3", "proxy", str(self.port),
                str(upstream_port), f"--delay={delay_s}", f"--rate={rate}",
                f"--fail-every={fail_every}", f"--fail-first={fail_first}",
                f"--stall-every={stall_every}", f"--stall-s={stall_s}",
                f"--hold-after={hold_after}", f"--hold-s={hold_s}"]
        self.proc = subprocess.Popen(args, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        _wait_port(self.port, self.proc, "loopback proxy")


# the proxy process ---------------------------------------------------------------------------
_RESPONSE_503 = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n"
                 b"Content-Length: 71\r\nConnection: close\r\n\r\n"
                 b"<Error><Code>SlowDown</Code><Message>Please slow down</Message></Error>")


async def _proxy_main(port: int, upstream: int, opts: argparse.Namespace) -> None:
    count = 0

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes,
                   limited: bool) -> None:
        sent, start, passed = 0, time.monotonic(), 0
        hold = limited and opts.hold_after > 0
        data = first
        try:
            while True:
                if not data:
                    data = await reader.read(256 << 10)
                    if not data:
                        break
                if hold and passed + len(data) > opts.hold_after:  # let the front through, then hold
                    cut = opts.hold_after - passed
                    writer.write(data[:cut])
                    await writer.drain()
                    data, passed, hold = data[cut:], opts.hold_after, False
                    await asyncio.sleep(opts.hold_s)
                passed += len(data)
                if limited and opts.rate > 0:
                    sent += len(data)
                    ahead = sent / opts.rate - (time.monotonic() - start)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                writer.write(data)
                await writer.drain()
                data = b""
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def serve(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        nonlocal count
        count += 1
        n = count
        try:
            head = await client_r.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            client_w.close()
            return
        if n <= opts.fail_first or (opts.fail_every and n % opts.fail_every == 0):
            await asyncio.sleep(opts.delay)
            client_w.write(_RESPONSE_503)
            with contextlib.suppress(ConnectionError):
                await client_w.drain()
            client_w.close()
            return
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", upstream)
        except OSError:
            client_w.close()
            return
        up_w.write(head)
        to_upstream = asyncio.create_task(pump(client_r, up_w, b"", False))
        first = await up_r.read(256 << 10)
        stall = opts.stall_s if opts.stall_every and n % opts.stall_every == 0 else 0.0
        await asyncio.sleep(opts.delay + stall)  # before the first byte of the response
        await pump(up_r, client_w, first, True)
        to_upstream.cancel()
        with contextlib.suppress(BaseException):
            await to_upstream
        up_w.close()

    server = await asyncio.start_server(serve, "127.0.0.1", port, backlog=1024)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # it holds nothing to clean up: just go
        loop.add_signal_handler(sig, os._exit, 0)
    await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m examples.local_s3")
    sub = p.add_subparsers(dest="cmd", required=True)
    px = sub.add_parser("proxy", help="run the loopback proxy")
    px.add_argument("port", type=int)
    px.add_argument("upstream", type=int)
    px.add_argument("--delay", type=float, default=0.0)
    px.add_argument("--rate", type=float, default=0.0)
    px.add_argument("--fail-every", type=int, default=0)
    px.add_argument("--fail-first", type=int, default=0)
    px.add_argument("--stall-every", type=int, default=0)
    px.add_argument("--stall-s", type=float, default=0.0)
    px.add_argument("--hold-after", type=int, default=0)
    px.add_argument("--hold-s", type=float, default=0.0)
    sv = sub.add_parser("serve", help="run a local S3 server until interrupted; prints its env")
    sv.add_argument("--port", type=int, default=None)
    sv.add_argument("--bucket", action="append", default=[])
    args = p.parse_args(argv)
    if args.cmd == "proxy":
        asyncio.run(_proxy_main(args.port, args.upstream, args))
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    with LocalS3(args.port) as s3:
        for bucket in args.bucket:
            s3.bucket(bucket)
        print(" ".join(f"{k}={v}" for k, v in s3.env.items()), flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})


if __name__ == "__main__":
    main()


__all__ = ["LocalS3", "LoopbackProxy", "free_port"]
