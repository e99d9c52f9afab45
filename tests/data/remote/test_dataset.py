"""RemoteDataset through AsyncLoader against a real S3 server: every item once per epoch, the
second epoch from the cache, exact resume after kill -9 without re-downloading, elastic resume
from 2 ranks to 1 and from 1 to 2, tar shards with and without an index."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import numpy as np
import pytest

from aiotrain import AsyncLoader
from aiotrain.data import DatasetError
from aiotrain.data.remote import (
    RemoteDataset,
    RemoteDatasetError,
    ShardCache,
    ShardIntegrityError,
    pack,
)
from aiotrain.data.remote.packed import crc32, header_size, read_header
from aiotrain.data.remote.source import ObjectSource
from aiotrain.runtime import to_io

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = Path(__file__).parent / "scripts" / "stream.py"
N = 240


def _items(n: int = N) -> list[dict]:
    return [{"i": i, "x": np.random.default_rng(i).integers(0, 255, 200, dtype=np.uint8)}
            for i in range(n)]


def _ids(items: list[dict]) -> list[int]:
    return [int(it["i"]) for it in items]


async def _packed(s3, name: str = "ds", **kw) -> str:
    url = f"{s3.url}/{name}"
    await to_io(pack, _items(), url, shard_bytes=kw.pop("shard_bytes", 8000), **kw)
    return url


async def _epoch(loader) -> list[int]:
    out: list[int] = []
    async for batch in loader:
        out += batch
    return out


async def test_every_item_once_and_the_second_epoch_from_the_cache(s3, tmp_path):
    url = await _packed(s3, compression="zlib")
    ds = await RemoteDataset.aopen(url, cache=ShardCache(tmp_path))
    assert len(ds) == N and len(ds.counts) > 4
    loader = AsyncLoader(ds, batch_size=16, sampler=ds.sampler(seed=1), collate_fn=_ids)
    first = await _epoch(loader)
    assert sorted(first) == list(range(N)) and first != sorted(first)
    downloaded, misses = ds.stats.bytes, ds.stats.misses
    assert misses > 0
    second = await _epoch(loader)
    assert sorted(second) == list(range(N)) and second != first  # reshuffled for epoch 1
    assert ds.stats.bytes == downloaded and ds.stats.misses == misses  # all from the cache
    assert ds.stats.metrics()["data/cache_hit_rate"] <= 1.0
    await ds.aclose()


async def test_decoding_in_worker_processes_does_not_change_the_batches(s3, tmp_path):
    url = await _packed(s3)
    ds = await RemoteDataset.aopen(url, cache=ShardCache(tmp_path))
    batches = []
    for workers in (0, 2):
        loader = AsyncLoader(ds, batch_size=32, sampler=ds.sampler(seed=2), workers=workers,
                             transform=_decode, rng="numpy")
        async with loader:
            batches.append([b.clone() async for b in loader])
    assert len(batches[0]) == len(batches[1])
    assert all((a == b).all() for a, b in zip(*batches, strict=True))
    await ds.aclose()


def _decode(item, gen):
    return item["x"].astype(np.float32) + gen.random()


async def test_a_wrong_url_or_a_stale_index_is_one_line_at_open(s3, tmp_path):
    with pytest.raises(RemoteDatasetError, match=r"^cannot open the dataset: s3://.*/nothing/"
                                                 r"index.json: no such object"):
        await RemoteDataset.aopen(f"{s3.url}/nothing", cache=ShardCache(tmp_path))
    url = await _packed(s3)
    await ObjectSource(url).aput("shard-00000.atp", b"short")
    with pytest.raises(RemoteDatasetError, match="5 bytes in the store, .* in the index"):
        await RemoteDataset.aopen(url, cache=ShardCache(tmp_path))


async def test_an_index_cannot_send_the_reader_to_local_files(s3, tmp_path):
    url = f"{s3.url}/hostile"
    index = {"shardlist": [{"url": "file:///etc/passwd", "nsamples": 1}]}
    await ObjectSource(url).aput("index.json", json.dumps(index).encode())
    with pytest.raises(RemoteDatasetError, match="another kind of store"):
        await RemoteDataset.aopen(url, cache=ShardCache(tmp_path))


@pytest.mark.parametrize("where", ["item", "header"])
async def test_a_corrupt_item_or_header_is_refused_not_served(s3, tmp_path, where):
    url = await _packed(s3)
    src = ObjectSource(url)
    shard = bytearray(await src.aget("shard-00001.atp"))
    shard[-1 if where == "item" else 20] ^= 0xFF  # same size, different bytes
    await src.aput("shard-00001.atp", bytes(shard))
    ds = await RemoteDataset.aopen(url, cache=ShardCache(tmp_path))
    last = sum(ds.counts[:2]) - 1  # the last item of shard 1
    loader = AsyncLoader(ds, batch_size=16, sampler=ds.sampler(shuffle="none"), collate_fn=_ids,
                         skip_errors=1 if where == "item" else 0)
    if where == "item":  # that one item is refused; the rest of its shard is served
        assert sorted(await _epoch(loader)) == [i for i in range(N) if i != last]
        assert [(i, e.split(":")[0]) for _, i, e in loader.skipped] == [(last, "ShardIntegrityError")]
        assert "does not match its CRC-32" in loader.skipped[0][2]
        await ds.aclose()
        # checked whole before it was written: the corrupt download was not cached
        assert len(list(tmp_path.glob("*.shard"))) == len(ds.counts) - 1
        again = await RemoteDataset.aopen(url, cache=ShardCache(tmp_path))
        index = again.stats.bytes
        with pytest.raises(ShardIntegrityError, match="does not match its CRC-32"):
            await again.aget(last)
        assert again.stats.bytes - index == len(shard)
        await again.aclose()
    else:
        with pytest.raises(DatasetError, match="header does not match the index's head_crc32"):
            await _epoch(loader)
        await ds.aclose()


async def test_items_are_served_before_their_shard_has_arrived(s3, proxy, tmp_path):
    """An item is used once its own bytes are here and checked, while the rest of its shard is
    still on its way (the proxy holds every response after its first 300 kB)."""
    url = f"{s3.url}/big"
    items = [{"i": i, "x": np.random.default_rng(i).bytes(2000)} for i in range(600)]
    await to_io(pack, items, url, shard_bytes=1 << 20)
    proxy(hold_after=300_000, hold_s=60.0)
    ds = await RemoteDataset.aopen(url, cache=ShardCache(tmp_path), check=False)
    assert await ds.aget(3) == items[3]
    assert not ds.cache.is_local(ds._refs[0])  # shard 0's response is still held
    await ds.aclose()


def _as_version_1(shard: bytes, items: int) -> bytes:
    """A version-2 packed shard rewritten as version 1 wrote it (no item CRC-32s)."""
    header = read_header(shard, items, len(shard), "s")
    records = shard[int(header.offsets[0]):]
    shift = header_size(items) - header_size(items, 1)
    return struct.pack("<8sII", b"ATPACK01", items, 0) + \
        (header.offsets - shift).astype("<u8").tobytes() + records


async def test_version_1_datasets_are_read_and_checked_whole(s3, tmp_path):
    url = await _packed(s3)
    src = ObjectSource(url)
    index = json.loads(bytes(await src.aget("index.json")))
    for k, entry in enumerate(index["shards"]):
        old = _as_version_1(bytes(await src.aget(entry["name"])), entry["items"])
        if k == 2:
            old = old[:-1] + bytes([old[-1] ^ 0xFF])  # corrupt, as stored
        await src.aput(entry["name"], old)
        entry.update(bytes=len(old), crc32=crc32(old) if k != 2 else entry["crc32"])
        del entry["head_crc32"]
    index["version"] = 1
    await src.aput("index.json", json.dumps(index).encode())
    ds = await RemoteDataset.aopen(url, cache=ShardCache(tmp_path))
    assert ds.manifest.version == 1 and not ds.per_item
    assert [(await ds.aget(i))["i"] for i in (0, 40, N - 1)] == [0, 40, N - 1]
    with pytest.raises(ShardIntegrityError, match="CRC-32 of the download"):
        await ds.aget(sum(ds.counts[:2]))  # the first item of shard 2
    await ds.aclose()


@pytest.mark.parametrize("fetch", ["shard", "range"])
async def test_tar_shards_indexed_and_read_by_range_or_whole(s3, tmp_path, fetch):
    samples = [{"__key__": f"{i:05d}", "bin": bytes([i % 256]) * 300, "cls": str(i)} for i in range(60)]
    url = f"{s3.url}/wds"
    await to_io(pack, samples, url, shard_bytes=6000, format="tar")
    ds = await RemoteDataset.aopen(url, cache=ShardCache(tmp_path), fetch=fetch)
    assert ds.manifest.format == "tar"
    loader = AsyncLoader(ds, batch_size=7, sampler=ds.sampler(seed=3),
                         collate_fn=lambda b: [int(s["cls"]) for s in b])
    assert sorted(await _epoch(loader)) == list(range(60))
    await ds.aclose()


async def test_tar_shards_without_offsets_are_scanned_after_download(s3, tmp_path):
    samples = [{"__key__": f"{i:05d}", "cls": str(i)} for i in range(30)]
    url = f"{s3.url}/plain"
    await to_io(pack, samples, url, shard_bytes=5000, format="tar")
    src = ObjectSource(url)
    index = json.loads(bytes(await src.aget("index.json")))
    for entry in index["shardlist"]:
        del entry["offsets"], entry["crc32"]  # a plain wids list: counts and sizes only
    await src.aput("index.json", json.dumps(index).encode())
    ds = await RemoteDataset.aopen(url, cache=ShardCache(tmp_path))
    loader = AsyncLoader(ds, batch_size=4, sampler=ds.sampler(seed=0),
                         collate_fn=lambda b: [int(s["cls"]) for s in b])
    assert sorted(await _epoch(loader)) == list(range(30))
    await ds.aclose()


async def test_packed_items_read_by_range_without_the_cache(s3, tmp_path):
    url = await _packed(s3)
    ds = await RemoteDataset.aopen(url, cache=ShardCache(tmp_path, disk_bytes=0), fetch="range")
    loader = AsyncLoader(ds, batch_size=10, sampler=ds.sampler(shuffle="global", seed=4),
                         collate_fn=_ids)
    assert sorted(await _epoch(loader)) == list(range(N))
    assert not list(tmp_path.iterdir())  # nothing cached
    await ds.aclose()


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
async def test_elastic_resume_continues_the_epoch_exactly(s3, tmp_path, before, after):
    url = await _packed(s3)
    cache = ShardCache(tmp_path)

    async def loaders(world):
        ds = await RemoteDataset.aopen(url, cache=cache)
        return [AsyncLoader(ds, batch_size=8, sampler=ds.sampler(seed=9, rank=r, world_size=world),
                            collate_fn=_ids) for r in range(world)]

    first = await loaders(before)
    read: list[int] = []
    for loader in first:  # every rank takes 5 batches, in step
        it = aiter(loader)
        for _ in range(5):
            read += await anext(it)
        state = msgspec.json.decode(msgspec.json.encode(loader.state_dict()))  # saved as JSON
        await it.aclose()
    second = await loaders(after)
    rest: list[int] = []
    for loader in second:
        loader.load_state_dict(state)
        rest += await _epoch(loader)
    assert sorted(read + rest) == list(range(N))  # nothing repeated, nothing dropped
    nxt = []
    for loader in second:  # and the next epoch is whole, dealt among the new ranks
        nxt += await _epoch(loader)
    assert sorted(nxt) == list(range(N))
    await cache.aclose()


def _run(args, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(SCRIPT), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _kill_midway(url: str, tmp_path: Path, log: Path) -> None:
    """Start a reader, kill -9 it once half the epoch is logged."""
    victim = _run([url, tmp_path / "c1", log, "--pause", "0.05"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if log.exists() and len(json.loads(log.read_text())["consumed"]) >= N // 2:
            break
        time.sleep(0.02)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(10)


def _finish(url: str, tmp_path: Path, log: Path, state: Path) -> dict:
    resumed = _run([url, tmp_path / "c2", log, "--state", state])  # a fresh, empty cache
    out, err = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, err
    return json.loads(out)


async def test_resume_after_kill_9_is_exact_and_downloads_only_what_is_left(s3, tmp_path):
    url = await _packed(s3)
    log, state = tmp_path / "log.json", tmp_path / "state.json"
    ds = await RemoteDataset.aopen(url, cache=ShardCache(tmp_path / "c0"))
    order = ds.sampler(seed=5).items(0).tolist()  # what an uninterrupted run reads (stream.py)
    await to_io(_kill_midway, url, tmp_path, log)
    state.write_text(log.read_text())
    done = json.loads(log.read_text())["consumed"]
    assert 0 < len(done) < N
    report = await to_io(_finish, url, tmp_path, log, state)
    assert json.loads(log.read_text())["consumed"] == order  # the exact sequence, once
    # only shards with items still to read were downloaded
    left = {ds.locate(i)[0] for i in order[len(done):]}
    needed = sum(ds.manifest.shards[k].bytes or 0 for k in left)
    assert report["bytes"] <= needed + 4096  # + the index
    assert needed < sum(s.bytes or 0 for s in ds.manifest.shards)
