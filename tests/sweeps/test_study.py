"""Shared sweeps: several real ``aiotrain sweep`` processes on one Optuna storage run one sweep.

SQLite and JournalStorage always; PostgreSQL when its server binaries are installed (Debian's
``postgresql``: ``.ci/run`` installs it as root), started here on a unix socket and stopped after.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from aiotrain.sweeps.study import open_storage  # noqa: E402 - after the skip without Optuna
from tests.job.tiny_task import SDN  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
GRID = "optim.lr=0.01,0.02,0.03,0.04"
# one worker's own overrides: trials far too long to end before the test kills them
SLOW = ("data.slow=0.05", "train.max_epochs=1000")


def sweep(tmp_path: Path, storage: str, study: str, *args: str, worker: str = "a") -> subprocess.Popen:
    config = tmp_path / "tiny.sdn"
    config.write_text(SDN)
    cmd = [sys.executable, "-m", "aiotrain", "sweep", str(config), "--metric", "loss", "--goal",
           "minimize", "--in-process", "--storage", storage, "--study", study,
           "--dir", str(tmp_path / worker), "train.max_epochs=2", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    return out, err


def trials(storage: str, study: str) -> list:
    return optuna.load_study(study_name=study, storage=open_storage(storage)).get_trials(deepcopy=False)


def owned_by(proc: subprocess.Popen, storage: str, study: str, scored: bool = False) -> bool:
    """Whether ``proc`` has taken a trial of the study (with ``scored``: one it runs now and has
    reported a score for); ``proc`` must still be alive."""
    with contextlib.suppress(Exception):  # the study may not exist yet
        for t in trials(storage, study):
            if (t.system_attrs.get("aiotrain:owner") or {}).get("pid") != proc.pid:
                continue
            if not scored or (t.state.name == "RUNNING" and t.intermediate_values):
                return True
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    return False


def wait_until(what: Callable[[], bool], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, f"not within {timeout} s"
        time.sleep(0.05)


def kill_when_training(proc: subprocess.Popen, storage: str, study: str) -> None:
    """SIGKILL ``proc`` once a trial it runs has reported a score."""
    wait_until(lambda: owned_by(proc, storage, study, scored=True))
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)


def test_two_workers_share_a_grid_and_retry_the_trial_of_one_killed(tmp_path):
    """Two processes on SQLite split the grid; one is killed with kill -9 mid-trial: the other
    fails that trial at once (its owner's pid is gone, on this host), retries it, and every grid
    point ends finished exactly once. A process that defines another sweep is refused."""
    storage = f"sqlite:///{tmp_path / 'sweep.db'}"
    a = sweep(tmp_path, storage, "grid", GRID, "--method", "grid", *SLOW, worker="a")
    wait_until(lambda: owned_by(a, storage, "grid", scored=True))  # a's trial never ends by itself
    b = sweep(tmp_path, storage, "grid", GRID, "--method", "grid", worker="b")
    wait_until(lambda: owned_by(b, storage, "grid"))  # both share the grid
    kill_when_training(a, storage, "grid")
    out, _ = finish(b)
    done = trials(storage, "grid")
    finished = [t for t in done if t.state.name == "COMPLETE"]
    assert sorted(t.params["optim.lr"] for t in finished) == [0.01, 0.02, 0.03, 0.04]
    (lost,) = [t for t in done if "aiotrain:lost" in t.system_attrs and t.state.name == "FAIL"]
    assert f"its worker (pid {a.pid} on " in lost.system_attrs["aiotrain:lost"]
    assert lost.system_attrs["aiotrain:lost"].endswith(" died")
    (retry,) = [t for t in finished if t.system_attrs.get("failed_trial") == lost.number]
    assert retry.params == lost.params
    assert not [t for t in done if t.state.name in ("RUNNING", "WAITING")]
    assert f"lost: its worker (pid {a.pid} " in out and "best: trial" in out

    other = sweep(tmp_path, storage, "grid", "optim.lr=0.5,0.6", "--method", "grid", worker="c")
    _, err = other.communicate(timeout=120)
    assert other.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert "study 'grid' runs another sweep (its parameters differ: parameters" in err


def test_a_silent_worker_on_another_host_is_lost_after_the_heartbeat_timeout(tmp_path):
    """JournalStorage; a worker is killed, and its trial made to look as if it ran on another
    machine (where a pid says nothing): the next worker, joining without the parameters (the
    study has them), waits for the heartbeat timeout, then fails the trial and retries it.
    --trials counts for the study: three finished in all."""
    storage = f"journal://{tmp_path / 'sweep.log'}"
    a = sweep(tmp_path, storage, "rand", "optim.lr=loguniform(1e-3,1e-1)", "--trials", "3", *SLOW)
    kill_when_training(a, storage, "rand")
    store = open_storage(storage)
    (running,) = [t for t in trials(storage, "rand") if t.state.name == "RUNNING"]
    owner = running.system_attrs["aiotrain:owner"]
    store.set_trial_system_attr(running._trial_id, "aiotrain:owner", {**owner, "host": "elsewhere"})
    b = sweep(tmp_path, storage, "rand", "--trials", "3", "--heartbeat-timeout", "2", worker="b")
    out, _ = finish(b)
    done = trials(storage, "rand")
    assert len([t for t in done if t.state.name == "COMPLETE"]) == 3
    lost = store.get_trial(running._trial_id)
    assert lost.state.name == "FAIL" and "sent no heartbeat for" in lost.system_attrs["aiotrain:lost"]
    assert [t.params for t in done if t.system_attrs.get("failed_trial") == lost.number] == [lost.params]
    assert "3 finished  1 crashed" in out and "lost: its worker (pid" in out


# PostgreSQL: a real server, started for the test ----------------------------------------------
def _pg_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return versions[-1].parent if versions else None


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A PostgreSQL server on a unix socket in a temp folder (no TCP), run as a non-root user."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found (Debian: apt-get install postgresql; "
                    ".ci/run does it as root)")
    pytest.importorskip("psycopg", reason="the PostgreSQL driver: pip install 'psycopg[binary]'")
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root with no 'postgres' user to start the server as")
        as_user = ["runuser", "-u", "postgres", "--"]
    base = Path(tempfile.mkdtemp(prefix="aiotrain-pg-"))  # under /tmp: the server user can reach it
    data = base / "data"
    if as_user:
        shutil.chown(base, "postgres")
    try:
        for cmd in ([str(bindir / "initdb"), "-D", str(data), "-U", "aiotrain", "--auth=trust"],
                    [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-o",
                     f"-k {base} -c listen_addresses=''", "-w", "start"]):
            done = subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr[-2000:]
        yield f"postgresql+psycopg://aiotrain@/postgres?host={base}"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "-w", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)


def test_two_workers_on_postgresql_end_with_the_same_table(tmp_path):
    with postgres() as storage:
        args = ("optim.lr=loguniform(1e-3,1e-1)", "--trials", "4", "--prune", "median")
        a = sweep(tmp_path, storage, "pg", *args, worker="a")
        b = sweep(tmp_path, storage, "pg", *args, worker="b")
        (out_a, _), (out_b, _) = finish(a), finish(b)
        done = trials(storage, "pg")
        assert len([t for t in done if t.state.name in ("COMPLETE", "PRUNED")]) == 4
        owners = {t.system_attrs["aiotrain:owner"]["pid"] for t in done if "aiotrain:owner" in t.system_attrs}
        assert owners == {a.pid, b.pid}  # both took trials
        table = [line for line in out_a.splitlines() if line.startswith("sweep pg ")]
        assert table[-1] in out_b.splitlines()  # the same final header: one sweep
