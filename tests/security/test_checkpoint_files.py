"""Checkpoint folders and files are untrusted input: whoever can write into a checkpoint folder (a
shared disk, a downloaded artifact) writes its manifest and CRCs too, so loading one must never
run code from it. Each crafted file meets a one-line CheckpointError, and the code it carries
never runs (it would create a marker file)."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import random
import warnings
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from aiotrain.handlers.checkpoint import Checkpoint, CheckpointError, sharded


class Payload:
    """Pickles into a call of ``os.system``: the attacker's code."""

    def __init__(self, marker: Path) -> None:
        self.command = f"touch {marker}"

    def __reduce__(self):
        return (os.system, (self.command,))


class FakeEngine:
    def __init__(self, iteration: int) -> None:
        self.state = SimpleNamespace(iteration=iteration, epoch=1, metrics={})


def _stepped(model: torch.nn.Module) -> torch.optim.Optimizer:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, model.in_features)).sum().backward()
    opt.step()
    return opt


def _save_sharded(folder: Path, to_save: dict, step: int = 1, prefix: str = "") -> Path:
    ckpt = Checkpoint(to_save, folder, filename_prefix=prefix, backend="sharded", n_saved=None)

    async def save() -> None:
        await ckpt(FakeEngine(step))
        await ckpt.aflush()

    asyncio.run(save())
    assert ckpt.last_checkpoint is not None
    return ckpt.last_checkpoint


def _reseal(folder: Path) -> None:
    """Rewrite the manifest's sizes and CRCs for the folder as it is now, as an attacker can."""
    manifest = json.loads((folder / sharded.MANIFEST).read_text())
    manifest["files"] = {p.name: [p.stat().st_size, zlib.crc32(p.read_bytes())]
                         for p in folder.iterdir() if p.name != sharded.MANIFEST}
    (folder / sharded.MANIFEST).write_text(json.dumps(manifest))


