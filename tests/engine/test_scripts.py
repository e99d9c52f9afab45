"""Ignite scripts and the seed's own example run with the fewest changes (issue 23.5): a nested
``evaluator.run(...)`` in a sync handler and a top-level ``trainer.run(...)`` behave as in Ignite.
Each script runs as a subprocess, as a user runs it."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aiotrain.tracking import Track

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).resolve().parent / "scripts"

#: The only lines that change when the Ignite script moves to aiotrain.
IMPORTS = {
    "from ignite.engine import Engine, Events": "from aiotrain import Engine, Events",
    "from ignite.handlers import EarlyStopping": "from aiotrain.handlers import EarlyStopping",
    "from ignite.metrics import Accuracy, Loss": "from aiotrain.metrics import Accuracy, Loss",
}

SEED_CONFIG = """\
project: seed-example
validation_mode: check_and_train

train:
  lr = 1e-2
  epochs = 4
  checkpoint_dir: checkpoints

model:
  features = 16
  hidden = 32
  classes = 4
  dropout = 0.1

dataset:
  root: data
  features = 16
  batch_size = 32

cache:
  memory_limit = 67108864
  priorities:
    "data/train/x.bin" = 2
    "data/train/y.bin" = 2
"""


def _run(script: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AIOTRAIN_DIR": str(cwd / ".aiotrain"),
           "PYTHONWARNINGS": "error::RuntimeWarning"}  # a coroutine never awaited fails the run
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=240)


def _write_blobs(root: Path) -> None:
    """Four Gaussian blobs in 16 dimensions, as the memory-mapped files the seed reads."""
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 2, (4, 16))
    for split, n in (("train", 512), ("val", 128)):
        labels = rng.integers(0, 4, n)
        x = (centers[labels] + rng.normal(0, 1, (n, 16))).astype(np.float32)
        (root / split).mkdir(parents=True)
        (root / split / "x.bin").write_bytes(x.tobytes())
        (root / split / "y.bin").write_bytes(labels.astype(np.int64).tobytes())


@pytest.mark.timeout(600)
def test_the_seeds_end_to_end_example_trains_validates_checkpoints_and_tracks(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "train.sdn").write_text(SEED_CONFIG)
    _write_blobs(tmp_path / "data")
    done = _run(SCRIPTS / "seed_example.py", tmp_path, "train.epochs=3")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "VALIDATION PASSED" in done.stdout
    epochs = re.findall(r"epoch (\d): val/loss ([\d.]+) val/acc ([\d.]+)", done.stdout)
    assert [int(e) for e, _, _ in epochs] == [1, 2, 3]  # the override reached the run
    assert float(epochs[-1][2]) > 0.9  # separable blobs: far above chance (0.25)
    assert float(epochs[-1][1]) < float(epochs[0][1])  # and the validation loss fell
    assert done.stdout.rstrip().endswith("Training completed!")
    assert len(list((tmp_path / "checkpoints").glob("*.pt"))) == 3
    [run_dir] = (tmp_path / ".aiotrain" / "runs" / "seed-example").iterdir()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [round(r["val/acc"], 4) for r in rows] == [float(acc) for _, _, acc in epochs]
    Track.set_dir(tmp_path / ".aiotrain")
    try:
        lineage = Track.lineage("seed-example-final:v0", project="seed-example")
    finally:
        Track.set_dir(None)
    assert lineage["runs"] == [{"id": run_dir.name, "role": "producer"}]


def _metric_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith(("Training", "Validation",
                                                                       "Epoch[", "Done"))]


@pytest.mark.timeout(600)
def test_a_typical_ignite_script_runs_with_only_its_imports_changed(tmp_path):
    source = (SCRIPTS / "ignite_script.py").read_text()
    ported = source
    for ignite_line, aiotrain_line in IMPORTS.items():
        assert source.count(ignite_line) == 1
        ported = ported.replace(ignite_line, aiotrain_line)
    assert "ignite" not in ported.replace("Ignite", "")
    (tmp_path / "ported.py").write_text(ported)
    done = _run(tmp_path / "ported.py", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = _metric_lines(done.stdout)
    accuracies = [float(a) for a in re.findall(r"Validation Results .* accuracy: ([\d.]+)", done.stdout)]
    assert len(accuracies) >= 3 and accuracies[-1] > 0.9, done.stdout
    assert lines[-1].startswith("Done: ")
    if importlib.util.find_spec("ignite") is None:
        pytest.skip("pytorch-ignite is not installed: the comparison with Ignite itself is skipped")
    original = _run(SCRIPTS / "ignite_script.py", tmp_path)
    assert original.returncode == 0, original.stderr[-3000:]
    # same data order, same dropout draws, same arithmetic: the same numbers, line for line
    assert lines == _metric_lines(original.stdout)


def test_asyncio_run_of_a_run_made_outside_the_loop_trains_once_and_returns_the_state():
    import asyncio

    from aiotrain import Engine
    from aiotrain.runtime import run

    for runner in (asyncio.run, run):
        steps: list[int] = []
        engine = Engine(lambda e, batch, steps=steps: steps.append(batch))
        state = runner(engine.run([1, 2, 3], max_epochs=2))
        assert state is engine.state and state.epoch == 2 and steps == [1, 2, 3] * 2
