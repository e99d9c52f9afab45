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
    "Call", "Cancel", "Cancelled", "Error", "Failed", "FromJob", "FromWorker", "InitFailed",
    "Message", "Post", "Reply", "Result", "Setup", "Start", "ToJob", "ToWorker", "pickled",
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


ToWorker = Setup | Call
FromWorker = Reply | Failed | InitFailed
ToJob = Start | Post | Cancel
FromJob = Post | Result | Error | Cancelled
