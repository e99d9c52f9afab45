"""A run's first-use work (system information, psutil's import) happens when it is created,
never in its first drain, and never on the event loop's thread."""

from __future__ import annotations

import importlib
import platform
import sys
import threading

import pytest

import aiotrain.tracking as tracking_pkg
from aiotrain.runtime import to_io
from aiotrain.tracking import Track, system
from aiotrain.tracking.system import system_info


def test_a_sync_run_is_warm_before_its_first_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    system_info.cache_clear()
    run = Track.run("p")
    assert system_info.cache_info().currsize == 1  # computed by Track.run itself
    assert not run.dir.exists()  # and nothing drained yet

    def no_subprocess() -> str:
        raise AssertionError("the first drain ran platform.platform()")

    monkeypatch.setattr(platform, "platform", no_subprocess)
    run.log({"a": 1.0})
    run.finish()  # the drain writes metadata.sdn from the cached information
    assert Track.load_run(run.dir).status == "finished"


async def test_a_run_created_in_a_loop_warms_up_on_an_io_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    system_info.cache_clear()
    monkeypatch.delitem(sys.modules, "psutil", raising=False)
    loop_thread = threading.current_thread()
    threads: list[threading.Thread] = []
    go, done = threading.Event(), threading.Event()
    real = system._warm_up

    def held_back(sampler: bool) -> None:  # waits until the test has looked
        threads.append(threading.current_thread())
        go.wait()
        real(sampler)
        done.set()

    monkeypatch.setattr(system, "_warm_up", held_back)
    run = Track.run("p", system_interval=1.0)
    assert "psutil" not in sys.modules and not system_info.cache_info().currsize  # nothing on the loop
    go.set()
    assert await to_io(done.wait, 60)  # a liveness bound, not a measurement
    assert threads and all(t is not loop_thread for t in threads)
    assert "psutil" in sys.modules and system_info.cache_info().currsize == 1
    await run.afinish()


def test_the_sampler_module_imports_psutil_only_when_a_sampler_is_made(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run imports system_metrics on the event loop when it starts the sampler task: that
    import must not carry psutil's (tens of milliseconds)."""
    monkeypatch.setattr(tracking_pkg, "system_metrics", importlib.import_module("aiotrain.tracking.system_metrics"),
                        raising=False)
    monkeypatch.delitem(sys.modules, "aiotrain.tracking.system_metrics")
    monkeypatch.delitem(sys.modules, "psutil", raising=False)
    fresh = importlib.import_module("aiotrain.tracking.system_metrics")
    assert "psutil" not in sys.modules
    fresh.SystemSampler().sample()
    assert "psutil" in sys.modules
