"""Which config changes a resume accepts."""

from __future__ import annotations

from aiotrain.job.identity import config_diff


def test_patience_may_change_but_not_be_switched_on_or_off():
    """Early stopping's state is in the checkpoints only when it is on: switching it on or off
    is a config that differs (the promised message), not a checkpoint that fails to load."""
    run = {"train": {"patience": 4, "max_epochs": 3}}
    assert config_diff(run, {"train": {"patience": 6, "max_epochs": 9}}) == []
    assert config_diff(run, {"train": {"patience": None, "max_epochs": 3}}) == \
        ["train.patience: 4 -> None"]
    assert config_diff({"train": {"patience": None}}, {"train": {"patience": 4}}) == \
        ["train.patience: None -> 4"]
