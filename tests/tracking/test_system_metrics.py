"""The system metrics sampler: what a sample holds, and a run's sampler task writing system.jsonl."""

from __future__ import annotations

import asyncio

import psutil
import pytest

from aiotrain.tracking import Track
from aiotrain.tracking.reader import read_history
from aiotrain.tracking.system_metrics import SystemSampler


def test_a_sample_holds_cpu_memory_and_io():
    sampler = SystemSampler()
    sum(i * i for i in range(200_000))  # some CPU time between the two reads
    sample = sampler.sample()
    assert 0.0 <= sample["system/cpu_percent"] <= 100.0
    assert 0.0 <= sample["system/proc_cpu_percent"] <= 100.0 * psutil.cpu_count()
    assert sample["system/proc_rss_mb"] == pytest.approx(psutil.Process().memory_info().rss / 2**20, rel=0.2)
    assert 0.0 < sample["system/mem_available_mb"] <= psutil.virtual_memory().total / 2**20
    for key in ("system/net_sent_mbps", "system/net_recv_mbps"):
        assert sample[key] >= 0.0
    if psutil.disk_io_counters() is not None:
        assert sample["system/disk_read_mbps"] >= 0.0 and sample["system/disk_write_mbps"] >= 0.0
    assert all(isinstance(v, float) for v in sample.values())


@pytest.mark.cuda
def test_gpu_keys_when_a_gpu_is_present():
    sample = SystemSampler().sample()
    assert any(k.startswith("system/gpu0/") for k in sample)


async def test_an_open_run_samples_into_system_jsonl(track_root):
    async with Track.run("sys", system_interval=0.05) as run:
        run.log({"loss": 1.0})
        for _ in range(200):
            await asyncio.sleep(0.05)
            if (run.dir / "system.jsonl").is_file() and len(read_history(run.dir / "system.jsonl")) >= 3:
                break
        task_names = {t.get_name() for t in asyncio.all_tasks()}
        assert f"aiotrain-system-{run.id}" in task_names
    samples = read_history(run.dir / "system.jsonl")
    assert len(samples) >= 3 and all("system/cpu_percent" in s and s["step"] == 1 for s in samples)
    history = Track.load_run(run.dir).history()  # the user's history holds only what they logged
    assert len(history) == 1 and set(history[0]) == {"step", "timestamp", "loss"}
    assert not any(k.startswith("system/") for k in Track.load_run(run.dir).summary)
    await asyncio.sleep(0)
    assert f"aiotrain-system-{run.id}" not in {t.get_name() for t in asyncio.all_tasks()}


async def test_sampler_off_and_bad_interval(track_root):
    async with Track.run("sys", system_interval=None) as run:
        run.log({"loss": 1.0})
        await asyncio.sleep(0.1)
    assert not (run.dir / "system.jsonl").exists()
    with pytest.raises(ValueError, match="system_interval must be > 0"):
        Track.run("sys", system_interval=0)
