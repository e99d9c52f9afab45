"""The pacer: a background writer sleeps between pieces of work once it has held on long enough."""

from __future__ import annotations

import pytest

import aiotrain.tracking.pacing as pacing
from aiotrain.tracking.pacing import Pacer


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    calls: list[float] = []
    monkeypatch.setattr(pacing.time, "sleep", calls.append)
    return calls


def test_it_sleeps_once_the_hold_is_used_up(monkeypatch: pytest.MonkeyPatch, sleeps: list[float]) -> None:
    now = {"t": 100.0}
    monkeypatch.setattr(pacing.time, "perf_counter", lambda: now["t"])
    pace = Pacer()
    pace()
    assert sleeps == []  # no time went by
    now["t"] += Pacer.HOLD_S / 2
    pace()
    assert sleeps == []
    now["t"] += Pacer.HOLD_S / 2
    pace()
    assert sleeps == [Pacer.PAUSE_S] and pace.pauses == 1
    pace()  # the hold starts again after a pause
    assert pace.pauses == 1


def test_a_zero_hold_pauses_at_every_call(monkeypatch: pytest.MonkeyPatch, sleeps: list[float]) -> None:
    monkeypatch.setattr(Pacer, "HOLD_S", 0.0)
    pace = Pacer()
    for _ in range(3):
        pace()
    assert len(sleeps) == 3 and pace.pauses == 3
