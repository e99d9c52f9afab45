"""What crosses a process boundary: one typed message per thing said, on every wire.

Each message is a msgspec tagged Struct, so a reader sees the whole protocol here and a message
that is not one of the kinds its receiver expects fails to decode instead of being guessed at.
What a message carries that only Python knows (a user's batch header, a dataset, a job's result,
an exception) travels as a pickle in a ``bytes`` field (``pickled`` / ``unpickled``): the wires
join processes of this runtime only (socket pairs it created), never anything outside.
"""

from __future__ import annotations

import pickle
from typing import Any

import msgspec

__all__ = [
    "Call", "Cancel", "Cancelled", "Error", "Exited", "Failed", "Fork", "Forked", "FromJob",
    "FromServer", "FromWorker", "Imported", "InitFailed", "Message", "Post", "Preload",
    "Preloaded", "Reply", "Result", "Setup", "Start", "ToJob", "ToServer", "ToWorker", "pickled",
    "unpickled",
]


class Message(msgspec.Struct, tag=True, array_like=True):
    """Base of every message: encoded as ``[tag, field, ...]`` (msgpack)."""


def pickled(obj: Any) -> bytes:
    """``obj`` as the bytes of a message field."""
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def unpickled(raw: bytes) -> Any:
    """The object a ``pickled`` field holds."""
    return pickle.loads(raw)


# parent -> data worker ---------------------------------------------------------------------------
class Setup(Message):
    """A spawned worker's first message: the pickled ``(handler, initializer)`` it serves."""

    parts: bytes


class Call(Message):
    """Run the handler on the pickled message ``body``; file descriptors may ride along."""

    id: int
    body: bytes


# data worker -> parent ---------------------------------------------------------------------------
class Reply(Message):
    """Call ``id`` returned the pickled ``body``; file descriptors may ride along."""

    id: int
    body: bytes


class Failed(Message):
    """Call ``id`` raised the pickled (portable) ``error``."""

    id: int
    error: bytes


class InitFailed(Message):
    """The worker cannot start: its initializer (or unpickling its handler) raised ``error``."""

    error: bytes


# parent <-> job process --------------------------------------------------------------------------
class Start(Message):
    """A job's first message: its name and the pickled ``(target, args)`` to run."""

    name: str
    target: bytes


class Post(Message):
    """A message of the job's own protocol (``JobChannel.send`` / ``JobProcess.send``)."""

    kind: str
    body: bytes


class Cancel(Message):
    """Cancel the job's target: it finishes the step in flight and cleans up."""


class Result(Message):
    """The target returned the pickled ``body``."""

    body: bytes


class Error(Message):
    """The target raised the pickled (portable) ``error``."""

    error: bytes


class Cancelled(Message):
    """The target was cancelled and has cleaned up."""


class Imported(Message):
    """Sent before the outcome by a job forked from a job server: the modules it imported (and
    its ``sys.path``, which may have grown), which the server may preload for the next job."""

    modules: list[str]
    path: list[str]


# parent <-> job server -----------------------------------------------------------------------------
class Preload(Message):
    """Import ``modules`` in the server, so that every later job starts with them loaded;
    ``path`` entries the server's ``sys.path`` lacks are appended first."""

    modules: list[str]
    path: list[str] = []


class Fork(Message):
    """Fork one job process. It gets the file descriptors sent with this message: its end of the
    job wire, then the parent's stdout and stderr (stdin is /dev/null); and the parent's working
    directory, ``sys.path`` and environment, as a fresh interpreter would."""

    id: int
    cwd: str
    path: list[str]
    env: dict[str, str]


class Preloaded(Message):
    """The server imported what it could of a ``Preload``; ``refused`` names modules it will not
    hold (their import failed, started a thread or initialised CUDA: forking after that is
    unsafe); ``ready`` is false when the server can no longer fork safely and is going away."""

    refused: list[str]
    ready: bool


class Forked(Message):
    """Fork ``id`` became process ``pid`` (its pidfd rides along), or failed with ``error``."""

    id: int
    pid: int
    error: str = ""


class Exited(Message):
    """Process ``pid`` ended; ``code`` as ``Popen.returncode`` (negative: killed by that signal)."""

    pid: int
    code: int


ToWorker = Setup | Call
FromWorker = Reply | Failed | InitFailed
ToJob = Start | Post | Cancel
FromJob = Post | Imported | Result | Error | Cancelled
ToServer = Preload | Fork
FromServer = Preloaded | Forked | Exited
