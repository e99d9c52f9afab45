"""The shard cache: budgets hold (eviction takes done shards first), a corrupt cached file is
replaced, and two processes sharing one cache folder download each shard once between them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from aiotrain import AsyncLoader
from aiotrain.data.remote import RemoteDataset, ShardCache, pack
from aiotrain.runtime import to_io

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = Path(__file__).parent / "scripts" / "stream.py"
N = 160


async def _dataset(s3, tmp_path, **cache) -> tuple[str, RemoteDataset]:
    url = f"{s3.url}/c"
    items = [{"i": i, "x": np.random.default_rng(i).bytes(200)} for i in range(N)]
    await to_io(pack, items, url, shard_bytes=4000)
    return url, await RemoteDataset.aopen(url, cache=ShardCache(tmp_path / "cache", **cache))


async def _epoch(ds: RemoteDataset, **kw) -> list[int]:
    loader = AsyncLoader(ds, batch_size=8, sampler=ds.sampler(**kw),
                         collate_fn=lambda b: [int(it["i"]) for it in b])
    return [i async for batch in loader for i in batch]


def _cached(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.shard"))


def _bytes_on_disk(folder: Path) -> int:
    """Bytes of the cached shards (a file evicted while this looks is not counted)."""
    total = 0
    for path in _cached(folder):
        try:
            total += path.stat().st_size
        except FileNotFoundError:
            pass
    return total


async def test_budgets_hold_under_a_small_cache(s3, tmp_path):
    url, probe = await _dataset(s3, tmp_path)
    shard = max(s.bytes or 0 for s in probe.manifest.shards)
    ds = await RemoteDataset.aopen(url, cache=ShardCache(tmp_path / "small", disk_bytes=int(2.5 * shard),
                                                        memory_bytes=shard + 10))
    for epoch_seed in (0, 1):
        assert sorted(await _epoch(ds, seed=epoch_seed)) == list(range(N))
        on_disk = _bytes_on_disk(tmp_path / "small")
        assert on_disk <= 2.5 * shard and ds.cache.held_bytes() <= shard + 10
    await ds.aclose()  # waits for the writes under way
    assert 1 <= len(_cached(tmp_path / "small")) < len(probe.counts)  # some were evicted


async def test_a_corrupt_cached_shard_is_fetched_again(s3, tmp_path):
    url, ds = await _dataset(s3, tmp_path)
    await _epoch(ds)
    await ds.aclose()
    victim = _cached(tmp_path / "cache")[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    again = await RemoteDataset.aopen(url, cache=ShardCache(tmp_path / "cache"))
    index_bytes = again.stats.bytes
    assert sorted(await _epoch(again)) == list(range(N))
    assert again.stats.bytes - index_bytes == len(data)  # that shard, and only it, downloaded again
    await again.aclose()


def _two_readers(url: str, tmp_path: Path) -> list[dict]:
    """Two reader processes at once over one cache folder; their JSON reports."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, str(SCRIPT), url, str(tmp_path / "shared"),
                               str(tmp_path / f"log{k}.json"), "--raw"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in range(2)]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        outs.append(json.loads(out))
    return outs


async def test_two_processes_share_one_cache(s3, tmp_path):
    url, ds = await _dataset(s3, tmp_path)
    outs = await to_io(_two_readers, url, tmp_path)
    for k in range(2):
        assert sorted(json.loads((tmp_path / f"log{k}.json").read_text())["consumed"]) == list(range(N))
    shards = sum(s.bytes or 0 for s in ds.manifest.shards)
    index = ds.stats.bytes
    assert sum(o["bytes"] for o in outs) == shards + 2 * index  # every shard downloaded once
    assert len(_cached(tmp_path / "shared")) == len(ds.counts)
    await ds.aclose()
