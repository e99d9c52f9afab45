"""Sharded checkpoints (FSDP2 on Gloo, one process per rank on CPU): every rank writes its shards
of one folder that appears whole or not at all; retention; integrity on load; resharding from 2
ranks to 1 and to 4; SIGKILL at random moments, then resume, bit-identical; and, in this process,
every folder holds the state at its event whatever mutates the tensors."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings

from aiotrain.handlers.checkpoint import Checkpoint, CheckpointError, sharded
from tests.handlers import exactness

SCRIPT = Path(__file__).parent / "scripts" / "sharded_run.py"
ROOT = Path(__file__).resolve().parents[2]
STEPS = 3 * 8  # EPOCHS x batches per rank per epoch, with 2 ranks
KILLS = 2


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(world: int, *args: str) -> list[subprocess.Popen]:
    """One process per rank, with the environment torchrun would give them."""
    port = str(_port())
    procs = []
    for rank in range(world):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RANK": str(rank),
               "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        procs.append(subprocess.Popen([sys.executable, str(SCRIPT), *args], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _finish(procs: list[subprocess.Popen], timeout: float = 600) -> None:
    # generous: on a 2-core machine shared with other jobs, four ranks importing torch take minutes
    for rank, proc in enumerate(procs):
        _, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, f"rank {rank} exited {proc.returncode}: {err[-3000:]}"


def _kill(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
    for proc in procs:
        proc.communicate(timeout=30)


def _assert_same_state(ours: dict, reference: dict, where: str) -> None:
    for part in ("model", "optimizer"):
        assert ours[part].keys() == reference[part].keys(), f"{where}: {part} keys differ"
        for key, value in reference[part].items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(ours[part][key], value), f"{where}: {part}.{key} differs"
            else:
                assert ours[part][key] == value, f"{where}: {part}.{key} differs"


pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    """An uninterrupted 2-rank run: its checkpoint folder and its final full state."""
    tmp = tmp_path_factory.mktemp("sharded")
    _finish(_launch(2, "train", str(tmp / "ckpt"), str(tmp / "final.pt")))
    return tmp / "ckpt", torch.load(tmp / "final.pt", weights_only=True)


def _plain_run():
    """The same model, optimizer, engine and loader in this process, unsharded."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import sharded_run
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return sharded_run


def test_every_rank_writes_its_shards_and_retention_keeps_the_newest(trained):
    folder, _ = trained
    names = sorted(os.listdir(folder))
    assert names == [f"checkpoint_{STEPS - 4}", f"checkpoint_{STEPS}"]  # n_saved=2, nothing else
    files = set(os.listdir(folder / f"checkpoint_{STEPS}"))
    assert {"__0_0.distcp", "__1_0.distcp", ".metadata", "rank0.pt", "rank1.pt", sharded.MANIFEST} == files
    manifest = sharded.verify(folder / f"checkpoint_{STEPS}")
    assert manifest["world_size"] == 2
    assert manifest["sharded"] == ["model", "optimizer"] and manifest["per_rank"] == ["loader", "trainer"]
    assert Checkpoint.latest(folder) == folder / f"checkpoint_{STEPS}"


def test_a_two_rank_checkpoint_loads_whole_in_one_process(trained):
    folder, final = trained
    run = _plain_run()
    model, optimizer, trainer, loader, _ = run.build(str(folder.parent / "unused1"))
    Checkpoint.load_objects({"model": model, "optimizer": optimizer, "trainer": trainer,
                             "loader": loader}, folder / f"checkpoint_{STEPS}")
    _assert_same_state(run.full_state(model, optimizer), final, "loaded on 1 process")
    assert trainer.state.iteration == STEPS


def test_a_two_rank_checkpoint_loads_on_four_ranks(trained, tmp_path):
    folder, final = trained
    _finish(_launch(4, "load", str(folder / f"checkpoint_{STEPS}"), str(tmp_path / "four.pt")))
    loaded = torch.load(tmp_path / "four.pt", weights_only=True)
    _assert_same_state(loaded, final, "loaded on 4 ranks")
    assert loaded["iteration"] == STEPS


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "manifest"])
def test_a_damaged_shard_is_an_error_naming_it_and_latest_skips_it(trained, tmp_path, damage):
    folder, _ = trained
    copy = tmp_path / "ckpt"
    shutil.copytree(folder, copy)
    newest = copy / f"checkpoint_{STEPS}"
    victim = newest / ("__1_0.distcp" if damage != "manifest" else sharded.MANIFEST)
    data = bytearray(victim.read_bytes())
    if damage == "truncate":
        victim.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "flip":
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(bytes(data))
    else:
        victim.unlink()
    run = _plain_run()
    model, optimizer, *_ = run.build(str(tmp_path / "unused"))
    with pytest.raises(CheckpointError, match=rf"checkpoint_{STEPS}.*(truncated|corrupt|missing|manifest)"):
        Checkpoint.load_objects({"model": model, "optimizer": optimizer}, newest)
    assert Checkpoint.latest(copy) == copy / f"checkpoint_{STEPS - 4}"


