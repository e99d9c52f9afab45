"""Shared fixtures: every test checks that it leaves no aiotrain compute thread behind, and gets the
environment the test before it started with."""

from __future__ import annotations

import os
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


@pytest.fixture(autouse=True)
def environment_restored():
    """Each test gets the environment the last one started with: a library that sets a variable
    for the whole process (``mlflow.set_tracking_uri`` sets ``MLFLOW_TRACKING_URI``) must not
    change what later tests and their child processes do."""
    before = dict(os.environ)
    yield
    if os.environ != before:
        os.environ.clear()
        os.environ.update(before)


@pytest.fixture
def track_root(tmp_path, monkeypatch):
    """A tracking root of the test's own (offline mode), restored afterwards."""
    from aiotrain.tracking import Track

    monkeypatch.delenv("AIOTRAIN_DIR", raising=False)
    root = tmp_path / "track"
    Track.set_dir(root)
    Track.set_mode("offline")
    yield root
    Track.set_dir(None)
    Track.set_mode("offline")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` skip, saying why, where torch sees no CUDA device."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (make gpu-check runs it on a GPU)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
