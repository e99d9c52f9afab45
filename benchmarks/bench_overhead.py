"""Per-iteration overhead of a no-op step: bare loop vs Ignite vs aiotrain, 0 and 10 handlers.

"10 handlers (filtered)" are ten handlers on ITERATION_COMPLETED(every=100), the usual shape of
logging and checkpoint handlers; "10 handlers (every)" fire on every iteration (sync handlers run
inline on the compute thread, no loop crossing). Also steady-state throughput relative to a bare loop at a
2 ms step: the time of a long run minus a short one (so the one-off start-up of a run, reported
apart, cancels), taken in interleaved rounds (bare, Ignite, aiotrain) and compared by the median
ratio, so a burst of noise on the shared machine hits all three alike. Ignite and aiotrain run side
by side in one process. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from _common import emit  # noqa: E402
from ignite.engine import Engine as IgniteEngine  # noqa: E402
from ignite.engine import Events as IgniteEvents  # noqa: E402

from aiotrain import Engine, Events  # noqa: E402


def noop(engine, batch):
    return batch


def handler(engine):
    pass


def bare(n: int, step_s: float = 0.0) -> float:
    data = range(n)
    t0 = time.perf_counter()
    for b in data:
        if step_s:
            _spin(step_s)
        noop(None, b)
    return time.perf_counter() - t0


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def timed(make, events_mod, n: int, handlers: int, every: int | None, step_s: float = 0.0) -> float:
    step = (lambda e, b: _spin(step_s)) if step_s else noop
    engine = make(step)
    ev = events_mod.ITERATION_COMPLETED if every is None else events_mod.ITERATION_COMPLETED(every=every)
    for _ in range(handlers):
        engine.add_event_handler(ev, handler)
    runner = engine.run_sync if hasattr(engine, "run_sync") else engine.run
    t0 = time.perf_counter()
    runner(range(n), max_epochs=1)
    return time.perf_counter() - t0


def best(fn, repeats: int) -> float:
    return min(fn() for _ in range(repeats))


def steady_throughput(short: int, long: int, rounds: int) -> dict:
    """Median over interleaved rounds of bare / engine per-iteration time at a 2 ms step, with
    each engine's one-off start-up (a 1-iteration run minus one step) reported apart."""
    runs = {
        "bare": lambda n: bare(n, 0.002),
        "ignite": lambda n: timed(IgniteEngine, IgniteEvents, n, 0, None, 0.002),
        "aiotrain": lambda n: timed(Engine, Events, n, 0, None, 0.002),
    }
    per_iter: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            per_iter[name].append((run(long) - run(short)) / (long - short))
    ratios = {k: statistics.median(b / t for b, t in zip(per_iter["bare"], per_iter[k], strict=True))
              for k in ("ignite", "aiotrain")}
    startup = {k: round((best(lambda r=runs[k]: r(1), 5) - 0.002) * 1e3, 2) for k in ("ignite", "aiotrain")}
    return {"ratio_vs_bare": {k: round(v, 4) for k, v in ratios.items()}, "startup_ms": startup}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--iters", type=int, default=20000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--step-iters", type=int, default=1500, help="long run at the 2 ms step")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds at the 2 ms step")
    a = p.parse_args()
    n = a.iters
    us = {}
    base = best(lambda: bare(n), a.repeats)
    for label, handlers, every in (("0", 0, None), ("10_filtered", 10, 100), ("10_every", 10, None)):
        for name, make, evs in (("ignite", IgniteEngine, IgniteEvents), ("aiotrain", Engine, Events)):
            t = best(lambda m=make, e=evs, h=handlers, ev=every: timed(m, e, n, h, ev), a.repeats)
            us[f"{name}_{label}_us"] = round((t - base) / n * 1e6, 2)
    us["bare_loop_us"] = round(base / n * 1e6, 3)
    steady = steady_throughput(a.step_iters // 5, a.step_iters, a.rounds)
    emit("overhead", per_iteration=us,
         throughput_vs_bare_at_2ms=steady["ratio_vs_bare"], run_startup_ms=steady["startup_ms"],
         ratio_aiotrain_over_ignite={k: round(us[f"aiotrain_{k}_us"] / max(us[f"ignite_{k}_us"], 1e-9), 2)
                                     for k in ("0", "10_filtered", "10_every")},
         targets={"ratio_aiotrain_over_ignite_max": {"0": 1.0, "10_filtered": 1.0, "10_every": 1.5},
                  "throughput_vs_bare_min": 0.99}, load=os.getloadavg()[0])


if __name__ == "__main__":
    main()
