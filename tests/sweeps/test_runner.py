"""SweepRunner: pruning stops trials (run marked pruned, checkpoint kept); parallel trials equal solo ones."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import psutil
import pytest
import torch

from aiotrain.handlers import Checkpoint
from aiotrain.runtime.job_server import job_server_pids
from aiotrain.sweeps import SweepRunner
from aiotrain.sweeps.record import read_record
from aiotrain.tracking import Choice, Track
from aiotrain.tracking.reader import list_runs

ROOT = Path(__file__).resolve().parents[2]
BASE = ["train.patience=null", "model.channels=4", "data.batch_size=128"]


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)


def _overrides(tmp_path: Path, *extra: str) -> list[str]:
    return [f"tracking.dir={tmp_path}", f"data.root={tmp_path}/data", *BASE, *extra]


def _weights(trial) -> dict[str, torch.Tensor]:
    return torch.load(Checkpoint.latest(trial.checkpoint_dir, filename_prefix="last"), weights_only=True)["model"]


async def test_median_pruning_stops_a_poor_trial_and_marks_its_run(tmp_path):
    # trial 0 learns (lr 3e-3); trial 1 barely moves (lr 1e-6): below the median at epoch 1
    sweep = Track.Sweep.define("grid", {"name": "val/accuracy", "goal": "maximize"},
                               {"optim": {"lr": Choice([3e-3, 1e-6])}},
                               early_terminate={"type": "median", "n_startup_trials": 1})
    updates = []
    runner = SweepRunner(sweep, "examples/digits.sdn", _overrides(tmp_path, "train.max_epochs=3"),
                         isolate=False, on_update=lambda rec: updates.append(len(rec.trials)))
    record = await runner.run()
    good, bad = record.trials
    assert good.status == "finished" and len(good.intermediate) == 3
    assert bad.status == "pruned" and [s for s, _ in bad.intermediate] == [1]
    assert record.best.number == 0 and record.status == "finished" and updates
    runs = {r.name: r for r in list_runs("digits", tmp_path)}
    assert runs[bad.name].status == "pruned" and runs[good.name].status == "finished"
    assert f"sweep:{sweep.id}" in runs[bad.name].tags and "trial:1" in runs[bad.name].tags
    last = Checkpoint.latest(bad.checkpoint_dir, filename_prefix="last")
    assert torch.load(last, weights_only=True)["trainer"]["resume"]["epoch"] == 1  # its last checkpoint is kept
    saved = read_record(tmp_path / "sweeps" / "digits" / f"{sweep.id}.json")
    assert saved.trials == record.trials and saved.parameters == {"optim.lr": "choice(0.003,1e-06)"}


async def test_a_trial_in_parallel_equals_the_same_trial_alone(tmp_path, monkeypatch):
    """Parallel trials run in job worker processes, so dropout and shuffling draw from their own
    RNG: a seeded trial alone and beside another ends with identical weights. The parallel
    sweep's trials wait passively (OMP_WAIT_POLICY), the lone one as torch does by default."""
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    before = {p.pid for p in psutil.Process().children(recursive=True)}  # other tests' processes
    space = {"model": {"dropout": Choice([0.5, 0.3])}}
    pair = Track.Sweep.define("grid", {"name": "accuracy", "goal": "maximize"}, space)
    alone = Track.Sweep.define("grid", {"name": "accuracy", "goal": "maximize"},
                               {"model": {"dropout": Choice([0.5])}})
    overrides = _overrides(tmp_path, "train.max_epochs=1")
    solo = await SweepRunner(alone, "examples/digits.sdn", overrides).run()
    assert "OMP_WAIT_POLICY" not in os.environ
    both = await SweepRunner(pair, "examples/digits.sdn", overrides, parallel=2).run()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    w_par, w_other, w_solo = _weights(both.trials[0]), _weights(both.trials[1]), _weights(solo.trials[0])
    assert all(torch.equal(w_par[k], w_solo[k]) for k in w_solo)
    assert not all(torch.equal(w_other[k], w_solo[k]) for k in w_solo)
    assert both.trials[0].value == solo.trials[0].value
    deadline = time.monotonic() + 10  # a worker may still be exiting after its result arrived
    while True:  # noqa: ASYNC110 - polling another process, no event to wait on
        left = [p for p in psutil.Process().children(recursive=True)  # the warm job server stays
                if p.pid not in before | set(job_server_pids()) and p.status() != psutil.STATUS_ZOMBIE]
        if not left or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert not left, left


def test_parallel_trials_wait_passively_unless_told_otherwise(monkeypatch):
    sweep = Track.Sweep.define("grid", {"name": "accuracy"}, {"optim": {"lr": Choice([1e-3])}})
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    SweepRunner(sweep, "examples/digits.sdn")
    assert "OMP_WAIT_POLICY" not in os.environ  # one at a time: torch's default
    SweepRunner(sweep, "examples/digits.sdn", parallel=2)
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    SweepRunner(sweep, "examples/digits.sdn", parallel=2)
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"  # the user's choice stands


async def test_bad_sweeps_are_refused_before_anything_runs(tmp_path):
    sweep = Track.Sweep.define("random", {"name": "accuracy"}, {"optm": {"lr": Choice([1e-3])}})
    with pytest.raises(Exception, match="'optm.lr' is not a key"):
        await SweepRunner(sweep, "examples/digits.sdn", _overrides(tmp_path), trials=1).run()
    with pytest.raises(ValueError, match="share torch's RNG"):
        SweepRunner(sweep, "examples/digits.sdn", trials=2, parallel=2, isolate=False)
    with pytest.raises(ValueError, match="number of trials"):
        SweepRunner(sweep, "examples/digits.sdn")
