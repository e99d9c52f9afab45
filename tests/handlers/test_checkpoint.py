"""Checkpoint: staging, atomic writes, retention, latest(), load_objects, corrupt files, kills."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings

from aiotrain import distributed as dist
from aiotrain.engine import Engine
from aiotrain.events import Events
from aiotrain.handlers.checkpoint import Checkpoint, CheckpointError, single_file, staging
from tests.handlers import exactness

SCRIPTS = Path(__file__).parent / "scripts"
BIG = 2_000_000  # floats: 8 MB, above the inline-copy threshold, so the copy goes to a thread


class Box:
    """A plain object with state: tensors (one big, one small), a scalar and a list."""

    def __init__(self, value: float = 0.0) -> None:
        self.big = torch.full((BIG,), value)
        self.small = torch.full((4,), value)
        self.count = int(value)
        self.history = [value]

    def state_dict(self):
        return {"big": self.big, "small": self.small, "count": self.count, "history": self.history}

    def load_state_dict(self, sd):
        self.big.copy_(sd["big"])
        self.small.copy_(sd["small"])
        self.count, self.history = sd["count"], list(sd["history"])


class FakeEngine:
    """What Checkpoint reads from an engine: state.iteration, state.metrics, add_pending."""

    def __init__(self, iteration: int = 0) -> None:
        self.state = SimpleNamespace(iteration=iteration, epoch=1, metrics={})
        self.pending = []

    def add_pending(self, fut):
        self.pending.append(fut)


async def _save(ckpt: Checkpoint, step: int, **metrics) -> None:
    eng = FakeEngine(step)
    eng.state.metrics.update(metrics)
    await ckpt(eng)
    await ckpt.aflush()


def _names(folder) -> list[str]:
    """The folder's entries, less a scored Checkpoint's record of exact scores."""
    return sorted(n for n in os.listdir(folder) if not n.endswith(".scores.json"))


class _Started(list):
    """Names of the writes that started; ``await started.first()`` waits for one."""

    def __init__(self) -> None:
        super().__init__()
        self.event = threading.Event()

    def append(self, name: str) -> None:
        super().append(name)
        self.event.set()

    async def first(self) -> None:
        assert await asyncio.to_thread(self.event.wait, 10)


def _gated_writes(monkeypatch):
    """Make every write wait for the returned Event; count the writes that started."""
    gate, started = threading.Event(), _Started()
    real = single_file.atomic_save

    def slow(obj, path):
        started.append(path.name)
        assert gate.wait(10)
        real(obj, path)

    monkeypatch.setattr(single_file, "atomic_save", slow)
    return gate, started


# saving and loading ---------------------------------------------------------------------------
async def test_save_and_load_model_optimizer_and_plain_object(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 3)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 8)).sum().backward()
    opt.step()
    box = Box(3.0)
    ckpt = Checkpoint({"model": model, "optimizer": opt, "box": box}, tmp_path / "new" / "dir")
    assert (tmp_path / "new" / "dir").is_dir()  # created on construction
    await _save(ckpt, 7)
    assert _names(tmp_path / "new" / "dir") == ["checkpoint_7.pt"]
    assert ckpt.last_checkpoint == tmp_path / "new" / "dir" / "checkpoint_7.pt"

    model2, box2 = torch.nn.Linear(8, 3), Box()
    opt2 = torch.optim.Adam(model2.parameters())
    Checkpoint.load_objects({"model": model2, "optimizer": opt2, "box": box2}, ckpt.last_checkpoint)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True))
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert torch.equal(box2.big, box.big) and box2.count == 3 and box2.history == [3.0]


async def test_single_object_file_is_a_bare_state_dict_readable_by_ignite(tmp_path):
    from ignite.handlers import Checkpoint as IgniteCheckpoint

    model = torch.nn.Linear(4, 2)
    ckpt = Checkpoint({"model": model}, tmp_path, filename_prefix="best")
    await _save(ckpt, 3)
    path = tmp_path / "best_model_3.pt"
    assert set(torch.load(path, weights_only=True)) == {"weight", "bias"}
    theirs = torch.nn.Linear(4, 2)
    IgniteCheckpoint.load_objects({"model": theirs}, torch.load(path, weights_only=True))
    assert torch.equal(theirs.weight, model.weight)
    ours = torch.nn.Linear(4, 2)
    Checkpoint.load_objects({"model": ours}, path)
    assert torch.equal(ours.bias, model.bias)


async def test_staging_buffers_are_allocated_once_and_reused(tmp_path):
    box = Box(1.0)
    ckpt = Checkpoint({"box": box}, tmp_path, n_saved=3)
    await _save(ckpt, 1)
    first = {k: v.data_ptr() for k, v in ckpt._staging._buffers.items()}
    box.big.fill_(2.0)
    await _save(ckpt, 2)
    assert {k: v.data_ptr() for k, v in ckpt._staging._buffers.items()} == first
    assert len(first) == 2  # big and small; the scalars are not staged
    loaded = torch.load(tmp_path / "box_1.pt", weights_only=True)
    assert loaded["big"][0].item() == 1.0  # the reuse did not change what was written before


async def test_tied_tensors_stay_tied_and_share_one_buffer(tmp_path):
    t = torch.arange(6.0)
    obj = SimpleNamespace(state_dict=lambda: {"a": t, "b": t, "view": t[2:4]},
                          load_state_dict=lambda sd: None)
    ckpt = Checkpoint({"obj": obj}, tmp_path)
    await _save(ckpt, 1)
    assert len(ckpt._staging._buffers) == 2
    loaded = torch.load(tmp_path / "obj_1.pt", weights_only=True)
    assert loaded["a"].data_ptr() == loaded["b"].data_ptr()
    assert loaded["view"].tolist() == [2.0, 3.0]


@pytest.mark.parametrize("size", [4, BIG], ids=["inline-copy", "threaded-copy"])
async def test_snapshot_holds_the_values_at_the_event_not_later_ones(tmp_path, monkeypatch, size):
    gate, started = _gated_writes(monkeypatch)
    state = {"w": torch.zeros(size), "step": 1, "groups": [{"lr": 0.1}]}
    obj = SimpleNamespace(state_dict=lambda: state, load_state_dict=lambda sd: None)
    ckpt = Checkpoint({"obj": obj}, tmp_path)
    await ckpt(FakeEngine(1))
    # the step loop resumes: the model and the python state change while the write waits
    state["w"].fill_(42.0)
    state["step"] = 2
    state["groups"][0]["lr"] = 0.5
    gate.set()
    await ckpt.aflush()
    assert started == ["obj_1.pt"]
    loaded = torch.load(tmp_path / "obj_1.pt", weights_only=True)
    assert loaded["w"].abs().sum().item() == 0.0
    assert loaded["step"] == 1 and loaded["groups"] == [{"lr": 0.1}]


async def test_rng_states_are_captured_at_the_save_event(tmp_path):
    engine = Engine(lambda e, b: None)
    ckpt = Checkpoint({"trainer": engine}, tmp_path)
    torch.manual_seed(123)
    await ckpt(FakeEngine(1))
    expected = torch.rand(5)  # a later handler draws from the RNG before the write happens
    await ckpt.aflush()
    Checkpoint.load_objects({"trainer": Engine(lambda e, b: None)}, tmp_path / "trainer_1.pt")
    assert torch.equal(torch.rand(5), expected)


async def test_global_step_transform_and_score_name_in_filename(tmp_path):
    model = torch.nn.Linear(2, 2)
    ckpt = Checkpoint({"model": model}, tmp_path, score_name="val_acc",
                      global_step_transform=lambda engine, event: engine.state.epoch * 10)
    await _save(ckpt, 3, val_acc=0.875)
    assert _names(tmp_path) == ["model_10_val_acc=0.8750.pt"]
    assert Checkpoint.latest(tmp_path) == tmp_path / "model_10_val_acc=0.8750.pt"


# retention ------------------------------------------------------------------------------------
async def test_retention_by_step_keeps_the_newest_and_deletes_after_the_write(tmp_path, monkeypatch):
    ckpt = Checkpoint({"box": Box()}, tmp_path, n_saved=2)
    for step in (1, 2, 3):
        await _save(ckpt, step)
    assert _names(tmp_path) == ["box_2.pt", "box_3.pt"]
    gate, _ = _gated_writes(monkeypatch)
    await ckpt(FakeEngine(4))
    await asyncio.sleep(0.05)
    assert _names(tmp_path)[:2] == ["box_2.pt", "box_3.pt"]  # nothing deleted before step 4 is durable
    gate.set()
    await ckpt.aflush()
    assert _names(tmp_path) == ["box_3.pt", "box_4.pt"]
    assert ckpt.last_checkpoint == tmp_path / "box_4.pt"


async def test_retention_by_score_keeps_the_best_and_skips_worse(tmp_path):
    ckpt = Checkpoint({"box": Box()}, tmp_path, n_saved=2, score_function=lambda e: e.state.metrics["acc"],
                      score_name="acc")
    for step, acc in enumerate([0.5, 0.9, 0.1, 0.95, 0.7, float("nan")], start=1):
        await _save(ckpt, step, acc=acc)
    assert _names(tmp_path) == ["box_2_acc=0.9000.pt", "box_4_acc=0.9500.pt"]
    assert ckpt.last_checkpoint == tmp_path / "box_4_acc=0.9500.pt"  # Ignite: the best one


async def test_score_sign_names_show_a_minimised_metric_and_rank_it_across_restarts(tmp_path):
    def make():
        return Checkpoint({"box": Box()}, tmp_path, n_saved=2, score_name="loss", score_sign=-1.0,
                          score_function=lambda e: -e.state.metrics["loss"])

    ckpt = make()
    for step, loss in enumerate([0.5, 0.2, 0.9], start=1):
        await _save(ckpt, step, loss=loss)
    assert _names(tmp_path) == ["box_1_loss=0.5000.pt", "box_2_loss=0.2000.pt"]
    assert ckpt.last_checkpoint == tmp_path / "box_2_loss=0.2000.pt"
    again = make()  # names read back as the metric: the lowest loss is still the best
    assert again.last_checkpoint == tmp_path / "box_2_loss=0.2000.pt"
    await _save(again, 4, loss=0.7)  # worse than both kept files: skipped
    assert _names(tmp_path) == ["box_1_loss=0.5000.pt", "box_2_loss=0.2000.pt"]
    with pytest.raises(ValueError, match="score_sign"):
        Checkpoint({"box": Box()}, tmp_path, score_sign=2.0)


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["maximised", "minimised"])
async def test_an_equal_score_keeps_the_kept_file_across_restarts_as_within_one_process(tmp_path, sign):
    def make():
        return Checkpoint({"box": Box()}, tmp_path, n_saved=1, score_name="acc", score_sign=sign,
                          score_function=lambda e: sign * e.state.metrics["acc"])

    third = 1 / 3  # shown as 0.3333, so the name alone cannot tell it from 0.33334
    ckpt = make()
    await _save(ckpt, 1, acc=third)
    await _save(ckpt, 2, acc=third)  # equal: the file on disk stays
    assert _names(tmp_path) == ["box_1_acc=0.3333.pt"]
    again = make()  # a new process over the same folder: the same rule
    await _save(again, 3, acc=third)
    assert _names(tmp_path) == ["box_1_acc=0.3333.pt"]
    better = third + 1e-9 if sign > 0 else third - 1e-9  # shown alike, but better
    await _save(again, 4, acc=better)
    assert _names(tmp_path) == ["box_4_acc=0.3333.pt"]
    await _save(make(), 5, acc=better)
    assert _names(tmp_path) == ["box_4_acc=0.3333.pt"]


async def test_an_unreadable_score_record_ranks_by_the_names(tmp_path, caplog):
    ckpt = Checkpoint({"box": Box()}, tmp_path, n_saved=1, score_name="acc")
    await _save(ckpt, 1, acc=0.5)
    (tmp_path / ".box.scores.json").write_text("{torn")
    again = Checkpoint({"box": Box()}, tmp_path, n_saved=1, score_name="acc")
    assert "unreadable" in caplog.text and again.last_checkpoint == tmp_path / "box_1_acc=0.5000.pt"
    await _save(again, 2, acc=0.5)
    assert _names(tmp_path) == ["box_1_acc=0.5000.pt"]


async def test_n_saved_none_keeps_everything(tmp_path):
    ckpt = Checkpoint({"box": Box()}, tmp_path, n_saved=None)
    for step in range(1, 5):
        await _save(ckpt, step)
    assert len(_names(tmp_path)) == 4


async def test_restart_counts_existing_files_and_deletes_stale_temp_files(tmp_path):
    first = Checkpoint({"box": Box()}, tmp_path, filename_prefix="last", n_saved=2)
    await _save(first, 1)
    await _save(first, 2)
    stale = tmp_path / ".last_box_3.pt.0123456789ab.tmp"
    stale.write_bytes(b"half a checkpoint")
    foreign = [tmp_path / "notes.txt", tmp_path / "best_box_9.pt", tmp_path / ".other.tmp"]
    for p in foreign:
        p.write_bytes(b"x")

    second = Checkpoint({"box": Box()}, tmp_path, filename_prefix="last", n_saved=2)
    assert not stale.exists() and all(p.exists() for p in foreign)
    assert second.last_checkpoint == tmp_path / "last_box_2.pt"
    await _save(second, 3)
    assert [n for n in _names(tmp_path) if n.startswith("last")] == ["last_box_2.pt", "last_box_3.pt"]

    best = Checkpoint({"box": Box()}, tmp_path / "b", n_saved=1, score_name="acc")
    await _save(best, 1, acc=0.8)
    again = Checkpoint({"box": Box()}, tmp_path / "b", n_saved=1, score_name="acc")
    await _save(again, 2, acc=0.7)  # worse than the kept file of the earlier run: skipped
    assert _names(tmp_path / "b") == ["box_1_acc=0.8000.pt"]


async def test_a_fresh_run_in_an_old_folder_keeps_its_own_newest_files(tmp_path):
    old = Checkpoint({"box": Box()}, tmp_path)
    await _save(old, 1000)
    new = Checkpoint({"box": Box(5.0)}, tmp_path)
    await _save(new, 1)
    assert _names(tmp_path) == ["box_1.pt"]
    await _save(new, 1)  # the same name again: replaced, not deleted
    assert _names(tmp_path) == ["box_1.pt"]


# at most one write ----------------------------------------------------------------------------
async def test_a_save_during_a_write_waits_for_it_without_blocking_the_loop(tmp_path, monkeypatch):
    gate, started = _gated_writes(monkeypatch)
    box = Box(1.0)
    ckpt = Checkpoint({"box": box}, tmp_path, n_saved=5)
    await ckpt(FakeEngine(1))
    second = asyncio.create_task(ckpt(FakeEngine(2)))
    ticks = 0
    for _ in range(10):  # the loop keeps running while the second save waits
        await asyncio.sleep(0.005)
        ticks += 1
    assert ticks == 10 and not second.done() and started == ["box_1.pt"]
    box.big.fill_(2.0)  # the first write still holds the staging buffers: the second waits
    gate.set()
    await second
    await ckpt.aflush()
    assert started == ["box_1.pt", "box_2.pt"]
    assert torch.load(tmp_path / "box_1.pt", weights_only=True)["big"][0].item() == 1.0
    assert torch.load(tmp_path / "box_2.pt", weights_only=True)["big"][0].item() == 2.0


async def test_a_failed_write_is_raised_at_the_next_save_and_keeps_the_old_file(tmp_path, monkeypatch):
    ckpt = Checkpoint({"box": Box()}, tmp_path, n_saved=1)
    await _save(ckpt, 1)

    def full_disk(obj, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(single_file, "atomic_save", full_disk)
    await ckpt(FakeEngine(2))
    with pytest.raises(CheckpointError, match="No space left"):
        await ckpt(FakeEngine(3))
    assert _names(tmp_path) == ["box_1.pt"]
    assert ckpt.last_checkpoint == tmp_path / "box_1.pt"


async def test_engine_run_returns_only_when_the_last_write_is_durable(tmp_path, monkeypatch):
    real = single_file.atomic_save

    def slow(obj, path):
        time.sleep(0.2)
        real(obj, path)

    monkeypatch.setattr(single_file, "atomic_save", slow)
    model = torch.nn.Linear(2, 2)
    trainer = Engine(lambda e, b: None)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(every=5),
                              Checkpoint({"model": model, "trainer": trainer}, tmp_path, n_saved=2))
    await trainer.run(range(10), max_epochs=1)
    assert _names(tmp_path) == ["checkpoint_10.pt", "checkpoint_5.pt"]
    assert torch.load(tmp_path / "checkpoint_10.pt", weights_only=True)["trainer"]["iteration"] == 10


async def test_only_rank_zero_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(dist, "is_main", lambda: False)
    ckpt = Checkpoint({"box": Box()}, tmp_path)
    await _save(ckpt, 1)
    assert _names(tmp_path) == []


# latest() and broken files ----------------------------------------------------------------------
def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _flip_byte_in_tensor_data(path: Path) -> None:
    data = bytearray(path.read_bytes())
    at = data.index(b"data/0") + 200  # inside the first storage record
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


async def test_latest_skips_torn_corrupt_and_temp_files(tmp_path):
    assert Checkpoint.latest(tmp_path / "missing") is None
    assert Checkpoint.latest(tmp_path) is None
    ckpt = Checkpoint({"box": Box(1.0)}, tmp_path, n_saved=None)
    for step in (1, 2, 3):
        await _save(ckpt, step)
    (tmp_path / ".box_4.pt.abcdef012345.tmp").write_bytes(b"partial")
    _truncate(tmp_path / "box_3.pt")
    _flip_byte_in_tensor_data(tmp_path / "box_2.pt")
    assert Checkpoint.latest(tmp_path) == tmp_path / "box_1.pt"
    assert Checkpoint.latest(tmp_path, filename_prefix="other") is None


async def test_latest_prefers_the_most_recent_write(tmp_path):
    last = Checkpoint({"box": Box()}, tmp_path, filename_prefix="last")
    best = Checkpoint({"box": Box()}, tmp_path, filename_prefix="best")
    await _save(last, 5)
    await _save(best, 3)
    os.utime(tmp_path / "last_box_5.pt", ns=(1, 1))  # written long ago
    assert Checkpoint.latest(tmp_path) == tmp_path / "best_box_3.pt"
    assert Checkpoint.latest(tmp_path, "last") == tmp_path / "last_box_5.pt"


@pytest.mark.parametrize("damage", [_truncate, _flip_byte_in_tensor_data,
                                    lambda p: p.write_bytes(b"")], ids=["truncated", "corrupt", "empty"])
async def test_load_objects_names_a_broken_file(tmp_path, damage):
    ckpt = Checkpoint({"box": Box(1.0)}, tmp_path)
    await _save(ckpt, 1)
    damage(tmp_path / "box_1.pt")
    with pytest.raises(CheckpointError, match=r"box_1\.pt.*(truncated|corrupt)"):
        Checkpoint.load_objects({"box": Box()}, tmp_path / "box_1.pt")


async def test_load_objects_missing_entry_and_missing_file(tmp_path):
    ckpt = Checkpoint({"a": Box(), "b": Box()}, tmp_path)
    await _save(ckpt, 1)
    with pytest.raises(CheckpointError, match=r"checkpoint_1\.pt: no entry for 'c'"):
        Checkpoint.load_objects({"a": Box(), "c": Box()}, tmp_path / "checkpoint_1.pt")
    with pytest.raises(FileNotFoundError):
        Checkpoint.load_objects({"a": Box()}, tmp_path / "nope.pt")


def test_constructor_rejects_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="non-empty dict"):
        Checkpoint({}, tmp_path)
    with pytest.raises(TypeError, match="'x'.*no state_dict"):
        Checkpoint({"x": object()}, tmp_path)
    with pytest.raises(ValueError, match="n_saved"):
        Checkpoint({"b": Box()}, tmp_path, n_saved=0)
    with pytest.raises(ValueError, match="filename_prefix"):
        Checkpoint({"b": Box()}, tmp_path, filename_prefix="a/b")


# atomicity against a dying writer ---------------------------------------------------------------
@pytest.mark.parametrize("moment", ["mid-write", "before-rename"])
def test_a_writer_killed_mid_write_leaves_the_previous_checkpoint_loadable(tmp_path, moment):
    proc = subprocess.run([sys.executable, str(SCRIPTS / "die_while_writing.py"), str(tmp_path), moment],
                          capture_output=True, text=True, timeout=300)  # a loaded 2-core machine
    assert proc.returncode == 17, proc.stderr
    temps = [n for n in _names(tmp_path) if n.endswith(".tmp")]
    assert len(temps) == 1 and not temps[0].endswith(".pt")  # the torn temp file is left behind
    assert Checkpoint.latest(tmp_path) == tmp_path / "box_1.pt"
    box = Box()
    Checkpoint.load_objects({"box": box}, tmp_path / "box_1.pt")
    assert box.big[0].item() == 1.0
    Checkpoint({"box": Box()}, tmp_path)  # the next run's Checkpoint cleans it up
    assert _names(tmp_path) == ["box_1.pt"]


# CUDA (only where a GPU exists) -----------------------------------------------------------------
@pytest.mark.cuda
async def test_cuda_state_is_staged_in_pinned_buffers(tmp_path):
    model = torch.nn.Linear(512, 512).cuda()
    ckpt = Checkpoint({"model": model}, tmp_path)
    await _save(ckpt, 1)
    assert all(b.is_pinned() and b.device.type == "cpu" for b in ckpt._staging._buffers.values())
    with torch.no_grad():
        model.weight.add_(1.0)
    await _save(ckpt, 2)
    loaded = torch.load(tmp_path / "model_2.pt", weights_only=True)
    assert torch.equal(loaded["weight"], model.weight.cpu())


async def test_global_step_must_be_a_non_negative_integer(tmp_path):
    ckpt = Checkpoint({"box": Box()}, tmp_path, global_step_transform=lambda e, ev: e.state.epoch)
    for bad in (1.5, -1, "3", True):
        eng = FakeEngine()
        eng.state.epoch = bad
        with pytest.raises(ValueError, match="global step"):
            await ckpt(eng)
    eng = FakeEngine()
    eng.state.epoch = torch.tensor(4)
    await ckpt(eng)
    await ckpt.aflush()
    assert _names(tmp_path) == ["box_4.pt"]


async def test_cancel_during_the_final_flush_returns_after_the_write_is_durable(tmp_path, monkeypatch):
    gate, started = _gated_writes(monkeypatch)
    trainer = Engine(lambda e, b: None)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(every=5), Checkpoint({"box": Box(1.0)}, tmp_path))
    task = asyncio.create_task(trainer.run(range(5), max_epochs=1))
    await started.first()  # the last step is done; run now waits for the final write
    await asyncio.sleep(0.05)
    task.cancel()
    asyncio.get_running_loop().call_later(0.3, gate.set)  # the write ends well after the cancel
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _names(tmp_path) == ["box_5.pt"], "cancel returned while the write was in flight"
    Checkpoint.load_objects({"box": Box()}, tmp_path / "box_5.pt")


# the copy behind the next step ----------------------------------------------------------------
def _gated_deferred_copy(monkeypatch, order: list[str]) -> threading.Event:
    """Hold the copy of optimizer state (it runs in the I/O executor) until the returned Event is
    set; note in ``order`` when it ends."""
    gate, real = threading.Event(), staging.Staging.copy

    def copy(self, pairs):
        if pairs and threading.current_thread() is not threading.main_thread():
            assert gate.wait(10)
            real(self, pairs)
            order.append("copied")
            return
        real(self, pairs)

    monkeypatch.setattr(staging.Staging, "copy", copy)
    return gate


def _stepped_adam(model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam over ``model`` after one step, so that it has state (moments, step counts)."""
    opt = torch.optim.Adam(model.parameters(), lr=0.5)
    model(torch.randn(8, model[0].in_features)).pow(2).mean().backward()
    opt.step()
    opt.zero_grad()
    return opt


