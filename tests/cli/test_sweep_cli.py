"""``aiotrain sweep`` end to end: the table and best config, clear errors, resume after kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec

from aiotrain.tracking.reader import list_runs

ROOT = Path(__file__).resolve().parents[2]
TINY = ["train.patience=null", "model.channels=4", "data.batch_size=128", "train.max_epochs=2"]


def sweep_cmd(tmp_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "aiotrain", "sweep", *args, "--dir", str(tmp_path)]


def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "AIOTRAIN_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}


def record(tmp_path: Path) -> dict | None:
    found = list((tmp_path / "sweeps").glob("*/*.json"))
    return msgspec.json.decode(found[0].read_bytes()) if found else None


def test_bad_specs_exit_2_with_one_line(tmp_path):
    for args, fragment in ([("examples/digits.sdn", "optim.lr=logunif(1,2)"), "logunif"],
                           [("examples/digits.sdn", "optim.lr=loguniform(0,1)"), "optim.lr"],
                           [("examples/digits.sdn", "optm.lr=1e-3,1e-2", "--trials", "1"), "optm.lr"],
                           [("examples/digits.sdn", "train.max_epochs=3"), "nothing to search"],
                           [("examples/digits.sdn", "model.dropuot=0.1", "optim.lr=1e-3,1e-2", "--trials", "1"),
                            "model.dropuot"],
                           [("--resume", "nosuchid"), "nosuchid"]):
        r = subprocess.run(sweep_cmd(tmp_path, *args), cwd=ROOT, env=env(tmp_path), capture_output=True,
                           text=True, timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and fragment in lines[0], (args, r.stderr)


def test_resume_after_kill_9_repeats_no_finished_trial(tmp_path):
    args = sweep_cmd(tmp_path, "examples/digits.sdn", "--trials", "3", "--in-process", "--seed", "4",
                     "optim.lr=loguniform(1e-3,1e-2)", *TINY, f"data.root={tmp_path}/data")
    proc = subprocess.Popen(args, cwd=ROOT, env=env(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:  # kill it while trial 1 trains, after trial 0 ended
            rec = record(tmp_path)  # and once trial 1 has a checkpoint to continue from
            if rec and len(rec["trials"]) == 2 and rec["trials"][1]["intermediate"] and \
                    list(Path(rec["trials"][1]["checkpoint_dir"]).glob("last*.pt")):
                break
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
        proc.stderr.close()
    before = record(tmp_path)
    assert before["trials"][0]["status"] == "finished" and before["trials"][1]["status"] == "running"
    assert before["trials"][1]["run_id"] and before["trials"][1]["run_dir"]  # recorded as it began
    r = subprocess.run(sweep_cmd(tmp_path, "--resume", before["id"]), cwd=ROOT, env=env(tmp_path),
                       capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr
    after = record(tmp_path)
    assert after["status"] == "finished" and len(after["trials"]) == 3
    assert after["trials"][0] == before["trials"][0]  # kept as it was, not run again
    assert all(t["status"] == "finished" and t["error"] is None for t in after["trials"])
    assert after["trials"][1]["run_id"] == before["trials"][1]["run_id"]  # the same run, continued
    # trial 1 went on from its checkpoint: its epoch-1 score kept, epoch 2 added
    assert after["trials"][1]["intermediate"][0] == before["trials"][1]["intermediate"][0]
    assert [s for s, _ in after["trials"][1]["intermediate"]] == [1, 2]
    runs = [r for r in list_runs("digits", tmp_path) if f"sweep:{before['id']}" in r.tags]
    per_trial = {n: sorted(r.status for r in runs if f"trial:{n}" in r.tags) for n in range(3)}
    assert per_trial[0] == ["finished"] and per_trial[2] == ["finished"]  # no finished trial ran twice
    # the killed trial's first run (if its folder was written yet) is marked, not left "running"
    assert per_trial[1].count("finished") == 1 and set(per_trial[1]) <= {"finished", "interrupted", "crashed"}
    assert "best: trial" in r.stdout and "optim.lr=" in r.stdout.splitlines()[-1]
    # the table lists the three trials
    assert sum(line.split()[:2] in (["0", "finished"], ["1", "finished"], ["2", "finished"])
               for line in r.stdout.splitlines()) >= 3
    _resume_takes_a_finished_job_as_finished(tmp_path, after)


def _resume_takes_a_finished_job_as_finished(tmp_path: Path, done: dict) -> None:
    """A kill -9 between a trial's job finishing and the sweep recording it leaves the trial
    "running" with its run id (recorded when it began) and a finished job: resuming takes it
    as finished, with its score, and trains nothing (no second run of that trial)."""
    killed = msgspec.json.decode(msgspec.json.encode(done))
    last = killed["trials"][2]
    last.update(status="running", value=None, finished_at=None)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    killed.update(status="running", owner={"pid": int(dead.stdout), "started": 1.0, "host": None})
    path = next((tmp_path / "sweeps").glob("*/*.json"))
    path.write_bytes(msgspec.json.encode(killed))
    runs_before = len(list_runs("digits", tmp_path))
    r = subprocess.run(sweep_cmd(tmp_path, "--resume", done["id"]), cwd=ROOT, env=env(tmp_path),
                       capture_output=True, text=True, timeout=200)
    assert r.returncode == 0, r.stderr
    again = record(tmp_path)
    assert again["trials"][2]["status"] == "finished" and again["trials"][2]["error"] is None
    assert again["trials"][2]["value"] == done["trials"][2]["value"]
    assert again["trials"][:2] == done["trials"][:2] and again["status"] == "finished"
    assert len(list_runs("digits", tmp_path)) == runs_before  # nothing was trained again
