"""ProcessJob: a TrainJob in its own worker process; concurrent jobs reproduce their solo runs."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import psutil
import pytest
import torch

from aiotrain.cli.train import load_config
from aiotrain.events import Events
from aiotrain.handlers import Checkpoint
from aiotrain.job import ProcessJob, TrainJob, run_evaluated
from aiotrain.runtime.job_server import job_server_pids
from aiotrain.tracking import Track

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)  # the digits task is imported from the working directory


def digits(tmp_path: Path, name: str, *overrides: str):
    base = [f"tracking.dir={tmp_path}", f"tracking.name={name}", f"data.root={tmp_path}/data",
            "train.max_epochs=2", "train.patience=null", "model.channels=4", "data.batch_size=128"]
    return load_config("examples/digits.sdn", base + list(overrides))


def final_weights(result) -> dict[str, torch.Tensor]:
    path = Checkpoint.latest(result.checkpoint_dir, filename_prefix="last")
    return torch.load(path, weights_only=True)["model"]


_baseline: set[int] = set()


@pytest.fixture(autouse=True)
def _children_before():
    """What a test checks is the processes it leaves, not those of earlier tests."""
    _baseline.clear()
    _baseline.update(p.pid for p in psutil.Process().children(recursive=True))


def no_children() -> bool:
    """No process left but the loop's warm job server (its jobs, its children, do count)."""
    servers = set(job_server_pids())
    return not [p for p in psutil.Process().children(recursive=True)
                if p.status() != psutil.STATUS_ZOMBIE and p.pid not in _baseline | servers]


async def test_process_job_has_trainjobs_face(tmp_path):
    lines: list[str] = []
    job = ProcessJob(digits(tmp_path, "face"), echo=lines.append)
    seen = []

    async def watch():
        await job.ready.wait()
        async with job.trainer.observe(Events.ITERATION_COMPLETED(every=5) | Events.EPOCH_COMPLETED) as s:
            async for snap in s:
                seen.append((snap.event, snap.epoch, snap.iteration))

    watcher = asyncio.create_task(watch())
    result = await job.run()
    await asyncio.wait_for(watcher, 10)  # the stream ends with the trainer's run
    assert result.exit_code == 0 and result.state.epoch == 2 and job.pid != os.getpid()
    assert result.metrics["accuracy"] > 0.3 and job.evaluator.state.metrics == result.metrics
    assert job.trainer.state.iteration == result.state.iteration
    assert [e for e in seen if e[0] == "EPOCH_COMPLETED"] == [
        ("EPOCH_COMPLETED", 1, result.state.iteration // 2), ("EPOCH_COMPLETED", 2, result.state.iteration)]
    assert all(it % 5 == 0 for ev, _, it in seen if ev == "ITERATION_COMPLETED")
    assert any(line.startswith("epoch 2:") for line in lines), lines
    assert Track.load_run(result.run_dir).status == "finished" and no_children()


async def test_concurrent_process_jobs_are_bit_identical_to_solo(tmp_path):
    """Dropout and shuffling draw from torch's per-process RNG: in one process two jobs would
    interleave their draws; each in its own worker, a job reproduces its solo run exactly."""
    solo = await ProcessJob(digits(tmp_path / "solo", "a", "model.dropout=0.5")).run()
    a, b = await asyncio.gather(
        ProcessJob(digits(tmp_path / "pair", "a", "model.dropout=0.5")).run(),
        ProcessJob(digits(tmp_path / "pair", "b", "model.dropout=0.5", "seed=1")).run())
    ws, wa, wb = final_weights(solo), final_weights(a), final_weights(b)
    assert all(torch.equal(ws[k], wa[k]) for k in ws)
    assert not all(torch.equal(ws[k], wb[k]) for k in ws)  # a different seed does differ
    assert no_children()


async def test_cancel_crosses_the_boundary_and_keeps_checkpoints(tmp_path):
    job = ProcessJob(digits(tmp_path, "cancel", "train.max_epochs=200", "checkpoint.every=3"))
    task = asyncio.create_task(job.run())
    await job.ready.wait()
    while job.trainer.state.iteration < 8:  # noqa: ASYNC110 - state follows forwarded events
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (ckpt_dir,) = {p.parent for p in (tmp_path / "checkpoints").rglob("last*.pt")}
    path = Checkpoint.latest(str(ckpt_dir), filename_prefix="last")
    assert path is not None and torch.load(path, weights_only=True)["trainer"]["iteration"] >= 6
    (run,) = [r for r in _runs(tmp_path) if r.name == "cancel"]
    assert run.status == "interrupted" and no_children()


def _runs(root: Path):
    from aiotrain.tracking.reader import list_runs

    return list_runs("digits", root)


@pytest.mark.parametrize("isolated", [False, True])
async def test_on_evaluation_stops_the_job_after_that_epoch(tmp_path, isolated):
    cfg = digits(tmp_path, "stop", "train.max_epochs=5")
    job = (ProcessJob if isolated else TrainJob)(cfg, progress=False, echo=lambda _: None)
    calls = []

    def decide(epoch, metrics):
        calls.append((epoch, sorted(metrics)))
        return epoch == 2

    result, stopped = await run_evaluated(job, decide)
    assert stopped and result.state.epoch == 2 and calls == [(1, ["accuracy", "loss"]), (2, ["accuracy", "loss"])]
    path = Checkpoint.latest(result.checkpoint_dir, filename_prefix="last")
    assert torch.load(path, weights_only=True)["trainer"]["resume"]["epoch"] == 2  # the last checkpoint is kept


async def test_in_process_jobs_can_still_run_side_by_side(tmp_path):
    """Allowed and documented as sharing torch's per-process state (docs/sweeps.md)."""
    jobs = [TrainJob(digits(tmp_path, name, "train.max_epochs=1"), progress=False, echo=lambda _: None)
            for name in ("x", "y")]
    a, b = await asyncio.gather(*(job.run() for job in jobs))
    assert a.exit_code == b.exit_code == 0 and a.checkpoint_dir != b.checkpoint_dir
    assert final_weights(a).keys() == final_weights(b).keys()
