"""The column cache beside metrics.jsonl: written by the run's writer, checked against the jsonl,
and never the reason a chart is wrong (torn, missing, behind, replaced)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import msgspec
import numpy as np
import pytest

from aiotrain.tracking import Track
from aiotrain.tracking.columns import (
    ColumnAppender,
    build_cache,
    cache_dir,
    hold_for_writing,
    read_cache,
)
from aiotrain.tracking.series import SeriesFile, downsample


def _reference(jsonl: Path) -> dict[str, tuple[list[int], list[float], list[float]]]:
    """Per key (step, time, value) straight from the JSON lines, by the documented rule:
    numbers and bools are points, strings that read as numbers ("inf") too, nan never."""
    out: dict[str, tuple[list[int], list[float], list[float]]] = {}
    for line in jsonl.read_bytes().splitlines():
        record = msgspec.json.decode(line)
        for key, value in record.items():
            if key in ("step", "timestamp") or isinstance(value, dict | list) or value is None:
                continue
            try:
                x = float(value)
            except ValueError:
                continue
            if x != x:
                continue
            col = out.setdefault(key, ([], [], []))
            col[0].append(record["step"])
            col[1].append(record["timestamp"])
            col[2].append(x)
    return out


def _assert_matches_jsonl(series: SeriesFile, jsonl: Path) -> None:
    ref = _reference(jsonl)
    assert series.keys() == sorted(ref)
    for key, (steps, times, values) in ref.items():
        col = series.column(key)
        assert col is not None
        assert col.step.tolist() == steps, key
        assert col.time.tolist() == times, key
        assert col.value.tolist() == values, key
        small = series.downsampled(key, 8)
        assert small is not None
        want = downsample(col, 8)
        assert np.array_equal(small[1].value, want.value) and np.array_equal(small[1].step, want.step)


def _series(jsonl: Path) -> SeriesFile:
    s = SeriesFile(jsonl)
    s.refresh()
    return s


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run with awkward values: nan, inf, text, bools, a key from step 50 on, a key on odd
    steps only, histograms, written in several drains."""
    with Track.run("p", dir=tmp_path, flush_interval=0.05) as run:
        for i in range(200):
            metrics: dict = {"loss": 1.0 / (i + 1), "flag": i % 3 == 0}
            if i % 2:
                metrics["odd"] = float("nan") if i % 10 == 1 else i * 0.5
            if i >= 50:
                metrics["late"] = -i
            if i == 7:
                metrics.update(spike=math.inf, dip=-math.inf, note="hello", num_text="2.5")
            run.log(metrics)
            if i % 40 == 0:
                run.log_histogram("weights", np.arange(10.0) * i, step=i)
                run.flush()
        run_dir = run.dir
    return run_dir


def test_a_run_writes_a_cache_that_equals_its_jsonl(run_dir: Path) -> None:
    jsonl = run_dir / "metrics.jsonl"
    cached = read_cache(jsonl)
    assert cached is not None and cached.offset == jsonl.stat().st_size
    series = _series(jsonl)
    assert series.from_cache == jsonl.stat().st_size  # nothing decoded from JSON
    _assert_matches_jsonl(series, jsonl)
    assert series.column("spike").value.tolist() == [math.inf]
    assert series.column("num_text").value.tolist() == [2.5]
    assert "note" not in series.keys()
    assert series.column("flag").value.tolist() == [float(i % 3 == 0) for i in range(200)]
    assert [s for s, _ in series.media_entries()["weights"]] == [0, 40, 80, 120, 160]
    fresh = SeriesFile(jsonl)
    shutil.rmtree(cache_dir(jsonl))
    fresh.refresh()  # the same history decoded from the jsonl
    assert fresh.from_cache == 0
    assert fresh.media_entries() == series.media_entries()


def test_a_missing_cache_reads_the_jsonl_and_the_writer_rebuilds_it(run_dir: Path) -> None:
    jsonl = run_dir / "metrics.jsonl"
    shutil.rmtree(cache_dir(jsonl))
    cached = read_cache(jsonl)
    assert cached is not None and cached.offset == 0  # covers nothing
    _assert_matches_jsonl(_series(jsonl), jsonl)
    ColumnAppender.open(jsonl).close()  # what the writer does when the run is resumed
    assert read_cache(jsonl).offset == jsonl.stat().st_size
    _assert_matches_jsonl(_series(jsonl), jsonl)


