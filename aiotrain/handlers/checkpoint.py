"""Checkpoint: consistent snapshots taken at the save event, written off the hot path, atomically.

A save has two halves. At the event (on the loop, while the engine's step loop is paused, so the
model is quiescent) every ``state_dict()`` in ``to_save`` is called, which captures the RNG states
of an Engine at that very moment, and every tensor is copied into a staging buffer that was
allocated on the first save and is reused after (a save costs a memcpy, not fresh allocations
and page faults; on CUDA the buffers are pinned and the copy runs on a side stream). For large
states the memcpy runs in the I/O executor while the handler awaits it, so the event loop keeps
ticking and the step loop stays paused. The I/O executor then writes the snapshot: a temp file
in the same folder (``.NAME.pt.<random>.tmp``, never ending in ``.pt``; see aiotrain.files), flush, fsync,
``os.replace``, fsync of the folder; only then are the files that fell out of retention deleted.
A process killed at any moment leaves the previous newest checkpoint intact and loadable.

Decisions (as an Ignite user would expect):

- Filenames: ``{prefix}_{name}_{step}.pt``, or ``{prefix}_{name}_{step}_{score_name}={score:.4f}.pt``
  with a score (``score`` stands in for a missing ``score_name``); ``name`` is the single key of
  ``to_save`` or ``checkpoint`` when it holds several; the ``{prefix}_`` part is left out for an
  empty prefix. The step is always in the name so that two saves never share a file by accident.
- The file holds ``{key: state_dict}`` (a bare state_dict when ``to_save`` has one entry), as
  Ignite writes, so Ignite's and our ``load_objects`` read each other's files.
- Retention by step keeps the ``n_saved`` most recent saves (a new save is the most recent even if
  a previous run left higher steps behind); retention by score keeps the best ``n_saved`` and, as
  Ignite, skips a save whose score does not beat the worst kept one. ``n_saved=None`` keeps all.
  A save whose filename is already kept replaces that file (the newer state wins).
- At most one write is in flight: a save that triggers while the previous write is still running
  waits for it (the step loop stays paused, the event loop does not block). A failed write is
  raised at the next save, or by ``await checkpoint.aflush()``.
- ``last_checkpoint`` is the kept file with the highest priority (newest, or best score), as in
  Ignite, once its write is durable.
- Integrity: torch's reader does not check the CRCs its zip writer stores, so loading verifies
  them first; a flipped byte in tensor data is then an error naming the file, not silent garbage.
- Under torch.distributed only rank 0 saves; the other ranks return at once.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import logging
import math
import os
import pickle
import re
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import distributed as dist
from ..deprecation import renamed_method
from ..files import TEMP_SUFFIX, atomic_path
from ..protocols import Stateful
from ..runtime import await_future, submit_io, to_io
from ..values import check_int

__all__ = ["Checkpoint", "CheckpointError"]

log = logging.getLogger("aiotrain.checkpoint")

# one file name: <stem>_<step>[_<score name>=<score>].pt (the stem holds prefix and name)
_NAME_RE = re.compile(r"^(?P<stem>.+?)_(?P<step>\d+)(?:_(?P<sname>[^=/]+)=(?P<score>[^/]+))?\.pt$")
# below this many bytes the snapshot memcpy runs inline: a thread hop would cost more than it saves
_INLINE_COPY_BYTES = 4 << 20


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read (truncated, corrupt, missing entries) or written."""


@dataclass(frozen=True)
class _Kept:
    """One checkpoint file this Checkpoint keeps: its path and retention priority."""

    path: Path
    priority: tuple[float, ...]


