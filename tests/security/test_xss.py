"""Stored XSS: values that training code (or anyone who can write the tracking folder) logged
are shown as text, never parsed as HTML, in a real browser on every page of the dashboard
(docs/security.md, "Whoever can write into the tracking folder")."""

from __future__ import annotations

import json
import os

import msgspec
import pytest

from aiotrain.tracking import Track
from tests.dashboard.browser import Wait, chrome, dashboard_server, needs_browser

pytestmark = needs_browser

EVIL = '<b class="pwned">x</b><img src="data:," class="pwned" onerror="window.__pwned=1">'
ODD = "a?b#c%d&e"  # a project name that only opens when the page encodes it in URLs


def hostile_root(root):
    """Runs and an artifact index whose every shown value is markup."""
    Track.set_dir(root)
    try:
        with Track.run("demo", name=EVIL, config={"lr": EVIL, EVIL: 1}, tags=[EVIL], notes=EVIL) as run:
            for step in range(3):
                run.log({"loss": 1.0 / (step + 1), EVIL: float(step)})
            run.log_table("preds", Track.Table(columns=["x", EVIL], data=[[1, EVIL]]))
        with Track.run("demo", name="second", config={"lr": 0.5}) as other:
            other.log({"loss": 2.0})
        with Track.run(ODD, name="odd-project", config={"lr": 0.7}) as odd:
            odd.log({"loss": 3.0})
    finally:
        Track.set_dir(None)
    # a media entry written by hand: step, nrows and columns are strings of markup
    table = next(json.loads(line)["preds"] for line in (run.dir / "metrics.jsonl").read_text().splitlines()
                 if "preds" in line)
    forged = {**table, "nrows": EVIL, "step": EVIL, "columns": [EVIL]}
    with open(run.dir / "metrics.jsonl", "ab") as f:
        f.write(msgspec.json.encode({"step": 9, "timestamp": 1.0, "forged": forged}) + b"\n")
    index = root / "artifacts" / "projects" / "demo" / "ds" / "index.json"
    index.parent.mkdir(parents=True)
    producer = {"project": "demo", "id": EVIL}
    index.write_text(json.dumps({"project": "demo", "name": EVIL, "type": EVIL, "aliases": {EVIL: EVIL},
                                 "versions": [{"version": EVIL, "digest": EVIL, "created_at": 1.0, "files": {},
                                               "producer": producer, "consumers": [producer]}]}))
    return run, odd


def text(driver, selector):
    """The element's text, read in one step (the runs table re-renders every few seconds)."""
    return driver.execute_script("const e = document.querySelector(arguments[0]);"
                                 "return e ? e.innerText : '';", selector)


def click(wait, selector):
    """Find and click in one step (the runs table re-renders every few seconds)."""
    wait.until(lambda d: d.execute_script("const e = document.querySelector(arguments[0]);"
                                          "if (e) e.click(); return !!e;", selector))


def page_is_clean(driver):
    return driver.execute_script(
        "return [window.__pwned === undefined, document.querySelectorAll('.pwned').length];")


@pytest.mark.parametrize("face", ["aiohttp", "asgi"])
def test_logged_markup_stays_text_on_every_page(tmp_path, face):
    root = tmp_path / "track"
    run, odd = hostile_root(root)
    env = {**os.environ, "AIOTRAIN_DIR": str(root)}
    with dashboard_server(face, str(root), env) as url, chrome() as driver:
        wait = Wait(driver, tmp_path)
        driver.get(url)  # the runs table, the charts of the selected runs and the config diff
        wait.until(lambda d: len(d.find_elements("css selector", "#runs tbody tr")) == 3)
        click(wait, f'#runs tr[data-key="demo/{run.id}"] input.pick')
        wait.until(lambda d: len(d.find_elements("css selector", "#compare table.diff")) == 1)
        wait.until(lambda d: EVIL in text(d, "#compare"))
        assert EVIL in text(driver, "#runs")
        assert page_is_clean(driver) == [True, 0]
        driver.get(f"{url}#/run/demo/{run.id}")  # the run page: tables, summary, config
        wait.until(lambda d: len(d.find_elements("css selector", "#tables .panel")) == 2)
        shown = text(driver, "#view")
        assert f"step {EVIL}, {EVIL} rows" in shown and shown.count(EVIL) >= 6
        assert page_is_clean(driver) == [True, 0]
        driver.get(url)  # a project named with ?, # and % opens from its link
        click(wait, f'#runs tr[data-key="{ODD}/{odd.id}"] a')
        wait.until(lambda d: "odd-project" in text(d, "#view h2"))
        assert f"{ODD}/{odd.id}" in text(driver, "#view h2")
        driver.get(f"{url}#/artifacts")
        wait.until(lambda d: f"v{EVIL}" in text(d, "#view"))
        assert page_is_clean(driver) == [True, 0]
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