def test_a_jsonl_ahead_of_its_cache_is_read_from_the_cache_then_the_lines(run_dir: Path) -> None:
    jsonl = run_dir / "metrics.jsonl"
    covered = jsonl.stat().st_size
    with open(jsonl, "ab") as f:  # as an older version (or a crash between the two appends) leaves it
        for i in range(200, 230):
            f.write(msgspec.json.encode({"step": i, "timestamp": 1.0 + i, "loss": 5.0, "new": i}) + b"\n")
    series = _series(jsonl)
    assert series.from_cache == covered
    _assert_matches_jsonl(series, jsonl)
    ColumnAppender.open(jsonl).close()
    assert read_cache(jsonl).offset == jsonl.stat().st_size


def test_a_torn_column_file_is_not_used_and_is_rebuilt(run_dir: Path) -> None:
    jsonl = run_dir / "metrics.jsonl"
    folder = cache_dir(jsonl)
    col = next(folder.glob("*.col"))
    with open(col, "r+b") as f:
        f.truncate(col.stat().st_size - 40)  # a record and a bit lost
    assert read_cache(jsonl) is None
    series = _series(jsonl)
    assert series.from_cache == 0
    _assert_matches_jsonl(series, jsonl)
    ColumnAppender.open(jsonl).close()
    assert read_cache(jsonl).offset == jsonl.stat().st_size
    _assert_matches_jsonl(_series(jsonl), jsonl)


def test_a_batch_cut_short_after_the_last_mark_is_ignored_and_cut(run_dir: Path) -> None:
    jsonl = run_dir / "metrics.jsonl"
    folder = cache_dir(jsonl)
    sizes = {p.name: p.stat().st_size for p in folder.iterdir()}
    for col in folder.glob("*.col"):  # half-written records and a torn mark: a crash mid-append
        with open(col, "ab") as f:
            f.write(np.array([(10**9, 999, 0.0, 123.0)], dtype=[("e", "<i8"), ("s", "<i8"), ("t", "<f8"),
                                                                  ("v", "<f8")]).tobytes() + b"\x01" * 7)
    with open(folder / "marks.bin", "ab") as f:
        f.write(b"\x02" * 9)
    with open(folder / "keys.jsonl", "ab") as f:
        f.write(b'{"key": "tor')
    series = _series(jsonl)
    assert series.from_cache == jsonl.stat().st_size
    _assert_matches_jsonl(series, jsonl)
    ColumnAppender.open(jsonl).close()
    assert {p.name: p.stat().st_size for p in folder.iterdir()} == sizes


def test_a_replaced_jsonl_does_not_match_its_old_cache(run_dir: Path) -> None:
    jsonl = run_dir / "metrics.jsonl"
    size = jsonl.stat().st_size
    lines = [msgspec.json.encode({"step": i, "timestamp": 2.0 + i, "loss": -1.0}) + b"\n" for i in range(5000)]
    data = b"".join(lines)
    assert len(data) > size
    jsonl.write_bytes(data)  # another history, imported over this run's
    assert read_cache(jsonl) is None
    _assert_matches_jsonl(_series(jsonl), jsonl)


def test_a_resumed_run_appends_to_its_cache(run_dir: Path, tmp_path: Path) -> None:
    run_id = run_dir.name
    with Track.run("p", dir=tmp_path, resume=run_id) as run:
        for _ in range(20):
            run.log({"loss": 0.5, "resumed": 1})
    jsonl = run_dir / "metrics.jsonl"
    series = _series(jsonl)
    assert series.from_cache == jsonl.stat().st_size
    _assert_matches_jsonl(series, jsonl)
    assert series.column("resumed").step.tolist() == list(range(200, 220))


