"""The one wire between this runtime's processes: typed messages over a SEQPACKET socket pair.

Each message is one datagram (message boundaries are kept, a peer that exits reads as EOF) that
may carry file descriptors (shared-memory segments, a job's socket, a pidfd). A message that
encodes to more than ``INLINE_MAX`` bytes travels as a memfd holding it, so a datagram always
fits the socket's buffer and nothing is left in /dev/shm. Data workers, job processes and the
job server all talk this way; only the messages differ (``messages.py``).
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
import struct
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import msgspec

from .messages import Message

__all__ = ["INLINE_MAX", "Wire", "WireError"]

M = TypeVar("M")

INLINE_MAX = 32 * 1024
_FDS_SPACE = socket.CMSG_LEN(64 * array.array("i").itemsize)  # up to 64 fds per message
_SIZE = struct.Struct("q")
_encode = msgspec.msgpack.Encoder().encode


class WireError(RuntimeError):
    """A datagram that does not decode to a message its receiver expects."""


class Wire(Generic[M]):
    """One end of a socket pair: ``send`` a message (with fds), ``recv`` the kinds ``incoming``
    names (a Message class or a union of them). Not thread-safe: a sender shared by threads
    holds its own lock (``JobChannel``)."""

    def __init__(self, sock: socket.socket, incoming: Any) -> None:
        self.sock = sock
        self._decoder: msgspec.msgpack.Decoder[M] = msgspec.msgpack.Decoder(incoming)

    @staticmethod
    def socketpair() -> tuple[socket.socket, socket.socket]:
        """Two connected SEQPACKET sockets (close-on-exec; pass one on to the child)."""
        return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def closed(self) -> bool:
        return self.sock.fileno() < 0

    def close(self) -> None:
        self.sock.close()

    def send(self, msg: Message, fds: Sequence[int] = ()) -> None:
        """Send ``msg`` as one datagram (inline, or as a memfd when large); ``fds`` ride along
        and stay the caller's. On a non-blocking socket a full buffer raises BlockingIOError."""
        raw = _encode(msg)
        if len(raw) <= INLINE_MAX:
            socket.send_fds(self.sock, [b"I", raw], list(fds))
            return
        mfd = os.memfd_create("aiotrain-msg", os.MFD_CLOEXEC)
        try:
            view, done = memoryview(raw), 0
            while done < len(raw):
                done += os.write(mfd, view[done:])
            socket.send_fds(self.sock, [b"F" + _SIZE.pack(len(raw))], [mfd, *fds])
        finally:
            os.close(mfd)

    def recv(self, block: bool = True) -> tuple[M, list[int]] | None:
        """The next message and the fds that came with it (now the caller's); None when
        ``block`` is false and nothing is waiting. EOFError once the peer has closed its end."""
        try:
            data, fds = _recv_fds(self.sock, 0 if block else socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None
        except ConnectionError as exc:
            raise EOFError(str(exc)) from exc
        if not data:
            _close_all(fds)
            raise EOFError("the peer closed its end of the wire")
        try:
            raw = self._payload(data, fds)
            return self._decoder.decode(raw), fds
        except (msgspec.DecodeError, msgspec.ValidationError, struct.error, WireError) as exc:
            _close_all(fds)
            raise WireError(f"unreadable message: {exc}") from exc

    @staticmethod
    def _payload(data: bytes, fds: list[int]) -> bytes | bytearray | memoryview:
        """The encoded message: inline after the marker, or in the memfd that ``fds`` starts
        with (taken off the list and closed)."""
        if data[:1] == b"I":
            return memoryview(data)[1:]
        if data[:1] != b"F" or not fds:
            raise WireError(f"unknown datagram marker {data[:1]!r}")
        (size,) = _SIZE.unpack_from(data, 1)
        mfd = fds.pop(0)
        try:
            return _read_memfd(mfd, size)
        finally:
            os.close(mfd)


def _recv_fds(sock: socket.socket, flags: int) -> tuple[bytes, list[int]]:
    """One datagram and the fds that came with it (``socket.recv_fds`` drops ``flags`` before
    Python 3.12, so MSG_DONTWAIT needs this)."""
    data, ancdata, _flags, _addr = sock.recvmsg(INLINE_MAX + 64, _FDS_SPACE, flags)
    fds = array.array("i")
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    return data, list(fds)


def _read_memfd(fd: int, size: int) -> bytearray:
    raw = bytearray(size)
    view, done = memoryview(raw), 0
    while done < size:
        n = os.preadv(fd, [view[done:]], done)
        if n <= 0:
            raise WireError("message shorter than announced")
        done += n
    return raw


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
