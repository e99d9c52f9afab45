"""Tracking under a low open-file limit (issue 24, item 5): the dashboard's reader holds no
descriptor per metric key between requests, the writer of a run with many keys stays within a
bound, and running out of descriptors is an error answer, never an empty table that lasts until
a restart. Each case runs in a subprocess whose RLIMIT_NOFILE is lowered."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_NOFILE is POSIX")

KEYS = 300  # metric keys per run: three runs hold 900 columns, far above the limit below
LIMIT = 192  # the subprocess's soft RLIMIT_NOFILE

_PRELUDE = textwrap.dedent(f"""
    import asyncio, os, resource, sys
    from pathlib import Path
    from aiotrain.tracking import Track

    root = Path(sys.argv[1])
    Track.set_dir(root)

    def open_fds():
        return len(os.listdir("/proc/self/fd"))

    def limit_fds():
        resource.setrlimit(resource.RLIMIT_NOFILE, ({LIMIT}, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
""")


def _run(script: str, root) -> str:
    done = subprocess.run([sys.executable, "-c", _PRELUDE + textwrap.dedent(script), str(root)],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def test_a_run_with_more_keys_than_descriptors_logs_and_finishes(tmp_path):
    out = _run(f"""
        limit_fds()
        before = open_fds()
        peak = 0
        with Track.run("wide", name="w", system_interval=None) as run:
            for step in range(4):
                run.log({{f"layer{{k}}/grad_norm": step + k / 1000 for k in range({KEYS})}})
                run.flush()  # every key's column file written and synced
                peak = max(peak, open_fds())
        record = Track.load_run(run.dir)
        assert record.summary_final and record.summary["layer299/grad_norm"] == 3 + 299 / 1000
        from aiotrain.tracking.read import RunReader
        history = RunReader(root).history(run.dir)
        assert history.from_cache == (run.dir / "metrics.jsonl").stat().st_size  # the cache is whole
        assert len(history.keys()) == {KEYS} and history.column("layer7/grad_norm").value.tolist() == [0.007, 1.007, 2.007, 3.007]
        print("peak", peak - before)
    """, tmp_path)
    assert int(out.split()[-1]) < 100  # the writer's descriptors are bounded, not one per key


def test_the_dashboard_reads_many_wide_runs_within_a_low_descriptor_limit(tmp_path):
    _run(f"""
        for i in range(3):  # written before the limit is lowered
            with Track.run("wide", name=f"r{{i}}", system_interval=None) as run:
                for step in range(3):
                    run.log({{f"k{{k}}": step * k for k in range({KEYS})}})
        limit_fds()
        from aiohttp.test_utils import TestClient, TestServer
        from aiotrain.dashboard import dashboard_app

        async def main():
            client = TestClient(TestServer(dashboard_app(root)))
            await client.start_server()
            try:
                rows = (await (await client.get("/api/runs")).json())["rows"]
                assert len(rows) == 3
                baseline = open_fds()
                for _ in range(2):
                    for row in rows:
                        ref = row["key"]
                        series = await client.get("/api/series", params=[("run", ref), *(("key", f"k{{k}}") for k in range(0, {KEYS}, 3))])
                        assert series.status == 200, await series.text()
                        assert len((await series.json())["series"]) == {KEYS} // 3
                        detail = await client.get(f"/api/runs/{{ref}}")
                        assert detail.status == 200, await detail.text()
                        assert len((await detail.json())["metric_keys"]) == {KEYS}
                held = open_fds() - baseline
                assert held < 20, f"{{held}} descriptors held after reading 3 histories of {KEYS} keys"
                again = await (await client.get("/api/runs")).json()
                assert len(again["rows"]) == 3
            finally:
                await client.close()

        asyncio.run(main())
    """, tmp_path)


def test_running_out_of_descriptors_is_an_error_answer_and_the_table_comes_back(tmp_path):
    _run("""
        for i in range(3):
            with Track.run("p", name=f"r{i}", system_interval=None) as run:
                run.log({"loss": float(i)})
        limit_fds()
        from aiohttp.test_utils import TestClient, TestServer
        from aiotrain.dashboard import dashboard_app

        async def main():
            client = TestClient(TestServer(dashboard_app(root)))
            await client.start_server()
            try:
                assert (await client.get("/api/artifacts")).status == 200  # the connection, kept alive
                hog = []
                try:
                    while True:
                        hog.append(open(os.devnull, "rb"))
                except OSError:
                    pass  # EMFILE: every descriptor is taken
                hog.pop().close()  # one left: listing a project works, reading a run's files does not
                starved = await client.get("/api/runs")
                body = await starved.text()
                assert starved.status >= 500 and '"rows": []' not in body and '"rows":[]' not in body, (starved.status, body[:300])
                for f in hog:
                    f.close()
                await asyncio.sleep(1.1)  # the table is refreshed at most once a second
                rows = (await (await client.get("/api/runs")).json())["rows"]
                assert sorted(r["name"] for r in rows) == ["r0", "r1", "r2"]  # no restart needed
            finally:
                await client.close()

        asyncio.run(main())
    """, tmp_path)
