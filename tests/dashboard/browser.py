"""Headless Chromium for the dashboard's browser tests (selenium), and servers to point it at.

Needs Chromium and its driver (Debian: ``apt-get install chromium chromium-driver``) and the
selenium package; ``needs_browser`` skips a test with the reason when one is missing.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
try:
    import selenium  # noqa: F401
except ImportError:
    selenium = None

needs_browser = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None or selenium is None,
    reason="the browser test needs chromium and chromedriver on PATH (Debian: apt-get install chromium "
           "chromium-driver) and the selenium package (pip install selenium)")

# the dashboard mounted in a FastAPI app under /runs, served by uvicorn; prints its URL
ASGI_SERVER = textwrap.dedent("""
    import socket, sys
    import uvicorn
    from fastapi import FastAPI
    from aiotrain.dashboard import asgi_app

    app = FastAPI()
    app.mount("/runs", asgi_app(dir=sys.argv[1]))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    print(f"dashboard on http://127.0.0.1:{sock.getsockname()[1]}/runs/", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
""")


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def dashboard_server(face: str, root: str, env: dict[str, str]) -> Iterator[str]:
    """The dashboard over ``root`` in a process of its own: ``aiotrain runs serve`` (aiohttp)
    or mounted at /runs in a FastAPI app under uvicorn (asgi); yields its URL."""
    if face == "asgi":
        pytest.importorskip("fastapi", reason="the ASGI face's browser test needs fastapi and uvicorn")
        args = ["-c", ASGI_SERVER, root]
    else:
        args = ["-m", "aiotrain", "runs", "serve", "--port", "0", "--dir", root]
    server = spawn(args, env)
    try:
        line = server.stdout.readline() if server.stdout else ""
        assert "http://127.0.0.1:" in line, server.stderr.read() if server.stderr else line
        yield line.split()[2]
    finally:
        stop(server)


@contextlib.contextmanager
def chrome() -> Iterator[object]:
    """A headless Chromium driven by selenium, quit afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1500,1100"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


class Wait:
    """WebDriverWait that, on a timeout, saves a screenshot and says what the page logged."""

    def __init__(self, driver, tmp_path, timeout=60, describe=lambda d: ""):
        from selenium.common.exceptions import (
            NoSuchElementException,
            StaleElementReferenceException,
        )
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.tmp_path, self.describe = driver, tmp_path, describe
        # the runs table re-renders every few seconds: an element found may be gone a moment later
        self.inner = WebDriverWait(driver, timeout, poll_frequency=0.2,
                                   ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))

    def until(self, condition):
        from selenium.common.exceptions import TimeoutException

        try:
            return self.inner.until(condition)
        except TimeoutException:
            self.driver.save_screenshot(str(self.tmp_path / "failure.png"))
            logs = [e["message"] for e in self.driver.get_log("browser")]
            pytest.fail(f"page never got there (screenshot {self.tmp_path / 'failure.png'}); "
                        f"console: {logs}; {self.describe(self.driver)}")