async def test_optimizer_state_is_copied_behind_the_next_step_and_only_its_optimizer_waits(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    opt = _stepped_adam(model)
    other = torch.nn.Linear(4, 4)
    other_opt = torch.optim.SGD(other.parameters(), lr=0.1)  # not in to_save: never waits
    order: list[str] = []
    gate = _gated_deferred_copy(monkeypatch, order)
    opt.register_step_post_hook(lambda *a: order.append("stepped"))
    ckpt = Checkpoint({"model": model, "optimizer": opt}, tmp_path)
    before = {"model": exactness.clone(model.state_dict()), "optimizer": exactness.clone(opt.state_dict())}
    await ckpt(FakeEngine(1))  # returns with the optimizer state's copy still to do
    other_stepped = threading.Event()

    def next_step() -> None:  # forward updates BatchNorm's statistics, then the optimizers step
        model(torch.randn(8, 4)).pow(2).mean().backward()
        other(torch.randn(2, 4)).sum().backward()
        other_opt.step()
        other_stepped.set()
        opt.step()

    step = asyncio.create_task(asyncio.to_thread(next_step))
    assert await asyncio.to_thread(other_stepped.wait, 10)
    await asyncio.sleep(0.05)
    assert not step.done() and order == []  # forward, backward, the other optimizer: ran; Adam waits
    gate.set()
    await step
    await ckpt.aflush()
    assert order == ["copied", "stepped"]
    _check_files(tmp_path, {1: before}, ["model", "optimizer"])
    assert not torch.equal(model[0].weight, before["model"]["0.weight"])  # the step did happen after
    assert not torch.equal(model[1].running_mean, before["model"]["1.running_mean"])


async def test_a_write_to_optimizer_state_outside_its_step_refuses_the_save(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    opt = _stepped_adam(model)
    gate = _gated_deferred_copy(monkeypatch, [])
    ckpt = Checkpoint({"model": model, "optimizer": opt}, tmp_path)
    await ckpt(FakeEngine(1))
    with torch.no_grad():
        opt.state[model[0].weight]["exp_avg"].mul_(0.5)  # e.g. a handler resetting moments
    gate.set()
    with pytest.raises(CheckpointError) as err:
        await ckpt.aflush()
    msg = str(err.value)
    assert "checkpoint_1.pt not written: optimizer.state.0.exp_avg changed" in msg
    assert "overlap=False" in msg and "\n" not in msg
    assert _names(tmp_path) == []
    model(torch.randn(2, 4)).sum().backward()
    await asyncio.to_thread(opt.step)  # the gate is open again
    fixed = Checkpoint({"model": model, "optimizer": opt}, tmp_path, overlap=False)
    await fixed(FakeEngine(2))
    with torch.no_grad():
        opt.state[model[0].weight]["exp_avg"].mul_(0.5)
    await fixed.aflush()
    assert _names(tmp_path) == ["checkpoint_2.pt"]


async def test_overlap_off_copies_everything_at_the_event(tmp_path, monkeypatch):
    order: list[str] = []
    _gated_deferred_copy(monkeypatch, order)  # never opened: nothing may wait for it
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    ckpt = Checkpoint({"model": model, "optimizer": _stepped_adam(model)}, tmp_path, overlap=False)
    await _save(ckpt, 1)
    assert order == [] and _names(tmp_path) == ["checkpoint_1.pt"]


# when_busy --------------------------------------------------------------------------------------
async def test_when_busy_skip_drops_a_superseded_save_but_never_the_last_one(tmp_path, monkeypatch):
    gate, started = _gated_writes(monkeypatch)
    ckpt = Checkpoint({"box": Box(1.0)}, tmp_path, n_saved=5, when_busy="skip")
    await ckpt(FakeEngine(1))
    await started.first()
    await ckpt(FakeEngine(2))  # the write of step 1 is still running: dropped, counted
    assert ckpt.skipped == 1 and started == ["box_1.pt"]
    final = FakeEngine(3)
    final.state.max_epochs, final.state.epoch_length, final.state.epoch_iteration = 1, 3, 3
    last = asyncio.create_task(ckpt(final))  # the run's last step: waits instead
    await asyncio.sleep(0.05)
    assert not last.done() and ckpt.skipped == 1
    gate.set()
    await last
    await ckpt.aflush()
    assert _names(tmp_path) == ["box_1.pt", "box_3.pt"]


async def test_when_busy_skip_never_drops_a_scored_save(tmp_path, monkeypatch):
    gate, started = _gated_writes(monkeypatch)
    ckpt = Checkpoint({"box": Box(1.0)}, tmp_path, n_saved=5, score_name="acc", when_busy="skip")
    eng = FakeEngine(1)
    eng.state.metrics["acc"] = 0.5
    await ckpt(eng)
    eng = FakeEngine(2)
    eng.state.metrics["acc"] = 0.9
    second = asyncio.create_task(ckpt(eng))
    await asyncio.sleep(0.05)
    gate.set()
    await second
    await ckpt.aflush()
    assert ckpt.skipped == 0 and _names(tmp_path) == ["box_1_acc=0.5000.pt", "box_2_acc=0.9000.pt"]


def test_unknown_backend_or_busy_policy_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="backend must be one of auto, file, sharded, got 'nfs'"):
        Checkpoint({"b": Box()}, tmp_path, backend="nfs")
    with pytest.raises(ValueError, match="when_busy must be one of wait, skip, got 'drop'"):
        Checkpoint({"b": Box()}, tmp_path, when_busy="drop")


# exact at the event, whatever mutates the tensors ----------------------------------------------
class _Racing:
    """Copies that run behind the step (in the I/O executor) start only once the test's code has
    mutated something after the save event (``mutated.set()``; or after 2 s): the worst case for
    a copy that races the next step. Exactness must hold for any timing; this makes a tearing
    race certain. The save event itself re-arms it (see ``_expect_each_save``)."""

    def __init__(self, monkeypatch) -> None:
        self.mutated = threading.Event()
        real = staging.Staging.copy

        def copy(this, pairs):
            if pairs and threading.current_thread() is not threading.main_thread():
                self.mutated.wait(2)
                self.mutated.clear()
            real(this, pairs)

        monkeypatch.setattr(staging.Staging, "copy", copy)


def _expect_each_save(trainer: Engine, to_save: dict, every: int, racing: _Racing) -> dict[int, dict]:
    """The state at each save event, cloned by a handler that runs right before the Checkpoint."""
    expected: dict[int, dict] = {}

    def snapshot(engine: Engine) -> None:
        expected[engine.state.iteration] = {k: exactness.clone(v.state_dict()) for k, v in to_save.items()}
        racing.mutated.clear()

    trainer.add_event_handler(Events.ITERATION_COMPLETED(every=every), snapshot, priority=100)
    trainer.add_event_handler(Events.COMPLETED, lambda: racing.mutated.set())  # the last copy goes
    return expected


def _check_files(folder: Path, expected: dict[int, dict], keys: list[str], stem: str = "checkpoint") -> None:
    """One file per save, each holding the state of ``keys`` at its event."""
    assert sorted(int(n.rsplit("_", 1)[1][:-3]) for n in _names(folder)) == sorted(expected)
    for step, state in expected.items():
        saved = torch.load(folder / f"{stem}_{step}.pt", weights_only=True)
        if len(keys) == 1 and stem != "checkpoint":
            saved = {keys[0]: saved}
        for key in keys:
            exactness.assert_same(saved[key], state[key], f"step {step}: {key}")


def _ema_setup(every_step: int):
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.BatchNorm1d(32), torch.nn.Linear(32, 4))
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    x = torch.randn(8, 16)

    def step(engine, batch):
        model(x).pow(2).mean().backward()
        if engine.state.iteration % every_step == 0:
            opt.step()
            opt.zero_grad()

    return model, ema, opt, step


