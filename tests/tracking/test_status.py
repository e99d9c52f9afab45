"""How a run that ended is marked, and a stored run's status rewritten (tracking/status.py)."""

from __future__ import annotations

import asyncio

import pytest

from aiotrain.config import sdn
from aiotrain.tracking import Track
from aiotrain.tracking.status import outcome, set_run_status


@pytest.mark.parametrize("exc, marked", [
    (None, ("finished", None)),
    (RuntimeError("boom "), ("crashed", "RuntimeError: boom")),
    (ValueError(), ("crashed", "ValueError")),
    (asyncio.CancelledError(), ("interrupted", "CancelledError")),
    (KeyboardInterrupt(), ("interrupted", "KeyboardInterrupt")),
])
def test_outcome_marks_cancellation_as_interrupted_and_errors_as_crashed(exc, marked):
    assert outcome(exc) == marked


def test_set_run_status_rewrites_only_the_status_and_error():
    with Track.run("p", config={"lr": 0.1}, system_interval=None) as run:
        run.log({"x": 1})
    before = sdn.load(run.dir / "metadata.sdn")
    set_run_status(run.dir, "pruned")
    after = sdn.load(run.dir / "metadata.sdn")
    assert after == {**before, "status": "pruned"}
    set_run_status(str(run.dir), "interrupted", error="killed")
    assert sdn.load(run.dir / "metadata.sdn") == {**before, "status": "interrupted", "error": "killed"}
