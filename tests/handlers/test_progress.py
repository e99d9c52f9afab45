"""ProgressBar: terminal bar with values, throttled redraws on the compute thread, CI lines."""

from __future__ import annotations

import io
import threading

import pytest
import torch
from rich.console import Console

from aiotrain.engine import Engine
from aiotrain.handlers.progress import ProgressBar
from aiotrain.metrics import Accuracy


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=terminal, width=160, color_system=None), buf


def _trainer():
    def step(engine, batch):
        y = torch.tensor([0, 1, 1, 0])
        return {"loss": torch.tensor(0.25 * engine.state.iteration), "y_pred": y, "y": y}

    trainer = Engine(step)
    Accuracy(output_transform=lambda o: (o["y_pred"], o["y"])).attach(trainer, "acc")
    return trainer


class CountingBar(ProgressBar):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.due_threads, self.redraws = [], 0

    def _redraw_due(self, engine, count):
        self.due_threads.append(threading.current_thread().name)
        return super()._redraw_due(engine, count)

    def _redraw(self, engine):
        self.redraws += 1
        super()._redraw(engine)


async def test_terminal_bar_shows_epoch_count_rate_and_values():
    console, buf = _console(terminal=True)
    trainer = _trainer()
    ProgressBar(persist=True, console=console).attach(
        trainer, metric_names=["acc"], output_transform=lambda o: {"loss": o["loss"]})
    await trainer.run(range(4), max_epochs=2)
    text = buf.getvalue()
    assert "Epoch [1/2]" in text and "Epoch [2/2]" in text
    assert "4/4" in text and "it/s" in text
    assert "loss=2" in text  # iteration 8: 0.25 * 8
    assert "acc=1" in text


async def test_redraws_are_throttled_and_filtered_on_the_compute_thread():
    console, _ = _console(terminal=True)
    trainer = _trainer()
    bar = CountingBar(refresh_s=3600, console=console).attach(trainer)
    await trainer.run(range(50), max_epochs=2)
    # a redraw only on each epoch's last iteration (+1 from EPOCH_COMPLETED itself)
    assert bar.redraws == 2 * 2
    assert len(bar.due_threads) == 100
    assert all(n.startswith("aiotrain-compute") for n in bar.due_threads)


async def test_refresh_zero_redraws_every_iteration():
    console, _ = _console(terminal=True)
    trainer = _trainer()
    bar = CountingBar(refresh_s=0, console=console).attach(trainer)
    await trainer.run(range(5), max_epochs=1)
    assert bar.redraws == 5 + 1


async def test_non_terminal_prints_one_line_per_epoch_and_never_redraws():
    console, buf = _console(terminal=False)
    trainer = _trainer()
    bar = CountingBar(console=console).attach(trainer, metric_names="all",
                                              output_transform=lambda o: o["loss"])
    await trainer.run(range(3), max_epochs=2)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("Epoch [1/2]: 3/3 ") and "it/s" in lines[0]
    assert "output=0.75" in lines[0] and "acc=1" in lines[0]
    assert lines[1].startswith("Epoch [2/2]: 3/3 ") and "output=1.5" in lines[1]
    assert bar.due_threads == [] and bar.redraws == 0


async def test_unsized_source_and_close_is_idempotent():
    console, buf = _console(terminal=False)

    async def batches():
        for i in range(3):
            yield i

    trainer = Engine(lambda e, b: b)
    with ProgressBar(console=console) as bar:
        bar.attach(trainer)
        await trainer.run(batches(), max_epochs=1)
    bar.close()
    assert buf.getvalue().startswith("Epoch [1/1]: 3/")


def test_bad_arguments():
    with pytest.raises(ValueError, match="refresh_s must be >= 0"):
        ProgressBar(refresh_s=-1)
    with pytest.raises(ValueError, match="metric_names must be 'all' or a list"):
        ProgressBar().attach(Engine(lambda e, b: b), metric_names="acc")
    with pytest.raises(TypeError, match="output_transform must be callable"):
        ProgressBar().attach(Engine(lambda e, b: b), output_transform="loss")
