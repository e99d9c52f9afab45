"""The public read API (aiotrain/tracking/read.py): the dashboard, the runs CLI and the exporters
read through it only, and a run's summary is one answer whoever asks, a killed run included."""

from __future__ import annotations

import ast
import math
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

import aiotrain
from aiotrain.cli.runs import main as runs_main
from aiotrain.config import sdn
from aiotrain.dashboard import dashboard_app
from aiotrain.tracking import Track, read
from aiotrain.tracking.export import export_tensorboard
from aiotrain.tracking.read import RunReader

PACKAGE = Path(aiotrain.__file__).parent


def _tracking_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) for every name ``path`` imports from aiotrain.tracking (relative or not)."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            module = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module or ""
            if module == "aiotrain.tracking" or module.startswith("aiotrain.tracking."):
                found += [(module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, "*") for a in node.names if a.name.startswith("aiotrain.tracking")]
    return found


@pytest.mark.parametrize("path, allowed", [
    *((p, {"aiotrain.tracking.read"}) for p in sorted((PACKAGE / "dashboard").rglob("*.py"))),
    # mlflow_sink: what sends a stored run to MLflow (`runs sync`, `runs export --mlflow`), not a reader
    (PACKAGE / "cli" / "runs.py", {"aiotrain.tracking.read", "aiotrain.tracking.export", "aiotrain.tracking.media",
                                   "aiotrain.tracking.mlflow_sink"}),
    (PACKAGE / "tracking" / "export.py", {"aiotrain.tracking.read", "aiotrain.tracking.media",
                                          "aiotrain.tracking.mlflow_sink"}),
], ids=lambda v: v.name if isinstance(v, Path) else "")
def test_readers_import_only_the_public_read_api(path, allowed):
    imports = _tracking_imports(path)
    if path.name in ("app.py", "runs.py", "export.py"):
        assert imports, "the import scan found nothing: it would pass anything"
    for module, name in imports:
        assert module in allowed, f"{path.name} imports {module}; read runs through aiotrain.tracking.read"
        public = getattr(__import__(module, fromlist=["__all__"]), "__all__", [])
        assert name in public and not name.startswith("_"), f"{path.name} imports {module}.{name}, not public"


def test_reader_rows_select_and_a_key_no_run_has(track_root):
    for i, lr in enumerate([0.1, 0.01]):
        with Track.run("p", name=f"r{i}", config={"optim": {"lr": lr}}) as run:
            run.log({"val/accuracy": 0.5 + i / 10, "train/loss": 1.0})
    reader = RunReader(track_root)
    rows = reader.rows()
    assert [r.record.name for r in reader.select(rows, ["config.optim.lr<0.05"], check=True)] == ["r1"]
    assert [reader.value(r, "val/accuracy") for r in reader.select(rows, sort="-val/accuracy")] == [0.6, 0.5]
    with pytest.raises(LookupError, match=r"'val/acc'; did you mean val/accuracy"):
        reader.select(rows, ["val/acc>=0.5"], check=True)
    with pytest.raises(LookupError, match=r"'config.lr'; did you mean config.optim.lr"):
        reader.check_keys(rows, ["config.lr"])
    reader.check_keys(rows, ["status", "tag", "duration", "config.optim.lr"])
    assert reader.select(rows, ["val/acc>=0.5"]) == []  # unchecked (the dashboard's filter box)
    record = reader.record("p", rows[0].record.id)
    assert record.summary == {"val/accuracy": 0.5, "train/loss": 1.0} and record.summary_final
    with pytest.raises(LookupError, match="no run p/nothere"):
        reader.record("p", "nothere")
    with pytest.raises(ValueError):
        reader.run_dir("../p", "x")


def test_history_tail_table_media_and_step_rows(track_root):
    with Track.run("p", name="h") as run:
        run.log({"loss": 2.0, "note": "text"}, step=0)
        run.log({"acc": 0.1}, step=0)
        run.log({"loss": math.nan}, step=5)
        run.log_table("preds", Track.Table(["x"], [[1], [2], [3]]), step=5)
        run.log_histogram("w", [1.0, 2.0], step=5)
    reader = RunReader(track_root)
    history = reader.history(run.dir)
    assert history.keys() == ["acc", "loss"] and history.column("loss").value.tolist() == [2.0]  # nan: no point
    tail = reader.tail(run.dir, "metrics", 0)
    assert len(tail.records) == 5 and tail.offset == (run.dir / "metrics.jsonl").stat().st_size
    assert reader.tail(run.dir, "metrics", tail.offset).records == []
    media = reader.media(history)
    assert list(media["table"]) == ["preds"] and list(media["histogram"]) == ["w"]
    table = reader.table(run.dir / media["table"]["preds"][0]["path"], limit=2)
    assert table == {"columns": ["x"], "rows": [[1], [2]], "nrows": 3}
    rows = read.step_rows(run.dir)
    assert rows.keys == ["loss", "acc"]
    assert rows.rows[0] == (0, {"loss": 2.0, "acc": 0.1}) and rows.rows[1][0] == 5
    assert math.isnan(rows.rows[1][1]["loss"])  # the history keeps what was logged, nan too
    with pytest.raises(ValueError, match="history must be one of"):
        reader.history(run.dir, "other")


