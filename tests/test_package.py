"""The package's public names: every DESIGN name is importable from ``aiotrain``."""

from __future__ import annotations

import subprocess
import sys

import aiotrain


def test_every_public_name_resolves():
    for name in aiotrain.__all__:
        assert getattr(aiotrain, name) is not None, name
    assert "Engine" in dir(aiotrain)


def test_unknown_name_is_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        aiotrain.Nope  # noqa: B018


def test_sdn_tools_do_not_import_torch():
    code = "import sys, aiotrain.cli.main, aiotrain.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
