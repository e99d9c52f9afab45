"""Reading a sharded checkpoint's DCP files as untrusted input: nothing is unpickled unchecked.

A checkpoint folder may come from anywhere (a shared disk, a downloaded artifact), and its
manifest's CRCs prove nothing: whoever wrote the folder wrote the manifest too. torch's
``FileSystemReader`` unpickles ``.metadata`` with plain ``pickle``, and DCP's default load planner
reads every non-tensor value with ``torch.load(weights_only=False)``: either would run code from
the folder. Here instead:

- ``.metadata`` goes through a restricted unpickler that admits only the classes DCP's metadata is
  made of (and torch's dtypes, layouts and sizes); anything else is refused, by name, before it
  is constructed;
- every storage record must name a shard file that the manifest lists (so its size and CRC were
  checked) and lie inside it, with no stream transforms;
- non-tensor values are read with ``torch.load(weights_only=True)``;
- DCP reports failures as ``CheckpointException``, which derives from ``BaseException`` and so
  escapes every ``except Exception``: :func:`as_checkpoint_error` turns it into a one-line
  :class:`CheckpointError` naming the first failing rank's error.
"""

from __future__ import annotations

import io
import pickle
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .errors import CheckpointError

if TYPE_CHECKING:
    from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
    from torch.distributed.checkpoint.metadata import Metadata
    from torch.distributed.checkpoint.planner import ReadItem

__all__ = ["METADATA", "as_checkpoint_error", "read_metadata", "reader_and_planner"]

METADATA = ".metadata"
SHARD_RE = re.compile(r"^__\d+_\d+\.distcp$")

_METADATA_CLASSES = frozenset({
    ("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
        "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")
} | {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
     ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("collections", "OrderedDict")})


class _Refused(Exception):
    """The pickle asked for a global outside the allow-list."""


class _MetadataUnpickler(pickle.Unpickler):
    """Admits DCP's metadata classes and torch dtypes; refuses every other global."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _METADATA_CLASSES:
            return getattr(sys.modules[module], name)  # imported with DCP, before any read
        if module == "torch" and isinstance(vars(torch).get(name), torch.dtype):
            return vars(torch)[name]
        raise _Refused(f"{module}.{name}")


def read_metadata(folder: Path, files: Mapping[str, int]) -> Metadata:
    """The DCP metadata of ``folder``, read without running code from it, and checked against
    ``files`` (the shard files of the verified manifest, with their sizes)."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import Metadata

    path = folder / METADATA
    try:
        with open(path, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing from the sharded checkpoint") from None
    except _Refused as exc:
        raise CheckpointError(f"{path}: unsafe content, not loaded: it references {exc}, which is not "
                              "part of a checkpoint's metadata") from None
    except Exception as exc:  # whatever a damaged pickle raises: it is corrupt
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint metadata ({_first_line(exc)})") from None
    records = getattr(metadata, "storage_data", None)
    if not isinstance(metadata, Metadata) or not isinstance(records, dict):
        raise CheckpointError(f"{path}: corrupt checkpoint metadata (not DCP metadata)")
    for info in records.values():
        ok = (isinstance(info, _StorageInfo) and isinstance(info.relative_path, str)
              and SHARD_RE.match(info.relative_path) is not None and info.relative_path in files
              and type(info.offset) is int and type(info.length) is int and not info.transform_descriptors
              and 0 <= info.offset and 0 <= info.length
              and info.offset + info.length <= files[info.relative_path])
        if not ok:
            raise CheckpointError(f"{path}: corrupt checkpoint metadata (a record outside this "
                                  "checkpoint's shard files)")
    return metadata


def reader_and_planner(folder: Path, files: Mapping[str, int]
                       ) -> tuple[FileSystemReader, DefaultLoadPlanner]:
    """A DCP storage reader and load planner for ``folder`` that unpickle nothing unchecked."""
    from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
    from torch.distributed.checkpoint._traverse import set_element
    from torch.distributed.checkpoint.metadata import StorageMeta

    class Reader(FileSystemReader):
        def read_metadata(self, *args: object, **kwargs: object) -> Metadata:
            metadata = read_metadata(folder, files)
            meta = getattr(metadata, "storage_meta", None)  # absent in metadata of older torch
            if meta is None:
                meta = metadata.storage_meta = StorageMeta()
            meta.load_id = self.load_id
            return metadata

    class Planner(DefaultLoadPlanner):
        def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
            fqn = read_item.dest_index.fqn
            try:
                obj = torch.load(value, weights_only=True)
            except Exception as exc:
                raise CheckpointError(f"{folder}: the value of {fqn!r} is not plain data, not loaded "
                                      f"({_first_line(exc)})") from None
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[fqn], obj)
            else:
                self.state_dict[fqn] = obj

    return Reader(str(folder)), Planner()


def as_checkpoint_error(what: str, exc: BaseException) -> CheckpointError:
    """One line for DCP's ``CheckpointException``: the first failing rank and its error (a
    CheckpointError raised by the reader above passes through as it is)."""
    failures = getattr(exc, "failures", None) or {}
    for rank in sorted(failures):
        inner = failures[rank][0]
        if isinstance(inner, CheckpointError):
            return inner
        return CheckpointError(f"{what} (rank {rank}: {type(inner).__name__}: {_first_line(inner)})")
    return CheckpointError(f"{what} ({_first_line(exc)})")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
