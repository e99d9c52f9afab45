"""LiveChart: a run's metrics drawn in the notebook cell that opened it, redrawn while it runs.

Opened by ``Run`` itself when it starts inside a Jupyter kernel with a running loop (``async
with Track.run(...)`` in a cell): a task on the kernel's loop has an I/O thread read the lines
the run's writer appended to metrics.jsonl since the last redraw, keep every scalar and draw
small-multiple SVG charts (``aiotrain.notebook.chart_svg``, work that grows with the history),
then replaces the cell output with them. The
training step never sees it: it reads the file the background writer already flushes. When the
run finishes, one last redraw shows everything that was logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from pathlib import Path
from typing import Any

from ..notebook import LiveOutput, chart_svg, in_kernel
from ..runtime import to_io
from .series import read_new_records

__all__ = ["LiveChart", "open_live_chart"]

_NOT_METRICS = frozenset({"step", "timestamp"})


class LiveChart:
    """Redraws ``metrics_path``'s scalar metrics every ``interval`` seconds under ``title``."""

    def __init__(self, metrics_path: Path, title: str, interval: float = 1.0) -> None:
        self.path = metrics_path
        self.title = title
        self.interval = interval
        self.series: dict[str, list[tuple[float, float]]] = {}
        self._offset = 0
        self._out = LiveOutput()
        self._task: asyncio.Task[None] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Draw the (empty) chart now and redraw on ``loop`` until :meth:`close`."""
        self._out.show(chart_svg(self.title, self.series))
        self._task = loop.create_task(self._redraw_forever(), name=f"aiotrain-chart-{self.title}")

    async def _redraw_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            # reading, keeping and drawing grow with the history: on an I/O thread, not the loop
            drawing = await to_io(self._catch_up)
            if drawing is not None:
                self._out.show(drawing)

    def close(self) -> None:
        """Stop redrawing and draw once more with everything on disk (after the run's final
        flush). Safe from any thread."""
        task, self._task = self._task, None
        if task is not None:
            with contextlib.suppress(RuntimeError):  # its loop already closed
                task.get_loop().call_soon_threadsafe(task.cancel)
        self._out.show(self._catch_up() or chart_svg(self.title, self.series))

    def _catch_up(self) -> str | None:
        """Keep the records appended since the last call; the new drawing, or None if none."""
        records, self._offset = read_new_records(self.path, self._offset)
        if not records:
            return None
        self._add(records)
        return chart_svg(self.title, self.series)

    def _add(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            step = record.get("step")
            if not isinstance(step, int):
                continue
            for key, value in record.items():
                if key in _NOT_METRICS or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                if math.isfinite(value):
                    self.series.setdefault(key, []).append((float(step), float(value)))


def open_live_chart(metrics_path: Path, title: str) -> LiveChart | None:
    """A started LiveChart when running in a Jupyter kernel inside a running loop, else None."""
    if not in_kernel():
        return None
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    chart = LiveChart(metrics_path, title)
    chart.start(loop)
    return chart
