"""Run a script under a probe of the event loop that ``aiotrain.run`` starts (instrumentation of
the benchmarks, not library code):

    python benchmarks/_loop_probe.py SCRIPT [ARGS...]

On that loop a heartbeat task sleeps 5 ms at a time and records how late it wakes; a
``gc.callbacks`` hook records every collection (start, end, generation, thread); a watchdog
thread (the benchmark's, not aiotrain's) samples every thread's stack while the heartbeat is
more than 15 ms overdue, to say what held the loop. On SIGUSR1 the samples are written, as
JSON, to ``$AIOTRAIN_PROBE_OUT``. Times are ``time.monotonic()``, which
is system-wide, so the benchmark can cut windows out of them with its own clock.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import runpy
import signal
import sys
import threading
import time

TICK = 0.005
beats: list[tuple[float, float]] = []  # (woke at, ms late)
collections: list[tuple[float, float, int, str]] = []  # (start, end, generation, thread)
stalls: list[tuple[float, dict[str, list[str]]]] = []  # (when, thread name -> innermost frames)
_started: dict[int, float] = {}
_last_beat = [time.monotonic()]


def _on_gc(phase: str, info: dict) -> None:
    ident = threading.get_ident()
    if phase == "start":
        _started[ident] = time.monotonic()
    elif ident in _started:
        collections.append((_started.pop(ident), time.monotonic(), info["generation"],
                            threading.current_thread().name))


async def _heartbeat() -> None:
    while True:
        t = time.monotonic()
        await asyncio.sleep(TICK)
        now = time.monotonic()
        _last_beat[0] = now
        beats.append((now, (now - t - TICK) * 1e3))


def _watchdog() -> None:
    """Sample the stacks while the loop is stalled (one sample per 5 ms of stall)."""
    import traceback

    names = {}
    while True:
        time.sleep(0.005)
        now = time.monotonic()
        if now - _last_beat[0] < TICK + 0.015:
            continue
        names.update({t.ident: t.name for t in threading.enumerate()})
        sample = {}
        for ident, frame in sys._current_frames().items():
            if ident == threading.get_ident():
                continue
            frames = traceback.extract_stack(frame)[-4:]
            sample[names.get(ident, str(ident))] = [f"{os.path.basename(f.filename)}:{f.lineno}:{f.name}"
                                                    for f in frames]
        stalls.append((now, sample))


def _dump() -> None:
    path = os.environ["AIOTRAIN_PROBE_OUT"]
    with open(path + ".tmp", "w") as f:
        json.dump({"beats": beats, "collections": collections, "stalls": stalls,
                   "tick_ms": TICK * 1e3}, f)
    os.replace(path + ".tmp", path)


def main() -> None:
    import aiotrain.runtime as rt

    plain_run = rt.run

    def run(main, **kw):
        coro = main() if callable(main) else main

        async def probed():
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, _dump)
            beat = asyncio.create_task(_heartbeat())
            try:
                return await coro
            finally:
                beat.cancel()

        return plain_run(probed(), **kw)

    rt.run = run
    gc.callbacks.append(_on_gc)
    threading.Thread(target=_watchdog, name="probe-watchdog", daemon=True).start()
    script, *args = sys.argv[1:]
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
