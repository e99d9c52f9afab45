"""runtime.heap: the heap is frozen while runs go, and unfrozen when the last one ends."""

from __future__ import annotations

import gc

from aiotrain import runtime


def test_the_heap_is_frozen_while_a_run_goes_and_unfrozen_after_the_last():
    gc.unfreeze()
    kept = [object() for _ in range(10)]  # alive when the runs start: frozen with them
    outer = runtime.ComputeWorker().start()
    try:
        assert gc.get_freeze_count() > 0
        inner = runtime.ComputeWorker().start()  # an evaluator's run inside the trainer's
        frozen = gc.get_freeze_count()
        inner.stop()
        assert gc.get_freeze_count() >= frozen  # the outer run still goes: still frozen
        outer.start()  # idempotent: not a second run
    finally:
        outer.stop()
    assert gc.get_freeze_count() == 0 and kept


def test_young_objects_made_during_a_run_are_collected_as_usual():
    class Cycle:
        pass

    with runtime.ComputeWorker():
        a, b = Cycle(), Cycle()
        a.other, b.other = b, a
        del a, b
        assert gc.collect() >= 2  # made after the freeze: an ordinary collection frees them
