"""ProgressBar: a rich progress bar per epoch, redrawn at most every ``refresh_s`` seconds.

A redraw is a loop handler, and reaching a loop handler costs the compute thread a crossing
(~70 us). So the per-iteration handler is attached with an ``event_filter`` that the engine
evaluates on the compute thread: it passes only when ``refresh_s`` has elapsed since the last
redraw or on the epoch's last iteration. Between redraws, training pays one clock read per
iteration. Outside a terminal (CI logs, files) there is no bar: one line per epoch instead. In a
Jupyter kernel (with the default console) the bar is an HTML output of the cell, replaced in
place at each redraw (``aiotrain.notebook``). rich (extra ``progress``) is imported when a
ProgressBar is made, not with this module.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from numbers import Number
from typing import TYPE_CHECKING

import torch

from ..errors import require
from ..events import Events
from ..notebook import LiveOutput, in_kernel, progress_html
from ..protocols import OutputTransform
from ..values import as_number

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from ..engine import Engine, State

__all__ = ["ProgressBar"]


@functools.cache
def _stderr_console() -> Console:
    # one shared console, so that bars of several engines (trainer + evaluator) nest properly
    console: Console = require("rich.console", "the progress bar").Console(stderr=True)
    return console


class ProgressBar:
    """Shows ``Epoch [e/E]``, a bar, iteration/total, it/s, elapsed time and chosen values.

    ``attach(engine, metric_names=None, output_transform=None)``: ``metric_names`` is a list of
    names in ``state.metrics`` or ``"all"``; ``output_transform`` maps ``state.output`` to a
    number (shown as ``output``) or a dict of numbers. As in Ignite, nothing from the output
    is shown unless asked. ``persist=True`` keeps each finished epoch's bar on screen.
    ``console`` defaults to a shared stderr console (like tqdm); use ``close()`` or ``with``
    to restore the terminal when a run ends in an exception mid-epoch.
    """

    def __init__(self, persist: bool = False, refresh_s: float = 0.1, *,
                 console: Console | None = None) -> None:
        if not refresh_s >= 0:
            raise ValueError(f"ProgressBar: refresh_s must be >= 0, got {refresh_s!r}")
        self.persist = bool(persist)
        self.refresh_s = float(refresh_s)
        self.console = console or _stderr_console()  # MissingExtra without rich
        self._notebook = console is None and in_kernel()
        self._html: LiveOutput | None = None
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._last_draw = 0.0
        self._epoch_start = 0.0
        self._start_iteration = 0

    def attach(self, engine: Engine, metric_names: str | Sequence[str] | None = None,
               output_transform: OutputTransform | None = None) -> ProgressBar:
        """Draw ``engine``'s progress with the given metrics and output values."""
        if isinstance(metric_names, str) and metric_names != "all":
            raise ValueError(f"ProgressBar: metric_names must be 'all' or a list of names, "
                             f"got {metric_names!r}")
        if output_transform is not None and not callable(output_transform):
            raise TypeError(f"ProgressBar: output_transform must be callable, got {output_transform!r}")
        self._metric_names = metric_names
        self._output_transform = output_transform
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        if self.console.is_terminal or self._notebook:
            engine.add_event_handler(Events.ITERATION_COMPLETED(event_filter=self._redraw_due),
                                     self._redraw)
        # first among EPOCH_COMPLETED handlers: the epoch's line closes before evaluation prints
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed, priority=1000)
        engine.add_event_handler(Events.COMPLETED | Events.TERMINATE, self._run_ended)
        return self

    # compute thread -------------------------------------------------------------------------
    def _redraw_due(self, engine: Engine, _count: int) -> bool:
        st = engine.state
        now = time.perf_counter()
        if now - self._last_draw >= self.refresh_s or st.epoch_iteration == st.epoch_length:
            self._last_draw = now
            return True
        return False

    # loop handlers --------------------------------------------------------------------------
    def _epoch_started(self, engine: Engine) -> None:
        self.close()  # a bar left open by a run that failed mid-epoch
        st = engine.state
        self._epoch_start = self._last_draw = time.perf_counter()
        self._start_iteration = st.epoch_iteration
        if self._notebook:
            self._html = LiveOutput()
            self._redraw(engine)
            return
        if not self.console.is_terminal:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("{task.fields[values]}"),
            console=self.console, auto_refresh=False, transient=not self.persist,
        )
        self._task = self._progress.add_task(_epoch_label(st), total=st.epoch_length,
                                             completed=st.epoch_iteration, rate="", values="")
        self._progress.start()
        self._progress.refresh()

    def _redraw(self, engine: Engine) -> None:
        st = engine.state
        if self._html is not None:
            detail = f"{self._rate(st)} {_format(self._values(engine))}".strip()
            self._html.show(progress_html(_epoch_label(st), st.epoch_iteration, st.epoch_length, detail))
            return
        if self._progress is None or self._task is None:
            return
        self._progress.update(self._task, completed=st.epoch_iteration, rate=self._rate(st),
                              values=_format(self._values(engine)))
        self._progress.refresh()

    def _epoch_completed(self, engine: Engine) -> None:
        if self._progress is not None or self._html is not None:
            self._redraw(engine)
            self.close()
            return
        st = engine.state
        total = st.epoch_length if st.epoch_length is not None else "?"
        line = f"{_epoch_label(st)}: {st.epoch_iteration}/{total} {self._rate(st)} " \
               f"{time.perf_counter() - self._epoch_start:.2f}s"
        values = _format(self._values(engine))
        self.console.print(f"{line} {values}".rstrip(), markup=False, highlight=False)

    def _run_ended(self, engine: Engine) -> None:
        self.close()

    def close(self) -> None:
        """Stop the live display (idempotent)."""
        progress, self._progress = self._progress, None
        self._html = None  # the finished bar stays in the cell's output
        if progress is not None:
            progress.stop()

    def log_message(self, message: str) -> None:
        """Print ``message`` above the bar without breaking it."""
        self.console.print(message, markup=False, highlight=False)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # values ---------------------------------------------------------------------------------
    def _rate(self, st: State) -> str:
        elapsed = time.perf_counter() - self._epoch_start
        done = st.epoch_iteration - self._start_iteration
        return f"{done / elapsed:.1f} it/s" if elapsed > 0 and done > 0 else ""

    def _values(self, engine: Engine) -> dict[str, object]:
        values: dict[str, object] = {}
        if self._output_transform is not None and engine.state.output is not None:
            out = self._output_transform(engine.state.output)
            values.update(out if isinstance(out, dict) else {"output": out})
        metrics = engine.state.metrics or {}
        names = metrics if self._metric_names == "all" else (self._metric_names or ())
        values.update({n: metrics[n] for n in names if n in metrics})
        return values


def _epoch_label(st: State) -> str:
    return f"Epoch [{st.epoch}/{st.max_epochs}]"


def _format(values: dict[str, object]) -> str:
    """``name=value`` pairs; numbers to 4 significant digits, small tensors as lists."""
    parts = []
    for name, value in values.items():
        number = as_number(value)
        if number is not None:
            value = number
        elif isinstance(value, torch.Tensor):
            value = value.tolist()
        if isinstance(value, bool) or not isinstance(value, (Number, list)):
            continue
        shown = f"{value:.4g}" if isinstance(value, Number) else \
            "[" + ", ".join(f"{v:.3g}" for v in value if isinstance(v, Number)) + "]"
        parts.append(f"{name}={shown}")
    return " ".join(parts)
