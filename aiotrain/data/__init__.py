"""Data: the prefetching AsyncLoader, the mmap cache, MmapDataset and TokenizerCache.

The names are imported on first use (PEP 562), so a data worker process that unpickles its
stage imports ``aiotrain.data.stage`` without the loader, and so without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "AsyncLoader": "loader", "DatasetError": "loader",
    "CachedData": "cache", "CacheManager": "cache", "CacheMode": "cache", "CacheValidator": "cache",
    "MmapDataset": "mmap_dataset", "TokenizerCache": "tokenizer", "TokenizerError": "tokenizer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'aiotrain.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"aiotrain.data.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:
    from .cache import CachedData, CacheManager, CacheMode, CacheValidator
    from .loader import AsyncLoader, DatasetError
    from .mmap_dataset import MmapDataset
    from .tokenizer import TokenizerCache, TokenizerError
