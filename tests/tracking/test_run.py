"""Runs: the on-disk layout, metrics lines, steps, summary, metadata, modes, async use, resume."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from aiotrain.config import sdn
from aiotrain.tracking import Track
from aiotrain.tracking.run import LiveRunError
from aiotrain.tracking.writer import MetricsWriter


def lines(run):
    return [json.loads(x) for x in (run.dir / "metrics.jsonl").read_text().splitlines()]


def test_layout_and_contents(track_root):
    with Track.run("mnist", name="first", config={"lr": 1e-3, "model": {"depth": 4}},
                   tags=["baseline"], notes="hello") as run:
        run.log({"train/loss": 0.5, "acc": 0.25})
        run.log({"train/loss": 0.25})
    assert run.dir == track_root / "runs" / "mnist" / run.id
    assert {p.name for p in run.dir.iterdir()} >= {"metadata.sdn", "metrics.jsonl", "summary.sdn",
                                                   "media", "tables", "artifacts"}
    recs = lines(run)
    assert [r["step"] for r in recs] == [0, 1]
    assert recs[0]["train/loss"] == 0.5 and recs[0]["acc"] == 0.25
    assert set(recs[1]) == {"step", "timestamp", "train/loss"}
    assert all(isinstance(r["timestamp"], float) for r in recs)
    meta = sdn.loads((run.dir / "metadata.sdn").read_text())
    assert meta["id"] == run.id and meta["name"] == "first" and meta["project"] == "mnist"
    assert meta["tags"] == ["baseline"] and meta["notes"] == "hello" and meta["status"] == "finished"
    assert meta["config"] == {"lr": 1e-3, "model": {"depth": 4}}
    assert meta["finished_at"] >= meta["created_at"]
    assert set(meta["system"]) >= {"hostname", "platform", "python", "torch", "cpu_count", "gpus"}
    assert meta["system"]["torch"] == torch.__version__
    summary = sdn.loads((run.dir / "summary.sdn").read_text())
    assert summary == {"train/loss": 0.25, "acc": 0.25}
    assert (run.start_time, run.end_time) == (meta["created_at"], meta["finished_at"])


def test_auto_and_explicit_steps():
    with Track.run("p") as run:
        run.log({"a": 1})
        run.log({"a": 2})
        run.log({"a": 3}, step=10)
        run.log({"a": 4})
        assert run.step == 12
    assert [r["step"] for r in lines(run)] == [0, 1, 10, 11]


def test_tensor_scalars_are_converted_once():
    with Track.run("p") as run:
        run.log({"t": torch.tensor(1.5), "i": torch.tensor([3]), "n": torch.tensor(2.0).numpy()})
        with pytest.raises(ValueError, match="one-element"):
            run.log({"v": torch.ones(3)})
    rec = lines(run)[0]
    assert rec["t"] == 1.5 and rec["i"] == 3 and rec["n"] == 2.0
    assert run.summary["t"] == 1.5 and type(run.summary["t"]) is float


def test_nonfinite_values_round_trip():
    with Track.run("p") as run:
        run.log({"a": math.nan, "b": math.inf, "c": -math.inf, "d": 1.0})
    raw = (run.dir / "metrics.jsonl").read_text()
    assert '"a":"nan"' in raw and '"b":"inf"' in raw and '"c":"-inf"' in raw
    record = Track.load_run(run.dir)
    hist = record.history()[0]
    assert math.isnan(hist["a"]) and hist["b"] == math.inf and hist["c"] == -math.inf
    assert math.isnan(record.summary["a"]) and record.summary["c"] == -math.inf


def test_reserved_names_and_bad_steps():
    with Track.run("p") as run:
        with pytest.raises(ValueError, match="reserved"):
            run.log({"step": 1})
        with pytest.raises(ValueError):
            run.log({"a": 1}, step=-1)
        with pytest.raises(TypeError):
            run.log({"a": 1}, step="3")
        run.log({"a": 1})
    assert [r["step"] for r in lines(run)] == [0]


def test_summary_update_and_log_after_finish():
    run = Track.run("p")
    run.log({"loss": 1.0})
    run.log({"loss": 0.5})
    run.summary.update({"best_loss": 0.5, "loss": 0.4})
    run.finish()
    run.finish()  # idempotent
    assert sdn.loads((run.dir / "summary.sdn").read_text()) == {"loss": 0.4, "best_loss": 0.5}
    with pytest.raises(RuntimeError, match="finished"):
        run.log({"loss": 0.1})


def test_log_never_writes_on_the_caller(monkeypatch):
    """Without a drain due, log only queues: the folder appears when flush() drains."""
    monkeypatch.setattr(MetricsWriter, "FLUSH_INTERVAL_S", 1e9)
    run = Track.run("p")
    run.log({"a": 1})
    assert not run.dir.exists()
    run.flush()
    assert [r["a"] for r in lines(run)] == [1]
    run.finish()


def test_background_flush_by_record_count(monkeypatch):
    monkeypatch.setattr(MetricsWriter, "FLUSH_RECORDS", 8)
    monkeypatch.setattr(MetricsWriter, "FLUSH_INTERVAL_S", 1e9)
    run = Track.run("p")
    for i in range(8):
        run.log({"i": i})
    import time

    deadline = time.monotonic() + 20  # the drain runs on the I/O executor: wait for it, bounded
    while time.monotonic() < deadline:
        if (run.dir / "metrics.jsonl").exists() and len(lines(run)) == 8:
            break
        time.sleep(0.01)
    assert len(lines(run)) == 8
    run.finish()


def test_crashed_run_keeps_its_data():
    with pytest.raises(ZeroDivisionError):
        with Track.run("p") as run:
            run.log({"a": 1})
            raise ZeroDivisionError("division by zero")
    meta = sdn.loads((run.dir / "metadata.sdn").read_text())
    assert meta["status"] == "crashed" and "ZeroDivisionError" in meta["error"]
    assert lines(run)[0]["a"] == 1
    assert Track.load_run(run.dir).status == "crashed"


def test_disabled_mode_writes_nothing(track_root):
    Track.set_mode("disabled")
    with Track.run("p", config={"a": 1}) as run:
        run.log({"a": 1})
        run.log_histogram("h", torch.randn(10))
        run.log_image("img", torch.rand(3, 4, 4))
        t = Track.Table(["x"])
        t.add_row(1)
        run.log_table("t", t)
        run.flush()
        art = Track.Artifact("data", "dataset")
        run.log_artifact(art)
    assert not track_root.exists()
    with pytest.raises(ValueError):
        Track.set_mode("online")


def test_non_main_rank_is_disabled(track_root, monkeypatch):
    import aiotrain.tracking.run as run_module

    monkeypatch.setattr(run_module, "is_main", lambda: False)
    with Track.run("p") as run:
        run.log({"a": 1})
    assert run.disabled and not track_root.exists()


def test_env_dir(tmp_path, monkeypatch):
    Track.set_dir(None)
    monkeypatch.setenv("AIOTRAIN_DIR", str(tmp_path / "env"))
    with Track.run("p") as run:
        run.log({"a": 1})
    assert run.dir.parent.parent.parent == tmp_path / "env"
    monkeypatch.delenv("AIOTRAIN_DIR")
    monkeypatch.chdir(tmp_path)
    assert Track.get_dir().as_posix() == ".aiotrain"


async def test_async_with_and_periodic_flush(monkeypatch):
    monkeypatch.setattr(MetricsWriter, "FLUSH_INTERVAL_S", 0.05)
    async with Track.run("p") as run:
        assert (run.dir / "metadata.sdn").exists()  # created in the I/O executor on entry
        run.log({"a": 1})
        for _ in range(100):  # the loop's ticker drains without any further log call
            await asyncio.sleep(0.02)
            if (run.dir / "metrics.jsonl").stat().st_size:
                break
        assert lines(run) == [{"step": 0, "timestamp": lines(run)[0]["timestamp"], "a": 1}]
        run.log({"a": 2})
        await run.aflush()
        assert len(lines(run)) == 2
    assert run.status == "finished"
    assert sdn.loads((run.dir / "summary.sdn").read_text()) == {"a": 2}


async def test_async_crash_is_recorded():
    with pytest.raises(RuntimeError):
        async with Track.run("p") as run:
            run.log({"a": 1})
            raise RuntimeError("boom")
    assert Track.load_run(run.dir).metadata["error"] == "RuntimeError: boom"


def test_resume_continues_steps_and_config():
    with Track.run("p", name="long", config={"lr": 0.1}) as first:
        first.log({"a": 1})
        first.log({"a": 2})
    with Track.run("p", name="long", config={"bs": 8}, resume=True) as again:
        again.log({"a": 3})
    assert again.id == first.id and again.dir == first.dir
    assert [r["step"] for r in lines(again)] == [0, 1, 2]
    assert again.config == {"lr": 0.1, "bs": 8}
    with pytest.raises(ValueError, match="no such run"):
        Track.run("p", resume="nope")
    assert len(Track.runs("p")) == 1


def test_bad_project_and_config():
    for bad in ("", "a/b", "..", "x/../y"):
        with pytest.raises(ValueError):
            Track.run(bad)
    with pytest.raises(TypeError):
        Track.run("p", config=[1, 2])
    with pytest.raises(TypeError):
        Track()


def test_runs_lists_projects_and_statuses():
    with Track.run("a") as r1:
        r1.log({"x": 1})
    with pytest.raises(KeyError), Track.run("b") as r2:
        raise KeyError("k")
    listed = Track.runs()
    assert [(r.id, r.status) for r in listed] == [(r1.id, "finished"), (r2.id, "crashed")]
    assert [r.id for r in Track.runs("a")] == [r1.id]
    assert Track.runs("missing") == []
    assert os.path.samefile(Track.load_run(r1.dir).dir, r1.dir)


# ---------------------------------------------------------------- failures that must not cost data

def _break_media(run, kind):
    """Make the run's image or table writes fail: their folder is a file."""
    run.flush()  # creates the run's folders
    folder = run.dir / ("media/images" if kind == "image" else "tables")
    folder.rmdir()
    folder.write_text("not a folder")


