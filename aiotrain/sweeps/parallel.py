"""Trials side by side: how their threads share the machine.

torch's OpenMP threads spin for a while after each parallel region before they sleep. One
training process alone loses nothing by it; trials running side by side lose the cores the
other trials need (4 trials of the digits example, 2 at a time on 2 cores: 3.1x the sequential
time). ``idle_threads_yield(parallel)`` has them wait passively instead. It changes how idle
threads wait, never how many there are or what they compute, so a trial's result is the same
alone or beside others (``tests/sweeps/test_runner.py``).
"""

from __future__ import annotations

import os

__all__ = ["idle_threads_yield"]


def idle_threads_yield(parallel: int) -> None:
    """With ``parallel`` > 1: ``OMP_WAIT_POLICY=PASSIVE`` for the processes started from now
    on, unless the environment already sets a policy. OpenMP reads it when torch is loaded, so
    it is set before the job server (or a trial) starts: ``aiotrain sweep`` calls it first
    thing and ``SweepRunner`` when it is made (a job server that started earlier, with another
    environment, is replaced by one with this one)."""
    if parallel > 1:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
