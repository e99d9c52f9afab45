"""examples/lm.sdn: killed with SIGKILL mid-run, resumed into the same tracked run, it ends
bit-identical to an uninterrupted run (tiny model, few steps)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from aiotrain.config import sdn
from aiotrain.tracking.reader import load_run

ROOT = Path(__file__).resolve().parents[2]
TINY = ["data.files=3", "data.max_bytes=1500", "data.batch_size=8", "model.dim=16",
        "model.heads=2", "model.layers=1", "model.context=16", "train.max_epochs=2",
        "train.log_every=5", "checkpoint.every=5", "--no-progress"]


def cmd(store: Path, *extra: str) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "AIOTRAIN_DIR": str(store), "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    return [sys.executable, "-m", "aiotrain", "train", "examples/lm.sdn", *TINY, *extra], env


def final_model(store: Path) -> dict[str, torch.Tensor]:
    (last,) = (store / "checkpoints" / "lm").glob("*/last_*.pt")
    return torch.load(last, weights_only=True)["model"]


def test_lm_resumes_after_kill_9_bit_identically_into_the_same_run(tmp_path):
    ref_store, store = tmp_path / "ref", tmp_path / "killed"
    args, env = cmd(ref_store)
    ref = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert "val/loss=" in ref.stdout

    args, env = cmd(store)
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if list((store / "checkpoints" / "lm").glob("*/last_*.pt")):
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    (record,) = (store / "checkpoints" / "lm").glob("*/run.sdn")
    run_id = record.parent.name
    before = load_run(store / "runs" / "lm" / run_id).history()

    args, env = cmd(store, "--resume")
    resumed = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resume: run {run_id} from " in resumed.stdout

    got, want = final_model(store), final_model(ref_store)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    tracked = load_run(store / "runs" / "lm" / run_id)
    assert tracked.status == "finished" and len(list((store / "runs" / "lm").iterdir())) == 1
    after = tracked.history()
    assert after[:len(before)] == before and len(after) > len(before)
    assert any("train/lr" in r for r in after)
    assert sdn.loads(record.read_text())["status"] == "finished"
