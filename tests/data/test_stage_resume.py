"""Random augmentation in worker processes resumes exactly: a run SIGKILLed mid-epoch and
resumed from its latest checkpoint ends with the weights of uninterrupted runs (0 and 2 workers)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parent / "scripts" / "augmented_resume.py"


def _launch(save_dir: Path, out: Path, workers: int, sleep: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCRIPT), str(save_dir), str(out), str(workers),
                             str(sleep)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.timeout(240)
def test_sigkill_mid_epoch_then_resume_is_bit_identical_whatever_the_workers(tmp_path):
    refs = {w: _launch(tmp_path / f"ref{w}", tmp_path / f"ref{w}.pt", w) for w in (0, 2)}
    killed = _launch(tmp_path / "run", tmp_path / "killed.pt", 2, sleep=0.03)
    assert killed.stdout.readline().strip() == "start 0"
    ckpt = tmp_path / "run"
    deadline = time.monotonic() + 120
    while len(list(ckpt.glob("*.pt"))) < 2 and time.monotonic() < deadline:  # a few saves in
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=30)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed.pt").exists(), "the run finished before the kill"
    resumed = _launch(ckpt, tmp_path / "resumed.pt", 2)
    start = int(resumed.stdout.readline().split()[1])
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert 0 < start < 32, start  # resumed mid-run (32 iterations in all)
    for proc in refs.values():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    ref0 = torch.load(tmp_path / "ref0.pt", weights_only=True)
    for name in ("ref2.pt", "resumed.pt"):
        got = torch.load(tmp_path / name, weights_only=True)
        differ = [k for k in ref0 if not torch.equal(got[k], ref0[k])]
        assert not differ, f"{name} differs from the 0-worker run in {differ}"
