"""Dashboard tests write their runs under their own tmp root."""

from __future__ import annotations

import pytest

from aiotrain.tracking import Track


@pytest.fixture(autouse=True)
def track_root(tmp_path, monkeypatch):
    monkeypatch.delenv("AIOTRAIN_DIR", raising=False)
    root = tmp_path / "track"
    Track.set_dir(root)
    Track.set_mode("offline")
    yield root
    Track.set_dir(None)
