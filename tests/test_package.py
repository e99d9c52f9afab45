"""The package's public names: every documented name is importable from ``aiotrain``."""

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


def test_atomic_write_replaces_whole_and_leaves_no_temp_on_error(tmp_path):
    from aiotrain.files import atomic_path, atomic_write, is_temp_name

    target = tmp_path / "f.bin"
    atomic_write(target, b"old")
    target.chmod(0o640)
    atomic_write(target, "new")
    assert target.read_text() == "new" and (target.stat().st_mode & 0o777) == 0o640

    import pytest

    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        assert is_temp_name(tmp.name, "f.bin")
        raise RuntimeError("boom")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]
