"""runtime.daemons: threads nobody joins, for work that may hang and be abandoned."""

from __future__ import annotations

import threading

import pytest

from aiotrain import runtime


def test_spawn_daemon_is_abandonable():
    gate = threading.Event()
    fut = runtime.spawn_daemon(gate.wait)
    with pytest.raises(TimeoutError):
        fut.result(timeout=0.05)
    gate.set()
    assert fut.result(timeout=5) is True


def test_spawn_daemon_hands_over_errors():
    with pytest.raises(KeyError, match="gone"):
        runtime.spawn_daemon(lambda: {}["gone"]).result(timeout=5)


def test_submit_abandonable_reuses_threads_and_a_hung_call_blocks_nothing():
    before = {t.name for t in threading.enumerate()}  # idle threads of earlier tests may serve too
    names = [runtime.submit_abandonable(lambda: threading.current_thread().name).result(timeout=10)
             for _ in range(5)]
    assert len(set(names) - before) <= 1 and names[0].startswith("aiotrain-abandonable")
    release = threading.Event()
    hung = runtime.submit_abandonable(release.wait)
    assert runtime.submit_abandonable(lambda: 42).result(timeout=10) == 42  # another thread
    assert not hung.done()
    release.set()
    assert hung.result(timeout=10) is True
