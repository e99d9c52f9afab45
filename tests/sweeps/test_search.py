"""Search backends: ask/tell, pruning decisions, and restoring an interrupted sweep."""

from __future__ import annotations

import pytest

from aiotrain.sweeps.record import TrialRecord
from aiotrain.sweeps.search import GridSearch, OptunaSearch, RandomSearch, make_search
from aiotrain.sweeps.space import Choice, IntUniform, LogUniform, Uniform


def test_grid_is_exhausted_and_restore_skips_what_was_asked():
    params = {"a": Choice([1, 2]), "b": {"c": IntUniform(0, 2)}, "fixed": "x"}
    grid = GridSearch(params)
    asked = [grid.ask() for _ in range(6)]
    assert grid.ask() is None and grid.size == 6
    assert {(p["a"], p["b.c"]) for p in asked} == {(a, c) for a in (1, 2) for c in (0, 1, 2)}
    again = GridSearch(params)
    again.restore([TrialRecord(number=i, params={}) for i in range(4)])
    assert [again.ask(), again.ask(), again.ask()] == [asked[4], asked[5], None]


def test_random_restore_continues_the_seeded_sequence():
    params = {"lr": LogUniform(1e-4, 1e-1), "p": Uniform(0, 1)}
    seq = RandomSearch(params, seed=3)
    full = [seq.ask() for _ in range(5)]
    resumed = RandomSearch(params, seed=3)
    resumed.restore([TrialRecord(number=i, params={}) for i in range(3)])
    assert [resumed.ask(), resumed.ask()] == full[3:]


def test_median_pruner_prunes_a_trial_below_the_median():
    search = make_search({"lr": LogUniform(1e-4, 1e-1)}, "random", "maximize", seed=0,
                         early_terminate={"type": "median", "n_startup_trials": 1})
    assert isinstance(search, OptunaSearch)
    search.ask()
    assert not search.report(0, 1, 0.9) and not search.report(0, 2, 0.95)
    search.tell(0, 0.95, "finished")
    search.ask()
    assert search.report(1, 1, 0.2)  # below trial 0's score at step 1
    search.tell(1, None, "pruned")
    search.ask()
    assert not search.report(2, 1, 0.92)


def test_hyperband_pruner_answers_reports():
    search = make_search({"x": Uniform(0, 1)}, "bayes", "minimize", seed=0,
                         early_terminate={"type": "hyperband", "min_resource": 1, "max_resource": 9})
    verdicts = []
    for n in range(8):
        params = search.ask()
        pruned = False
        for step in range(1, 10):
            if search.report(n, step, params["x"] + 1 / step):
                pruned = True
                break
        verdicts.append(pruned)
        search.tell(n, None if pruned else params["x"], "pruned" if pruned else "finished")
    assert any(verdicts) and not all(verdicts)


def test_optuna_restore_replays_results_and_reopens_running_trials():
    params = {"lr": LogUniform(1e-4, 1e-1), "w": Choice([16, 32])}
    first = make_search(params, "bayes", "minimize", seed=1, early_terminate={"type": "median"})
    records = []
    for n in range(4):
        p = first.ask()
        first.report(n, 1, p["lr"])
        status = "crashed" if n == 2 else "finished"
        first.tell(n, p["lr"] if status == "finished" else None, status)
        records.append(TrialRecord(number=n, params=p, status=status, value=p["lr"] if n != 2 else None,
                                   intermediate=[(1, p["lr"])]))
    p4 = first.ask()
    records.append(TrialRecord(number=4, params=p4, intermediate=[(1, 0.5)]))
    again = make_search(params, "bayes", "minimize", seed=1, early_terminate={"type": "median"})
    again.restore(records)
    again.resume_trial(4, p4, [(1, 0.5)])
    assert len(again._study.trials) == 5
    again.tell(4, 0.01, "finished")
    trials = again._study.trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert [t.params for t in trials] == [r.params for r in records]
    assert trials[4].value == pytest.approx(0.01) and trials[4].intermediate_values == {1: 0.5}
    assert again.ask() is not None and 5 in again._trials
