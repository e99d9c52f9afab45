"""Sweeps: how fast bayes + pruning finds a good model vs random search; K parallel trials vs one.

1. Search efficiency, on a task with a known good region: an MLP on scikit-learn's digits
   (no download) with ``lr = loguniform(1e-4, 1)`` and ``width = choice(4, 8, 16, 32, 64)``,
   trained with SGD for ``--epochs`` epochs (full passes, batches of 64) and scored on a held-out
   fifth after each epoch. Too small a learning rate never gets there within the epochs, too
   large diverges, narrow models cap the accuracy. For several seeds, each method runs until a
   trial reaches ``--target`` validation accuracy (or ``--max-trials``); we count the trials and
   the epochs spent (pruned trials stop early, so epochs are the real cost). The methods use
   aiotrain's search backends (``aiotrain.sweeps.search``) exactly as ``aiotrain sweep`` does:
   random search, bayes (Optuna TPE) alone, and bayes with median pruning.
2. Wall time of ``aiotrain sweep``'s runner: ``--trials`` digits trials (TrainJobs in job worker
   processes) one at a time vs ``--parallel`` at a time, same trials.
3. Warm starts: a ``--trials``-trial one-epoch digits sweep at ``--parallel 1`` (``aiotrain
   sweep``, trials forked from the warm job server) against one ``aiotrain train`` of the same
   trial, and the same sweep with every trial a fresh interpreter (``AIOTRAIN_JOB_START=spawn``,
   how trials started before the job server), all in one run, ``--rounds`` times interleaved
   (medians). Target: sweep <= 2.0x one train.

One JSON line per part; figures depend on the machine's load (reported with them).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
from _common import emit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiotrain.sweeps.search import make_search  # noqa: E402
from aiotrain.sweeps.space import Choice, LogUniform  # noqa: E402

SPACE = {"lr": LogUniform(1e-4, 1.0), "width": Choice([4, 8, 16, 32, 64])}


def digits() -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_val = len(y) // 5
    return x[order[n_val:]], y[order[n_val:]], x[order[:n_val]], y[order[:n_val]]


def trial(data, params, epochs, report) -> tuple[float, int]:
    """Train one config; ``report(epoch, acc)`` may stop it. Returns (last accuracy, epochs run)."""
    xt, yt, xv, yv = data
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, params["width"]), nn.ReLU(), nn.Linear(params["width"], 10))
    opt = torch.optim.SGD(model.parameters(), lr=params["lr"])
    gen = torch.Generator().manual_seed(0)
    acc = 0.0
    for epoch in range(1, epochs + 1):
        for idx in torch.randperm(len(yt), generator=gen).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
        with torch.no_grad():
            acc = float((model(xv).argmax(1) == yv).float().mean())
        if not np.isfinite(acc) or report(epoch, acc):
            return acc, epoch
    return acc, epochs


def search_until(data, method, prune, seed, target, max_trials, epochs) -> dict:
    search = make_search(SPACE, method, "maximize", seed,
                         {"type": "median", "n_startup_trials": 3, "n_warmup_steps": 1} if prune else None)
    spent = 0
    for n in range(max_trials):
        params = search.ask()
        pruned = False

        def report(epoch, acc, n=n):
            nonlocal pruned
            pruned = search.report(n, epoch, acc)
            return pruned

        acc, ran = trial(data, params, epochs, report)
        spent += ran
        search.tell(n, acc, "pruned" if pruned else "finished")
        if not pruned and acc >= target:
            return {"trials": n + 1, "epochs": spent, "reached": True}
    return {"trials": max_trials, "epochs": spent, "reached": False}


def part_search(args) -> None:
    torch.set_num_threads(1)
    data = digits()
    load = os.getloadavg()[0]
    rows = {}
    for label, method, prune in (("random", "random", False), ("bayes", "bayes", False),
                                 ("bayes+median", "bayes", True)):
        runs = [search_until(data, method, prune, s, args.target, args.max_trials, args.epochs)
                for s in range(args.seeds)]
        rows[label] = {"median_trials": statistics.median(r["trials"] for r in runs),
                       "mean_trials": round(statistics.mean(r["trials"] for r in runs), 1),
                       "median_epochs": statistics.median(r["epochs"] for r in runs),
                       "reached": sum(r["reached"] for r in runs), "per_seed": [r["trials"] for r in runs]}
    base = rows["random"]
    emit("sweep_search", target_accuracy=args.target, seeds=args.seeds, epochs_per_trial=args.epochs,
         max_trials=args.max_trials, methods=rows,
         ratios={"bayes_median_vs_random_trials": round(rows["bayes+median"]["mean_trials"] / base["mean_trials"], 2),
                 "bayes_median_vs_random_epochs": round(rows["bayes+median"]["median_epochs"]
                                                        / base["median_epochs"], 2)},
         load_before=round(load, 2), load_after=round(os.getloadavg()[0], 2))


def part_parallel(args) -> None:
    from aiotrain.runtime import run
    from aiotrain.sweeps import Sweep, SweepRunner

    os.chdir(ROOT)
    overrides = ["train.patience=null", "model.channels=8", f"train.max_epochs={args.job_epochs}"]

    async def sweep(parallel: int, root: str) -> float:
        s = Sweep.define("grid", {"name": "accuracy", "goal": "maximize"},
                         {"model": {"dropout": Choice([0.1 * i for i in range(args.trials)])}})
        t0 = time.perf_counter()
        rec = await SweepRunner(s, "examples/digits.sdn", [*overrides, f"tracking.dir={root}",
                                                           f"data.root={root}/data"],
                                parallel=parallel).run()
        assert all(t.status == "finished" for t in rec.trials), rec.trials
        return time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        load = os.getloadavg()[0]
        seq = run(sweep(1, f"{tmp}/seq"))
        par = run(sweep(args.parallel, f"{tmp}/par"))
    emit("sweep_parallel", trials=args.trials, parallel=args.parallel, job_epochs=args.job_epochs,
         sequential_s=round(seq, 1), parallel_s=round(par, 1), speedup=round(seq / par, 2),
         cores=psutil.cpu_count(), load_before=round(load, 2), load_after=round(os.getloadavg()[0], 2))


def _wall(argv: list[str], env: dict[str, str]) -> float:
    import subprocess

    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "aiotrain", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"aiotrain {' '.join(argv)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return wall


def part_warm(args) -> None:
    trial = ["train.max_epochs=1", "train.patience=null"]
    grid = "model.dropout=" + ",".join(f"0.{i + 1}" for i in range(args.trials))
    sweep = ["sweep", "examples/digits.sdn", "--method", "grid", "--trials", str(args.trials),
             "--parallel", "1", grid, *trial]
    times: dict[str, list[float]] = {"one": [], "warm": [], "cold": []}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "AIOTRAIN_DIR": tmp}
        spawn_env = {**env, "AIOTRAIN_JOB_START": "spawn"}
        load = os.getloadavg()[0]
        _wall(["train", "examples/digits.sdn", *trial], env)  # warms the page cache and the data
        for _ in range(args.rounds):  # interleaved, so a burst of load hits all three alike
            times["one"].append(_wall(["train", "examples/digits.sdn", *trial], env))
            times["warm"].append(_wall(sweep, env))
            times["cold"].append(_wall(sweep, spawn_env))
    one, warm, cold = (statistics.median(times[k]) for k in ("one", "warm", "cold"))
    emit("sweep_warm_start", trials=args.trials, rounds=args.rounds, one_train_s=round(one, 2),
         sweep_job_server_s=round(warm, 2), sweep_spawned_s=round(cold, 2),
         ratio_job_server=round(warm / one, 2), ratio_spawned=round(cold / one, 2),
         all_s={k: [round(t, 2) for t in v] for k, v in times.items()},
         target_ratio_max=2.0, load_before=round(load, 2), load_after=round(os.getloadavg()[0], 2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--target", type=float, default=0.96)
    p.add_argument("--epochs", type=int, default=8, help="epochs per search trial")
    p.add_argument("--max-trials", type=int, default=60)
    p.add_argument("--trials", type=int, default=4, help="trials of the parallel part")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--job-epochs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="rounds of the warm part (medians)")
    p.add_argument("--part", choices=("search", "parallel", "warm", "both", "all"), default="all",
                   help="both: search and parallel; all: the three parts")
    args = p.parse_args()
    if args.part in ("search", "both", "all"):
        part_search(args)
    if args.part in ("parallel", "both", "all"):
        part_parallel(args)
    if args.part in ("warm", "all"):
        part_warm(args)


if __name__ == "__main__":
    main()
