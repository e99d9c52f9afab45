"""Ctrl-C and SIGTERM as cancellation: the commands' one way to stop a running loop cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator

__all__ = ["cancel_on_signals"]


@contextlib.contextmanager
def cancel_on_signals() -> Iterator[None]:
    """Inside the block, SIGINT and SIGTERM cancel the current task (the step in flight ends,
    writes are flushed, ``CancelledError`` reaches the command, which exits 130)."""
    task = asyncio.current_task()
    assert task is not None, "cancel_on_signals is used inside a running task"
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, task.cancel)
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGTERM)
