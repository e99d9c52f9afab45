"""Every sweep test writes under its own tmp root, in offline mode."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _own_root(track_root):
    return track_root
