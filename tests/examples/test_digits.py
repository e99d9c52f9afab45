"""The digits example: its random augmentation runs through AsyncLoader's worker processes and
a run resumed from a checkpoint ends bit-identical to a straight one, whatever the worker count."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _start(store: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "AIOTRAIN_DIR": str(store), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "aiotrain", "train", "examples/digits.sdn",
                             "train.patience=null", "train.max_epochs=3", *args, "--no-progress"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _train(store: Path, *args: str) -> subprocess.CompletedProcess:
    proc = _start(store, *args)
    out, err = proc.communicate(timeout=240)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _final_model(store: Path) -> dict:
    last = sorted((store / "checkpoints").rglob("last*.pt"))[-1]
    return torch.load(last, weights_only=True)["model"]


@pytest.mark.timeout(600)
def test_augmented_digits_resume_is_bit_identical_across_worker_counts(tmp_path):
    straight = _start(tmp_path / "a", "data.workers=0")
    first = _start(tmp_path / "b", "data.workers=2")  # SIGKILLed once its first checkpoint is on disk
    deadline = time.monotonic() + 200
    while not list((tmp_path / "b").rglob("last*.pt")) and time.monotonic() < deadline:
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL
    out, err = straight.communicate(timeout=240)
    assert straight.returncode == 0, err[-3000:]
    # the worker count is not part of the result, so the changed key is forced past the config check
    resumed = _train(tmp_path / "b", "data.workers=1", "--resume", "--force")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resume: run" in resumed.stdout and " from " in resumed.stdout
    a, b = _final_model(tmp_path / "a"), _final_model(tmp_path / "b")
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"resumed weights differ in {differ}"
