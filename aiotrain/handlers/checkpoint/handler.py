"""Checkpoint: the handler. When to save, what, where, and the one-write-in-flight rule.

A save has three parts. At the event (on the loop, while the engine's step loop is paused, so the
model is quiescent) every ``state_dict()`` in ``to_save`` is called, which captures the RNG states
of an Engine at that very moment, and the state is copied into staging buffers: everything, except
the state of the optimizers in ``to_save``, whose copy runs in the I/O executor while the next
step's forward and backward run; those optimizers' ``step()`` waits until it is done, and an
in-place write to that state from anywhere else refuses the save (see ``staging`` for why this
is exact). The I/O executor then writes the snapshot atomically (one ``.pt`` file by rank 0, or a
sharded directory every rank writes into) and only then deletes what fell out of retention. A
process killed at any moment leaves the previous newest checkpoint intact and loadable; a file a
Checkpoint writes holds exactly the state at its event, or does not exist.

Decisions (as an Ignite user would expect):

- ``backend``: ``"file"`` (one ``.pt`` file, written by rank 0: the model must be whole on rank 0,
  as with DDP), ``"sharded"`` (a directory, every rank writes its own shards; needed for FSDP),
  or ``"auto"`` (sharded when some module of ``to_save`` holds sharded parameters, DTensors).
- ``when_busy``: a save that triggers while the previous write is still running either waits for
  it (``"wait"``: the step loop stays paused, the event loop does not block) or, for saves that
  keep the newest state (no score), is dropped because a later one will supersede it (``"skip"``,
  counted in ``skipped``; the save at the run's last step is never dropped). A failed write is
  raised at the next save, or by ``await checkpoint.aflush()``.
- ``last_checkpoint`` is the kept checkpoint with the highest priority (newest, or best score),
  as in Ignite, once its write is durable.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from ... import distributed as dist
from ...deprecation import renamed_method
from ...events import Events
from ...protocols import StateDict, Stateful
from ...runtime import await_future, submit_io, to_io
from ...values import check_int
from . import sharded, single_file
from .errors import CheckpointError
from .retention import NAME_RE, Retention
from .staging import Deferred, OptimizerGate, Staging, TornCopy, Where, freeze, is_dtensor

if TYPE_CHECKING:
    from ...engine import Engine

__all__ = ["Checkpoint", "CheckpointError"]

log = logging.getLogger("aiotrain.checkpoint")

# below this many bytes a copy at the event runs inline: a thread hop would cost more than it saves
_INLINE_COPY_BYTES = 4 << 20
_BACKENDS = ("auto", "file", "sharded")
_WHEN_BUSY = ("wait", "skip")
_FINAL_EVENTS = {Events.COMPLETED, Events.TERMINATE, Events.EXCEPTION_RAISED}


class Checkpoint:
    """Save ``to_save`` (objects with ``state_dict`` / ``load_state_dict``) into ``save_dir``.

    Attach it as a handler: ``trainer.add_event_handler(Events.ITERATION_COMPLETED(every=500),
    checkpoint)``. The state is snapshotted at the event (into reused staging buffers) and
    written on the I/O executor, atomically; the write is registered with ``engine.add_pending``
    so ``run`` returns only once it is durable (outside an engine, ``await
    checkpoint.aflush()``). With a score the ``n_saved`` best are kept, else the ``n_saved``
    newest. A file holds ``{key: state_dict}`` (a bare state_dict with one key), as Ignite's
    does, so either side's ``load_objects`` reads the other's files.

    Args:
        to_save: name -> object to save: models, optimizers, schedulers, an Engine (with its
            RNG states), an AsyncLoader (with its position), or any object of yours with
            ``state_dict`` / ``load_state_dict``. Models with DTensor parameters are saved
            sharded (a directory every rank writes into).
        save_dir: the folder of the checkpoints (made when missing).
        filename_prefix: names are ``{prefix}_{key}_{step}.pt`` (``key``: the one key of
            ``to_save``, else ``checkpoint``; without a prefix ``{key}_{step}.pt``).
        n_saved: how many to keep (None: all).
        score_function: ``score(engine) -> float``, higher is better; the best are kept.
        score_name: the metric the score is (in the names: ``..._loss=0.4120.pt``); alone, the
            score is ``engine.state.metrics[score_name]``.
        global_step_transform: ``(engine, event) -> int``: the step in a name (default
            ``engine.state.iteration``).
        backend: ``"auto"`` (sharded for DTensor models), ``"file"`` or ``"sharded"``.
        when_busy: ``"wait"`` for the previous write, or ``"skip"`` this save (counted in
            ``skipped``; a scored save or the final one is never skipped).
        overlap: copy the state of the optimizers in ``to_save`` behind the next step (their
            ``step()`` waits for it); False copies it at the event too (for code that writes
            optimizer state outside ``step()``).
        score_sign: -1 says ``score_function`` negated a minimised metric (higher is still
            better): names then show the metric's own value (``loss=0.4120``).

    Example::

        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from aiotrain import Checkpoint, Engine, Events
        >>> model = torch.nn.Linear(2, 1)
        >>> trainer = Engine(lambda engine, batch: None)
        >>> folder = tempfile.TemporaryDirectory()
        >>> checkpoint = Checkpoint({"model": model, "trainer": trainer}, folder.name, n_saved=2)
        >>> _ = trainer.add_event_handler(Events.EPOCH_COMPLETED, checkpoint)
        >>> state = trainer.run([0, 1, 2], max_epochs=3)   # returns once every write is durable
        >>> sorted(p.name for p in Path(folder.name).iterdir())
        ['checkpoint_6.pt', 'checkpoint_9.pt']
        >>> fresh, resumed = torch.nn.Linear(2, 1), Engine(lambda engine, batch: None)
        >>> Checkpoint.load_objects({"model": fresh, "trainer": resumed}, checkpoint.last_checkpoint)
        >>> torch.equal(fresh.weight, model.weight), resumed.state.epoch
        (True, 3)
        >>> folder.cleanup()
    """

    def __init__(self, to_save: Mapping[str, Stateful], save_dir: str | os.PathLike[str],
                 filename_prefix: str = "", n_saved: int | None = 1,
                 score_function: Callable[[Engine], float] | None = None,
                 score_name: str | None = None,
                 global_step_transform: Callable[[Engine, object], int] | None = None,
                 *, backend: str = "auto", when_busy: str = "wait", overlap: bool = True,
                 score_sign: float = 1.0) -> None:
        _check_to_save(to_save)
        if n_saved is not None:
            n_saved = check_int("n_saved (or None)", n_saved)
        if not isinstance(filename_prefix, str) or "/" in filename_prefix or os.sep in filename_prefix:
            raise ValueError(f"filename_prefix must be a plain string without separators, got {filename_prefix!r}")
        if score_name is not None and ("=" in score_name or "/" in score_name):
            raise ValueError(f"score_name must not contain '=' or '/', got {score_name!r}")
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(_BACKENDS)}, got {backend!r}")
        if when_busy not in _WHEN_BUSY:
            raise ValueError(f"when_busy must be one of {', '.join(_WHEN_BUSY)}, got {when_busy!r}")
        if score_function is None and score_name is not None:
            score_function = self.get_default_score_fn(score_name)
        self.to_save = dict(to_save)
        self.save_dir = Path(save_dir)
        self.filename_prefix = filename_prefix
        self.n_saved = n_saved
        self.score_function = score_function
        self.score_name = score_name
        self.global_step_transform = global_step_transform
        self.when_busy = when_busy
        self.overlap = overlap
        self.skipped = 0  # saves dropped by when_busy="skip"
        self.backend = _pick_backend(backend, self.to_save)
        name = next(iter(self.to_save)) if len(self.to_save) == 1 else "checkpoint"
        stem = f"{filename_prefix}_{name}" if filename_prefix else name
        suffix = ".pt" if self.backend == "file" else ""
        if score_sign not in (1.0, -1.0):
            raise ValueError(f"score_sign must be 1 or -1, got {score_sign!r}")
        self._retention = Retention(self.save_dir, stem, suffix, n_saved, score_name,
                                    scored=score_function is not None, score_sign=score_sign)
        self._staging = Staging()
        self._pending: cf.Future[None] | None = None
        self._seq = 0
        self._writer = None
        if self.backend == "sharded":
            self._writer = sharded.ShardedWriter()
        self._optimizers = {k: cast(torch.optim.Optimizer, v) for k, v in self.to_save.items()
                            if isinstance(v, torch.optim.Optimizer)}
        self._gate = OptimizerGate(self._optimizers.values()) if overlap and self._optimizers else None
        self.save_dir.mkdir(parents=True, exist_ok=True)
        stale = self._retention.adopt()
        if dist.is_main():
            for path in stale:
                _remove(path)

    # public ---------------------------------------------------------------------------------
    @property
    def last_checkpoint(self) -> Path | None:
        """The kept checkpoint with the highest priority (the newest, or the best by score)."""
        return self._retention.last

    @staticmethod
    def get_default_score_fn(metric_name: str, score_sign: float = 1.0) -> Callable[[Engine], float]:
        """A score function reading ``engine.state.metrics[metric_name]`` (times ``score_sign``,
        -1.0 for metrics where lower is better), as Ignite's."""
        if score_sign not in (1.0, -1.0):
            raise ValueError(f"score_sign must be 1.0 or -1.0, got {score_sign!r}")

        def score(engine: Engine) -> float:
            return score_sign * float(engine.state.metrics[metric_name])

        return score

    async def __call__(self, engine: Engine) -> None:
        """Take the snapshot now and hand the copy and the write to the I/O executor."""
        collective = self.backend == "sharded"
        if not collective and not dist.is_main():
            return
        step = self._global_step(engine)
        score = float(self.score_function(engine)) if self.score_function is not None else None
        if self.when_busy == "skip" and score is None and not _is_final(engine) \
                and self._busy(collective):
            self.skipped += 1
            log.debug("checkpoint at step %d skipped: the previous write is still running", step)
            return
        state, through_dcp = sharded.capture(self.to_save) if collective else \
            ({k: obj.state_dict() for k, obj in self.to_save.items()}, frozenset())
        frozen = freeze(state)
        await self.aflush()  # at most one write in flight; its staging buffers are ours after
        plan = self._retention.plan(step, score)
        if plan is None:
            return
        fut = submit_io(self._write, await self._stage(frozen, through_dcp, *plan))
        fut.add_done_callback(_log_failure)
        self._pending = fut
        add_pending = getattr(engine, "add_pending", None)
        if add_pending is not None:
            add_pending(fut)

    async def aflush(self) -> None:
        """Wait until the last write is durable; raise CheckpointError if it failed."""
        fut = self._pending
        if fut is None:
            return
        try:
            await await_future(fut)
        except CheckpointError:
            self._pending = None
            raise
        except Exception as exc:
            self._pending = None
            raise CheckpointError(f"writing a checkpoint in {self.save_dir} failed: {exc}") from exc
        self._pending = None

    flush = renamed_method(aflush, "flush")

    @staticmethod
    def latest(save_dir: str | os.PathLike[str], filename_prefix: str = "") -> Path | None:
        """The newest checkpoint in ``save_dir`` that loads cleanly (torn, corrupt and temp files
        and folders are skipped), or None when there is none or the folder does not exist.
        Candidates are named as Checkpoint names them (``..._{step}[_{score_name}={score}]``, a
        ``.pt`` file or a sharded directory, starting with ``{filename_prefix}_`` when a prefix is
        given); newest means the latest modification time, then the highest step."""
        folder = Path(save_dir)
        if not folder.is_dir():
            return None
        head = f"{filename_prefix}_" if filename_prefix else ""
        found = []
        with os.scandir(folder) as entries:
            for entry in entries:
                m = NAME_RE.match(entry.name)
                if m is None or not entry.name.startswith(head) or entry.name.startswith("."):
                    continue
                try:
                    if entry.is_dir() == (m["suffix"] is not None):
                        continue  # a folder named .pt, or a file without the suffix: not ours
                    found.append((entry.stat().st_mtime_ns, int(m["step"]), Path(entry.path)))
                except FileNotFoundError:  # deleted by a retention pass meanwhile
                    continue
        for _, _, path in sorted(found, reverse=True):
            try:
                sharded.verify(path) if path.is_dir() else single_file.verify(path)
            except (CheckpointError, OSError) as exc:
                log.warning("skipping checkpoint %s: %s", path, exc)
                continue
            return path
        return None

    @staticmethod
    def load_objects(to_load: Mapping[str, Stateful], checkpoint: str | os.PathLike[str] | Mapping[str, Any],
                     strict: bool = True) -> None:
        """Load each object of ``to_load`` from a checkpoint (a ``.pt`` file, read with
        ``weights_only=True``, a sharded directory, or an already loaded dict). As Ignite: with one
        object whose key is not in a file, the whole file is its state_dict. ``strict`` goes to
        ``nn.Module.load_state_dict``. A sharded directory is loaded by every rank together, on
        any number of ranks (or in one process, into plain modules)."""
        _check_to_save(to_load)
        source = "checkpoint dict"
        if isinstance(checkpoint, str | os.PathLike):
            source = str(checkpoint)
            if Path(checkpoint).is_dir():
                sharded.load(to_load, Path(checkpoint), strict)
                return
            checkpoint = single_file.read(Path(checkpoint))
        if not isinstance(checkpoint, Mapping):
            raise TypeError(f"{source}: expected a dict of state_dicts, got {type(checkpoint).__name__}")
        if len(to_load) == 1:
            key, obj = next(iter(to_load.items()))
            _load_one(obj, checkpoint.get(key, checkpoint), strict)
            return
        missing = [k for k in to_load if k not in checkpoint]
        if missing:
            raise CheckpointError(f"{source}: no entry for {', '.join(map(repr, missing))} "
                                  f"(it holds {', '.join(map(repr, checkpoint))})")
        for key, obj in to_load.items():
            _load_one(obj, checkpoint[key], strict)

    # internals ------------------------------------------------------------------------------
    def _busy(self, collective: bool) -> bool:
        """The previous write is still running (on some rank: every rank takes the same decision)."""
        busy = self._pending is not None and not self._pending.done()
        return dist.any_rank(busy) if collective else busy

    def _defers(self, where: Where) -> bool:
        """The per-parameter state of an optimizer in to_save (``state`` of its state_dict, or
        ``state.*`` keys of the flat one the sharded backend saves): only its step writes it."""
        if self._gate is None or len(where) < 2 or where[0] not in self._optimizers:
            return False
        return where[1] == "state" or (isinstance(where[1], str) and where[1].startswith("state."))

    def _parameters(self) -> list[torch.Tensor]:
        return [p for opt in self._optimizers.values() for g in opt.param_groups for p in g["params"]]

    def _global_step(self, engine: Engine) -> int:
        if self.global_step_transform is not None:
            step = self.global_step_transform(engine, getattr(engine, "last_event_name", None))
        else:
            step = engine.state.iteration
        return check_int("global step", step, minimum=0)  # numpy / 0-d tensor integers too

    async def _stage(self, frozen: StateDict, through_dcp: frozenset[str], path: Path,
                     priority: tuple[float, ...]) -> _Save:
        """Copy into the staging buffers what must be copied at the event; hold the gate of the
        optimizers whose state is left to copy behind the step."""
        staged, now, later = self._staging.assign(frozen, self._defers, self._parameters())
        if sum(dst.nbytes for _, dst in now) <= _INLINE_COPY_BYTES:
            self._staging.copy(now)
        else:
            await to_io(self._staging.copy, now)
        copied: cf.Future[None] | None = None
        if later:
            assert self._gate is not None  # only an optimizer's state is deferred, behind its gate
            copied = cf.Future()
            self._gate.hold(copied)
        self._seq += 1
        return _Save(staged, through_dcp, later, copied, path, priority, self._seq)

    def _write(self, save: _Save) -> None:
        """On the I/O executor: finish the copy (and open the gate), write atomically, then
        retire what retention drops. A copy that was torn writes nothing (on every rank: a
        sharded write is collective, so the ranks agree on it first)."""
        if self._writer is not None:
            self._writer.agree(lambda: self._finish_copy(save), "copying the optimizer state")
        else:
            self._finish_copy(save)
        if dist.is_main():
            self._retention.record(save.path, save.priority)
        if self._writer is not None:
            self._writer.write(save.state, save.through_dcp, save.path, self._writer.temp_for(save.path, save.seq))
        else:
            payload = save.state if len(save.state) > 1 else next(iter(save.state.values()))
            single_file.atomic_save(payload, save.path)
        for dropped in self._retention.commit(save.path, save.priority):
            if dist.is_main():
                _remove(dropped)

    def _finish_copy(self, save: _Save) -> None:
        """The copy left behind the step; the gate opens when it ends, whatever happens."""
        if save.copied is None:
            return
        try:
            self._staging.copy_deferred(save.later)
        except TornCopy as torn:
            save.copied.set_result(None)
            raise CheckpointError(
                f"{save.path} not written: {torn} changed after the save event, before "
                f"{torn.changed.where[0]}.step() (an in-place write to optimizer state outside its "
                "step); pass Checkpoint(..., overlap=False) to copy optimizer state at the event") from None
        except BaseException as exc:
            save.copied.set_exception(exc)
            raise
        save.copied.set_result(None)


