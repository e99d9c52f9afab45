"""Shared sweeps: trials per minute of one ``aiotrain sweep`` worker vs two on the same study.

The same random sweep (``--trials`` trials of the tiny regression task in tests/job, each
``--epochs`` epochs) runs twice on a fresh SQLite study: once with one worker process, once
with two worker processes started together (``--storage sqlite:///... --study NAME``, trials
in-process). A trial sleeps ``--step-sleep`` seconds per step, standing for compute that happens
elsewhere (a GPU, another machine's cores): two workers on this 2-core machine then measure the
cooperation itself (claims, reports, heartbeats through the storage) rather than two trainings
sharing two cores. Trials per minute count from the first trial's start to the last trial's end
(from the study's own timestamps), so the workers' start-up (importing torch) is left out; the
wall time with start-up is reported too. One JSON line; figures depend on the machine's load.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from _common import emit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiotrain.sweeps.study import open_storage  # noqa: E402
from tests.job.tiny_task import SDN  # noqa: E402


def run_sweep(folder: Path, workers: int, trials: int, epochs: int, step_sleep: float) -> dict:
    folder.mkdir(parents=True)
    config = folder / "tiny.sdn"
    config.write_text(SDN)
    storage, study = f"sqlite:///{folder / 'sweep.db'}", f"w{workers}"
    cmd = [sys.executable, "-m", "aiotrain", "sweep", str(config), "optim.lr=loguniform(1e-3,1e-1)",
           "--metric", "loss", "--goal", "minimize", "--trials", str(trials), "--in-process",
           "--storage", storage, "--study", study, f"train.max_epochs={epochs}",
           f"data.slow={step_sleep}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    procs = [subprocess.Popen([*cmd, "--dir", str(folder / f"root{i}")], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i in range(workers)]
    for proc in procs:
        _, err = proc.communicate(timeout=3600)
        assert proc.returncode == 0, err[-2000:]
    wall = time.perf_counter() - start
    import optuna

    done = [t for t in optuna.load_study(study_name=study, storage=open_storage(storage)).trials
            if t.state.name == "COMPLETE"]
    assert len(done) == trials, len(done)
    first = min(t.datetime_start for t in done)
    last = max(t.datetime_complete for t in done)
    span = (last - first).total_seconds()
    return {"trials_per_min": round(trials / span * 60, 1), "span_s": round(span, 1),
            "wall_with_startup_s": round(wall, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--step-sleep", type=float, default=0.02)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = run_sweep(Path(tmp) / "one", 1, args.trials, args.epochs, args.step_sleep)
        two = run_sweep(Path(tmp) / "two", 2, args.trials, args.epochs, args.step_sleep)
    emit("shared_sweep", trials=args.trials, epochs=args.epochs, step_sleep_s=args.step_sleep,
         storage="sqlite", one_worker=one, two_workers=two,
         speedup=round(two["trials_per_min"] / one["trials_per_min"], 2))


if __name__ == "__main__":
    main()