class Checkpoint:
    """Save ``to_save`` (objects with ``state_dict`` / ``load_state_dict``) into ``save_dir``.

    Attach it as a handler: ``trainer.add_event_handler(Events.ITERATION_COMPLETED(every=500),
    checkpoint)``. The step in a filename is ``global_step_transform(engine, event)`` or
    ``engine.state.iteration``. With ``score_function(engine)`` (or ``score_name`` alone, which
    reads ``engine.state.metrics[score_name]``) the ``n_saved`` best files are kept, else the
    ``n_saved`` newest. The write is registered with ``engine.add_pending`` so ``run`` returns
    only once it is durable; outside an engine, ``await checkpoint.aflush()``.
    """

    def __init__(self, to_save: Mapping[str, Stateful], save_dir: str | os.PathLike[str],
                 filename_prefix: str = "", n_saved: int | None = 1,
                 score_function: Callable[[Any], float] | None = None,
                 score_name: str | None = None,
                 global_step_transform: Callable[[Any, Any], int] | None = None) -> None:
        _check_to_save(to_save)
        if n_saved is not None:
            n_saved = check_int("n_saved (or None)", n_saved)
        if not isinstance(filename_prefix, str) or "/" in filename_prefix or os.sep in filename_prefix:
            raise ValueError(f"filename_prefix must be a plain string without separators, got {filename_prefix!r}")
        if score_name is not None and ("=" in score_name or "/" in score_name):
            raise ValueError(f"score_name must not contain '=' or '/', got {score_name!r}")
        if score_function is None and score_name is not None:
            score_function = self.get_default_score_fn(score_name)
        self.to_save = dict(to_save)
        self.save_dir = Path(save_dir)
        self.filename_prefix = filename_prefix
        self.n_saved = n_saved
        self.score_function = score_function
        self.score_name = score_name
        self.global_step_transform = global_step_transform
        name = next(iter(self.to_save)) if len(self.to_save) == 1 else "checkpoint"
        self._stem = f"{filename_prefix}_{name}" if filename_prefix else name
        self._staging = _Staging()
        self._lock = threading.Lock()  # guards _kept: the writer thread updates it
        self._kept: list[_Kept] = []  # lowest priority first
        self._seq = 0
        self._pending: cf.Future[None] | None = None
        self.save_dir.mkdir(parents=True, exist_ok=True)
        if dist.is_main():
            self._adopt_existing()

    # public ---------------------------------------------------------------------------------
    @property
    def last_checkpoint(self) -> Path | None:
        """The kept file with the highest priority (the newest, or the best by score)."""
        with self._lock:
            return self._kept[-1].path if self._kept else None

    @staticmethod
    def get_default_score_fn(metric_name: str, score_sign: float = 1.0) -> Callable[[Any], float]:
        """A score function reading ``engine.state.metrics[metric_name]`` (times ``score_sign``,
        -1.0 for metrics where lower is better), as Ignite's."""
        if score_sign not in (1.0, -1.0):
            raise ValueError(f"score_sign must be 1.0 or -1.0, got {score_sign!r}")

        def score(engine: Any) -> float:
            return score_sign * float(engine.state.metrics[metric_name])

        return score

    async def __call__(self, engine: Any) -> None:
        """Take the snapshot now and hand the write to the I/O executor."""
        if not dist.is_main():
            return
        step = self._global_step(engine)
        score = float(self.score_function(engine)) if self.score_function is not None else None
        frozen = _freeze({k: obj.state_dict() for k, obj in self.to_save.items()})
        await self.flush()  # at most one write in flight; its staging buffers are ours after
        plan = self._plan(step, score)
        if plan is None:
            return
        payload = frozen if len(frozen) > 1 else next(iter(frozen.values()))
        snapshot, pairs = self._staging.assign(payload)
        if sum(dst.nbytes for _, dst in pairs) <= _INLINE_COPY_BYTES:
            self._staging.copy(pairs)
        else:
            await to_io(self._staging.copy, pairs)
        fut = submit_io(self._write, snapshot, *plan)
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
        except Exception as exc:
            self._pending = None
            raise CheckpointError(f"writing a checkpoint in {self.save_dir} failed: {exc}") from exc
        self._pending = None

    flush = renamed_method(aflush, "flush")

    @staticmethod
    def latest(save_dir: str | os.PathLike[str], filename_prefix: str = "") -> Path | None:
        """The newest checkpoint in ``save_dir`` that loads cleanly (torn, corrupt and temp files
        are skipped), or None when there is none or the folder does not exist. Candidates are the
        files named as Checkpoint names them (``..._{step}[_{score_name}={score}].pt``, starting
        with ``{filename_prefix}_`` when a prefix is given); newest means the latest modification
        time, then the highest step."""
        folder = Path(save_dir)
        if not folder.is_dir():
            return None
        head = f"{filename_prefix}_" if filename_prefix else ""
        found = []
        with os.scandir(folder) as entries:
            for entry in entries:
                m = _NAME_RE.match(entry.name)
                if m is None or not entry.name.startswith(head) or entry.name.startswith("."):
                    continue
                try:
                    found.append((entry.stat().st_mtime_ns, int(m["step"]), Path(entry.path)))
                except FileNotFoundError:  # deleted by a retention pass meanwhile
                    continue
        for _, _, path in sorted(found, reverse=True):
            try:
                _verify(path)
            except (CheckpointError, OSError) as exc:
                log.warning("skipping checkpoint %s: %s", path, exc)
                continue
            return path
        return None

    @staticmethod
    def load_objects(to_load: Mapping[str, Any], checkpoint: str | os.PathLike[str] | Mapping[str, Any],
                     strict: bool = True) -> None:
        """Load each object of ``to_load`` from a checkpoint file (``weights_only=True``) or an
        already loaded dict. As Ignite: with one object whose key is not in the checkpoint, the
        whole checkpoint is its state_dict. ``strict`` goes to ``nn.Module.load_state_dict``."""
        _check_to_save(to_load)
        source = "checkpoint dict"
        if isinstance(checkpoint, str | os.PathLike):
            source = str(checkpoint)
            checkpoint = _read(Path(checkpoint))
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
    def _global_step(self, engine: Any) -> int:
        if self.global_step_transform is not None:
            step = self.global_step_transform(engine, getattr(engine, "last_event_name", None))
        else:
            step = engine.state.iteration
        return check_int("global step", step, minimum=0)  # numpy / 0-d tensor integers too

    def _filename(self, step: int, score: float | None) -> str:
        if score is None:
            return f"{self._stem}_{step}.pt"
        return f"{self._stem}_{step}_{self.score_name or 'score'}={score:.4f}.pt"

    def _own_name(self) -> re.Pattern[str]:
        score = rf"_{re.escape(self.score_name or 'score')}=(?P<score>[^/]+)" if self.score_function else ""
        return re.compile(rf"^{re.escape(self._stem)}_(?P<step>\d+){score}\.pt$")

    def _adopt_existing(self) -> None:
        """Count the files a previous run left (retention across restarts); drop stale temps."""
        own = self._own_name()
        tmp = re.compile(rf"^\.{re.escape(self._stem)}_\d+.*\.pt\..+{re.escape(TEMP_SUFFIX)}$")
        found = []
        with os.scandir(self.save_dir) as entries:
            paths = [Path(e.path) for e in entries]
        for path in paths:
            if tmp.match(path.name):
                _unlink(path)
                continue
            m = own.match(path.name)
            if m is None:
                continue
            step = int(m["step"])
            if self.score_function is None:
                found.append(_Kept(path, (step, path.stat().st_mtime_ns)))
                continue
            try:
                found.append(_Kept(path, (_rank(float(m["score"])), step)))
            except ValueError:  # a score we did not write
                continue
        self._kept = sorted(found, key=lambda k: k.priority)

    def _plan(self, step: int, score: float | None) -> tuple[Path, tuple[float, ...]] | None:
        """Where this save goes and its priority, or None when retention would not keep it."""
        path = self.save_dir / self._filename(step, score)
        if score is None:
            self._seq += 1
            # a new save outranks everything kept: it is the latest state, whatever its step
            return path, (math.inf, self._seq)
        priority = (_rank(score), step)
        with self._lock:
            others = [k for k in self._kept if k.path != path]
        full = self.n_saved is not None and len(others) >= self.n_saved
        if full and priority[0] <= others[0].priority[0]:
            return None
        return path, priority

    def _write(self, snapshot: Any, path: Path, priority: tuple[float, ...]) -> None:
        """On the I/O executor: write atomically, then retire the files retention drops."""
        _atomic_save(snapshot, path)
        with self._lock:
            kept = sorted([k for k in self._kept if k.path != path] + [_Kept(path, priority)],
                          key=lambda k: k.priority)
            cut = 0 if self.n_saved is None else max(0, len(kept) - self.n_saved)
            drop, self._kept = kept[:cut], kept[cut:]
        for k in drop:
            _unlink(k.path)


