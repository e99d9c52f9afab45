"""Ignite's handlers on aiotrain engines. Skipped where pytorch-ignite is not installed."""

from __future__ import annotations

import pytest

pytest.importorskip("ignite")


@pytest.fixture
def ignite_accepts_aiotrain(monkeypatch):
    """EarlyStopping type-checks its trainer against ignite.engine.Engine: let aiotrain's pass
    (the one documented step an Ignite handler needs, see docs/engine.md)."""
    import ignite.handlers.early_stopping as early_stopping

    import aiotrain

    monkeypatch.setattr(early_stopping, "Engine", (early_stopping.Engine, aiotrain.Engine))
