"""A real browser on the dashboard: headless Chromium (driven by selenium) opens ``aiotrain runs
serve`` (and, through the ASGI face, the dashboard mounted in a FastAPI app under uvicorn) while a
model trains in another process, and checks that the runs table renders, that a
chart shows points, and that the chart gains points while the run trains. Saves a screenshot
under the test's tmp dir (and where ``AIOTRAIN_DASHBOARD_SCREENSHOT`` says, for the docs).

Needs Chromium and its driver and the selenium package (tests/dashboard/browser.py); skipped with
the reason when one is missing.
"""

from __future__ import annotations

import os
import shutil
import textwrap
import time

import pytest

from aiotrain.tracking import Track
from tests.dashboard.browser import Wait, chrome, dashboard_server, needs_browser, spawn, stop

pytestmark = needs_browser

TRAIN = textwrap.dedent("""
    import asyncio, sys, time
    import torch
    from aiotrain import Engine, Events
    from aiotrain.handlers import TrackingHandler
    from aiotrain.tracking import Track

    async def main():
        torch.manual_seed(0)
        net = torch.nn.Linear(8, 1)
        opt = torch.optim.SGD(net.parameters(), lr=0.05)
        x = torch.randn(64, 8)
        y = x @ torch.randn(8, 1)

        def step(engine, batch):
            time.sleep(0.02)  # a slow model, so the run stays live while the browser looks
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(net(x), y)
            loss.backward()
            opt.step()
            return {"loss": loss.item()}

        trainer = Engine(step)
        async with Track.run("demo", name="live-run", config={"lr": 0.05, "model": "linear"},
                             tags=["live"], system_interval=0.5) as run:
            TrackingHandler(run, tag="train").attach(trainer, Events.ITERATION_COMPLETED)
            print(run.id, flush=True)
            await trainer.run(range(100), max_epochs=1000)

    asyncio.run(main())
""")


def _points(driver):
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#charts .js-plotly-plot'))"
        ".map(d => (d.data || []).reduce((n, t) => n + (t.x ? t.x.length : 0), 0));")


@pytest.mark.parametrize("face", ["aiohttp", "asgi"])
def test_dashboard_in_a_browser_on_a_live_run(tmp_path, face):
    root = tmp_path / "track"
    Track.set_dir(root)
    baselines = []
    try:
        for i, lr in enumerate([0.2, 0.1]):  # finished runs to compare with
            with Track.run("demo", name=f"baseline-{i}", config={"lr": lr, "model": "linear"}, tags=["baseline"]) as r:
                for s in range(300):
                    r.log({"train/loss": (1.5 + i) * 0.99 ** s + 0.05}, step=s + 1)
            baselines.append(r.id)
    finally:
        Track.set_dir(None)
    env = {**os.environ, "AIOTRAIN_DIR": str(root), "OMP_NUM_THREADS": "1"}
    trainer = spawn(["-c", TRAIN], env)
    try:
        run_id = trainer.stdout.readline().strip()
        assert run_id, trainer.stderr.read()
        with dashboard_server(face, str(root), env) as url, chrome() as driver:
            driver.get(url)
            wait = Wait(driver, tmp_path, describe=lambda d: f"charts: {_points(d)}")
            wait.until(lambda d: len(d.find_elements("css selector", "#runs tbody tr")) == 3)
            rows = driver.find_elements("css selector", "#runs tbody tr")
            assert {r.get_attribute("data-key") for r in rows} >= {f"demo/{run_id}"}
            assert "live-run" in driver.find_element("css selector", "#runs").text
            # the newest run (the live one) is selected; add a baseline to overlay
            wait.until(lambda d: d.find_elements("css selector", f'#runs tr[data-key="demo/{run_id}"] input:checked'))
            driver.find_element("css selector", f'#runs tr[data-key="demo/{baselines[1]}"] input.pick').click()
            wait.until(lambda d: bool(p := _points(d)) and p[0] > 0)  # one read: charts re-render
            wait.until(lambda d: len(d.find_elements("css selector", "#compare table.diff")) == 1)
            before = sum(_points(driver))
            wait.until(lambda d: sum(_points(d)) > before + 5)  # live: new steps arrive without a reload
            time.sleep(2.0)
            driver.save_screenshot(str(tmp_path / "dashboard.png"))
            assert (tmp_path / "dashboard.png").read_bytes()[:4] == b"\x89PNG"
            if os.environ.get("AIOTRAIN_DASHBOARD_SCREENSHOT"):
                shutil.copyfile(tmp_path / "dashboard.png", os.environ["AIOTRAIN_DASHBOARD_SCREENSHOT"])
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert not errors, errors
    finally:
        stop(trainer)
