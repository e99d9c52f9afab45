"""The caller's thread-local torch modes, carried to the thread that runs the steps.

Grad mode, inference mode and autocast are thread-local in torch, and an engine's steps run on
its compute thread (async steps and handlers on the loop). ``run`` captures the modes of the
thread that called it and the engine applies them wherever its code runs, so
``with torch.no_grad(): await evaluator.run(...)`` means what it says.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

__all__ = ["TorchModes"]

T = TypeVar("T")

_DEVICE_TYPES = ("cpu", "cuda", "xpu", "mps")


@dataclass(frozen=True)
class TorchModes:
    """Grad mode, inference mode and the enabled autocasts (device type, dtype, cache)."""

    grad: bool
    inference: bool
    autocast: tuple[tuple[str, torch.dtype], ...]
    autocast_cache: bool

    @classmethod
    def capture(cls) -> TorchModes:
        """The modes of the calling thread, now."""
        casts = []
        for device_type in _DEVICE_TYPES:
            try:
                if torch.is_autocast_enabled(device_type):
                    casts.append((device_type, torch.get_autocast_dtype(device_type)))
            except RuntimeError:  # a device type this torch build does not know
                continue
        return cls(torch.is_grad_enabled(), torch.is_inference_mode_enabled(), tuple(casts),
                   torch.is_autocast_cache_enabled())

    @property
    def is_default(self) -> bool:
        """A fresh thread's modes already: nothing to apply."""
        return self.grad and not self.inference and not self.autocast

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Run the block under these modes (on any thread)."""
        with contextlib.ExitStack() as stack:
            if self.inference:
                stack.enter_context(torch.inference_mode())
            stack.enter_context(torch.set_grad_enabled(self.grad))
            for device_type, dtype in self.autocast:
                stack.enter_context(torch.autocast(device_type, dtype=dtype,
                                                   cache_enabled=self.autocast_cache))
            yield

    def wrap(self, awaitable: Awaitable[T]) -> Awaitable[T]:
        """``awaitable`` with these modes applied each time it resumes, and only then: other
        tasks on the loop never see them."""
        if self.is_default:
            return awaitable
        return _WithModes(awaitable, self)


class _WithModes(Awaitable[T]):
    def __init__(self, awaitable: Awaitable[T], modes: TorchModes) -> None:
        self._awaitable, self._modes = awaitable, modes

    def __await__(self) -> Generator[Any, Any, T]:
        it = self._awaitable.__await__()
        send: Any = None
        error: BaseException | None = None
        while True:
            try:
                with self._modes.applied():
                    yielded = it.throw(error) if error is not None else it.send(send)
            except StopIteration as stop:
                result: T = stop.value
                return result
            send, error = None, None
            try:
                send = yield yielded
            except BaseException as exc:  # thrown into the task (cancellation): pass it on
                error = exc