@pytest.mark.parametrize("every_step", [1, 2], ids=["ema-each-step", "ema-each-iteration-optimizer-every-2"])
async def test_an_ema_updated_after_the_checkpoint_is_saved_as_it_was_at_the_event(tmp_path, monkeypatch, every_step):
    racing = _Racing(monkeypatch)
    model, ema, opt, step = _ema_setup(every_step)
    trainer = Engine(step)
    to_save = {"model": model, "ema": ema, "optimizer": opt}
    expected = _expect_each_save(trainer, to_save, 3, racing)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(every=3), Checkpoint(to_save, tmp_path, n_saved=None))

    @trainer.on(Events.ITERATION_COMPLETED)  # registered after the Checkpoint, as in Ignite
    def update_ema(engine):
        ema.update_parameters(model)
        racing.mutated.set()

    await trainer.run(range(12), max_epochs=1)
    _check_files(tmp_path, expected, ["model", "ema", "optimizer"])


async def test_in_place_weight_decay_at_the_start_of_the_step_is_not_in_the_earlier_file(tmp_path, monkeypatch):
    racing = _Racing(monkeypatch)
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(4, 64)

    def step(engine, batch):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.999)
        racing.mutated.set()
        model(x).sum().backward()
        opt.step()
        opt.zero_grad()

    trainer = Engine(step)
    to_save = {"model": model, "optimizer": opt}
    expected = _expect_each_save(trainer, to_save, 2, racing)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(every=2), Checkpoint(to_save, tmp_path, n_saved=None))
    await trainer.run(range(10), max_epochs=1)
    _check_files(tmp_path, expected, ["model", "optimizer"])


