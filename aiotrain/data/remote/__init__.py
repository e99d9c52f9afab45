"""Data where it lives: sharded datasets streamed from object storage (S3, GCS, Azure, HTTP(S),
local files), cached locally, in an order that resumes exactly with any number of ranks.

- ``source``: ``ObjectSource``, one async client (obstore) with counted, jittered retries.
- ``manifest``, ``packed``, ``tar``, ``codec``: the formats (the project's packed shards with
  their offsets at the head; WebDataset tars with an optional index).
- ``pack``: ``pack()`` writes packed (or tar) shards and their index; ``aiotrain data pack``.
- ``order``: the global order of an epoch and the deal to ranks (``ShardSampler``).
- ``cache``: ``ShardCache``, disk and memory budgets, shared between processes.
- ``dataset``: ``RemoteDataset``, what AsyncLoader reads.
- ``stats``: ``TransferStats``, bytes/s, requests in flight, cache hits, time waiting on data.

Names are imported on first use, so ``import aiotrain.data.remote`` costs nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...exports import lazy_exports

_EXPORTS = {
    "ObjectSource": "source", "ObjectError": "source", "Retry": "retry",
    "Manifest": "manifest", "ManifestError": "manifest", "ShardInfo": "manifest",
    "pack": "pack", "PackWriter": "pack",
    "ShardSampler": "order", "epoch_order": "order",
    "ShardCache": "cache", "ShardIntegrityError": "packed",
    "RemoteDataset": "dataset", "RemoteDatasetError": "dataset",
    "TransferStats": "stats", "attach_data_metrics": "stats", "DataMetrics": "stats",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
    from .cache import ShardCache
    from .dataset import RemoteDataset, RemoteDatasetError
    from .manifest import Manifest, ManifestError, ShardInfo
    from .order import ShardSampler, epoch_order
    from .pack import PackWriter, pack
    from .packed import ShardIntegrityError
    from .retry import Retry
    from .source import ObjectError, ObjectSource
    from .stats import DataMetrics, TransferStats, attach_data_metrics
