"""Data: the prefetching AsyncLoader, the mmap cache, MmapDataset and TokenizerCache."""

from .cache import CachedData, CacheManager, CacheMode, CacheValidator
from .loader import AsyncLoader, DatasetError
from .mmap_dataset import MmapDataset
from .tokenizer import TokenizerCache, TokenizerError

__all__ = ["AsyncLoader", "CacheManager", "CacheMode", "CacheValidator", "CachedData",
           "DatasetError", "MmapDataset", "TokenizerCache", "TokenizerError"]