def test_ranks_dying_before_the_rename_leave_no_checkpoint_under_its_name(tmp_path):
    procs = _launch(2, "die", str(tmp_path / "ckpt"))
    procs[0].wait(timeout=600)
    assert procs[0].returncode == 17, procs[0].communicate()[1][-3000:]
    _kill(procs[1:])
    names = sorted(os.listdir(tmp_path / "ckpt"))
    temps = [n for n in names if n.startswith(".")]
    assert f"checkpoint_{4}" in names and len(temps) == 1 and temps[0].endswith(".tmp"), names
    assert [n for n in names if not n.startswith(".")] == ["checkpoint_4"]  # step 8 never appeared
    assert Checkpoint.latest(tmp_path / "ckpt") == tmp_path / "ckpt" / "checkpoint_4"
    run = _plain_run()
    *_, ckpt = run.build(str(tmp_path / "ckpt"))  # the next run cleans the torn folder up
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["checkpoint_4"]
    assert ckpt.last_checkpoint == tmp_path / "ckpt" / "checkpoint_4"


def test_a_torn_copy_on_one_rank_refuses_the_save_on_every_rank(tmp_path):
    procs = _launch(2, "torn", str(tmp_path / "ckpt"))
    for rank, proc in enumerate(procs):
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 3, f"rank {rank} exited {proc.returncode}: {err[-3000:]}"
        assert f"checkpoint_{4} not written: optimizer.state." in err and "overlap=False" in err, err[-3000:]
    assert not (tmp_path / "ckpt" / "checkpoint_4").exists()


def _finished_steps(folder: Path) -> list[int]:
    names = os.listdir(folder) if folder.is_dir() else []
    return sorted(int(n.rsplit("_", 1)[1]) for n in names if n.startswith("checkpoint_"))


def _wait_for_a_checkpoint_after(folder: Path, step: int, proc: subprocess.Popen) -> None:
    """Until a checkpoint beyond ``step`` is complete: each kill then lands after progress."""
    deadline = time.monotonic() + 600
    while not any(s > step for s in _finished_steps(folder)):
        assert proc.poll() is None, f"rank 0 exited {proc.returncode}: {proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


def test_sigkill_of_all_ranks_then_resume_is_bit_identical(trained, tmp_path):
    _, reference = trained
    rng = random.Random(20261127)
    starts = []
    for i in range(KILLS):
        procs = _launch(2, "train", str(tmp_path / "ckpt"), str(tmp_path / f"killed{i}.pt"), "0.05")
        line = procs[0].stdout.readline()
        assert line.startswith("start "), f"rank 0 said {line!r}: {procs[0].stderr.read()[-3000:]}"
        starts.append(int(line.split()[1]))
        _wait_for_a_checkpoint_after(tmp_path / "ckpt", starts[-1], procs[0])
        time.sleep(rng.uniform(0.0, 0.3))  # a random moment: a step, a save, a write, a commit
        _kill(procs)
        assert not (tmp_path / f"killed{i}.pt").exists(), f"run {i} finished before the kill"
    procs = _launch(2, "train", str(tmp_path / "ckpt"), str(tmp_path / "resumed.pt"))
    starts.append(int(procs[0].stdout.readline().split()[1]))
    _finish(procs)
    assert starts[0] == 0 and starts == sorted(set(starts)), f"resumed at {starts}"
    _assert_same_state(torch.load(tmp_path / "resumed.pt", weights_only=True), reference, "resumed")


@pytest.fixture
def late_copies(monkeypatch):
    return exactness.LateCopies(monkeypatch)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=exactness.plans())
@example(plan=exactness.DIVERGES)
def test_every_sharded_checkpoint_holds_the_state_at_its_event_whatever_mutates_it(plan, tmp_path_factory,
                                                                                   late_copies):
    exactness.check(plan, tmp_path_factory.mktemp("ckpt"), late_copies, "sharded")
