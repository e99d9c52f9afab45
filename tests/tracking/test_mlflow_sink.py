"""The live MLflow mirror against a real ``mlflow server`` (sqlite) on 127.0.0.1: params, tags,
metrics (each step once), system metrics, status and artifacts arrive; a server stopped mid-run
and restarted loses and duplicates nothing; a resumed run continues the same MLflow run."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("mlflow", reason="the MLflow mirror tests need the mlflow extra")
if shutil.which("mlflow", path=os.path.dirname(sys.executable)) is None:
    pytest.skip("no mlflow command beside this interpreter to start a server with", allow_module_level=True)

from mlflow.tracking import MlflowClient  # noqa: E402

from aiotrain import Track  # noqa: E402
from aiotrain.tracking.mlflow_sink import MlflowCursor, MlflowSink, mlflow_metrics, sync_run  # noqa: E402
from tests.tracking.mlflow_server import MlflowServer  # noqa: E402

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def _no_client_retries(monkeypatch):
    # the sink retries with its own backoff; MLflow's client-side retries would only slow tests
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _remote(server, run) -> tuple[MlflowClient, str]:
    cursor = MlflowCursor.load(run.dir, server.url)
    assert cursor.run_id is not None
    return MlflowClient(tracking_uri=server.url), cursor.run_id


def _steps(client, run_id, key):
    history = client.get_metric_history(run_id, key)
    return sorted((m.step, m.value) for m in history)


def test_a_run_is_mirrored_whole(server, tmp_path):
    art = tmp_path / "weights.bin"
    art.write_bytes(b"\x00\x01" * 100)
    with Track.run("mirror", name="first", config={"optim": {"lr": 0.1}, "seed": 3},
                   tags=["baseline"], notes="hello", dir=tmp_path, mlflow_uri=server.url,
                   system_interval=None) as run:
        for step in range(150):
            run.log({"train/loss": 1.0 / (step + 1)}, step=step)
        run.log({"val/acc": float("nan")}, step=150)
        artifact = Track.Artifact("weights", "model")
        artifact.add_file(art)
        run.log_artifact(artifact)
    client, run_id = _remote(server, run)
    remote = client.get_run(run_id)
    assert remote.info.status == "FINISHED" and remote.info.run_name == "first"
    assert remote.data.params == {"optim.lr": "0.1", "seed": "3"}
    assert remote.data.tags["tag.baseline"] == "true" and remote.data.tags["aiotrain.run_id"] == run.id
    assert remote.data.tags["mlflow.note.content"] == "hello"
    assert _steps(client, run_id, "train/loss") == [(s, pytest.approx(1.0 / (s + 1))) for s in range(150)]
    (nan,) = client.get_metric_history(run_id, "val/acc")
    assert math.isnan(nan.value)
    files = {f.path for f in client.list_artifacts(run_id, "weights/v0")}
    assert files == {"weights/v0/weights.bin"}
    assert client.get_experiment(remote.info.experiment_id).name == "mirror"


def test_resending_after_a_lost_cursor_duplicates_nothing(server, tmp_path):
    with Track.run("mirror", dir=tmp_path, mlflow_uri=server.url, system_interval=None) as run:
        for step in range(20):
            run.log({"loss": float(step)}, step=step)
    client, run_id = _remote(server, run)
    # as if the process died after sending but before the cursor was saved: send it all again
    cursor = MlflowCursor.load(run.dir, server.url)
    cursor.metrics_offset, cursor.last_step, cursor.status_sent = 0, {}, None
    cursor.save(run.dir)
    sink = MlflowSink(_facts(run), server.url)
    sink._status = "finished"
    sink.sync(final=True)
    assert _steps(client, run_id, "loss") == [(s, float(s)) for s in range(20)]


def test_a_server_stopped_mid_run_loses_and_duplicates_nothing(server, tmp_path):
    srv = server
    try:
        with Track.run("outage", dir=tmp_path, mlflow_uri=srv.url, system_interval=None) as run:
            for step in range(50):
                run.log({"loss": float(step)}, step=step)
            run.flush()
            _wait(lambda: MlflowCursor.load(run.dir, srv.url).last_step.get("loss") == 49)
            srv.stop()
            started = time.perf_counter()
            for step in range(50, 120):  # logging does not wait for the server
                run.log({"loss": float(step)}, step=step)
            assert time.perf_counter() - started < 1.0
            run.flush()
            _wait(lambda: run._mirror.error is not None)  # it tried, failed, keeps the data
            srv.start()
        client, run_id = _remote(srv, run)
        assert _steps(client, run_id, "loss") == [(s, float(s)) for s in range(120)]
        assert client.get_run(run_id).info.status == "FINISHED"
    finally:
        if srv.proc is None:
            srv.start()


def test_a_killed_and_resumed_run_continues_the_same_mlflow_run(server, tmp_path):
    script = textwrap.dedent(f"""
        import os, time
        from aiotrain import Track
        from aiotrain.tracking.mlflow_sink import MlflowCursor
        run = Track.run("resumed", name="r", dir={str(tmp_path)!r}, mlflow_uri={server.url!r},
                        system_interval=None)
        run.__enter__()
        for step in range(40):
            run.log({{"loss": float(step)}}, step=step)
        run.flush()
        while MlflowCursor.load(run.dir, {server.url!r}).last_step.get("loss") != 39:
            time.sleep(0.1)
        print(run.id, flush=True)
        os.kill(os.getpid(), 9)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == -9, proc.stderr
    run_id_local = proc.stdout.split()[0]
    # resumed from a checkpoint at step 29: the history is cut back to its first 30 records,
    # steps 30..39 come again with the same values, then new ones
    with Track.run("resumed", dir=tmp_path, resume=run_id_local, rewind=30, mlflow_uri=server.url,
                   system_interval=None) as run:
        for step in range(30, 60):
            run.log({"loss": float(step)}, step=step)
    client, run_id = _remote(server, run)
    assert _steps(client, run_id, "loss") == [(s, float(s)) for s in range(60)]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1


