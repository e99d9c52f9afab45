"""Lazy package exports: names resolve on first use, unknown names fail clearly, and importing
the data package (as a spawned data worker does) does not import torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from aiotrain.exports import lazy_exports


def test_names_resolve_on_first_use_and_are_cached():
    namespace: dict = {}
    getattr_, dir_ = lazy_exports("aiotrain", {"check_int": "values"}, namespace)
    from aiotrain.values import check_int

    assert "check_int" in dir_() and "check_int" not in namespace
    assert getattr_("check_int") is check_int and namespace["check_int"] is check_int
    with pytest.raises(AttributeError, match="module 'aiotrain' has no attribute 'nope'"):
        getattr_("nope")


def test_importing_the_data_stage_does_not_import_torch():
    code = ("import sys, aiotrain, aiotrain.data, aiotrain.data.stage, aiotrain.data.transport; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
