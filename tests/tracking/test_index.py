"""The runs index: rows from each run's row.json while its SDN files are unchanged, never stale."""

from __future__ import annotations

import math
import os
from pathlib import Path

import msgspec
import pytest

from aiotrain.tracking import Track, index
from aiotrain.tracking.index import ROW_FILE, RunIndex
from aiotrain.tracking.status import set_run_status
from aiotrain.tracking.store import read_sdn, write_sdn


def _make(root: Path, n: int = 6) -> list[Path]:
    dirs = []
    for i in range(n):
        with Track.run(f"p{i % 2}", name=f"r{i}", config={"lr": 10.0 ** -i, "model": {"w": i}, "bad": math.nan},
                       tags=[f"t{i % 3}"], notes="n", dir=root) as run:
            run.log({"loss": 1.0 / (i + 1), "acc": math.inf if i == 2 else 0.5, "text": "x", "flag": True})
        dirs.append(run.dir)
    return dirs


def _dicts(rows: list[index.RunRow]) -> list[bytes]:
    out = []
    for r in rows:
        d = dict(r.to_dict())
        d.pop("duration")  # a running run's duration moves with the clock
        out.append(msgspec.json.encode(d))
    return out


def _no_sdn_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(run_dir):
        raise AssertionError(f"{run_dir} was read from its SDN files")

    monkeypatch.setattr(index, "load_run", refuse)


def test_rows_come_from_row_files_and_equal_the_sdn_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dirs = _make(tmp_path)
    from_sdn = RunIndex(tmp_path)
    for d in dirs:
        os.rename(d / ROW_FILE, d / "row.bak")
    expected = _dicts(from_sdn.refresh())
    for d in dirs:
        os.rename(d / "row.bak", d / ROW_FILE)
    _no_sdn_reads(monkeypatch)
    rows = RunIndex(tmp_path).refresh()
    assert _dicts(rows) == expected
    assert rows[2].summary["acc"] == math.inf and math.isnan(rows[0].config["bad"])


def test_a_run_changed_after_its_row_is_read_again(tmp_path: Path) -> None:
    dirs = _make(tmp_path, 3)
    set_run_status(dirs[0], "pruned")  # rewrites metadata.sdn, not row.json
    meta = read_sdn(dirs[1] / "metadata.sdn")
    meta["tags"] = ["tX"]  # the same size as "t1": only the mtime tells
    before = (dirs[1] / "metadata.sdn").stat()
    write_sdn(dirs[1] / "metadata.sdn", meta)
    os.utime(dirs[1] / "metadata.sdn", ns=(before.st_atime_ns, before.st_mtime_ns + 1))
    assert (dirs[1] / "metadata.sdn").stat().st_size == before.st_size
    rows = {r.record.id: r for r in RunIndex(tmp_path).refresh()}
    assert rows[dirs[0].name].record.status == "pruned"
    assert rows[dirs[1].name].record.tags == ["tX"]


def test_a_corrupt_or_foreign_row_file_is_ignored(tmp_path: Path) -> None:
    dirs = _make(tmp_path, 3)
    (dirs[0] / ROW_FILE).write_bytes(b"{not json")
    (dirs[1] / ROW_FILE).write_bytes(msgspec.json.encode({"version": 99}))
    os.unlink(dirs[2] / ROW_FILE)  # a run written before row files existed
    rows = RunIndex(tmp_path).refresh()
    assert [r.record.name for r in rows] == ["r0", "r1", "r2"]
    assert all(r.summary["loss"] > 0 for r in rows)


def test_a_resumed_run_shows_its_new_summary(tmp_path: Path) -> None:
    (first,) = _make(tmp_path, 1)
    with Track.run("p0", dir=tmp_path, resume=first.name) as run:
        run.log({"loss": 0.01})
        run.flush()
        live = {r.record.id: r for r in RunIndex(tmp_path).refresh()}[first.name]
        assert live.record.status == "running"
        assert live.summary["acc"] == 0.5  # from the first session's summary.sdn, not from row.json
    done = {r.record.id: r for r in RunIndex(tmp_path).refresh()}[first.name]
    assert done.summary["loss"] == 0.01 and done.record.status == "finished"


def test_a_corrupt_run_is_listed_as_unreadable_not_left_out(tmp_path: Path) -> None:
    dirs = _make(tmp_path, 3)
    (dirs[1] / "metadata.sdn").write_text("id: [unclosed\n")
    (dirs[1] / ROW_FILE).unlink()
    rows = RunIndex(tmp_path).refresh()
    assert len(rows) == 3
    (bad,) = [r for r in rows if r.record.status == "unreadable"]
    assert bad.record.id == dirs[1].name and "metadata.sdn" in bad.record.metadata["error"]
    live = tmp_path / "runs" / "p" / "live"  # a run still being written whose log is corrupt mid-file
    live.mkdir(parents=True)
    write_sdn(live / "metadata.sdn", {"id": "live", "project": "p", "status": "running", "created_at": 1.0})
    (live / "metrics.jsonl").write_bytes(b'{"step": 0, "loss": 1}\n{not json\n{"step": 1, "loss": 2}\n')
    (row,) = [r for r in RunIndex(tmp_path).refresh() if r.record.id == "live"]
    assert row.record.status == "unreadable" and "metrics.jsonl" in row.record.metadata["error"]


def test_an_os_error_reading_a_run_is_raised_not_an_empty_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _make(tmp_path, 2)
    idx = RunIndex(tmp_path)

    def emfile(*args, **kwargs):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(index, "read_row", lambda *a: None)
    monkeypatch.setattr(index, "load_run", emfile)
    with pytest.raises(OSError, match="Too many open files"):
        idx.refresh()
    monkeypatch.undo()
    assert len(idx.refresh()) == 2