@pytest.mark.parametrize("how", ["no_grad", "data"])
async def test_manual_sgd_without_an_optimizer_is_saved_as_it_was_at_the_event(tmp_path, monkeypatch, how):
    racing = _Racing(monkeypatch)
    torch.manual_seed(0)
    emb = torch.nn.Embedding(BIG // 256, 64)  # 2 MB
    idx = torch.arange(0, BIG // 256, 97)

    def step(engine, batch):
        emb(idx).pow(2).sum().backward()
        if how == "data":
            emb.weight.data -= 0.01 * emb.weight.grad
        else:
            with torch.no_grad():
                emb.weight -= 0.01 * emb.weight.grad
        emb.weight.grad = None
        racing.mutated.set()

    trainer = Engine(step)
    to_save = {"emb": emb, "trainer": trainer}
    expected = _expect_each_save(trainer, to_save, 3, racing)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(every=3), Checkpoint(to_save, tmp_path, n_saved=None))
    await trainer.run(range(9), max_epochs=1)
    _check_files(tmp_path, expected, ["emb"])


async def test_a_step_writing_weights_in_place_without_an_optimizer(tmp_path, monkeypatch):
    racing = _Racing(monkeypatch)
    w = torch.nn.Parameter(torch.zeros(BIG // 4))
    holder = torch.nn.Module()
    holder.w = w

    def step(engine, batch):
        with torch.no_grad():
            w.add_(1.0)
        racing.mutated.set()

    trainer = Engine(step)
    expected = _expect_each_save(trainer, {"holder": holder}, 3, racing)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(every=3), Checkpoint({"holder": holder}, tmp_path, n_saved=None))
    await trainer.run(range(6), max_epochs=1)
    _check_files(tmp_path, expected, ["holder"], stem="holder")
    assert torch.load(tmp_path / "holder_3.pt", weights_only=True)["w"].max().item() == 3.0


@pytest.fixture
def late_copies(monkeypatch):
    return exactness.LateCopies(monkeypatch)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=exactness.plans())
@example(plan=exactness.DIVERGES)
def test_every_file_holds_the_state_at_its_event_whatever_mutates_it(plan, tmp_path_factory, late_copies):
    exactness.check(plan, tmp_path_factory.mktemp("ckpt"), late_copies, "file")


def test_a_discarded_checkpoint_leaves_no_hook_on_its_optimizer(tmp_path):
    import gc

    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    opt = _stepped_adam(model)
    before = len(opt._optimizer_step_pre_hooks)
    ckpt = Checkpoint({"model": model, "optimizer": opt}, tmp_path)
    assert len(opt._optimizer_step_pre_hooks) == before + 1
    del ckpt
    gc.collect()
    assert len(opt._optimizer_step_pre_hooks) == before
