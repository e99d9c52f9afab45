"""pytest plugin for ``make compat``: pytorch-ignite's own tests, run against aiotrain.

Only renames: every module of the installed ``ignite`` package that holds Ignite's Engine, Events,
State, EventEnum, EventsList or RemovableEventHandle gets aiotrain's instead; and Ignite's sync
``Engine.run`` is adapted to aiotrain's ``run_sync``. No behaviour is re-implemented here.
"""

from __future__ import annotations

import sys

import ignite.engine
import ignite.engine.events
import ignite.handlers  # noqa: F401 - imported so its modules are renamed too
import ignite.metrics  # noqa: F401

import aiotrain
from aiotrain import events as aio_events


class Engine(aiotrain.Engine):
    """aiotrain's Engine with Ignite's sync ``run`` signature."""

    def run(self, data=None, max_epochs=None, max_iters=None, epoch_length=None):
        return self.run_sync(data, max_epochs=max_epochs, max_iters=max_iters,
                             epoch_length=epoch_length)


RENAMES = {
    ignite.engine.Engine: Engine,
    ignite.engine.Events: aio_events.Events,
    ignite.engine.State: aiotrain.State,
    ignite.engine.EventEnum: aio_events.EventEnum,
    ignite.engine.events.EventsList: aio_events.EventsList,
    ignite.engine.events.CallableEventWithFilter: aio_events.FilteredEvent,
    ignite.engine.events.RemovableEventHandle: aio_events.RemovableHandle,
}


def _rename() -> None:
    for name, module in list(sys.modules.items()):
        if not (name == "ignite" or name.startswith("ignite.")) or module is None:
            continue
        for attr, value in list(vars(module).items()):
            try:
                replacement = RENAMES.get(value)
            except TypeError:  # unhashable module attribute
                continue
            if replacement is not None:
                setattr(module, attr, replacement)


_rename()


def pytest_collectstart(collector):
    _rename()  # ignite modules first imported by a test module
