"""Sweeps: grid covers the grid, random is seeded, trials are runs, the best is reported."""

from __future__ import annotations

import json
import math

import pytest

from aiotrain.tracking import Choice, IntUniform, LogUniform, Normal, Track, Uniform


def test_grid_covers_the_grid(track_root):
    sweep = Track.Sweep.define(method="grid", metric={"name": "loss", "goal": "minimize"},
                               parameters={"lr": Choice([0.1, 0.01]), "opt": {"layers": IntUniform(1, 3)},
                                           "fixed": 7}, project="sw")
    seen = []

    def trial(config):
        seen.append(config)
        return config["lr"] * config["opt"]["layers"]

    result = Track.Sweep.agent(sweep, trial)
    assert len(seen) == 6
    assert {(c["lr"], c["opt"]["layers"]) for c in seen} == {(lr, n) for lr in (0.1, 0.01) for n in (1, 2, 3)}
    assert all(c["fixed"] == 7 for c in seen)
    assert result.best.config == {"lr": 0.01, "opt": {"layers": 1}, "fixed": 7}
    assert result.best.value == pytest.approx(0.01)
    runs = Track.runs("sw")
    assert len(runs) == 6 and all(r.tags == [f"sweep:{sweep.id}"] for r in runs)
    assert {r.id for r in runs} == {t.run_id for t in result.trials}
    assert all(r.summary["loss"] == r.config["lr"] * r.config["opt"]["layers"] for r in runs)
    saved = json.loads((track_root / "sweeps" / "sw" / f"{sweep.id}.json").read_text())
    assert saved["best"]["run_id"] == result.best.run_id and len(saved["trials"]) == 6
    assert len(list(sweep.configs(count=4))) == 4


def test_grid_rejects_continuous():
    with pytest.raises(ValueError, match="'lr'"):
        Track.Sweep.define("grid", {"name": "x"}, {"lr": Uniform(0, 1)})


def test_random_is_seeded_and_in_range():
    params = {"lr": LogUniform(1e-4, 1e-1), "p": Uniform(0.0, 0.5), "n": IntUniform(2, 4),
              "z": Normal(0.0, 1.0), "act": Choice(["relu", "gelu"])}
    a = Track.Sweep.define("random", {"name": "acc", "goal": "maximize"}, params, seed=3)
    b = Track.Sweep.define("random", {"name": "acc", "goal": "maximize"}, params, seed=3)
    c = Track.Sweep.define("random", {"name": "acc", "goal": "maximize"}, params, seed=4)
    draws = list(a.configs(50))
    assert draws == list(b.configs(50)) and draws != list(c.configs(50))
    assert all(1e-4 <= d["lr"] <= 1e-1 and 0 <= d["p"] <= 0.5 and d["n"] in (2, 3, 4) for d in draws)
    assert {d["act"] for d in draws} == {"relu", "gelu"} and {d["n"] for d in draws} == {2, 3, 4}
    with pytest.raises(ValueError, match="count"):
        list(a.configs())


def test_bad_definitions():
    with pytest.raises(ValueError, match="method"):
        Track.Sweep.define("hyperopt", {"name": "x"}, {"a": 1})
    with pytest.raises(ValueError, match="Normal"):
        Track.Sweep.define("bayes", {"name": "x"}, {"a": Normal(0, 1)})
    with pytest.raises(ValueError, match="early_terminate type"):
        Track.Sweep.define("random", {"name": "x"}, {"a": Uniform(0, 1)}, early_terminate={"type": "asha"})
    with pytest.raises(ValueError, match="reduction_fctor"):
        Track.Sweep.define("random", {"name": "x"}, {"a": Uniform(0, 1)},
                           early_terminate={"type": "hyperband", "reduction_fctor": 2})
    with pytest.raises(ValueError):
        Track.Sweep.define("grid", {"name": "x", "goal": "up"}, {"a": 1})
    with pytest.raises(ValueError):
        Track.Sweep.define("grid", {}, {"a": 1})
    for bad in (lambda: Uniform(1, 0), lambda: LogUniform(0, 1), lambda: IntUniform(1.5, 2),
                lambda: Normal(0, 0), lambda: Choice([])):
        with pytest.raises(ValueError):
            bad()


def test_trials_log_through_their_run_and_failures_are_kept():
    sweep = Track.Sweep.define("grid", {"name": "acc", "goal": "maximize"}, {"x": Choice([1, 2, 3])})

    def trial(config, run):
        if config["x"] == 2:
            raise RuntimeError("bad trial")
        for step in range(3):
            run.log({"acc": config["x"] * step})

    result = Track.Sweep.agent(sweep, trial)
    assert [t.status for t in result.trials] == ["finished", "crashed", "finished"]
    assert result.best.config == {"x": 3} and result.best.value == 6
    assert "bad trial" in result.trials[1].error
    with pytest.raises(RuntimeError, match="every trial"):
        Track.Sweep.agent(sweep, lambda config: 1 / 0)


async def test_async_trials():
    sweep = Track.Sweep.define("random", {"name": "loss"}, {"lr": Uniform(0, 1)}, seed=1)

    async def trial(config):
        return {"loss": config["lr"]}

    result = await Track.Sweep.aagent(sweep, trial, count=3)
    assert len(result.trials) == 3
    assert result.best.value == min(t.config["lr"] for t in result.trials)


def test_async_trial_from_sync_agent():
    sweep = Track.Sweep.define("grid", {"name": "loss"}, {"a": Choice([3, 1, 2])})

    async def trial(config):
        return config["a"]

    assert Track.Sweep.agent(sweep, trial).best.config == {"a": 1}


def _quadratic(config):
    """A deterministic objective with its optimum at lr=1e-2, width=64."""
    return {"loss": (math.log10(config["lr"]) + 2) ** 2 + abs(config["width"] - 64) / 64}


def test_bayes_is_seeded_and_beats_its_own_random_start(track_root):
    params = {"lr": LogUniform(1e-4, 1e-1), "width": Choice([16, 32, 64, 128])}
    runs = [Track.Sweep.agent(Track.Sweep.define("bayes", {"name": "loss"}, params, seed=s), _quadratic,
                              count=24) for s in (5, 5, 6)]
    configs = [[t.config for t in r.trials] for r in runs]
    assert configs[0] == configs[1] and configs[0] != configs[2]
    values = [t.value for t in runs[0].trials]
    # TPE starts with 10 random trials; what it proposes after them is better on average
    assert sum(values[12:]) / 12 < sum(values[:10]) / 10
    assert runs[0].best.value < 0.3


def test_grid_and_random_work_without_optuna(monkeypatch, track_root):
    import builtins

    real = builtins.__import__

    def no_optuna(name, *args, **kwargs):
        if name == "optuna" or name.startswith("optuna."):
            raise ImportError("no optuna here")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_optuna)
    grid = Track.Sweep.define("grid", {"name": "loss"}, {"lr": Choice([1e-3, 1e-2]), "width": Choice([32, 64])})
    assert len(Track.Sweep.agent(grid, _quadratic).trials) == 4
    rnd = Track.Sweep.define("random", {"name": "loss"}, {"lr": LogUniform(1e-4, 1e-1), "width": 64}, seed=2)
    assert len(Track.Sweep.agent(rnd, _quadratic, count=3).trials) == 3
    with pytest.raises(ImportError, match="aiotrain\\[sweeps\\]"):
        Track.Sweep.define("bayes", {"name": "loss"}, {"lr": LogUniform(1e-4, 1e-1)})
