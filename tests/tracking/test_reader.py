"""Reading back: a hard crash keeps what was flushed, torn lines are skipped, corruption is named."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from aiotrain.tracking import Track
from aiotrain.tracking.reader import find_run, read_history

CRASH = textwrap.dedent("""
    import os, sys
    from aiotrain.tracking import Track
    Track.set_dir(sys.argv[1])
    run = Track.run("crash", name="dies")
    for i in range(50):
        run.log({"i": i, "loss": 1.0 / (i + 1)})
    run.flush()
    print(run.dir, flush=True)
    with open(run.dir / "metrics.jsonl", "ab") as f:   # a write torn by the crash
        f.write(b'{"step": 50, "timestamp": 1.0, "i": 5')
    os._exit(3)
""")


def test_os_exit_keeps_flushed_records_and_reader_skips_torn_line(track_root):
    proc = subprocess.run([sys.executable, "-c", CRASH, str(track_root)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 3, proc.stderr
    run_dir = proc.stdout.strip()
    record = Track.load_run(run_dir)
    history = record.history()
    assert [h["i"] for h in history] == list(range(50))
    assert record.status == "crashed"  # metadata says running, but its process is gone
    assert record.metadata["status"] == "running"

    # resuming cuts the torn tail so new lines start cleanly
    with Track.run("crash", name="dies", resume=True) as run:
        run.log({"i": 50})
    assert run.dir.as_posix() == run_dir
    assert [h["i"] for h in Track.load_run(run_dir).history()] == list(range(51))


def test_corrupt_middle_line_is_an_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 0}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        read_history(path)
    path.write_bytes(b'{"step": 0}\n{"step": 1\n\n')
    assert read_history(path) == [{"step": 0}]
    assert read_history(tmp_path / "missing.jsonl") == []


def test_history_keys_and_find_run():
    with Track.run("p", name="alpha") as run:
        run.log({"a": 1, "b": 2})
        run.log({"b": 3})
    record = Track.load_run(run.dir)
    assert [h["b"] for h in record.history(["b"])] == [2, 3]
    assert [set(h) for h in record.history(["a"])] == [{"step", "timestamp", "a"}]
    assert find_run(run.id).id == run.id
    assert find_run(f"p/{run.id}").id == run.id
    assert find_run("alpha").id == run.id
    assert find_run(str(run.dir)).id == run.id
    with pytest.raises(LookupError):
        find_run("nothing")
    with pytest.raises(FileNotFoundError):
        Track.load_run(os.path.dirname(run.dir))


EXIT = textwrap.dedent("""
    import sys
    from aiotrain.tracking import Track
    Track.set_dir(sys.argv[1])
    run = Track.run("exit", name=sys.argv[2])   # never finished by the script
    for i in range(10):
        run.log({"i": i})
    print(run.dir, flush=True)
    if sys.argv[2] == "raises":
        raise SystemError("uncaught")
""")


@pytest.mark.parametrize("how, status", [("clean", "finished"), ("raises", "crashed")])
def test_interpreter_exit_finishes_open_runs(track_root, how, status):
    proc = subprocess.run([sys.executable, "-c", EXIT, str(track_root), how], capture_output=True,
                          text=True, timeout=120)
    record = Track.load_run(proc.stdout.strip())
    assert record.metadata["status"] == status
    assert [h["i"] for h in record.history()] == list(range(10))
    assert record.summary == {"i": 9}
