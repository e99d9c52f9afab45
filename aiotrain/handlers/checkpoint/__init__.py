"""Checkpoint: consistent snapshots taken at the save event, written off the hot path, atomically.

The package splits one handler into the parts a reader looks for: ``handler`` (Checkpoint: when
to save, what, and the one-write-in-flight rule), ``staging`` (reused copy buffers and the copy
that hides behind the next step), ``retention`` (names, what is kept, across restarts),
``single_file`` (one ``.pt`` file written by rank 0) and ``sharded`` (a directory of per-rank
shards through torch.distributed.checkpoint, for sharded models).
"""

from .errors import CheckpointError
from .handler import Checkpoint

__all__ = ["Checkpoint", "CheckpointError"]
