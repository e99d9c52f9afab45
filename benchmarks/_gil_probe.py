"""A GIL-burst probe for the benchmarks (instrumentation, not library code).

``with GilProbe() as probe: ...`` runs a thread that sleeps ``PERIOD`` (1 ms) in a loop and
records how late it wakes: a sleeping thread needs the GIL back to wake, so a late wake-up means
another thread held the GIL that long, or the OS did not run the probe, or it did not run the
thread that held the GIL. On a loaded machine the OS's part dominates the wall-clock lateness,
so the probe also reads the kernel's scheduler statistics (Linux, ``/proc/self/task/*/schedstat``:
CPU time and time spent runnable but waiting for a core, per thread). For each late wake-up it
records which other thread of the process used the most CPU meanwhile (the likely holder), and
``gil_wait``: the lateness less the time the probe and that thread waited for a core, which
stays a fair reading of the GIL hold on a loaded machine (it includes the timer's slack, tens
of microseconds; where schedstat is missing it is the lateness).
Garbage collections are recorded through ``gc.callbacks`` (start, length, generation, thread),
so a burst that is a collection of the whole heap can be told apart from the work measured.
``probe.window(t0, t1)`` sums up what happened between two ``time.perf_counter()`` readings.
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Any, BinaryIO

__all__ = ["GilProbe"]

Stats = dict[int, tuple[str, int, int]]  # native id -> (name, cpu ns, waited for a core ns)


class GilProbe:
    PERIOD = 0.001
    LATE = 0.0005  # wake-ups later than this are recorded

    def __init__(self) -> None:
        self.late: list[tuple[float, float, float, str]] = []  # (woke at, late s, gil wait s, holder)
        self.wakes: list[float] = []
        self.collections: list[tuple[float, float, int, str]] = []  # (start, seconds, gen, thread)
        self._gc_started: dict[int, float] = {}
        self._files: dict[int, BinaryIO | None] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._main, name="gil-probe", daemon=True)

    def __enter__(self) -> GilProbe:
        gc.callbacks.append(self._on_gc)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        gc.callbacks.remove(self._on_gc)
        for f in self._files.values():
            if f is not None:
                f.close()

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        ident = threading.get_ident()
        if phase == "start":
            self._gc_started[ident] = time.perf_counter()
        elif ident in self._gc_started:
            start = self._gc_started.pop(ident)
            self.collections.append((start, time.perf_counter() - start, info["generation"],
                                     threading.current_thread().name))

    def _main(self) -> None:
        clock = time.perf_counter
        me = threading.get_native_id()
        while not self._done.is_set():
            before = self._stats()
            t = clock()
            time.sleep(self.PERIOD)
            now = clock()
            self.wakes.append(now)
            late = now - t - self.PERIOD
            if late > self.LATE:
                after = self._stats()
                waited = _delta(before, after, me, 2)
                holder = max((tid for tid in after if tid != me and tid in before),
                             key=lambda tid: _delta(before, after, tid, 1), default=None)
                if holder is not None:
                    waited += _delta(before, after, holder, 2)
                name = after[holder][0] if holder is not None else ""
                self.late.append((now, late, max(0.0, late - waited / 1e9), name))

    def _stats(self) -> Stats:
        """CPU time and wait for a core of every live thread (this one included), by native id."""
        out: Stats = {}
        for thread in threading.enumerate():
            tid = thread.native_id
            if tid is None:
                continue
            f = self._files.get(tid, False)
            if f is False:
                try:
                    f = self._files[tid] = open(f"/proc/self/task/{tid}/schedstat", "rb")  # noqa: SIM115
                except OSError:  # not Linux, or the thread just ended
                    f = self._files[tid] = None
            if f is None:
                continue
            try:
                f.seek(0)
                cpu, delay = f.read().split()[:2]
            except (OSError, ValueError):  # the thread ended meanwhile
                continue
            out[tid] = (thread.name, int(cpu), int(delay))
        return out

    def window(self, t0: float, t1: float) -> dict[str, Any]:
        """Between ``t0`` and ``t1``: the worst wake-up lateness (ms), the worst that did not
        overlap a garbage collection and the thread busiest meanwhile, the worst ``gil_wait``
        outside collections and its thread, counts over 1 and 5 ms of both, and the collections
        that took 1 ms or more."""
        events = [e for e in self.late if t0 <= e[0] <= t1]
        long_gcs = [c for c in self.collections if t0 <= c[0] <= t1 and c[1] >= 0.001]

        def during_gc(e: tuple[float, float, float, str]) -> bool:
            woke, late = e[0], e[1]
            return any(start < woke and start + length > woke - late - self.PERIOD
                       for start, length, _, _ in long_gcs)

        clean = [e for e in events if not during_gc(e)]
        worst = max(events, key=lambda e: e[1], default=None)
        worst_clean = max(clean, key=lambda e: e[1], default=None)
        worst_gil = max(clean, key=lambda e: e[2], default=None)
        return {
            "wakes": sum(1 for w in self.wakes if t0 <= w <= t1),
            "worst_late_ms": _ms(worst[1]) if worst else 0.0,
            "worst_late_non_gc_ms": _ms(worst_clean[1]) if worst_clean else 0.0,
            "worst_late_non_gc_thread": worst_clean[3] if worst_clean else None,
            "worst_gil_wait_ms": _ms(worst_gil[2]) if worst_gil else 0.0,
            "worst_gil_wait_thread": worst_gil[3] if worst_gil else None,
            "late_over_1ms": sum(1 for e in events if e[1] > 0.001),
            "late_over_5ms": sum(1 for e in events if e[1] > 0.005),
            "gil_wait_over_1ms": sum(1 for e in clean if e[2] > 0.001),
            "gil_wait_over_5ms": sum(1 for e in clean if e[2] > 0.005),
            "gc_over_1ms": [{"ms": _ms(c[1]), "generation": c[2], "thread": c[3]} for c in long_gcs],
        }


def _delta(before: Stats, after: Stats, tid: int, field: int) -> int:
    if tid not in before or tid not in after:
        return 0
    return after[tid][field] - before[tid][field]  # type: ignore[operator]


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 2)