def test_artifacts_catalog_lists_an_unreadable_index_instead_of_hiding_it(track_root, tmp_path):
    src = tmp_path / "f.txt"
    src.write_text("x")
    with Track.run("p") as producer:
        art = Track.Artifact("data", "dataset")
        art.add_file(src)
        producer.log_artifact(art)
    with Track.run("p") as consumer:
        consumer.use_artifact("data:latest")
    reader = RunReader(track_root)
    found = reader.artifacts()
    (entry,) = found["artifacts"]
    assert entry["error"] is None and entry["versions"][0]["ref"] == "data:v0"
    assert {"from": f"p/{producer.id}", "to": "p/data:v0"} in found["graph"]["edges"]
    assert reader.artifact_refs(consumer.dir) == (([], ["data:v0"]))
    broken = track_root / "artifacts" / "projects" / "p" / "other" / "index.json"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"{not json")
    listed = {a["name"]: a for a in reader.artifacts()["artifacts"]}
    assert "unreadable index" in listed["other"]["error"] and listed["data"]["error"] is None


# one summary, whoever reads it (issue 23 section 2) -----------------------------------------------
_LOGGER = textwrap.dedent("""
    import sys, time
    from aiotrain.tracking import Track

    root, resume = sys.argv[1], sys.argv[2]
    Track.set_dir(root)
    run = Track.run("killed", name="k", flush_interval=0, resume=resume or False, system_interval=None)
    run.__enter__()
    for i in range(5):
        run.log({"loss": 1.0 / (i + 1), "acc": i / 10, "phase": "train"})
    run.log({"loss": float("nan")})
    run.summary["best"] = 0.75  # a summary update the process never writes: it is killed first
    print(run.dir, flush=True)
    time.sleep(120)
""")


def _log_then_kill(root: Path, resume: str = "") -> Path:
    proc = subprocess.Popen([sys.executable, "-c", _LOGGER, str(root), resume], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line, "the logging process died before it logged"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return Path(line)


async def _dashboard_summaries(root: Path, project: str, run_id: str) -> tuple[dict, dict]:
    client = TestClient(TestServer(dashboard_app(root)))
    await client.start_server()
    try:
        detail = await (await client.get(f"/api/runs/{project}/{run_id}")).json()
        rows = await (await client.get("/api/runs")).json()
    finally:
        await client.close()
    (row,) = [r for r in rows["rows"] if r["id"] == run_id]
    return detail["summary"], row["summary"]


def _same(a: dict, b: dict) -> bool:
    """Equal dicts, nan equal to nan."""
    return a.keys() == b.keys() and all(a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]) for k in a)


def _show(capsys, run_id: str, root: Path) -> str:
    code = runs_main(["show", run_id, "--dir", str(root), "--history", "0"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


async def test_a_killed_run_has_one_summary_everywhere(track_root, capsys, tmp_path):
    run_dir = _log_then_kill(track_root)
    run_id = run_dir.name
    assert not (run_dir / "summary.sdn").exists()
    record = Track.load_run(run_dir)
    assert record.status == "crashed" and not record.summary_final
    expected = {"loss": math.nan, "acc": 0.4, "phase": "train"}  # the last logged values; nan is the last loss
    assert record.summary.keys() == expected.keys() and math.isnan(record.summary["loss"])
    assert record.summary["acc"] == 0.4 and record.summary["phase"] == "train"
    out = _show(capsys, run_id, track_root)
    assert sdn.loads(out, extra_depth=1)["summary"] == {"acc": 0.4, "loss": "nan", "phase": "train"}
    assert "read from metrics.jsonl (the run did not finish" in out
    detail, row = await _dashboard_summaries(track_root, "killed", run_id)
    assert detail == {"acc": 0.4, "loss": "nan", "phase": "train"}
    assert row == {"acc": 0.4, "loss": "nan"}  # the table's row: numbers only
    (indexed,) = RunReader(track_root).rows()
    assert _same(indexed.record.summary, record.summary) and not indexed.record.summary_final
    export_tensorboard(record, tmp_path / "tb")  # the exporter reads the same summary (no error on nan)


async def test_a_resumed_then_killed_run_folds_its_new_log_over_the_last_finished_summary(track_root, capsys):
    with Track.run("killed", name="k", system_interval=None) as first:
        first.log({"loss": 9.0, "only_first": 1.0})
        first.summary["best"] = 0.5
    run_dir = _log_then_kill(track_root, resume=first.id)
    assert run_dir == first.dir and (run_dir / "summary.sdn").exists()  # the first session's, now stale
    record = Track.load_run(run_dir)
    assert not record.summary_final
    summary = record.summary
    assert summary["best"] == 0.5 and summary["only_first"] == 1.0 and summary["acc"] == 0.4
    assert math.isnan(summary["loss"])  # not the first session's 9.0
    detail, row = await _dashboard_summaries(track_root, "killed", first.id)
    assert detail == {"loss": "nan", "only_first": 1.0, "best": 0.5, "acc": 0.4, "phase": "train"}
    shown = sdn.loads(_show(capsys, first.id, track_root), extra_depth=1)["summary"]
    assert shown == {"loss": "nan", "only_first": 1.0, "best": 0.5, "acc": 0.4, "phase": "train"}
