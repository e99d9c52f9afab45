"""aiotrain.notebook's drawing: hostile names and values are escaped, long series are thinned,
and outside a kernel nothing is shown (or imported)."""

from __future__ import annotations

import html
import math
import re
import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from aiotrain.notebook import _thin, chart_svg, in_kernel, progress_html

EVIL = '<img src=x onerror="alert(1)"><script>alert(2)</script>'


def test_names_and_details_are_escaped():
    svg = chart_svg(EVIL, {EVIL: [(0.0, 1.0), (1.0, 2.0)]})
    bar = progress_html(EVIL, 1, 2, EVIL)
    for markup in (svg, bar):
        assert "<script" not in markup and "<img" not in markup
        assert "&lt;script&gt;" in markup


@given(st.text(alphabet=st.sampled_from('<>&"\'ab/ ='), max_size=30))
def test_every_name_reaches_the_markup_escaped(name):
    markup = chart_svg(name, {name: [(0.0, 0.5)]}) + progress_html(name, 0, None, name)
    assert html.escape(name) in markup
    tags = {t.split()[0] for t in re.findall(r"<(/?[a-z]+[^>]*)>", markup)}
    assert tags <= {"div", "/div", "b", "/b", "svg", "/svg", "rect", "text", "/text",
                    "polyline", "progress", "/progress", "i", "/i"}, tags


def test_long_series_are_thinned_keeping_the_last_point():
    points = [(float(i), math.sin(i)) for i in range(10_001)]
    thinned = _thin(points)
    assert len(thinned) <= 401 and thinned[0] == points[0] and thinned[-1] == points[-1]


def test_non_finite_values_are_skipped_and_empty_runs_say_so():
    assert "no metrics logged yet" in chart_svg("run", {})
    svg = chart_svg("run", {"loss": [(0.0, float("nan")), (1.0, 2.0), (2.0, float("inf"))]})
    assert "loss = 2" in svg


def test_outside_a_kernel_nothing_is_shown_and_ipython_is_not_imported():
    assert not in_kernel()
    code = "import sys, aiotrain.notebook as n; print(n.in_kernel(), 'IPython' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