def _log_media(run, kind):
    if kind == "image":
        run.log_image("img", torch.rand(3, 4, 4))
    else:
        run.log_table("tab", Track.Table(["x"], [[1]]))


@pytest.mark.parametrize("kind", ["image", "table"])
def test_a_failed_media_write_never_costs_the_metrics(kind):
    run = Track.run("p")
    run.log({"start": 1})
    _break_media(run, kind)
    _log_media(run, kind)
    for i in range(1000):
        run.log({"loss": float(i)})
    with pytest.raises(OSError, match=r"1 image/table write\(s\) failed") as info:
        run.finish()
    assert "every logged metric was written" in str(info.value)
    assert len(lines(run)) == 1 + 1 + 1000
    assert sdn.loads((run.dir / "summary.sdn").read_text())["loss"] == 999.0
    assert Track.load_run(run.dir).status == "finished"


async def test_a_media_write_that_failed_before_flush_is_reported_by_afinish():
    run = Track.run("p")
    _break_media(run, "table")
    _log_media(run, "table")
    await asyncio.sleep(0)
    run._wait_media()  # the failure has happened before anyone asks
    run.log({"a": 1})
    with pytest.raises(OSError, match="failed"):
        await run.aflush()
    assert [r.get("a") for r in lines(run)][-1] == 1
    _log_media(run, "table")
    with pytest.raises(OSError, match="failed"):
        await run.afinish()
    assert Track.load_run(run.dir).status == "finished"