def _crafted_folder(folder: Path, marker: Path, step: int = 1, prefix: str = "") -> Path:
    """A sharded checkpoint whose ``.metadata`` is a pickle calling os.system, resealed."""
    path = _save_sharded(folder, {"model": torch.nn.Linear(3, 4)}, step, prefix)
    (path / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    _reseal(path)
    return path


def test_a_crafted_metadata_file_runs_no_code_through_load_objects(tmp_path):
    marker = tmp_path / "pwned"
    path = _crafted_folder(tmp_path / "ckpt", marker)
    with pytest.raises(CheckpointError) as err:
        Checkpoint.load_objects({"model": torch.nn.Linear(3, 4)}, path)
    assert not marker.exists(), "the checkpoint's pickle ran"
    msg = str(err.value)
    assert f"{path / '.metadata'}: unsafe content, not loaded: it references posix.system" in msg
    assert "\n" not in msg


def test_a_crafted_value_in_a_shard_runs_no_code(tmp_path):
    """DCP reads non-tensor values (an optimizer's hyper-parameters) with weights_only=False."""
    import torch.distributed.checkpoint as dcp

    marker = tmp_path / "pwned"
    model = torch.nn.Linear(3, 4)
    opt = _stepped(model)
    path = _save_sharded(tmp_path / "ckpt", {"model": model, "optimizer": opt})
    state, _ = sharded.capture({"model": model, "optimizer": opt})
    state["optimizer"]["param_groups.weight.momentum"] = Payload(marker)  # stored as pickled bytes
    for p in path.glob("__*.distcp"):
        p.unlink()
    with warnings.catch_warnings():  # one process on purpose; the folder is overwritten on purpose
        warnings.simplefilter("ignore")
        dcp.save(state, storage_writer=dcp.FileSystemWriter(str(path), single_file_per_rank=True), no_dist=True)
    _reseal(path)
    fresh = torch.nn.Linear(3, 4)
    with pytest.raises(CheckpointError) as err:
        Checkpoint.load_objects({"model": fresh, "optimizer": _stepped(fresh)}, path)
    assert not marker.exists(), "the shard's pickle ran"
    assert "param_groups.weight.momentum" in str(err.value) and "\n" not in str(err.value)


def test_a_metadata_record_pointing_outside_the_folder_is_refused(tmp_path):
    from torch.distributed.checkpoint.filesystem import FileSystemReader

    path = _save_sharded(tmp_path / "ckpt", {"model": torch.nn.Linear(3, 4)})
    metadata = FileSystemReader(str(path)).read_metadata()  # our own file: trusted here
    for info in metadata.storage_data.values():
        info.relative_path = "../../../etc/passwd"
    (path / ".metadata").write_bytes(pickle.dumps(metadata))
    _reseal(path)
    with pytest.raises(CheckpointError, match=r"\.metadata: corrupt checkpoint metadata \(a record outside"):
        Checkpoint.load_objects({"model": torch.nn.Linear(3, 4)}, path)


@pytest.mark.parametrize("name", ["../escape", "/dev/zero", "notes.txt"])
def test_a_manifest_naming_files_outside_the_checkpoint_is_refused_before_reading(tmp_path, name):
    path = _save_sharded(tmp_path / "ckpt", {"model": torch.nn.Linear(3, 4)})
    manifest = json.loads((path / sharded.MANIFEST).read_text())
    manifest["files"][name] = [1, 0]
    (path / sharded.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"corrupt manifest aiotrain.json \(malformed\)"):
        sharded.verify(path)


def test_a_shard_that_is_a_link_is_not_read(tmp_path):
    path = _save_sharded(tmp_path / "ckpt", {"model": torch.nn.Linear(3, 4)})
    shard = next(path.glob("__*.distcp"))
    real = tmp_path / "elsewhere.distcp"
    shard.rename(real)
    shard.symlink_to(real)
    with pytest.raises(CheckpointError, match="not a regular file"):
        sharded.verify(path)


def test_latest_passes_over_a_crafted_folder_and_runs_no_code(tmp_path, caplog):
    marker = tmp_path / "pwned"
    good = _save_sharded(tmp_path / "ckpt", {"model": torch.nn.Linear(3, 4)}, 5, "last")
    crafted = _crafted_folder(tmp_path / "ckpt", marker, 99, "last")
    os.utime(good, ns=(1, 1))  # the crafted folder is the newest
    assert Checkpoint.latest(tmp_path / "ckpt", "last") == good
    assert "unsafe content" in caplog.text and str(crafted) in caplog.text
    assert not marker.exists()


def test_resume_passes_over_a_crafted_folder_beside_a_good_checkpoint(tmp_path):
    """``aiotrain train --resume``: TrainJob loads the newest loadable ``last`` checkpoint."""
    from aiotrain.runtime import run
    from tests.job.test_train_job import interrupted_after_first_epoch, job

    first = job(tmp_path)
    run(interrupted_after_first_epoch(first))
    (good,) = first.identity.dir.glob("last_*.pt")
    marker = tmp_path / "pwned"
    crafted = _crafted_folder(tmp_path / "elsewhere", marker, 99, "last")
    crafted.rename(first.identity.dir / "last_checkpoint_99")
    lines: list[str] = []
    second = job(tmp_path, lines, resume=True)
    assert run(second.run()).exit_code == 0
    assert not marker.exists(), "resume ran the crafted folder's pickle"
    assert any(ln.startswith("resume: ") and str(good) in ln for ln in lines), lines


@pytest.mark.parametrize("size", [10, 1000, 100_000])
def test_random_bytes_in_a_pt_file_are_called_corrupt_not_unsafe(tmp_path, size):
    path = tmp_path / "model_1.pt"
    path.write_bytes(random.Random(size).randbytes(size))
    with pytest.raises(CheckpointError) as err:
        Checkpoint.load_objects({"model": torch.nn.Linear(3, 4)}, path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: truncated or corrupt checkpoint") and "unsafe" not in msg, msg
    assert "\n" not in msg and "weights_only" not in msg


def test_a_pt_file_whose_pickle_calls_a_function_is_unsafe_and_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model_1.pt"
    torch.save({"weight": Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"model_1\.pt: unsafe content, not loaded: it references posix\.system"):
        Checkpoint.load_objects({"model": torch.nn.Linear(3, 4)}, path)
    assert not marker.exists()


def test_a_dcp_failure_is_a_checkpoint_error_not_a_base_exception(tmp_path):
    path = _save_sharded(tmp_path / "ckpt", {"model": torch.nn.Linear(3, 4)})
    with pytest.raises(CheckpointError) as err:  # DCP's CheckpointException is a BaseException
        Checkpoint.load_objects({"model": torch.nn.Linear(3, 5)}, path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: cannot load the sharded state (rank 0: ") and "\n" not in msg, msg
