"""The one error type of the checkpoint package."""

from __future__ import annotations

__all__ = ["CheckpointError"]


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read (truncated, corrupt, missing entries) or written."""
