"""``aiotrain data pack|index|check``: write, index and check sharded datasets for streaming.

- ``aiotrain data pack SRC OUT [--shard-size 64MB] [--compression zlib] [--format packed|tar]``
  packs SRC (a local folder, files grouped into samples by WebDataset's rule; or
  ``module:attr``, an iterable, a map-style Dataset or a function returning one) into shards at
  OUT (a folder or a URL such as ``s3://bucket/train``), index last.
- ``aiotrain data index URL/shard-0.tar ... -o OUT/index.json``: a wids-style index of existing
  WebDataset tars (sample counts, sample offsets for range reads, sizes and CRC-32s).
- ``aiotrain data check URL``: read the index, HEAD every shard, print one line.

Exit codes: 0 ok, 1 the check found a problem or an object could not be read, 2 usage errors.
"""

from __future__ import annotations

import argparse
import importlib
import re

from ..errors import ExitCode, UserError
from .command import Parser, run_command

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6,
          "mib": 2**20, "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12,
          "tib": 2**40}


def parse_size(text: str) -> int:
    """``64MB``, ``64MiB``, ``1.5G``, ``1000`` -> bytes."""
    m = _SIZE.match(text)
    if m is None or (m.group(2) or "").lower() not in _UNITS:
        raise UserError(f"not a size: {text!r} (write e.g. 64MB, 256MiB or 1000000)")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])


def _parser() -> Parser:
    p = Parser(prog="aiotrain data", description="write, index and check sharded datasets")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=Parser)
    pk = sub.add_parser("pack", help="pack a folder, an iterable or a Dataset into shards")
    pk.add_argument("src", help="a local folder, or module:attr (an iterable, a Dataset, or a "
                                "function returning one)")
    pk.add_argument("out", help="a folder or a URL (s3://, gs://, az://, file://)")
    pk.add_argument("--shard-size", default="64MB", help="bytes per shard (default 64MB)")
    pk.add_argument("--compression", choices=("none", "zlib"), default="none")
    pk.add_argument("--format", choices=("packed", "tar"), default="packed")
    ix = sub.add_parser("index", help="index WebDataset tar shards (wids-style JSON)")
    ix.add_argument("shards", nargs="+", help="tar shard URLs or paths")
    ix.add_argument("-o", "--output", required=True, help="where to write the index")
    ck = sub.add_parser("check", help="read a dataset's index and HEAD its shards")
    ck.add_argument("url")
    ck.add_argument("--index", default="index.json", help="the index's name under URL")
    return p


def main(argv: list[str]) -> int:
    """Run the command; returns the exit code (:mod:`aiotrain.errors`)."""
    return run_command("aiotrain data", lambda: _data(argv))


def _data(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "pack":
        return _pack(args)
    if args.cmd == "index":
        return _index(args)
    return _check(args)


def _load_source(spec: str) -> object:
    if ":" not in spec or "/" in spec.split(":", 1)[0]:
        return spec  # a folder
    module_name, _, attr = spec.partition(":")
    try:
        obj: object = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"cannot load {spec!r}: {exc}") from None
    return obj() if callable(obj) and not hasattr(obj, "__iter__") and not hasattr(obj, "__getitem__") else obj


def _pack(args: argparse.Namespace) -> int:
    from ..data.remote.pack import pack

    source = _load_source(args.src)
    try:
        manifest = pack(source, args.out, shard_bytes=parse_size(args.shard_size),
                        compression=None if args.compression == "none" else "zlib",
                        format=args.format)
    except (FileNotFoundError, TypeError, ValueError) as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(str(exc), code=ExitCode.FAILED) from None
    size = sum(s.bytes or 0 for s in manifest.shards)
    print(f"packed {manifest.items} items into {len(manifest.shards)} {manifest.format} shards "
          f"({size / 1e6:.1f} MB) at {args.out}")
    return ExitCode.OK


def _index(args: argparse.Namespace) -> int:
    from ..data.remote.manifest import manifest_json
    from ..data.remote.pack import index_tars
    from ..data.remote.source import ObjectError, ObjectSource
    from ..runtime import run

    async def read_all() -> list[tuple[str, bytes]]:
        out = []
        for url in args.shards:
            base, _, name = url.rpartition("/")
            out.append((name if base == args.output.rpartition("/")[0] else url,
                        bytes(await ObjectSource(base or ".").aget(name))))
        return out

    async def write(data: bytes) -> None:
        base, _, name = args.output.rpartition("/")
        await ObjectSource(base or ".").aput(name, data)

    try:
        shards = run(read_all())
        manifest = index_tars(shards)
        run(write(manifest_json(manifest)))
    except ObjectError as exc:
        raise UserError(str(exc), code=ExitCode.FAILED) from None
    except ValueError as exc:
        raise UserError(str(exc)) from None
    print(f"indexed {manifest.items} samples in {len(shards)} tar shards into {args.output}")
    return ExitCode.OK


def _check(args: argparse.Namespace) -> int:
    from ..data.remote.dataset import RemoteDataset, RemoteDatasetError
    from ..runtime import run

    async def check() -> str:
        ds = await RemoteDataset.aopen(args.url, index=args.index, check=False)
        await ds.acheck(every=True)
        return repr(ds)

    try:
        print(f"ok: {run(check())}")
    except (RemoteDatasetError, OSError) as exc:
        raise UserError(str(exc), code=ExitCode.FAILED) from None
    return ExitCode.OK