def test_a_live_series_follows_the_cache_then_the_appended_lines(tmp_path: Path) -> None:
    with Track.run("p", dir=tmp_path, flush_interval=0) as run:
        for i in range(10):
            run.log({"loss": float(i)})
        jsonl = run.dir / "metrics.jsonl"
        series = _series(jsonl)
        assert series.column("loss").value.tolist() == [float(i) for i in range(10)]
        for i in range(10, 15):
            run.log({"loss": float(i)})
        # each log wrote its line; the cache waits for CACHE_RECORDS lines or a durable drain
        assert read_cache(jsonl).offset < jsonl.stat().st_size
        series.refresh()
        assert series.column("loss").value.tolist() == [float(i) for i in range(15)]
    _assert_matches_jsonl(series, jsonl)
    assert read_cache(jsonl).offset == jsonl.stat().st_size  # finish made it level


def test_a_failed_cache_append_leaves_the_cache_behind_not_wrong(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = ColumnAppender.append

    def flaky(self, records, lines, offset):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        real(self, records, lines, offset)

    monkeypatch.setattr(ColumnAppender, "append", flaky)
    with Track.run("p", dir=tmp_path) as run:
        for i in range(5):
            for j in range(10):
                run.log({"loss": float(i * 10 + j)})
            run.flush()
    jsonl = run.dir / "metrics.jsonl"
    cached = read_cache(jsonl)
    assert 0 < cached.offset < jsonl.stat().st_size  # the first batch only: no gap after it
    series = _series(jsonl)
    assert series.from_cache == cached.offset
    _assert_matches_jsonl(series, jsonl)
    assert series.column("loss").value.tolist() == [float(i) for i in range(50)]


def test_a_reader_builds_the_cache_of_a_run_no_writer_holds(run_dir: Path, tmp_path: Path) -> None:
    jsonl = run_dir / "metrics.jsonl"
    shutil.rmtree(cache_dir(jsonl))  # as a run written by an older version, or imported
    assert build_cache(jsonl)
    series = _series(jsonl)
    assert series.from_cache == jsonl.stat().st_size
    _assert_matches_jsonl(series, jsonl)
    with Track.run("p", dir=tmp_path, flush_interval=0) as run:
        run.log({"loss": 1.0})
        live = run.dir / "metrics.jsonl"
        shutil.rmtree(cache_dir(live), ignore_errors=True)
        assert not build_cache(live)  # its writer holds it
        assert not cache_dir(live).exists()


def test_a_writer_never_waits_forever_for_a_held_file(tmp_path: Path) -> None:
    pytest.importorskip("fcntl")  # no advisory locks on Windows: nothing to wait for
    jsonl = tmp_path / "metrics.jsonl"
    jsonl.write_bytes(b"")
    with open(jsonl, "rb") as builder, open(jsonl, "ab") as writer:
        assert hold_for_writing(builder, wait=0)
        assert not hold_for_writing(writer, wait=0.1)  # then it leaves the cache alone



def test_a_writer_of_many_keys_keeps_few_files_open_and_its_cache_whole(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(ColumnAppender, "OPEN_FILES", 3)
    with Track.run("p", dir=tmp_path, flush_interval=0.05) as run:
        for i in range(40):
            run.log({f"k{(i * 7 + j) % 11}": float(i + j) for j in range(4)})  # keys come and go
            if i % 10 == 9:
                run.flush()  # a durable drain: every file written since the last one is synced
    jsonl = run.dir / "metrics.jsonl"
    series = _series(jsonl)
    assert series.from_cache == jsonl.stat().st_size
    _assert_matches_jsonl(series, jsonl)


def test_a_column_file_replaced_after_the_history_started_is_read_again_from_the_jsonl(run_dir: Path) -> None:
    jsonl = run_dir / "metrics.jsonl"
    series = _series(jsonl)  # started from the cache: no column read yet, no file held
    assert series.from_cache == jsonl.stat().st_size
    folder = cache_dir(jsonl)
    keys = dict(msgspec.json.decode(line).values() for line in (folder / "keys.jsonl").read_bytes().splitlines())
    loss = folder / keys["loss"]
    forged = loss.with_name("forged")
    forged.write_bytes(loss.read_bytes()[:-32] + bytes(32))  # same length, another last record
    forged.replace(loss)  # as a rebuild that reassigned the file would leave it
    _assert_matches_jsonl(series, jsonl)  # the stale column is noticed: decoded from the jsonl
    assert series.from_cache == 0
