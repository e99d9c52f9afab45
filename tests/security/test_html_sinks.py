"""The `make lint` scan for HTML sinks in the dashboard's JavaScript: it passes on today's
app.js and catches every kind of sink fed with data (threat: stored XSS, docs/security.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.security.html_sinks import scan

ROOT = Path(__file__).resolve().parents[2]


def test_the_dashboard_script_feeds_no_html_sink():
    out = subprocess.run([sys.executable, "tests/security/html_sinks.py", "aiotrain/dashboard/static"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


@pytest.mark.parametrize("code", [
    "el.innerHTML = `<b>${e.nrows}</b>`;",
    "el.innerHTML += row;",
    "el.outerHTML = '<i>' + name;",
    'box.insertAdjacentHTML("beforeend", html);',
    "document.write(x);",
    "document . writeln('a' + b);",
    "range.createContextualFragment(text);",
    'new DOMParser().parseFromString(s, "text/html");',
    "frame.srcdoc = page;",
    "el.innerHTML = `v${v.version}`;",
])
def test_sinks_fed_with_data_are_found(code):
    (problem,) = scan(f"// a script\n{code}\n", "x.js")
    assert problem.startswith("x.js:2: HTML sink fed with data")


@pytest.mark.parametrize("code", ['el.innerHTML = "";', "el.innerHTML = '';", "if (a.innerHTML === b) f();",
                                  "el.textContent = `${e.nrows}`;"])
def test_constants_and_text_pass(code):
    assert scan(code) == []
