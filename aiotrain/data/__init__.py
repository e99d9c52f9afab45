"""Data: the prefetching AsyncLoader, the mmap cache, MmapDataset and TokenizerCache."""

from .loader import AsyncLoader, DatasetError

__all__ = ["AsyncLoader", "DatasetError"]