@dataclass(frozen=True)
class _Save:
    """One save on its way to disk: the staged state (``through_dcp``: its keys that a sharded
    write hands to DCP), the copies still to make behind the step and the future that opens the
    optimizers' gate when they are done, where it goes and its retention priority."""

    state: StateDict
    through_dcp: frozenset[str]
    later: list[Deferred]
    copied: cf.Future[None] | None
    path: Path
    priority: tuple[float, ...]
    seq: int


def _pick_backend(backend: str, to_save: Mapping[str, Stateful]) -> str:
    if backend != "auto":
        return backend
    for obj in to_save.values():
        if isinstance(obj, torch.nn.Module) and any(is_dtensor(p) for p in obj.parameters()):
            return "sharded"
    return "file"


def _is_final(engine: Engine) -> bool:
    """The engine is at its last step, or stopping: a save now is the one resume needs."""
    st = engine.state
    if getattr(engine, "should_terminate", False) or getattr(engine, "last_event_name", None) in _FINAL_EVENTS:
        return True
    max_epochs, length = getattr(st, "max_epochs", None), getattr(st, "epoch_length", None)
    if max_epochs is None or length is None:
        return False
    return st.epoch >= max_epochs and getattr(st, "epoch_iteration", 0) in (0, length)


def _check_to_save(objs: object) -> None:
    if not isinstance(objs, Mapping) or not objs:
        raise TypeError(f"expected a non-empty dict of objects with state_dict/load_state_dict, got {objs!r}")
    for key, obj in objs.items():
        if not isinstance(key, str):
            raise TypeError(f"keys must be strings, got {key!r}")
        if not isinstance(obj, Stateful):
            raise TypeError(f"{key!r}: {type(obj).__name__} has no state_dict/load_state_dict")


def _load_one(obj: Stateful, state: Any, strict: bool) -> None:
    if isinstance(obj, torch.nn.Module):
        obj.load_state_dict(state, strict=strict)
    else:
        obj.load_state_dict(state)


def _remove(path: Path) -> None:
    """Delete a checkpoint file or folder (or a stale temp one); gone already is fine."""
    if path.is_dir() and not path.name.startswith("."):
        sharded.remove(path)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _log_failure(fut: cf.Future[None]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("checkpoint write failed: %s", fut.exception())
