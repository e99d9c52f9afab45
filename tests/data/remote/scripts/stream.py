"""A training-like reader of a remote dataset, run as its own process by the tests.

``stream.py URL CACHE LOG [--state STATE] [--rank R --world W] [--batches N] [--pause S]``
reads batches of item ids through AsyncLoader and, after each batch, atomically rewrites LOG with
every id consumed so far and the loader's state_dict (so a kill -9 at any moment leaves a
consistent record). With STATE it resumes from that file first. ``--raw`` reads the items with
``aget`` in the sampler's order instead, without AsyncLoader (and so without importing torch: a
quick start). Prints one JSON line at the end: the bytes it downloaded, cache misses and hits.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from aiotrain.data.remote import RemoteDataset, ShardCache
from aiotrain.files import atomic_write


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("cache")
    p.add_argument("log")
    p.add_argument("--state")
    p.add_argument("--rank", type=int, default=0)
    p.add_argument("--world", type=int, default=1)
    p.add_argument("--batches", type=int, default=10**9)
    p.add_argument("--pause", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--raw", action="store_true")
    args = p.parse_args()
    saved = json.loads(open(args.state).read()) if args.state else None
    asyncio.run(stream(args, saved))


async def stream(args: argparse.Namespace, saved: dict | None) -> None:
    ds = await RemoteDataset.aopen(args.url, cache=ShardCache(args.cache))
    sampler = ds.sampler(seed=5, rank=args.rank, world_size=args.world)
    if args.raw:
        items = await asyncio.gather(*(ds.aget(i) for i in sampler))
        atomic_write(args.log, json.dumps({"consumed": [int(it["i"]) for it in items]}))
        await ds.aclose()
        print(json.dumps({"bytes": ds.stats.bytes, "misses": ds.stats.misses, "hits": ds.stats.hits}))
        return
    from aiotrain import AsyncLoader

    loader = AsyncLoader(ds, batch_size=args.batch_size, sampler=sampler,
                         collate_fn=lambda items: [int(it["i"]) for it in items])
    consumed: list[int] = []
    if saved is not None:
        consumed = saved["consumed"]
        loader.load_state_dict(saved["loader"])
    n = 0
    async for batch in loader:
        consumed += batch
        atomic_write(args.log, json.dumps({"consumed": consumed, "loader": loader.state_dict()}))
        n += 1
        if n >= args.batches:
            break
        await asyncio.sleep(args.pause)  # the "step"
    await ds.aclose()
    print(json.dumps({"bytes": ds.stats.bytes, "misses": ds.stats.misses, "hits": ds.stats.hits}))


if __name__ == "__main__":
    main()
