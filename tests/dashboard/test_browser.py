"""A real browser on the dashboard: headless Chromium (driven by selenium) opens ``aiotrain runs
serve`` while a model trains in another process, and checks that the runs table renders, that a
chart shows points, and that the chart gains points while the run trains. Saves a screenshot
under the test's tmp dir (and where ``AIOTRAIN_DASHBOARD_SCREENSHOT`` says, for the docs).

Needs Chromium and its driver (Debian: ``apt-get install chromium chromium-driver``) and the
selenium package; skipped with the reason when one is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from aiotrain.tracking import Track

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
try:
    import selenium  # noqa: F401
except ImportError:
    selenium = None

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None or selenium is None,
    reason="the browser test needs chromium and chromedriver on PATH (Debian: apt-get install chromium "
           "chromium-driver) and the selenium package (pip install selenium)")

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


def _spawn(args, env):
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _points(driver):
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#charts .js-plotly-plot'))"
        ".map(d => (d.data || []).reduce((n, t) => n + (t.x ? t.x.length : 0), 0));")


class _Wait:
    """WebDriverWait that, on a timeout, saves a screenshot and says what the page logged."""

    def __init__(self, driver, tmp_path, timeout=60):
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.tmp_path = driver, tmp_path
        self.inner = WebDriverWait(driver, timeout, poll_frequency=0.2)

    def until(self, condition):
        from selenium.common.exceptions import TimeoutException

        try:
            return self.inner.until(condition)
        except TimeoutException:
            self.driver.save_screenshot(str(self.tmp_path / "failure.png"))
            logs = [e["message"] for e in self.driver.get_log("browser")]
            pytest.fail(f"page never got there (screenshot {self.tmp_path / 'failure.png'}); "
                        f"console: {logs}; charts: {_points(self.driver)}")


def test_dashboard_in_a_browser_on_a_live_run(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

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
    trainer = _spawn(["-c", TRAIN], env)
    server = driver = None
    try:
        run_id = trainer.stdout.readline().strip()
        assert run_id, trainer.stderr.read()
        server = _spawn(["-m", "aiotrain", "runs", "serve", "--port", "0", "--dir", str(root)], env)
        line = server.stdout.readline()
        assert "http://127.0.0.1:" in line, server.stderr.read()
        url = line.split()[2]
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    "--window-size=1500,1100"):
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service(DRIVER), options=options)
        driver.get(url)
        wait = _Wait(driver, tmp_path)
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
        if driver is not None:
            driver.quit()
        for proc in (server, trainer):
            if proc is not None:
                _stop(proc)
