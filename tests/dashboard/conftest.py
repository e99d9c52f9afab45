"""Dashboard tests write their runs under their own tmp root."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _own_root(track_root):
    return track_root