class _Staging:
    """Reusable CPU buffers (pinned for CUDA sources) keyed by their place in the state tree."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[Any, ...], torch.Tensor] = {}
        self._streams: dict[torch.device, Any] = {}

    def assign(self, tree: Any) -> tuple[Any, list[tuple[torch.Tensor, torch.Tensor]]]:
        """``tree`` with each tensor replaced by its staging buffer, and the (source, buffer)
        pairs still to copy. Tensors sharing memory share one buffer (ties stay tied)."""
        pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        seen: dict[tuple[Any, ...], torch.Tensor] = {}
        used: dict[tuple[Any, ...], torch.Tensor] = {}

        def stage(t: torch.Tensor, where: tuple[Any, ...]) -> torch.Tensor:
            if not _stageable(t):
                return t.detach().to("cpu", copy=True)
            alias = _alias_key(t)
            if alias in seen:
                return seen[alias]
            buf = self._buffers.get(where)
            if buf is None or buf.shape != t.shape or buf.dtype != t.dtype or buf.is_pinned() != t.is_cuda:
                buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=t.is_cuda)
            used[where] = seen[alias] = buf
            pairs.append((t, buf))
            return buf

        out = _map_tree(tree, stage, lambda leaf: leaf)
        self._buffers = used  # buffers of tensors that are gone are freed
        return out, pairs

    def copy(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """memcpy every source into its buffer; CUDA sources on a side stream, then synchronized."""
        on_cuda = []
        with torch.no_grad():
            for src, dst in pairs:
                if src.is_cuda:
                    on_cuda.append((src, dst))
                else:
                    dst.copy_(src)
        if on_cuda:
            self._copy_cuda(on_cuda)

    def _copy_cuda(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        devices = {src.device for src, _ in pairs}
        for dev in devices:
            # the step's kernels may still be queued on the compute stream: wait for every stream
            torch.cuda.synchronize(dev)
            if dev not in self._streams:
                self._streams[dev] = torch.cuda.Stream(device=dev)
        with torch.no_grad():
            for src, dst in pairs:
                with torch.cuda.stream(self._streams[src.device]):
                    dst.copy_(src, non_blocking=True)
        for dev in devices:
            self._streams[dev].synchronize()


def _stageable(t: torch.Tensor) -> bool:
    """Plain dense CPU/CUDA tensors go through staging; anything exotic is cloned as is."""
    return (type(t) in (torch.Tensor, torch.nn.Parameter) and t.layout == torch.strided
            and not t.is_quantized and t.device.type in ("cpu", "cuda"))


def _alias_key(t: torch.Tensor) -> tuple[Any, ...]:
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape),
            t.stride(), t.dtype)


def _map_tree(tree: Any, on_tensor: Callable[[torch.Tensor, tuple[Any, ...]], Any],
              on_leaf: Callable[[Any], Any], where: tuple[Any, ...] = ()) -> Any:
    """Rebuild ``tree`` (dicts, lists, tuples) with ``on_tensor(tensor, path)`` at each tensor
    and ``on_leaf(value)`` at every other leaf."""
    if isinstance(tree, torch.Tensor):
        return on_tensor(tree, where)
    if isinstance(tree, dict):
        out = OrderedDict() if isinstance(tree, OrderedDict) else {}
        for k, v in tree.items():
            out[k] = _map_tree(v, on_tensor, on_leaf, (*where, k))
        if hasattr(tree, "_metadata"):  # nn.Module state_dict versions, needed by load_state_dict
            out._metadata = copy.deepcopy(tree._metadata)  # type: ignore[attr-defined]
        return out
    if isinstance(tree, list | tuple) and not hasattr(tree, "_fields"):
        items = [_map_tree(v, on_tensor, on_leaf, (*where, i)) for i, v in enumerate(tree)]
        return items if isinstance(tree, list) else tuple(items)
    return on_leaf(tree)


def _freeze(tree: Any) -> Any:
    """Detach the tree from later mutation now: fresh containers, deep-copied scalars, live
    tensors (the step loop is paused, and they are copied into staging before it resumes)."""
    return _map_tree(tree, lambda t, _: t, copy.deepcopy)


def _rank(score: float) -> float:
    """Scores as retention compares them: NaN is worse than anything."""
    return -math.inf if math.isnan(score) else score


def _check_to_save(objs: Any) -> None:
    if not isinstance(objs, Mapping) or not objs:
        raise TypeError(f"expected a non-empty dict of objects with state_dict/load_state_dict, got {objs!r}")
    for key, obj in objs.items():
        if not isinstance(key, str):
            raise TypeError(f"keys must be strings, got {key!r}")
        if not isinstance(obj, Stateful):
            raise TypeError(f"{key!r}: {type(obj).__name__} has no state_dict/load_state_dict")


def _load_one(obj: Any, state: Any, strict: bool) -> None:
    if isinstance(obj, torch.nn.Module):
        obj.load_state_dict(state, strict=strict)
    else:
        obj.load_state_dict(state)


def _atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temp file in the same folder, fsync, rename over ``path``, fsync the folder."""
    with atomic_path(path) as tmp:
        torch.save(obj, str(tmp))  # the path form writes through C++, faster than a file object


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _check_crc(path: Path) -> None:
    """torch's zip writer stores CRC32s that its reader never checks: check them here."""
    if not zipfile.is_zipfile(path):
        return  # truncated (no central directory) or the legacy format: torch.load decides
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({exc})") from exc
    if bad is not None:
        raise CheckpointError(f"{path}: corrupt checkpoint (CRC mismatch in {bad})")


def _torch_load(path: Path, mmap: bool = False) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, KeyError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({first})") from exc


def _read(path: Path) -> Any:
    _check_crc(path)
    return _torch_load(path)


def _verify(path: Path) -> None:
    """Loads cleanly: CRCs of every record, then the unpickling (tensor data mapped, not read)."""
    _check_crc(path)
    _torch_load(path, mmap=zipfile.is_zipfile(path))


def _log_failure(fut: cf.Future[None]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("checkpoint write failed: %s", fut.exception())