@pytest.mark.parametrize("project, fragment", [
    ("x" * 256, "256 bytes"),
    ("é" * 128, "256 bytes"),
    ("bad\ud800name", "lone surrogate"),
])
def test_project_names_that_cannot_be_a_folder_are_refused_at_creation(project, fragment):
    with pytest.raises(ValueError, match=fragment) as info:
        Track.run(project)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("field", ["name", "tags", "notes", "config"])
def test_run_fields_that_cannot_be_stored_are_refused_at_creation(field):
    bad = "x\udcff"
    value = {"config": {"a": [bad]}, "tags": [bad]}.get(field, bad)
    with pytest.raises(ValueError, match="lone surrogate"):
        Track.run("p", **{field: value})


def test_configs_nested_deeper_than_sdn_holds_are_refused_at_creation():
    deep: dict = {}
    node = deep
    for _ in range(sdn.MAX_DEPTH + 5):
        node["k"] = {}
        node = node["k"]
    with pytest.raises(ValueError, match="deeper than"):
        Track.run("p", config=deep)


def test_the_longest_names_that_fit_finish():
    for project in ("x" * 255, "é" * 127 + "x"):
        with Track.run(project, name="é" * 300, tags=["ü"], notes="ß", config={"k": "ø"}) as run:
            run.log({"a": 1})
        assert Track.load_run(run.dir).status == "finished"


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"),
                    reason="reads the open descriptors from /proc (Linux)")
