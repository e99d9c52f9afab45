"""Shared fixtures: every test checks that it leaves no aiotrain compute thread behind."""

from __future__ import annotations

import threading

import pytest


def _compute_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("aiotrain-compute")]


@pytest.fixture(autouse=True)
def no_compute_thread_left():
    before = set(_compute_threads())
    yield
    left = [t for t in _compute_threads() if t not in before and t.is_alive()]
    assert not left, f"compute threads left running: {[t.name for t in left]}"
