"""The shell every ``aiotrain`` subcommand runs in: argument errors, user errors, exit codes.

:func:`run_command` applies the one exit-code table (:mod:`aiotrain.errors`) to a subcommand's
body, and :class:`Parser` makes argparse's mistakes user errors instead of ``SystemExit``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from ..config.errors import ConfigError
from ..errors import ExitCode, UserError, missing_extra

__all__ = ["Parser", "run_command"]


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are :class:`UserError` (exit 2, one line, no usage dump)."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:  # argparse only exits by itself after --help / --version
            sys.stderr.write(message)
        raise _Exit(status)


class _Exit(Exception):
    """``--help`` was printed: end the command with this status."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def run_command(prog: str, body: Callable[[], int]) -> int:
    """Run one subcommand's ``body`` and return its exit code under the table.

    A :class:`UserError` or :class:`ConfigError` prints one line on stderr (``FILE:LINE:COL:
    message``, or ``PROG: message`` without a file), and so does an optional package that is not
    installed (naming the extra to install; exit 2); KeyboardInterrupt exits 130; a reader
    that closed the pipe (``aiotrain sdn to-json f | head``) ends the command quietly with
    exit 1, since its output was cut short.
    """
    try:
        code = body()
        sys.stdout.flush()  # a closed pipe shows up here, inside the guard
        return int(code)
    except _Exit as exc:
        return exc.status
    except UserError as exc:
        return _report(prog, exc)
    except ConfigError as exc:
        return _report(prog, UserError.from_config(exc))
    except ImportError as exc:
        missing = missing_extra(exc)
        if missing is None:
            raise
        return _report(prog, UserError(str(missing)))
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        _drop_stdout()
        return ExitCode.FAILED


def _report(prog: str, exc: UserError) -> int:
    text = str(exc)
    line = text if exc.file or text.startswith(prog) else f"{prog}: {text}"
    print(_rank_label() + line, file=sys.stderr)
    if exc.detail:
        print(exc.detail.rstrip("\n"), file=sys.stderr)
    return exc.code


def _rank_label() -> str:
    """Under torchrun, the rank that speaks, as torch names it in tracebacks (``[rank1]: ``):
    every rank's error reaches the launcher's output, and says whose it is."""
    if int(os.environ.get("WORLD_SIZE", "1") or "1") <= 1:
        return ""
    return f"[rank{os.environ.get('RANK', '?')}]: "


def _drop_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's last flush does not fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a real file (captured in tests)
        pass
