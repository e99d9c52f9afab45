"""The digits example: its random augmentation runs through AsyncLoader's worker processes and
a run resumed from a checkpoint ends bit-identical to a straight one, whatever the worker count;
its tracked history says the same, each metric under one name, each step once."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
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


def _history(store: Path) -> list[tuple[int, dict]]:
    (path,) = (store / "runs" / "digits").glob("*/metrics.jsonl")
    lines = [msgspec.json.decode(line) for line in path.read_bytes().splitlines() if line.strip()]
    return [(r.pop("step"), {k: v for k, v in r.items() if k != "timestamp"}) for r in lines]


def _killed_after_its_first_checkpoint(store: Path) -> bool:
    """The first epoch's checkpoint is on disk and a record logged after it is in the history
    (so every record before it is: the file is appended in order)."""
    if not list(store.rglob("last*.pt")) or not list(store.rglob("metrics.jsonl")):
        return False
    try:
        history = _history(store)
    except (ValueError, msgspec.DecodeError):  # a line being appended
        return False
    evaluated = [step for step, r in history if "val/accuracy" in r]
    return bool(evaluated) and history[-1][0] > evaluated[0]


def _final_model(store: Path) -> dict:
    last = sorted((store / "checkpoints").rglob("last*.pt"))[-1]
    return torch.load(last, weights_only=True)["model"]


@pytest.mark.timeout(600)
def test_augmented_digits_resume_is_bit_identical_across_worker_counts(tmp_path):
    straight = _start(tmp_path / "a", "data.workers=0", "train.log_every=1")
    # SIGKILLed once its first checkpoint is on disk and it has logged past it
    first = _start(tmp_path / "b", "data.workers=2", "train.log_every=1")
    deadline = time.monotonic() + 200
    while not _killed_after_its_first_checkpoint(tmp_path / "b") and time.monotonic() < deadline:
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL
    out, err = straight.communicate(timeout=240)
    assert straight.returncode == 0, err[-3000:]
    # the worker count is not part of the result, so the changed key is forced past the config check
    killed_lines = len(_history(tmp_path / "b"))
    resumed = _train(tmp_path / "b", "data.workers=1", "train.log_every=1", "--resume", "--force")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resume: run" in resumed.stdout and " from " in resumed.stdout
    a, b = _final_model(tmp_path / "a"), _final_model(tmp_path / "b")
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"resumed weights differ in {differ}"
    # the history too: what the killed run logged past its checkpoint was cut (and kept aside),
    # so the resumed history is the straight one, record for record, each step once
    straight_history, resumed_history = _history(tmp_path / "a"), _history(tmp_path / "b")
    assert resumed_history == straight_history
    (aside,) = (tmp_path / "b" / "runs" / "digits").glob("*/metrics.rewound.jsonl")
    moved = len(aside.read_bytes().splitlines())
    assert moved >= 1 and f"resume: {moved} records logged after that checkpoint" in resumed.stdout
    resumed_at = int(re.search(r"resume: run \S+ from .*iteration (\d+)\)", resumed.stdout)[1])
    assert killed_lines - moved == sum(step <= resumed_at for step, _ in straight_history)
    # one metric, one name, at the step it was computed: no train/val/*, val/* once per epoch
    keys = {k for _, r in straight_history for k in r}
    assert not [k for k in keys if k.startswith("train/val")], keys
    assert {"train/loss", "train/lr", "val/accuracy", "val/loss"} <= keys
    val_steps = [step for step, r in straight_history if "val/accuracy" in r]
    assert len(val_steps) == 3 and len(set(val_steps)) == 3

