"""Data: the prefetching AsyncLoader, the mmap cache, MmapDataset and TokenizerCache.

The names are imported on first use (PEP 562), so a data worker process that unpickles its
stage imports ``aiotrain.data.stage`` without the loader, and so without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..exports import lazy_exports

_EXPORTS = {
    "AsyncLoader": "loader", "DatasetError": "loader",
    "CachedData": "cache", "CacheManager": "cache", "CacheMode": "cache", "CacheValidator": "cache",
    "MmapDataset": "mmap_dataset", "TokenizerCache": "tokenizer", "TokenizerError": "tokenizer",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


if TYPE_CHECKING:
    from .cache import CachedData as CachedData
    from .cache import CacheManager as CacheManager
    from .cache import CacheMode as CacheMode
    from .cache import CacheValidator as CacheValidator
    from .loader import AsyncLoader as AsyncLoader
    from .loader import DatasetError as DatasetError
    from .mmap_dataset import MmapDataset as MmapDataset
    from .tokenizer import TokenizerCache as TokenizerCache
    from .tokenizer import TokenizerError as TokenizerError
