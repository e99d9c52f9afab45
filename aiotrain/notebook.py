"""Live outputs in Jupyter: a progress bar and a chart of a run's metrics that redraw in place.

In a notebook, ``await trainer.run(...)`` runs on the kernel's own event loop, so the cell's
output can be updated while the model trains. This module draws with plain HTML and inline SVG
in one output per bar or chart, replaced through IPython's display handles
(``update_display_data``): no JavaScript, no widget extension, and the last frame stays in the
saved notebook (nbviewer, GitHub and exported HTML show it as it ended). Every value drawn is
escaped: metric names and values come from user code and logged data.

Nothing here imports IPython unless a kernel is running (:func:`in_kernel` looks at
``sys.modules`` first), so plain scripts pay nothing.
"""

from __future__ import annotations

import html
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

__all__ = ["LiveOutput", "chart_svg", "in_kernel", "progress_html"]

_PANEL_W, _PANEL_H, _PAD = 300, 150, 34
_MAX_POINTS = 400  # per series: enough for a 300-pixel-wide panel


def in_kernel() -> bool:
    """True inside a Jupyter kernel (ipykernel's shell), False in scripts, the plain IPython
    terminal and the asyncio REPL."""
    if "IPython" not in sys.modules:
        return False
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class _Handle(Protocol):
    def update(self, obj: Any) -> None: ...


class LiveOutput:
    """One output area of the current cell, replaced on each :meth:`show`."""

    def __init__(self) -> None:
        self._handle: _Handle | None = None

    def show(self, markup: str) -> None:
        """Display ``markup`` (already escaped HTML) here, replacing what was shown before."""
        from IPython.display import HTML, display

        if self._handle is None:
            self._handle = display(HTML(markup), display_id=True)
        else:
            self._handle.update(HTML(markup))


def progress_html(label: str, done: int, total: int | None, detail: str) -> str:
    """A progress bar with its label (``Epoch [1/3]``), ``done/total`` and a detail line."""
    shown_total = "?" if total is None else str(total)
    bar = (f'<progress value="{done}" max="{total}" style="width:40ex"></progress>'
           if total else '<progress style="width:40ex"></progress>')
    return (f'<div style="font-family:monospace"><b>{html.escape(label)}</b> {bar} '
            f'{done}/{shown_total} {html.escape(detail)}</div>')


Series = Sequence[tuple[float, float]]


def chart_svg(title: str, series: Mapping[str, Series]) -> str:
    """Small multiples: one line chart per metric (``{name: [(step, value), ...]}``), in a grid,
    each with its last value; non-finite values are skipped."""
    panels = [_panel(name, [(s, v) for s, v in points if math.isfinite(v)])
              for name, points in sorted(series.items())]
    body = "".join(panels) or "<i>no metrics logged yet</i>"
    return (f'<div style="font-family:sans-serif"><b>{html.escape(title)}</b>'
            f'<div style="display:flex;flex-wrap:wrap;gap:8px">{body}</div></div>')


def _panel(name: str, points: list[tuple[float, float]]) -> str:
    label = html.escape(name)
    if not points:
        return ""
    points = _thin(points)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    sx = (_PANEL_W - 2 * _PAD) / ((x1 - x0) or 1)
    sy = (_PANEL_H - 2 * _PAD) / ((y1 - y0) or 1)
    path = " ".join(f"{_PAD + (x - x0) * sx:.1f},{_PANEL_H - _PAD - (y - y0) * sy:.1f}" for x, y in points)
    return (f'<svg width="{_PANEL_W}" height="{_PANEL_H}" role="img" aria-label="{label}">'
            f'<rect width="100%" height="100%" fill="#fafafa" stroke="#ddd"/>'
            f'<text x="{_PAD}" y="16" font-size="12">{label} = {ys[-1]:.4g}</text>'
            f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{path}"/>'
            f'<text x="{_PAD}" y="{_PANEL_H - 8}" font-size="10">step {x0:g}..{x1:g}</text>'
            f'<text x="{_PANEL_W - _PAD}" y="{_PAD}" font-size="10" text-anchor="end">{y1:.3g}</text>'
            f'<text x="{_PANEL_W - _PAD}" y="{_PANEL_H - _PAD}" font-size="10" text-anchor="end">'
            f'{y0:.3g}</text></svg>')


def _thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """At most ``_MAX_POINTS`` points: every k-th, always keeping the last."""
    if len(points) <= _MAX_POINTS:
        return points
    k = math.ceil(len(points) / _MAX_POINTS)
    return points[::k] + ([points[-1]] if (len(points) - 1) % k else [])
