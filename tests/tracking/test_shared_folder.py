"""One tracking folder shared by several machines (issue 28, item 4): writer processes playing
three hosts write runs and version one artifact at once while a dashboard reads the folder;
the dashboard and ``runs ls`` show every run with its host, no read fails or loses a row, and
the artifact store stays intact (its index is changed under a file lock)."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from collections import Counter
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from aiotrain.cli.runs import main as runs_main
from aiotrain.dashboard import dashboard_app
from aiotrain.tracking import Track
from aiotrain.tracking.read import RunReader
from aiotrain.tracking.series import read_new_records

HOSTS = ("node-a", "node-b", "node-c")
STEPS = 150

_WRITER = textwrap.dedent(f"""
    import socket, sys, time
    from pathlib import Path

    host, root, go, src = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
    socket.gethostname = lambda: host  # this process plays the machine `host`
    from aiotrain.tracking import Track

    Track.set_dir(root)
    while not go.exists():  # all writers start together
        time.sleep(0.01)
    for r in range(2):
        with Track.run("shared", name=f"{{host}}-{{r}}", config={{"r": r}}, flush_interval=0.02,
                       system_interval=None) as run:
            for step in range({STEPS}):
                run.log({{"loss": 1.0 / (step + 1)}})
                if step % 50 == 0:
                    common = Track.Artifact("data", "dataset")
                    common.add_file(src / "common.txt")  # the same content from every host: one version
                    run.log_artifact(common)
                    own = Track.Artifact("data", "dataset")
                    own.add_file(src / f"{{host}}.txt", name="common.txt")  # a version per host
                    run.log_artifact(own)
            used = run.use_artifact("data:latest")
            assert (used.download() / "common.txt").is_file()
""")


async def test_three_hosts_write_one_folder_while_the_dashboard_reads_it(tmp_path, track_root, monkeypatch, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "common.txt").write_text("shared\n")
    for host in HOSTS:
        (src / f"{host}.txt").write_text(f"from {host}\n")
    go = tmp_path / "go"
    writers = [await asyncio.create_subprocess_exec(sys.executable, "-c", _WRITER, host, str(track_root), str(go),
                                                    str(src), stderr=asyncio.subprocess.PIPE) for host in HOSTS]
    client = TestClient(TestServer(dashboard_app(track_root)))
    await client.start_server()
    try:
        go.touch()
        seen = 0
        polls = 0
        while any(w.returncode is None for w in writers) or polls == 0:
            resp = await client.get("/api/runs")
            assert resp.status == 200, await resp.text()
            rows = (await resp.json())["rows"]
            assert len(rows) >= seen, "a run disappeared from the table"
            seen = len(rows)
            assert all(r["host"] in HOSTS and r["status"] in ("running", "finished") for r in rows), rows
            polls += 1
            await asyncio.sleep(0.05)
        for w in writers:
            _, err = await asyncio.wait_for(w.communicate(), 60)
            assert w.returncode == 0, err.decode()[-3000:]
        await asyncio.sleep(1.1)  # the table is refreshed at most once a second
        rows = (await (await client.get("/api/runs")).json())["rows"]
    finally:
        await client.close()
        for w in writers:
            if w.returncode is None:
                w.kill()
                await w.wait()
    assert len(rows) == 6 and Counter(r["host"] for r in rows) == dict.fromkeys(HOSTS, 2)
    assert all(r["status"] == "finished" and r["summary"]["loss"] == 1 / STEPS for r in rows)

    # the artifact: one shared version and one per host, each intact
    index = RunReader(track_root).artifacts()["artifacts"]
    (data,) = index
    assert [v["version"] for v in data["versions"]] == [0, 1, 2, 3]
    with Track.run("check") as check:
        contents = {(check.use_artifact(f"data:v{n}", project="shared").download() / "common.txt").read_text() for n in range(4)}
    assert contents == {"shared\n", *(f"from {h}\n" for h in HOSTS)}

    monkeypatch.setenv("AIOTRAIN_DIR", str(track_root))
    assert runs_main(["ls", "--project", "shared", "--filter", "host=node-b", "--sort", "name"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["ID", "PROJECT", "NAME", "HOST"]
    assert [line.split()[2:4] for line in out[1:]] == [["node-b-0", "node-b"], ["node-b-1", "node-b"]]


def test_a_reader_stops_before_a_range_not_written_yet_and_goes_on_once_it_is(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [b'{"step": %d, "loss": 1.5}\n' % i for i in range(3)]
    with open(path, "wb") as f:  # the third line arrived before the second (NFS writes out of order)
        f.write(lines[0])
        f.seek(len(lines[0]) + len(lines[1]))
        f.write(lines[2])
    records, offset = read_new_records(path, 0)
    assert [r["step"] for r in records] == [0] and offset == len(lines[0])
    assert read_new_records(path, offset) == ([], offset)  # still a hole: nothing, no error
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(lines[1])
    records, offset = read_new_records(path, offset)
    assert [r["step"] for r in records] == [1, 2] and offset == path.stat().st_size
    assert Path(path).read_bytes() == b"".join(lines)
