"""aiotrain.files: atomic replacement, and files other people can read (the umask is honoured)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from aiotrain.files import atomic_path, atomic_write, is_temp_name, make_temp_dir


@pytest.fixture
def umask():
    """Set the process umask for one test, restoring the previous one after."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                        (0o002, 0o664, 0o775)])
def test_new_files_and_folders_honour_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    atomic_write(tmp_path / "a.txt", "x")
    assert _mode(tmp_path / "a.txt") == file_mode
    assert _mode(make_temp_dir(tmp_path, ".t-")) == dir_mode


def test_an_existing_file_keeps_its_permissions(tmp_path, umask):
    umask(0o022)
    target = tmp_path / "keep.txt"
    target.write_text("old")
    target.chmod(0o640)
    atomic_write(target, "new")
    assert target.read_text() == "new" and _mode(target) == 0o640


def test_a_failed_block_leaves_the_target_and_no_temp_file(tmp_path):
    target = tmp_path / "t.bin"
    atomic_write(target, b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["t.bin"]


def test_temp_names_are_hidden_and_never_end_in_the_target_suffix(tmp_path):
    seen = []
    with atomic_path(tmp_path / "m.pt") as tmp:
        seen.append(tmp.name)
        tmp.write_bytes(b"")
    assert seen[0].startswith(".m.pt.") and not seen[0].endswith(".pt")
    assert is_temp_name(seen[0], "m.pt") and not is_temp_name("m.pt", "m.pt")


async def test_checkpoints_run_files_and_artifact_objects_are_0644_under_umask_022(tmp_path, umask):
    from aiotrain.handlers.checkpoint import Checkpoint
    from aiotrain.tracking import Track

    umask(0o022)
    ckpt = Checkpoint({"model": torch.nn.Linear(2, 2)}, tmp_path / "ckpt")
    engine = SimpleNamespace(state=SimpleNamespace(iteration=1, epoch=1, metrics={}),
                             add_pending=lambda fut: None)
    await ckpt(engine)
    await ckpt.aflush()
    written = list((tmp_path / "ckpt").glob("*.pt"))

    source = tmp_path / "weights.bin"
    source.write_bytes(b"w" * 100)
    Track.set_dir(tmp_path / "track")
    try:
        with Track.run("perm", config={"a": 1}) as run:
            run.log({"x": 1.0})
            art = Track.Artifact("w", type="model")
            art.add_file(source)
            run.log_artifact(art)
        run_files = [run.dir / "metadata.sdn", run.dir / "summary.sdn", run.dir / "metrics.jsonl"]
        objects = [p for p in (tmp_path / "track" / "artifacts" / "objects").rglob("*") if p.is_file()]
        download = run.use_artifact("w:latest").download()
    finally:
        Track.set_dir(None)
    assert written and objects
    for path in written + run_files + objects:
        assert _mode(path) == 0o644, path
    assert _mode(download) == 0o755


def test_tracking_imports_where_fcntl_does_not_exist():
    """``import aiotrain.tracking`` works on every platform (no raw fcntl at import time)."""
    code = ("import sys, warnings; sys.modules['fcntl'] = None; warnings.simplefilter('ignore');"
            "import aiotrain.tracking; from aiotrain.tracking.artifacts import log_artifact")
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": str(root)})
    assert r.returncode == 0, r.stderr[-2000:]
