"""A sharded checkpoint: one directory that every rank writes its own shards into, through
torch.distributed.checkpoint (DCP), and that appears whole or not at all.

Layout of ``{stem}_{step}/``:

- ``__{rank}_{n}.distcp`` and ``.metadata``: DCP's files for the modules and optimizers of
  ``to_save``, keyed by parameter name (``get_model_state_dict`` / ``get_optimizer_state_dict``),
  so a checkpoint written by N ranks loads on M ranks, or in one process into a plain model
  (resharding is DCP's planner reading the chunks each rank needs).
- ``rank{r}.pt``: the state of every other object (engine with its RNG states, loader position,
  LR scheduler, an optimizer that has no state yet, ...), one file per rank, because RNG states
  differ per rank. Loaded on a different number of ranks, rank r reads ``rank{r mod N}.pt``:
  exact resume needs the same world size.
- ``aiotrain.json``: the manifest, written last: world size, which keys are where, and the size
  and CRC32 of every file. Loading checks all of them first, so a torn or flipped file is an error
  naming it.

Atomicity: every rank writes into ``.{name}.{token}.tmp/``; once all ranks report their files
durable (fsynced; DCP's writer syncs its files), rank 0 writes the manifest, fsyncs the folder,
renames it to its final name and fsyncs the parent. A kill at any moment leaves a hidden temp
folder (removed by the next run's Checkpoint), never a half checkpoint under a checkpoint's name.
The collectives of a write run on a Gloo group of their own, so a write in the I/O executor
never interleaves with the training step's collectives on the default group.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import stat
import warnings
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict, TypeGuard

import torch

from ... import distributed as dist
from ...files import TEMP_SUFFIX, atomic_write, fsync_dir
from ...protocols import StateDict, Stateful
from . import dcp_reader, single_file
from .errors import CheckpointError

if TYPE_CHECKING:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

__all__ = ["MANIFEST", "ShardedWriter", "capture", "is_sharded", "load", "remove", "verify"]

MANIFEST = "aiotrain.json"
_FORMAT = 1
_CHUNK = 8 << 20
_FILE_RE = re.compile(r"^(__\d+_\d+\.distcp|rank\d+\.pt|\.metadata)$")  # what a writer puts in a folder


class Manifest(TypedDict):
    """``aiotrain.json``: what a complete sharded checkpoint holds (checked whole when read)."""

    format: int
    world_size: int
    sharded: list[str]  # the keys saved through DCP
    per_rank: list[str]  # the keys saved in each rank's own file
    files: dict[str, list[int]]  # every file of the folder: [size, crc32]


def is_sharded(obj: object) -> TypeGuard[torch.nn.Module | torch.optim.Optimizer]:
    """Objects whose tensors go through DCP: modules and optimizers."""
    return isinstance(obj, torch.nn.Module | torch.optim.Optimizer)


def _pair(key: str, opt: torch.optim.Optimizer, to_save: Mapping[str, Stateful]) -> torch.nn.Module:
    """The module of ``to_save`` that holds every parameter ``opt`` updates."""
    wanted = {id(p) for g in opt.param_groups for p in g["params"]}
    for obj in to_save.values():
        if isinstance(obj, torch.nn.Module) and wanted <= {id(p) for p in obj.parameters()}:
            return obj
    raise CheckpointError(f"{key!r}: a sharded checkpoint saves optimizer state by parameter name, "
                          "so its parameters must all belong to one module of the same to_save dict; "
                          "add that module")


def _options(strict: bool = True) -> StateDictOptions:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(flatten_optimizer_state_dict=True, strict=strict)


def capture(to_save: Mapping[str, Stateful]) -> tuple[StateDict, frozenset[str]]:
    """Every object's state now, and the keys whose state goes through DCP: modules and optimizers
    by parameter name (DTensor shards for sharded models), the others through their own
    ``state_dict()``. An optimizer without state (before its first step, or a stateless one) is
    saved whole with the per-rank state: DCP's optimizer capture would create its state by
    stepping it, which changes the run and the state being saved."""
    out: StateDict = {}
    through_dcp: set[str] = set()
    for key, obj in to_save.items():
        if is_sharded(obj) and not (isinstance(obj, torch.optim.Optimizer) and not obj.state):
            out[key] = _dcp_state(key, obj, to_save)
            through_dcp.add(key)
        else:
            out[key] = obj.state_dict()
    return out, frozenset(through_dcp)


def _dcp_state(key: str, obj: torch.nn.Module | torch.optim.Optimizer,
               to_save: Mapping[str, Stateful]) -> StateDict:
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    if isinstance(obj, torch.nn.Module):
        return get_model_state_dict(obj, options=_options())
    return get_optimizer_state_dict(_pair(key, obj, to_save), obj, options=_options())


class ShardedWriter:
    """Writes sharded checkpoints for one Checkpoint; created on every rank in the same order
    (it makes the Gloo group the writes use and agrees on a token for temp folder names)."""

    def __init__(self) -> None:
        # DCP's modules take seconds to import: here, at set-up, not at the first save's event
        import torch.distributed.checkpoint  # noqa: F401
        import torch.distributed.checkpoint.state_dict  # noqa: F401

        self.group = dist.new_group("gloo")
        self.token = dist.broadcast_object(secrets.token_hex(6))

    def temp_for(self, path: Path, seq: int) -> Path:
        return path.parent / f".{path.name}.{self.token}-{seq}{TEMP_SUFFIX}"

    def write(self, snapshot: StateDict, through_dcp: frozenset[str], path: Path, temp: Path) -> None:
        """On every rank, in the I/O executor: write this rank's part (``through_dcp`` keys by
        DCP, the others in its per-rank file), then rank 0 commits."""
        import torch.distributed.checkpoint as dcp

        rank, world = dist.rank(), dist.world_size()
        sharded = {k: v for k, v in snapshot.items() if k in through_dcp}
        per_rank = {k: v for k, v in snapshot.items() if k not in sharded}
        self.agree(lambda: self._write_rank_file(temp, rank, per_rank), "writing the per-rank state")
        if sharded:  # the same on every rank: the keys come from to_save, its optimizers step together
            writer = dcp.FileSystemWriter(str(temp), sync_files=True, single_file_per_rank=True)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*torch.distributed.*")
                try:
                    dcp.save(sharded, storage_writer=writer, process_group=self.group,
                             no_dist=not dist.is_initialized())
                except dcp.CheckpointException as exc:  # every rank learns of every rank's failure
                    raise dcp_reader.as_checkpoint_error("writing the sharded state failed", exc) from None
        mine = {p.name: _describe(p) for p in temp.iterdir()
                if p.name.startswith(f"__{rank}_") or p.name == f"rank{rank}.pt"
                or (rank == 0 and p.name == ".metadata")}
        files: dict[str, list[int]] = {}
        for part in dist.all_gather_object(mine, group=self.group):
            files.update(part)

        def commit() -> None:
            if rank != 0:
                return
            atomic_write(temp / MANIFEST, json.dumps(
                {"format": _FORMAT, "world_size": world, "sharded": sorted(sharded),
                 "per_rank": sorted(per_rank), "files": files}, indent=1, sort_keys=True))
            fsync_dir(temp)
            if path.exists():  # the same name saved again: the newer state wins
                remove(path)
            os.replace(temp, path)
            fsync_dir(path.parent)

        self.agree(commit, "committing the checkpoint")

    def _write_rank_file(self, temp: Path, rank: int, state: StateDict) -> None:
        temp.mkdir(parents=True, exist_ok=True)
        single_file.atomic_save(state, temp / f"rank{rank}.pt")

    def agree(self, fn: Callable[[], object], what: str) -> None:
        """Run ``fn`` on this rank, then learn whether every rank succeeded (no rank hangs in a
        later collective because another failed); raise a CheckpointError naming the failure."""
        error = None
        try:
            fn()
        except Exception as exc:  # reported to every rank below
            error = f"rank {dist.rank()}: {type(exc).__name__}: {exc}"
        failed = [e for e in dist.all_gather_object(error, group=self.group) if e is not None]
        if failed:
            raise CheckpointError(f"{what} failed: {'; '.join(failed)}")


def _describe(path: Path) -> list[int]:
    """[size, crc32] of a file."""
    crc, size = 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return [size, crc]


def verify(path: Path) -> Manifest:
    """The manifest of a complete, intact sharded checkpoint whose DCP metadata is safe to use;
    CheckpointError naming the file that is missing, torn, corrupt or unsafe otherwise. The
    manifest proves integrity, not origin (whoever wrote the folder wrote it): nothing here is
    unpickled except through the restricted reader of ``dcp_reader``."""
    manifest = _read_manifest(path)
    for name, (size, crc) in manifest["files"].items():
        file = path / name
        try:
            st = os.lstat(file)
        except FileNotFoundError:
            raise CheckpointError(f"{file}: missing from the sharded checkpoint") from None
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointError(f"{file}: not a regular file, not read")
        if st.st_size != size:
            raise CheckpointError(f"{file}: truncated or grown ({st.st_size} bytes, expected {size})")
        if _describe(file)[1] != crc:
            raise CheckpointError(f"{file}: corrupt checkpoint (CRC mismatch)")
    if manifest["sharded"]:
        dcp_reader.read_metadata(path, _shards(manifest))
    return manifest


def _read_manifest(path: Path) -> Manifest:
    try:
        manifest: Manifest = json.loads((path / MANIFEST).read_text("utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not a finished sharded checkpoint (its manifest {MANIFEST} is missing)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt manifest {MANIFEST} ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
        raise CheckpointError(f"{path}: unknown manifest format in {MANIFEST}")
    files = manifest.get("files")
    ok = (type(manifest.get("world_size")) is int and manifest["world_size"] >= 1
          and _names(manifest.get("sharded")) and _names(manifest.get("per_rank")) and isinstance(files, dict)
          and all(isinstance(name, str) and _FILE_RE.match(name) and isinstance(entry, list) and len(entry) == 2
                  and all(type(x) is int and x >= 0 for x in entry) for name, entry in files.items()))
    if not ok:
        raise CheckpointError(f"{path}: corrupt manifest {MANIFEST} (malformed)")
    return manifest


def _names(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _shards(manifest: Manifest) -> dict[str, int]:
    """The DCP shard files the manifest lists, with their (verified) sizes."""
    return {name: size for name, (size, _) in manifest["files"].items() if dcp_reader.SHARD_RE.match(name)}


def load(to_load: Mapping[str, Stateful], path: Path, strict: bool = True) -> None:
    """Load ``to_load`` from a sharded checkpoint, on any number of ranks (every rank calls it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    manifest = verify(path)
    saved = set(manifest["sharded"]) | set(manifest["per_rank"])
    missing = [k for k in to_load if k not in saved]
    if missing:
        raise CheckpointError(f"{path}: no entry for {', '.join(map(repr, missing))} "
                              f"(it holds {', '.join(map(repr, sorted(saved)))})")
    wrong = [k for k, obj in to_load.items() if (k in manifest["sharded"]) != is_sharded(obj)
             and not (isinstance(obj, torch.optim.Optimizer) and k in manifest["per_rank"])]
    sharded = {k: obj for k, obj in to_load.items() if k in manifest["sharded"] and is_sharded(obj)}
    if wrong:
        raise CheckpointError(f"{path}: {', '.join(map(repr, wrong))} saved as another kind of object")
    if sharded:
        targets = {k: _dcp_state(k, obj, to_load) for k, obj in sharded.items()}
        reader, planner = dcp_reader.reader_and_planner(path, _shards(manifest))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.distributed.*")
            try:
                dcp.load(targets, storage_reader=reader, planner=planner, no_dist=not dist.is_initialized())
            except dcp.CheckpointException as exc:  # a BaseException: it would escape `except Exception`
                raise dcp_reader.as_checkpoint_error(f"{path}: cannot load the sharded state", exc) from None
        for key, obj in sharded.items():
            if isinstance(obj, torch.nn.Module):
                set_model_state_dict(obj, targets[key], options=_options(strict))
            else:
                set_optimizer_state_dict(_pair(key, obj, to_load), obj, targets[key],
                                         options=_options(strict))
    others = {k: obj for k, obj in to_load.items() if k not in sharded}
    if others:
        name = f"rank{dist.rank() % manifest['world_size']}.pt"
        if name not in manifest["files"]:
            raise CheckpointError(f"{path / name}: missing from the sharded checkpoint")
        state = single_file.read(path / name)
        for key, other in others.items():
            other.load_state_dict(state[key])


def remove(path: Path) -> None:
    """Delete a sharded checkpoint: renamed to a hidden temp name first, so a crash mid-delete
    never leaves a partial folder under a checkpoint's name."""
    aside = path.parent / f".{path.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}"
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)