async def test_finish_leaves_no_file_of_the_run_open(track_root):
    # the system writer's first write opens the main writer: at finish it must not reopen the
    # metrics file the main writer has just closed (and leave it open, its lock held)
    async with Track.run("p", system_interval=60, flush_interval=60) as run:
        run.log({"loss": 1.0})

    def open_in_run() -> list[str]:
        paths = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                paths.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:  # the listing's own descriptor, already closed
                continue
        return [p for p in paths if p.startswith(str(run.dir))]

    assert open_in_run() == []


# ---------------------------------------------------------------- resume: honest history and one writer

async def test_a_cancelled_block_marks_the_run_interrupted():
    entered = asyncio.Event()

    async def work():
        async with Track.run("p", name="cancelled") as run:
            run.log({"x": 1})
            entered.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(work())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (record,) = Track.runs("p")
    assert record.status == "interrupted" and record.metadata["error"] == "CancelledError"
    with pytest.raises(ZeroDivisionError), Track.run("p", name="broken"):
        raise ZeroDivisionError("broken")
    assert Track.runs("p")[-1].status == "crashed"


def test_rewind_cuts_the_history_back_to_a_position_and_keeps_the_cut(track_root):
    with Track.run("p", name="r") as first:
        first.log({"loss": 1.0})
        first.log({"loss": 0.5, "acc": 0.1})
        position = first.position
        first.log({"loss": 0.25, "val": 7})  # after "the checkpoint": these are cut
        first.log({"loss": 0.125})
        first.summary["note"] = "kept"
    assert position == 2 and first.position == 4
    again = Track.run("p", resume=first.id, rewind=position)
    assert again.rewound == 2 and again.position == 2 and again.step == 2
    assert again.summary == {"loss": 0.5, "acc": 0.1, "note": "kept"}  # "val" went with the cut
    again.log({"loss": 0.3})
    again.finish()
    assert [(r["step"], r["loss"]) for r in lines(again)] == [(0, 1.0), (1, 0.5), (2, 0.3)]
    aside = [json.loads(x) for x in (again.dir / "metrics.rewound.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in aside] == [(2, 0.25), (3, 0.125)]
    assert Track.load_run(again.dir).history(["loss"])[-1]["loss"] == 0.3  # the column cache agrees
    with pytest.raises(ValueError, match="rewind"):
        Track.run("p", rewind=1)


def test_resuming_a_run_a_live_process_writes_is_refused(track_root):
    code = ("import sys, time\nfrom aiotrain.tracking import Track\n"
            "run = Track.run('p', dir=sys.argv[1], system_interval=None)\n"
            "run.log({'x': 1}); run.flush(); print(run.id, flush=True); time.sleep(600)\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(track_root)], stdout=subprocess.PIPE,
                             text=True)
    try:
        run_id = child.stdout.readline().strip()
        with pytest.raises(LiveRunError) as refused:
            Track.run("p", resume=run_id)
        assert str(refused.value) == (f"resume: run {run_id} is still being written by pid "
                                      f"{child.pid}; finish or stop it before resuming it (or start "
                                      "a new run)")
        with Track.run("p", name="open here") as here, pytest.raises(LiveRunError, match="this process"):
            Track.run("p", resume=here.id)
    finally:
        child.kill()  # SIGKILL: its run stays "running", written by nobody
        child.wait()
        child.stdout.close()
    with Track.run("p", resume=run_id) as resumed:
        resumed.log({"x": 2})
    assert [r["step"] for r in lines(resumed)] == [0, 1]
