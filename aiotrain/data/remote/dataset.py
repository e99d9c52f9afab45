"""RemoteDataset: the items of a sharded dataset in object storage, as a map-style dataset that
AsyncLoader fetches on the event loop.

``await RemoteDataset.aopen(url)`` reads the dataset's index (``index.json``: the packed format,
or a wids shard list of WebDataset tars) and checks that the first shard is there and readable,
so a wrong URL, a missing object or a refused credential is one line at start, not an error an
hour in. Item ``i`` is numbered shard-major. ``aget(i)`` returns the item as stored: a packed
item as it was packed (bytes, numbers, arrays), a tar sample as ``{"__key__": ..., ext: bytes}``;
decoding it (JPEG to array, tokenising) is the loader's ``transform``, which runs in the CPU
stage's worker processes with ``workers=N``. There the loader asks for ``aget_ref(i)`` instead: a
reference to the item's bytes in its shard (``refs.ItemRef``), which the worker reads, checks
and decodes itself, so the item's bytes never travel pickled from the loop.

Every item is checked before it is used: a packed shard of version 2 has a CRC-32 per item (its
header, itself checked against the index, holds them), so an item is usable as soon as its own
bytes have arrived, before the rest of its shard; tar shards and version-1 packed shards are
checked whole first.

``dataset.sampler(shuffle=..., seed=...)`` gives the order (see ``order``): shards dealt to ranks
without overlap, resumable at the exact next item with any world size. The dataset plans from the
order it deals: it fetches the shards this rank will read next, ahead of need, within the cache's
read-ahead budget (bytes) and request limit, and marks a shard done for the epoch once all its
items of this epoch are served, so eviction takes it first.

Two ways to read a shard (``fetch``): ``"shard"`` (the default) downloads whole shards into the
local cache (parallel range requests, streamed, shared between processes): the right choice
for shard-ordered streaming and whenever later epochs can be served from the cache;
``"range"`` reads each item with its own range request (the packed format's offsets, or a tar
index's), for full random access over data far larger than the cache.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
from collections.abc import Mapping

import numpy as np

from ...runtime import to_io
from .cache import ShardCache, ShardRef
from .manifest import INDEX_NAME, Manifest, ManifestError, parse_manifest
from .order import ShardSampler, Shuffle
from .packed import ShardHeader, ShardIntegrityError, crc32, header_size, read_header
from .refs import ItemRef
from .retry import Retry
from .shard import Shard
from .source import ObjectError, ObjectSource, join_url
from .stats import TransferStats
from .tar import sample_offsets

__all__ = ["RemoteDataset", "RemoteDatasetError"]

INLINE_DECODE_BYTES = 1 << 20  # items bigger than this are checked and decoded on an I/O thread


class RemoteDatasetError(RuntimeError):
    """The dataset cannot be used as given (its index or first shard); one line saying why."""


class RemoteDataset:
    """A sharded dataset in object storage (see the module docstring). Build it with
    ``await RemoteDataset.aopen(url, ...)``."""

    def __init__(self, url: str, manifest: Manifest, *, cache: ShardCache | None = None,
                 fetch: str = "shard", retry: Retry | None = None,
                 options: Mapping[str, object] | None = None, lookahead: int = 2) -> None:
        if fetch not in ("shard", "range"):
            raise ValueError(f"fetch must be 'shard' or 'range', got {fetch!r}")
        self.url, self.manifest, self.fetch, self.lookahead = url, manifest, fetch, lookahead
        self.stats = TransferStats()
        self.source = ObjectSource(url, retry=retry, options=options, stats=self.stats)
        self.cache = cache if cache is not None else ShardCache()
        self.counts = [s.items for s in manifest.shards]
        self._starts: list[int] = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64).tolist()
        self.per_item = manifest.format == "packed" and manifest.version >= 2
        self._refs = [self._ref(s.name, s.bytes, s.crc32) for s in manifest.shards]
        self._headers: dict[int, ShardHeader] = {}  # shard -> where its items are, once known
        self._header_tasks: dict[int, asyncio.Task[ShardHeader]] = {}
        # the plans of the epochs being read (the current one, and the next once it started)
        self._plans: list[_Plan] = []
        self._new_plans: collections.deque[_Plan] = collections.deque()  # from the sampler's thread

    def _ref(self, name: str, size: int | None, crc: int | None) -> ShardRef:
        if "://" in name:  # a full URL in a wids list: its own source, sharing the stats
            scheme = name.split("://", 1)[0]
            own = self.url.split("://", 1)[0] if "://" in self.url else "file"
            if scheme != own:  # an index from a store must not send us to local files or elsewhere
                raise RemoteDatasetError(f"{self.url}: the index names shard {name!r} on another "
                                         f"kind of store ({scheme}://, the dataset is {own}://)")
            base, _, leaf = name.rpartition("/")
            source = ObjectSource(base, retry=self.source.retry, options=self.source.options,
                                  stats=self.stats)
            return ShardRef(source, leaf, size, crc, self.per_item)
        return ShardRef(self.source, name, size, crc, self.per_item)

    @classmethod
    async def aopen(cls, url: str, *, index: str = INDEX_NAME, cache: ShardCache | None = None,
                   fetch: str = "shard", retry: Retry | None = None,
                   options: Mapping[str, object] | None = None, check: bool = True) -> RemoteDataset:
        """Read ``url``/``index`` and check the first shard (``check``): a missing index or shard
        or a refused credential raises ``RemoteDatasetError`` in one line, at once."""
        source = ObjectSource(url, retry=retry, options=options)
        where = join_url(url, index)
        try:
            raw = await source.aget(index)
            manifest = parse_manifest(raw, where)
        except ObjectError as exc:
            raise RemoteDatasetError(f"cannot open the dataset: {exc}") from None
        except ManifestError as exc:
            raise RemoteDatasetError(str(exc)) from None
        ds = cls(url, manifest, cache=cache, fetch=fetch, retry=retry, options=options)
        ds.stats.bytes += len(raw)
        if check:
            await ds.acheck()
        return ds

    async def acheck(self, every: bool = False) -> None:
        """HEAD the first shard (``every``: all of them, together): ``RemoteDatasetError`` (one
        line) if one is missing, refused or not the size the index says."""
        refs = self._refs if every else self._refs[:1]
        await asyncio.gather(*(self._check_shard(ref) for ref in refs))

    async def _check_shard(self, ref: ShardRef) -> None:
        try:
            info = await ref.source.ahead(ref.name)
        except ObjectError as exc:
            raise RemoteDatasetError(f"cannot read the dataset's shard: {exc}") from None
        if ref.size is not None and info.size != ref.size:
            raise RemoteDatasetError(f"{ref.url}: {info.size} bytes in the store, {ref.size} in "
                                     "the index (the index is stale: pack or index it again)")

    def __len__(self) -> int:
        return self._starts[-1]

    def __repr__(self) -> str:
        return (f"RemoteDataset({self.url!r}, {len(self)} items in {len(self.counts)} "
                f"{self.manifest.format} shards)")

    def __reduce__(self) -> tuple[type[_Detached], tuple[str, int]]:
        # a CPU-stage worker process gets the dataset with its stage but never reads from it:
        # send what it is, not its clients, locks and tasks
        return (_Detached, (repr(self), len(self)))

    def locate(self, index: int) -> tuple[int, int]:
        """``(shard, item within the shard)`` of item ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} is outside the dataset's {len(self)} items")
        shard = bisect.bisect_right(self._starts, index) - 1
        return shard, index - self._starts[shard]

    def sampler(self, *, shuffle: Shuffle = "shards", seed: int = 0, buffer: int | None = None,
                rank: int | None = None, world_size: int | None = None,
                partitions: int | None = None) -> ShardSampler:
        """The order to give AsyncLoader (``sampler=``); see ``order.ShardSampler``. The shuffle
        buffer defaults to about one shard's items."""
        if buffer is None:
            buffer = max(1, int(np.mean(self.counts))) if self.counts else 1
        return ShardSampler(self.counts, shuffle=shuffle, seed=seed, buffer=buffer, rank=rank,
                            world_size=world_size, partitions=partitions, on_order=self.plan)

    # planning ----------------------------------------------------------------------------------
    def plan(self, epoch: int, items: np.ndarray) -> None:
        """Take note of this rank's items of ``epoch`` (called by the sampler, from a thread:
        the plan is built here and handed over in one assignment)."""
        shards = np.searchsorted(np.asarray(self._starts[1:]), items, side="right")
        keys, firsts, counts = np.unique(shards, return_index=True, return_counts=True)
        sequence = [int(k) for k in keys[np.argsort(firsts)]]
        self._new_plans.append(_Plan(epoch, sequence, dict(zip(keys.tolist(), counts.tolist(), strict=True))))

    def _current_plans(self) -> list[_Plan]:
        """The plans on the loop: the newest sampler deals taken in (thread-safe deque)."""
        while self._new_plans:
            plan = self._new_plans.popleft()
            self._plans = [p for p in self._plans if p.epoch != plan.epoch and p.left][-1:] + [plan]
        return self._plans

    def _served(self, shard: int) -> None:
        """One item of ``shard`` was served: count it against the oldest plan that still needs
        the shard; when no plan needs it any more, the cache may evict it first."""
        for plan in self._current_plans():
            left = plan.left.get(shard, 0)
            if left:
                if left == 1:
                    del plan.left[shard]
                    if not any(shard in p.left for p in self._plans):
                        self.cache.release(self._refs[shard])
                else:
                    plan.left[shard] = left - 1
                break
        if self._plans and not self._plans[0].left and len(self._plans) > 1:
            self._plans = self._plans[1:]

    def _read_ahead(self, shard: int) -> None:
        """Start the downloads of the shards this rank reads after ``shard``, within budget
        (called once ``shard`` is here, so read-ahead never slows the download waited for)."""
        if self.fetch != "shard":
            return
        for plan in self._current_plans():
            pos = plan.position.get(shard)
            if pos is not None and shard in plan.left:
                for k in plan.sequence[pos + 1:pos + 1 + self.lookahead]:
                    if not self.cache.prefetch(self._refs[k]):
                        break
                return

    # reading -----------------------------------------------------------------------------------
    async def aget(self, index: int) -> object:
        """Item ``index`` as stored (see the module docstring), checked."""
        ref = await self.aget_ref(index)
        if not isinstance(ref, ItemRef):
            return ref
        assert ref.shard is not None
        raw = await ref.shard.aread(ref.start, ref.end)
        if ref.end - ref.start > INLINE_DECODE_BYTES:  # a big item is checked off the loop
            return await to_io(ref.decode, raw)
        return ref.decode(raw)

    async def aget_ref(self, index: int) -> object:
        """Item ``index`` as a reference to its bytes in their shard, once they may be read
        (``fetch="shard"``), for a worker process to read, check and decode; with
        ``fetch="range"`` the item itself (read by its own range request)."""
        shard_no, local = self.locate(index)
        ref = self._refs[shard_no]
        try:
            if self.fetch == "range":
                return await self._by_range(shard_no, local)
            local_now = self.cache.is_local(ref)
            if local_now:  # the shard needed now first, then the next ones behind it
                self._read_ahead(shard_no)
            shard = await self.cache.aopen(ref)
            header = await self._header(shard_no, shard)
            start, end = header.bounds(local)
            await shard.wait(start, end)
            if local_now:
                self.stats.hits += 1
            else:
                self.stats.misses += 1
        finally:
            self._served(shard_no)
        return ItemRef(shard, start, end, header.crc(local), self.manifest.format,
                       self.manifest.compression, ref.url)

    async def _by_range(self, shard_no: int, local: int) -> object:
        ref = self._refs[shard_no]
        header = await self._header(shard_no, None)
        start, end = header.bounds(local)
        self.stats.misses += 1
        raw = await ref.source.aget(ref.name, start, end)
        item = ItemRef(None, start, end, header.crc(local), self.manifest.format,
                       self.manifest.compression, ref.url)
        return await to_io(item.decode, raw) if end - start > INLINE_DECODE_BYTES else item.decode(raw)

    async def _header(self, shard_no: int, shard: Shard | None) -> ShardHeader:
        """Where shard ``shard_no``'s items are (and their CRC-32s), read once: from ``shard``
        (on its way into the cache), or by range request when ``shard`` is None."""
        known = self._headers.get(shard_no)
        if known is not None:
            return known
        task = self._header_tasks.get(shard_no)
        if task is None:
            task = asyncio.create_task(self._find_header(shard_no, shard))
            self._header_tasks[shard_no] = task
        try:
            header = await asyncio.shield(task)
        finally:
            if task.done():
                self._header_tasks.pop(shard_no, None)
        self._headers[shard_no] = header
        return header

    async def _find_header(self, shard_no: int, shard: Shard | None) -> ShardHeader:
        info, ref = self.manifest.shards[shard_no], self._refs[shard_no]
        if info.offsets is not None:
            return ShardHeader(np.asarray(info.offsets, dtype=np.int64))
        if self.manifest.format == "packed":
            version = self.manifest.version
            head_end = header_size(info.items, version)
            head = await (shard.aread(0, head_end) if shard is not None
                          else ref.source.aget(ref.name, 0, head_end))
            if version >= 2 and crc32(head) != info.head_crc32:
                raise ShardIntegrityError(f"{ref.url}: the shard's header does not match the "
                                          "index's head_crc32 (corrupt, or the index is stale)")
            return read_header(head, info.items, info.bytes or head_end, ref.url, version)
        if shard is None:
            raise RemoteDatasetError(f"{ref.url}: reading tar samples by range needs an index "
                                     "with offsets (aiotrain data index)")
        data = await shard.aread(0, shard.size)
        offsets = sample_offsets(data, ref.url)
        if len(offsets) - 1 != info.items:
            raise RemoteDatasetError(f"{ref.url}: {len(offsets) - 1} samples in the shard, "
                                     f"{info.items} in the index")
        return ShardHeader(np.asarray(offsets, dtype=np.int64))

    async def aclose(self) -> None:
        """Stop read-ahead downloads and drop the shards held in memory."""
        for task in self._header_tasks.values():
            task.cancel()
        await self.cache.aclose()


class _Plan:
    """One epoch's reading plan on this rank: its shards in order of first use, and how many of
    each shard's items are still to be served."""

    def __init__(self, epoch: int, sequence: list[int], left: dict[int, int]) -> None:
        self.epoch, self.sequence, self.left = epoch, sequence, left
        self.position = {k: i for i, k in enumerate(sequence)}


class _Detached:
    """What a CPU-stage worker holds in place of a RemoteDataset: its description and size."""

    def __init__(self, what: str, n: int) -> None:
        self.what, self.n = what, n

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return self.what

    def __getitem__(self, index: int) -> object:
        raise RuntimeError(f"{self.what} is read on the event loop (aget), not in a worker")

