"""ReadLog: what a task factory read through its Config (top-level keys, and values with the
instruction that read them)."""

from __future__ import annotations

import copy
import pickle
import sys

import pytest

from aiotrain.config import Conf
from aiotrain.config.node import recording_reads


def make():
    return Conf.from_dict({"a": {"x": 1, "y": "s"}, "b": 2, "c": [1, 2], "d": {"z": 3}})


@pytest.mark.parametrize("use, read", [
    (lambda cfg: cfg.a.x, {"a"}),
    (lambda cfg: cfg["b"], {"b"}),
    (lambda cfg: cfg.get("nope", 1), {"nope"}),      # asked for and absent: read all the same
    (lambda cfg: "d" in cfg, {"d"}),
    (lambda cfg: Conf.get(cfg, "c.0"), {"c"}),
    (lambda cfg: cfg.a.keys(), {"a"}),                # a section used whole is one top-level key
    (lambda cfg: Conf.to_dict(cfg.d), {"d"}),
    (lambda cfg: list(cfg), {"a", "b", "c", "d"}),    # the top level used whole: every key
    (lambda cfg: cfg.items(), {"a", "b", "c", "d"}),
    (lambda cfg: Conf.to_dict(cfg), {"a", "b", "c", "d"}),
    (lambda cfg: Conf.merge(cfg, {}), {"a", "b", "c", "d"}),
    (lambda cfg: pickle.dumps(cfg), {"a", "b", "c", "d"}),
    (lambda cfg: copy.deepcopy(cfg), {"a", "b", "c", "d"}),
])
def test_top_level_reads_are_recorded(use, read):
    cfg = make()
    with recording_reads(cfg) as log:
        use(cfg)
    assert log.top == read
    cfg.b  # noqa: B018 - after the block nothing is recorded
    assert log.top == read and cfg._state.log is None


def test_values_are_found_by_the_expression_that_read_them():
    cfg = make()

    def fails(x, y):
        raise ValueError

    with recording_reads(cfg) as log:
        early = cfg.b
        try:
            fails(cfg.a.x,
                  cfg.a.y)  # the call spans two lines: both arguments are in it
        except ValueError as exc:
            tb = exc.__traceback__
    assert early == 2
    frame = sys._getframe()
    found = log.read_within(frame.f_code, tb.tb_lasti)
    assert [(r.key, r.value) for r in found] == [("a.x", 1), ("a.y", "s")]
    assert {r.key for r in log.values} == {"b", "a.x", "a.y"}
