"""Check 6, data pipeline: the first three batches load, each within the validator's ``timeout``.

A sync iterable (a list, a torch DataLoader) is iterated on daemon threads, one bounded call
per ``iter()`` / ``next()``, so a hung loader is abandoned instead of hanging the validator. An
async iterable (an AsyncLoader) is iterated on the event loop with ``asyncio.wait_for`` (getting
a batch from an async source is loop work) and closed afterwards. A one-shot iterator (a
generator, an async generator) is refused: reading from it would take batches away from
training, and the checks promise to leave everything as they found it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator

from .batches import describe
from .bounded import CheckTimeout, run_bounded
from .report import ValidationSection

__all__ = ["PIPELINE_BATCHES", "load_batches"]

PIPELINE_BATCHES = 3
_END = object()


async def load_batches(loader: object, section: ValidationSection, seconds: float) -> list[object]:
    """Load up to PIPELINE_BATCHES batches, recording what happened in ``section``."""
    kind = type(loader)
    if hasattr(kind, "__next__") or hasattr(kind, "__anext__"):
        section.add_error(f"the dataloader is a one-shot iterator ({kind.__name__}): validating it "
                          "would consume batches that training then misses; pass a re-iterable "
                          "(a list, a torch DataLoader, an AsyncLoader)")
        return []
    batches: list[object] = []
    try:
        if isinstance(loader, AsyncIterable):
            await _load_async(loader, batches, seconds)
        elif isinstance(loader, Iterable):
            await _load_sync(loader, batches, seconds)
        else:
            section.add_error(f"the dataloader ({kind.__name__}) is neither iterable nor async iterable")
            return []
    except CheckTimeout:
        section.add_error(f"batch {len(batches) + 1} did not arrive within {seconds:g} s (timeout); "
                          "the loader may be hung (a worker deadlock, a stalled read)")
    except Exception as exc:
        section.add_error(f"loading batch {len(batches) + 1} raised {type(exc).__name__}: {exc}")
    for i, batch in enumerate(batches, 1):
        section.add_info(f"batch {i}: {describe(batch)}")
    if not batches and not section.errors:
        section.add_error("the dataloader yielded no batch (empty dataset, or drop_last with "
                          "fewer items than batch_size?)")
    return batches


async def _load_sync(loader: Iterable[object], out: list[object], seconds: float) -> None:
    it: Iterator[object] = await run_bounded(iter, loader, seconds=seconds)
    abandoned = False
    try:
        while len(out) < PIPELINE_BATCHES:
            batch = await run_bounded(next, it, _END, seconds=seconds)
            if batch is _END:
                return
            out.append(batch)
    except CheckTimeout:
        abandoned = True  # its thread may still be inside it: leave it alone
        raise
    finally:
        if not abandoned:
            with contextlib.suppress(Exception):
                await run_bounded(_close, it, seconds=seconds)


def _close(it: Iterator[object]) -> None:
    """Release an iterator's resources now (a generator's finally, DataLoader worker processes)."""
    close = getattr(it, "close", None) or getattr(it, "_shutdown_workers", None)
    if callable(close):
        close()


async def _load_async(loader: AsyncIterable[object], out: list[object], seconds: float) -> None:
    ait: AsyncIterator[object] = aiter(loader)
    try:
        while len(out) < PIPELINE_BATCHES:
            try:
                batch = await asyncio.wait_for(anext(ait, _END), seconds)
            except TimeoutError:
                raise CheckTimeout(f"no batch within {seconds:g} s") from None
            if batch is _END:
                return
            out.append(batch)
    finally:
        aclose = getattr(ait, "aclose", None)
        if callable(aclose):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(aclose(), seconds)
