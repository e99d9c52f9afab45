"""Checkpoint: Ignite-shaped saving that never stalls the event loop, and loading that resumes exactly.

A save happens in two parts. The *snapshot* runs while the engine's compute thread is paused at
the save event (handlers always run between steps), so the objects are quiescent: every
``state_dict()`` is taken and each tensor is copied into a staging buffer that is allocated once
and reused (a save costs a memcpy, not fresh allocations; on CUDA, pinned buffers filled on a
side stream). The copy runs in the I/O executor, so the loop keeps serving while training waits
for it. The *write* then goes on in the background: ``torch.save`` to a temp file in the same
folder (whose name never ends in ``.pt``), flush, fsync, ``os.replace``, fsync of the folder;
only then are older files beyond ``n_saved`` deleted. At most one write is pending: a save that
triggers while the previous one is still writing waits for it first (which also makes reusing
the staging buffers safe). ``Engine.run`` returns only once the pending write is durable.

Filenames: ``{prefix}_{name}_{step}.pt``, with a score ``{prefix}_{name}_{step}_{score_name}={score:.4f}.pt``
where ``name`` is the key of a single object or ``checkpoint`` for several (Ignite's scheme).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import re
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import distributed as dist
from ..runtime import await_future, submit_io

__all__ = ["Checkpoint", "CheckpointError"]

_TMP = re.compile(r"^\..*\.tmp$")


class CheckpointError(RuntimeError):
    """A checkpoint file could not be loaded (truncated, corrupt, or missing an object)."""


@dataclass(frozen=True)
class _Saved:
    priority: float
    step: int
    path: Path


class Checkpoint:
    """Save ``to_save`` (objects with ``state_dict``/``load_state_dict``) into ``save_dir``.

    Attach it to an event: ``trainer.add_event_handler(Events.EPOCH_COMPLETED, checkpoint)``.
    Keeps the ``n_saved`` latest files (by global step), or the best by ``score_function(engine)``
    (higher is better). ``global_step_transform(engine, event_name)`` gives the step in the name
    (default: the iteration). ``last_checkpoint`` is the newest file written.
    """

    def __init__(self, to_save: Mapping[str, Any], save_dir: str | os.PathLike[str],
                 filename_prefix: str = "", n_saved: int | None = 1,
                 score_function: Callable[[Any], float] | None = None, score_name: str | None = None,
                 global_step_transform: Callable[[Any, Any], int] | None = None) -> None:
        if not isinstance(to_save, Mapping) or not to_save:
            raise ValueError("to_save must be a non-empty dict of name -> object")
        for key, obj in to_save.items():
            if not (hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")):
                raise TypeError(f"to_save[{key!r}] ({type(obj).__name__}) has no state_dict/load_state_dict")
        if n_saved is not None and (isinstance(n_saved, bool) or not isinstance(n_saved, int) or n_saved < 1):
            raise ValueError(f"n_saved must be a positive integer or None, got {n_saved!r}")
        if score_name is not None and score_function is None:
            raise ValueError("score_name needs a score_function")
        self.to_save = dict(to_save)
        self.save_dir = Path(save_dir)
        self.filename_prefix, self.n_saved = filename_prefix, n_saved
        self.score_function, self.score_name = score_function, score_name
        self.global_step_transform = global_step_transform
        name = next(iter(self.to_save)) if len(self.to_save) == 1 else "checkpoint"
        self._stem = "_".join(p for p in (filename_prefix, name) if p)
        self._pattern = re.compile(rf"^{re.escape(self._stem)}_(\d+)(?:_{re.escape(score_name or 'score')}=(-?[0-9.]+))?\.pt$")
        self._staging: dict[tuple, torch.Tensor] = {}
        self._pending: cf.Future[None] | None = None
        self._lock = threading.Lock()
        self._cuda_stream: Any = None
        self.save_dir.mkdir(parents=True, exist_ok=True)
        self._saved = self._scan()
        self.last_checkpoint: Path | None = self._saved[-1].path if self._saved else None

    # saving ---------------------------------------------------------------------------------
    async def __call__(self, engine: Any) -> None:
        if not dist.is_main():
            return
        if self._pending is not None:
            await await_future(self._pending)  # at most one write in flight
        step = int(self.global_step_transform(engine, None) if self.global_step_transform
                   else engine.state.iteration)
        score = float(self.score_function(engine)) if self.score_function else None
        priority = score if score is not None else float(step)
        if self.n_saved is not None and len(self._saved) >= self.n_saved \
                and priority <= self._saved[0].priority:
            return  # not better than the worst kept file
        snapshot = await await_future(submit_io(self._snapshot))
        fut = submit_io(self._write, snapshot, self._filename(step, score), priority, step)
        self._pending = fut
        engine.add_pending(fut)

    def _filename(self, step: int, score: float | None) -> str:
        tail = f"_{self.score_name or 'score'}={score:.4f}" if score is not None else ""
        return f"{self._stem}_{step}{tail}.pt"

    def _snapshot(self) -> dict[str, Any]:
        """Every object's state_dict with its tensors copied into the reused staging buffers."""
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()  # the compute stream's last step must be done before copying
        out = {key: self._stage(obj.state_dict(), (key,)) for key, obj in self.to_save.items()}
        if self._cuda_stream is not None:
            self._cuda_stream.synchronize()
        return out

    def _stage(self, value: Any, path: tuple) -> Any:
        if isinstance(value, torch.Tensor):
            return self._copy(value, path)
        if isinstance(value, Mapping):
            return {k: self._stage(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list | tuple) and not hasattr(value, "_fields"):
            return type(value)(self._stage(v, (*path, i)) for i, v in enumerate(value))
        return value

    def _copy(self, t: torch.Tensor, path: tuple) -> torch.Tensor:
        buf = self._staging.get(path)
        t = t.detach()
        if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
            pin = t.is_cuda
            buf = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=pin)
            self._staging[path] = buf
        if t.is_cuda:
            if self._cuda_stream is None:
                self._cuda_stream = torch.cuda.Stream(device=t.device)
            with torch.cuda.stream(self._cuda_stream):
                buf.copy_(t, non_blocking=True)
        else:
            buf.copy_(t)
        return buf

    def _write(self, snapshot: dict[str, Any], filename: str, priority: float, step: int) -> None:
        final = self.save_dir / filename
        tmp = self.save_dir / f".{filename}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with open(tmp, "wb") as f:
                torch.save(snapshot, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(self.save_dir)
        with self._lock:
            self._saved = sorted([s for s in self._saved if s.path != final]
                                 + [_Saved(priority, step, final)],
                                 key=lambda s: (s.priority, s.step))
            drop = self._saved[:-self.n_saved] if self.n_saved is not None else []
            self._saved = self._saved[len(drop):]
            self.last_checkpoint = final
        for old in drop:  # only now that the new file is durable
            old.path.unlink(missing_ok=True)

    def _scan(self) -> list[_Saved]:
        """This checkpoint's files already in the folder (retention across restarts); stale
        temp files from an earlier attempt are deleted."""
        found = []
        for entry in self.save_dir.iterdir():
            if _TMP.match(entry.name) and entry.name.startswith(f".{self._stem}_"):
                entry.unlink(missing_ok=True)
                continue
            m = self._pattern.match(entry.name)
            if m and (self.score_function is None) == (m.group(2) is None):
                step = int(m.group(1))
                found.append(_Saved(float(m.group(2)) if m.group(2) else float(step), step, entry))
        return sorted(found, key=lambda s: (s.priority, s.step))

    # loading --------------------------------------------------------------------------------
    @staticmethod
    def load_objects(to_load: Mapping[str, Any], checkpoint: str | os.PathLike[str] | Mapping[str, Any],
                     **torch_load_kwargs: Any) -> None:
        """Load each object of ``to_load`` from a checkpoint file (``weights_only=True``) or dict."""
        data = checkpoint if isinstance(checkpoint, Mapping) else _load(Path(checkpoint), **torch_load_kwargs)
        where = "the checkpoint" if isinstance(checkpoint, Mapping) else str(checkpoint)
        if len(to_load) == 1 and next(iter(to_load)) not in data:
            data = {next(iter(to_load)): data}  # a file holding one object's state directly
        missing = [k for k in to_load if k not in data]
        if missing:
            raise CheckpointError(f"{where} has no {', '.join(map(repr, missing))} "
                                  f"(it holds {', '.join(map(repr, data))})")
        for key, obj in to_load.items():
            obj.load_state_dict(data[key])

    @staticmethod
    def latest(save_dir: str | os.PathLike[str], filename_prefix: str = "") -> Path | None:
        """The newest ``.pt`` file in ``save_dir`` (whose name starts with ``filename_prefix``)
        that loads cleanly, skipping torn, corrupt and temp files; None when there is none."""
        folder = Path(save_dir)
        if not folder.is_dir():
            return None
        files = [p for p in folder.iterdir()
                 if p.suffix == ".pt" and p.name.startswith(filename_prefix) and p.is_file()]
        files.sort(key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)
        for path in files:
            try:
                _load(path)
            except CheckpointError:
                continue
            return path
        return None


def _load(path: Path, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("map_location", "cpu")
    kwargs["weights_only"] = True
    try:
        data = torch.load(path, **kwargs)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except Exception as exc:
        raise CheckpointError(f"cannot load checkpoint {path} (truncated or corrupt?): "
                              f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(data, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(data).__name__}, not a dict of objects")
    return dict(data)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
