"""The metrics writer's loss window: what a SIGKILLed process keeps (subprocesses, real kills)."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aiotrain.tracking import Track
from aiotrain.tracking.columns import hold_for_writing, read_cache
from aiotrain.tracking.reader import read_history
from aiotrain.tracking.writer import MetricsWriter

STORM = Path(__file__).parent / "scripts" / "log_storm.py"
REPO = Path(__file__).resolve().parents[2]


def _start(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Path, Path]:
    counter = tmp_path / "counter"
    counter.write_bytes(bytes(8))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(STORM), str(tmp_path / "root"), str(counter), *args],
                            stdout=subprocess.PIPE, text=True, env=env)
    run_dir = Path(proc.stdout.readline().strip())
    return proc, run_dir / "metrics.jsonl", counter


def _logged(counter: Path) -> int:
    return struct.unpack("<q", counter.read_bytes())[0]


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()


def _records(path: Path) -> list[int]:
    return [r["i"] for r in read_history(path)] if path.exists() else []


def test_flush_interval_zero_loses_no_record_to_sigkill(tmp_path):
    proc, metrics, counter = _start(tmp_path, "--interval", "0")
    try:
        deadline = time.monotonic() + 120
        while _logged(counter) < 3000 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        _kill(proc)
    returned = _logged(counter)  # log calls that had returned when the kill landed
    assert returned >= 3000
    written = _records(metrics)
    assert written[:returned] == list(range(returned)), "a record whose log() returned was lost"


def test_records_reach_the_file_within_the_interval_without_further_logging(tmp_path):
    """A plain script that logs and then only computes still has its records written."""
    proc, metrics, counter = _start(tmp_path, "--interval", "0.2", "--count", "1000")
    try:
        assert proc.stdout.readline().strip() == "logged"
        deadline = time.monotonic() + 60  # a liveness bound, not a measurement: 300x the interval
        while len(_records(metrics)) < 1000 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        _kill(proc)
    assert _records(metrics) == list(range(1000))


def test_flush_interval_settings_are_checked(monkeypatch, tmp_path):
    for bad in (-1, "soon", float("nan"), True):
        with pytest.raises(ValueError, match="flush_interval"):
            Track.run("p", flush_interval=bad)
    monkeypatch.setenv("AIOTRAIN_FLUSH_INTERVAL", "0")
    with Track.run("p") as run:
        assert run.flush_interval == 0
        run.log({"a": 1})
        assert _records_of(run) == [{"a": 1}]  # written before log returned
    Track.set_flush_interval(2.5)
    try:
        assert Track.run("p").flush_interval == 2.5
    finally:
        Track.set_flush_interval(None)
    monkeypatch.setenv("AIOTRAIN_FLUSH_INTERVAL", "-3")
    with pytest.raises(ValueError, match="AIOTRAIN_FLUSH_INTERVAL"):
        Track.run("p")


def _records_of(run) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("step", "timestamp")}
            for r in read_history(run.dir / "metrics.jsonl")]


@pytest.mark.parametrize("record", [{"b\ud800": 2}, {"b": "x\udc00"}, {"b": {"c": ["\ud800"]}}])
def test_a_record_that_cannot_be_written_is_refused_by_log(record):
    run = Track.run("p")
    run.log({"a": 1})
    with pytest.raises(ValueError, match="lone surrogate"):
        run.log(record)  # not UTF-8: it would fail the drain and summary.sdn
    run.log({"c": "é"})
    run.finish()
    assert _records_of(run) == [{"a": 1}, {"c": "é"}]
    assert Track.load_run(run.dir).status == "finished"


def test_the_flusher_thread_ends_with_the_last_run():
    import threading

    def flushers():
        return [t for t in threading.enumerate() if t.name.startswith("aiotrain-track-flush")]

    runs = [Track.run("p", flush_interval=0.05) for _ in range(3)]
    for run in runs:
        run.log({"a": 1})
    assert len(flushers()) == 1  # one thread for every run
    for run in runs:
        run.finish()
    deadline = time.monotonic() + 30
    while flushers() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not flushers()


def test_a_forked_child_does_not_keep_the_lock_after_close(tmp_path: Path) -> None:
    # a data worker forked while a run writes shares the jsonl's lock through its copy of the
    # descriptor: after close the next writer of the file (a resumed run) must not wait for it
    pytest.importorskip("fcntl")
    writer = MetricsWriter(tmp_path / "metrics.jsonl", interval=0)
    writer.open()
    release_r, release_w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: alive until the parent is done, holding what fork gave it
        os.write(ready_w, b"x")
        os.read(release_r, 1)
        os._exit(0)
    try:
        os.read(ready_r, 1)
        writer.close()
        with open(writer.path, "ab") as again:
            assert hold_for_writing(again, wait=0)
    finally:
        os.write(release_w, b"x")
        os.waitpid(pid, 0)
        for fd in (release_r, release_w, ready_r, ready_w):
            os.close(fd)


def test_a_drain_writes_in_bounded_chunks_with_the_pacer_between(tmp_path: Path, monkeypatch) -> None:
    """A big drain is cut into chunks of at most CHUNK_FIELDS values (a record bigger than that
    is a chunk of its own), written in order, the pacer called after each chunk and each cache
    append, so the drain never holds the GIL for the whole batch."""
    import aiotrain.tracking.writer as writer_module

    monkeypatch.setattr(MetricsWriter, "CHUNK_FIELDS", 12)
    monkeypatch.setattr(MetricsWriter, "CACHE_RECORDS", 7)
    chunks: list[int] = []
    real_write = MetricsWriter._write

    def recording_write(self, records):
        chunks.append(len(records))
        real_write(self, records)

    paces = {"n": 0}

    class CountingPacer:
        def __call__(self) -> None:
            paces["n"] += 1

    monkeypatch.setattr(MetricsWriter, "_write", recording_write)
    monkeypatch.setattr(writer_module, "Pacer", CountingPacer)
    writer = MetricsWriter(tmp_path / "metrics.jsonl", interval=1e9)
    records = [{"step": i, "timestamp": 1.0, "a": float(i), "b": i} for i in range(30)]
    records[10] = {"step": 10, "timestamp": 1.0, **{f"k{j}": j for j in range(20)}}  # 22 values
    writer.queue.extend(dict(r) for r in records)
    assert writer.drain(durable=True) == 30
    writer.close()
    assert sum(chunks) == 30 and len(chunks) > 1
    assert all(n <= 3 for n in chunks)  # 4 values a record: at most 3 records reach 12 values
    assert 1 in chunks  # the 22-value record went alone
    assert paces["n"] >= len(chunks)
    assert [r["step"] for r in read_history(writer.path)] == list(range(30))
    assert read_cache(writer.path).offset == writer.path.stat().st_size


def test_a_drain_takes_only_what_was_queued_when_it_began(tmp_path: Path, monkeypatch) -> None:
    """Records logged while a chunked drain runs wait for the next drain (flush semantics)."""
    writer = MetricsWriter(tmp_path / "metrics.jsonl", interval=1e9)
    monkeypatch.setattr(MetricsWriter, "CHUNK_FIELDS", 3)  # one 3-value record a chunk
    real_write = MetricsWriter._write

    def write_and_log(self, records):
        real_write(self, records)
        self.queue.append({"step": 100, "timestamp": 1.0, "late": 1})

    monkeypatch.setattr(MetricsWriter, "_write", write_and_log)
    writer.queue.extend({"step": i, "timestamp": 1.0, "a": 1} for i in range(5))
    assert writer.drain(durable=False) == 5
    assert len(writer.queue) == 5  # one per chunk, left for the next drain
    monkeypatch.setattr(MetricsWriter, "_write", real_write)
    writer.close()
    assert len(read_history(writer.path)) == 10
