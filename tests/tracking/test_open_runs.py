"""The runs this process has open (tracking/open_runs.py): registered from creation to finish."""

from __future__ import annotations

from aiotrain.tracking import Track
from aiotrain.tracking.open_runs import drain_open_run
from aiotrain.tracking.run import Run


def test_a_run_is_open_from_creation_to_finish(track_root):
    run = Track.run("p", system_interval=None)
    run.log({"x": 1})
    assert drain_open_run(run.dir)
    assert not drain_open_run(run.dir.parent / "not-a-run")
    run.finish()
    assert not drain_open_run(run.dir)
    assert (run.dir / "metrics.jsonl").read_text().count("\n") == 1  # the record logged, written


def test_a_disabled_run_is_never_open(track_root):
    run = Run("p", dir=track_root, mode="disabled", system_interval=None)
    assert not drain_open_run(run.dir)
    run.finish()
