"""runtime.processes: forks from the loop take turns, with the loop's timers run between them."""

from __future__ import annotations

import asyncio

from aiotrain.runtime import processes
from aiotrain.runtime.processes import fork, fork_turn


async def test_forks_from_two_pools_take_turns_and_the_loop_runs_between_them():
    events: list[str] = []
    children = []

    async def ticker() -> None:
        while True:
            await asyncio.sleep(0.0005)
            events.append("tick")

    async def pool(name: str) -> None:
        for i in range(2):
            async with fork_turn():
                events.append(f"{name}{i} forks")
                children.append(fork(lambda: 0))
                events.append(f"{name}{i} forked")

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.001)
    await asyncio.gather(pool("a"), pool("b"))
    tick.cancel()
    for child in children:
        await child.exited()
        assert child.returncode == 0
    forks = [e for e in events if e != "tick"]
    # never two forks inside one turn: each "forks" is followed by its own "forked"
    assert forks[0::2] == [e.replace("forked", "forks") for e in forks[1::2]]
    # and the loop's timers ran between one fork and the next
    between = " ".join(events).split(" forked")[1:-1]
    assert len(between) == 3 and all("tick" in part for part in between), events


async def test_a_turn_that_does_not_fork_makes_no_one_wait(monkeypatch):
    monkeypatch.setattr(processes, "_FORK_GAP_S", 3600.0)  # a pause would be plain to see

    async def turns() -> None:
        for _ in range(3):
            async with fork_turn():
                pass

    await asyncio.wait_for(turns(), 60)
