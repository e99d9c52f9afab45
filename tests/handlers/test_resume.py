"""Exact resume: a run stopped by SIGKILL, task cancellation or terminate() and resumed from
Checkpoint.latest ends with bit-identical weights to an uninterrupted run (CPU, deterministic
algorithms, dropout, shuffled AsyncLoader, momentum SGD, a step LR schedule, RNG-drawing handlers)."""

from __future__ import annotations

import asyncio
import importlib.util
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from aiotrain.events import Events
from aiotrain.handlers.checkpoint import Checkpoint

SCRIPT = Path(__file__).parent / "scripts" / "resume_train.py"
_spec = importlib.util.spec_from_file_location("resume_train", SCRIPT)
resume_train = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("resume_train", resume_train)  # dataclasses look their module up
_spec.loader.exec_module(resume_train)

STEP_SLEEP = 0.015  # ~1.5 s of training per run, so kills land during steps, saves and writes
KILLS = 3


def _launch(save_dir: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCRIPT), str(save_dir), str(out), str(STEP_SLEEP)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _started_at(proc: subprocess.Popen) -> int:
    line = proc.stdout.readline()
    assert line.startswith("start "), f"child said {line!r}; stderr: {proc.stderr.read()}"
    return int(line.split()[1])


def _assert_same_weights(ours: dict, reference: dict) -> None:
    assert ours.keys() == reference.keys()
    differ = [k for k in ours if not torch.equal(ours[k], reference[k])]
    assert not differ, f"weights differ from the uninterrupted run in {differ}"


@pytest.mark.timeout(600)  # five processes starting torch on a loaded 2-core machine
def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path):
    reference = _launch(tmp_path / "ref", tmp_path / "ref.pt")  # side by side with the kills
    rng = random.Random(20240611)
    starts, killed_runs = [], tmp_path / "killed"
    for i in range(KILLS):
        proc = _launch(killed_runs, tmp_path / f"killed{i}.pt")
        starts.append(_started_at(proc))
        time.sleep(rng.uniform(0.1, 0.45))  # three kills add up to less than one whole run
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        assert not (tmp_path / f"killed{i}.pt").exists(), f"run {i} finished before the kill"
    final = _launch(killed_runs, tmp_path / "resumed.pt")
    starts.append(_started_at(final))
    _, err = final.communicate(timeout=60)
    assert final.returncode == 0, err
    _, err = reference.communicate(timeout=60)
    assert reference.returncode == 0, err

    assert starts[0] == 0 and starts[-1] > 0, f"no run resumed from a checkpoint: {starts}"
    assert starts == sorted(starts), f"a resume went backwards: {starts}"
    _assert_same_weights(torch.load(tmp_path / "resumed.pt", weights_only=True),
                         torch.load(tmp_path / "ref.pt", weights_only=True))


async def _reference_weights(folder: Path) -> dict:
    run = resume_train.build(folder)
    await run.trainer.run(run.loader, max_epochs=resume_train.EPOCHS)
    return run.weights()


async def _resume_to_the_end(folder: Path) -> tuple[int, dict]:
    run = resume_train.build(folder)
    start = run.resume()
    await run.trainer.run(run.loader, max_epochs=resume_train.EPOCHS)
    return start, run.weights()


@pytest.mark.parametrize("save_on, resumes_at", [
    (None, 30),  # every 5 iterations: the last save was 3 steps before the stop
    (Events.EPOCH_COMPLETED, 24),  # at epoch ends: resumes at the start of epoch 3
], ids=["every-5-iterations", "epoch-completed"])
async def test_resume_after_terminate_is_bit_identical(tmp_path, save_on, resumes_at):
    reference = await _reference_weights(tmp_path / "ref")
    run = resume_train.build(tmp_path / "run", save_on=save_on)
    stop_at = 2 * 12 + 9  # mid-epoch 3: the steps since the last save are replayed
    run.trainer.add_event_handler(Events.ITERATION_COMPLETED(once=stop_at), lambda e: e.terminate())
    await run.trainer.run(run.loader, max_epochs=resume_train.EPOCHS)
    assert run.trainer.state.iteration == stop_at
    resumed = resume_train.build(tmp_path / "run", save_on=save_on)
    start = resumed.resume()
    await resumed.trainer.run(resumed.loader, max_epochs=resume_train.EPOCHS)
    assert start == resumes_at
    _assert_same_weights(resumed.weights(), reference)


async def test_resume_after_task_cancellation_is_bit_identical(tmp_path):
    reference = await _reference_weights(tmp_path / "ref")
    run = resume_train.build(tmp_path / "run", step_sleep=0.002)
    reached = asyncio.Event()
    run.trainer.add_event_handler(Events.ITERATION_COMPLETED(once=41), lambda e: reached.set())
    task = asyncio.create_task(run.trainer.run(run.loader, max_epochs=resume_train.EPOCHS))
    await reached.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stopped = run.trainer.state.iteration
    assert 41 <= stopped < 12 * resume_train.EPOCHS
    latest = Checkpoint.latest(tmp_path / "run")
    assert latest is not None and latest.name == f"checkpoint_{stopped // resume_train.EVERY * resume_train.EVERY}.pt"
    start, weights = await _resume_to_the_end(tmp_path / "run")
    assert start == stopped // resume_train.EVERY * resume_train.EVERY
    _assert_same_weights(weights, reference)
