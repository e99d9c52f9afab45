"""Renamed names keep working for one release, with a DeprecationWarning naming the new one."""

from __future__ import annotations

import pytest
import torch

from aiotrain.handlers.checkpoint import Checkpoint


async def test_checkpoint_flush_is_a_warning_alias_of_aflush(tmp_path):
    ckpt = Checkpoint({"model": torch.nn.Linear(2, 2)}, tmp_path)
    with pytest.warns(DeprecationWarning, match=r"Checkpoint\.flush is deprecated .* Checkpoint\.aflush"):
        await ckpt.flush()
    assert Checkpoint.flush.__name__ == "flush" and "aflush" in Checkpoint.flush.__doc__