def test_a_server_down_at_finish_leaves_the_rest_for_runs_sync(server, tmp_path, capsys):
    from tests.tracking.mlflow_server import free_port

    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with Track.run("later", dir=tmp_path, mlflow_uri=down, system_interval=None) as run:
        run._mirror.finish_timeout = 1.0
        for step in range(10):
            run.log({"loss": float(step)}, step=step)
    assert "aiotrain runs sync" in capsys.readouterr().err
    assert MlflowCursor.load(run.dir, down).status_sent is None
    _wait(lambda: not [t for t in threading.enumerate() if t.name.startswith("aiotrain-mlflow")])
    # `aiotrain runs sync` with the server still down: one line, exit 1, nothing lost
    cli = [sys.executable, "-m", "aiotrain", "runs", "sync", run.id, "--dir", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    down_sync = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=120)
    assert down_sync.returncode == 1 and len(down_sync.stderr.strip().splitlines()) == 1, down_sync.stderr
    assert "nothing was lost" in down_sync.stderr
    # later, with a server: everything the run logged is sent, once
    first = sync_run(_facts(run), server.url, "finished", timeout=60)
    again = sync_run(_facts(run), server.url, "finished", timeout=60)
    assert not first.skipped and first.metrics == 10
    assert again.skipped and again.run_id == first.run_id
    done = subprocess.run([*cli, "--mlflow", server.url], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0 and "complete already" in done.stdout, done.stderr
    client, run_id = _remote(server, run)
    assert _steps(client, run_id, "loss") == [(s, float(s)) for s in range(10)]
    assert client.get_run(run_id).info.status == "FINISHED"


def test_the_mirror_thread_ends_with_the_run(server, tmp_path):
    before = set(threading.enumerate())
    with Track.run("threads", dir=tmp_path, mlflow_uri=server.url, system_interval=None) as run:
        run.log({"x": 1.0})
    _wait(lambda: not [t for t in set(threading.enumerate()) - before if "mlflow" in t.name])


def test_a_train_job_mirrors_its_run_with_tracking_mlflow_uri(server, tmp_path):
    from aiotrain.job import TrainJob
    from aiotrain.runtime import run as run_loop
    from tests.job.test_train_job import config

    job = TrainJob(config(tmp_path, **{"tracking.mlflow_uri": server.url, "train.max_epochs": 2}),
                   progress=False, echo=lambda _: None)
    result = run_loop(job.run())
    assert result.exit_code == 0
    client = MlflowClient(tracking_uri=server.url)
    cursor = MlflowCursor.load(Path(result.run_dir), server.url)
    remote = client.get_run(cursor.run_id)
    assert remote.info.status == "FINISHED" and remote.data.params["optim.lr"] == "0.05"
    assert [m.value for m in client.get_metric_history(cursor.run_id, "val/loss")] == \
        pytest.approx([v for v in _local_history(result.run_dir, "val/loss")])


def _local_history(run_dir, key):
    from aiotrain.tracking.read import scan_history

    return [r[key] for r in scan_history(run_dir) if key in r]


def test_metric_names_and_steps_mlflow_rejects_are_made_acceptable():
    last: dict[str, int] = {}
    records = [{"step": 3, "timestamp": 1.5, "a?b#c": 1, "flag": True, "hist": {"bins": []}},
               {"step": 3, "timestamp": 1.6, "a?b#c": 2},  # the same step again: sent once
               {"step": 4, "timestamp": 1.7, "a?b#c": "inf"}]
    out = mlflow_metrics(records, last)
    assert out == [("a_b_c", 1.0, 1500, 3), ("a_b_c", math.inf, 1700, 4)]
    assert last == {"a_b_c": 4}


def _facts(run):
    from aiotrain.tracking.mlflow_sink import RunFacts

    return RunFacts(run_dir=run.dir, project=run.project, name=run.name, run_id=run.id,
                    config=run.config, tags=run.tags, notes=run.notes, start_time=run.start_time)


def _wait(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
