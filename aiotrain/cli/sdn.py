"""``aiotrain sdn check|to-json|from-json|get|set|fmt``: check, convert, query and edit SDN files.

Exit codes follow :mod:`aiotrain.errors`: a mistake in the input (a syntax error, a missing file
or path, a bad value) prints one line, ``FILE:LINE:COL: message`` (``FILE: message`` without a
position), and exits 2; a file that cannot be written exits 1, and so does ``fmt --check`` on a
file that is not canonical. ``set`` rewrites only the value it changes and writes atomically.
``fmt`` prints the canonical form (what ``dumps`` writes; comments are not kept, so it prints
unless ``--write`` is given).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..config import sdn
from ..errors import ExitCode, UserError
from .command import Parser, run_command


def _read_bytes(name: str) -> bytes:
    try:
        return sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    except OSError as exc:
        raise UserError.from_os(exc, name) from None


def _loads_named(name: str, raw: bytes) -> dict[str, Any]:
    try:
        return sdn.loads(raw)
    except sdn.SdnError as exc:
        raise UserError.from_config(exc, name) from None


def _load(name: str) -> dict[str, Any]:
    return _loads_named(name, _read_bytes(name))


def _show(value: object) -> str:
    """How ``get`` prints a value: strings raw, dicts as SDN blocks, the rest inline."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and value:
        return sdn.dumps(value).rstrip("\n")
    return sdn.value_text(value)


def _lookup(data: object, path: str, name: str) -> object:
    try:
        keys = sdn.split_path(path)
    except sdn.SdnError as exc:
        raise UserError(exc.msg, file=name) from None
    for i, k in enumerate(keys):
        if isinstance(data, dict) and str(k) in data:
            data = data[str(k)]
        elif isinstance(data, list) and isinstance(k, int) and k < len(data):
            data = data[k]
        else:
            raise UserError(f"no such path: {'.'.join(map(str, keys[:i + 1]))}", file=name)
    return data


def _write(name: str, text: str) -> None:
    try:
        sdn.write_atomic(name, text)
    except OSError as exc:
        raise UserError.from_os(exc, name, doing="cannot write", code=ExitCode.FAILED) from None


# --------------------------------------------------------------------------- commands

def _check(args: argparse.Namespace) -> int:
    for name in args.files:
        _load(name)
        print(f"{name}: ok")
    return 0


def _to_json(args: argparse.Namespace) -> int:
    print(json.dumps(_load(args.file), indent=2, ensure_ascii=False))
    return 0


def _from_json(args: argparse.Namespace) -> int:
    text = _read_bytes(args.file)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(exc.msg, file=args.file, line=exc.lineno, col=exc.colno) from None
    except UnicodeDecodeError as exc:
        raise UserError(f"invalid text: {exc.reason}", file=args.file) from None
    try:
        sys.stdout.write(sdn.dumps(data))
    except sdn.SdnError as exc:
        raise UserError(exc.msg, file=args.file) from None
    return 0


def _get(args: argparse.Namespace) -> int:
    print(_show(_lookup(_load(args.file), args.path, args.file)))
    return 0


def _set(args: argparse.Namespace) -> int:
    try:
        value = sdn.parse_value(args.value)
    except sdn.SdnError as exc:
        raise UserError(f"bad value {args.value!r}: column {exc.col}: {exc.msg}",
                        file=args.file) from None
    try:
        doc = sdn.SdnDocument(_read_bytes(args.file))
    except sdn.SdnError as exc:
        raise UserError.from_config(exc, args.file) from None
    try:
        doc.set(args.path, value)
    except sdn.SdnError as exc:
        raise UserError(f"cannot set {args.path}: {exc.msg}", file=args.file) from None
    _write(args.file, str(doc))
    return 0


def _fmt(args: argparse.Namespace) -> int:
    raw = _read_bytes(args.file)
    text = sdn.dumps(_loads_named(args.file, raw))
    if args.check:
        same = raw.decode("utf-8", "replace").replace("\r\n", "\n").lstrip("\ufeff") == text
        if not same:
            print(f"{args.file}: not formatted", file=sys.stderr)
        return ExitCode.OK if same else ExitCode.FAILED
    if args.write:
        _write(args.file, text)
    else:
        sys.stdout.write(text)
    return 0


def _parser() -> Parser:
    p = Parser(prog="aiotrain sdn", description="check, convert, query and edit SDN files")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    c = sub.add_parser("check", help="check that files parse")
    c.add_argument("files", nargs="+", metavar="FILE")
    c.set_defaults(run=_check)
    c = sub.add_parser("to-json", help="print a file as JSON")
    c.add_argument("file", metavar="FILE")
    c.set_defaults(run=_to_json)
    c = sub.add_parser("from-json", help="print a JSON file (or - for stdin) as SDN")
    c.add_argument("file", metavar="FILE")
    c.set_defaults(run=_from_json)
    c = sub.add_parser("get", help="print the value at a dotted path (list items by index)")
    c.add_argument("file", metavar="FILE")
    c.add_argument("path", metavar="PATH")
    c.set_defaults(run=_get)
    c = sub.add_parser("set", help="change one value in place, keeping comments and formatting")
    c.add_argument("file", metavar="FILE")
    c.add_argument("path", metavar="PATH")
    c.add_argument("value", metavar="VALUE", help="an SDN value: 5e-4, [1, 2], {a: 1}, \"text\"")
    c.set_defaults(run=_set)
    c = sub.add_parser("fmt", help="print the canonical form of a file")
    c.add_argument("file", metavar="FILE")
    mode = c.add_mutually_exclusive_group()
    mode.add_argument("-w", "--write", action="store_true", help="rewrite the file in place")
    mode.add_argument("--check", action="store_true", help="exit 1 if the file is not canonical")
    c.set_defaults(run=_fmt)
    return p


def main(argv: list[str]) -> int:
    """Run ``aiotrain sdn ARGS``; returns the exit code (:mod:`aiotrain.errors`)."""

    def body() -> int:
        args = _parser().parse_args(argv)
        return int(args.run(args))

    return run_command("aiotrain sdn", body)
