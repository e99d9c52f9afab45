"""User errors and exit codes: one error type, one ``FILE:LINE:COL`` format, one table of codes.

Every ``aiotrain`` subcommand reports a mistake the same way: one line on stderr and an exit code
from :class:`ExitCode`. The line starts with ``FILE:LINE:COL: `` when the mistake has a place
(``FILE: `` when it has a file but no position), as compilers write it, so editors can jump
there; otherwise it starts with the command's name (``aiotrain runs: no run 'x'``).

=====  ===========================================================================
code   meaning
=====  ===========================================================================
0      success (also a ``check`` that found nothing wrong)
1      the command ran and something failed: validation errors, ``sdn fmt --check``
       on a file that is not canonical, an output that could not be written
2      a usage or config error: bad arguments, a missing or unreadable input file,
       an SDN syntax error, a config value that fails validation, an unknown run
130    interrupted (Ctrl-C or SIGTERM; 128 + SIGINT, as shells report it)
=====  ===========================================================================
"""

from __future__ import annotations

from enum import IntEnum

from .config.errors import ConfigError

__all__ = ["ExitCode", "UserError", "where"]


class ExitCode(IntEnum):
    """The exit codes of every ``aiotrain`` subcommand (the table in this module's docstring)."""

    OK = 0
    FAILED = 1
    USAGE = 2
    INTERRUPTED = 130


def where(file: str | None, line: int | None = None, col: int | None = None) -> str:
    """The place of a mistake: ``FILE:LINE:COL``, ``FILE:LINE``, ``FILE``, or ``""`` without a file."""
    if not file:
        return ""
    if line is None:
        return str(file)
    return f"{file}:{line}" if col is None else f"{file}:{line}:{col}"


class UserError(Exception):
    """A mistake the user can fix: printed as one line, never with a traceback.

    ``code`` is the exit code it ends the command with (:attr:`ExitCode.USAGE` unless the
    command ran and failed, :attr:`ExitCode.FAILED`).
    """

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 col: int | None = None, code: ExitCode = ExitCode.USAGE) -> None:
        super().__init__(message)
        self.message, self.file, self.line, self.col, self.code = message, file, line, col, code

    def __str__(self) -> str:
        place = where(self.file, self.line, self.col)
        text = f"{place}: {self.message}" if place else self.message
        return " ".join(text.split("\n"))

    @classmethod
    def from_config(cls, exc: ConfigError, file: str | None = None) -> UserError:
        """The user error for a config error: its own file and position, else ``file``."""
        return cls(exc.msg, file=exc.path or file, line=exc.line, col=exc.col)

    @classmethod
    def from_os(cls, exc: OSError, file: str | None = None, *, doing: str = "cannot read",
                code: ExitCode = ExitCode.USAGE) -> UserError:
        """The user error for an OSError about ``file`` (its strerror, not Python's repr)."""
        name = file or (str(exc.filename) if exc.filename is not None else None)
        return cls(f"{doing}: {exc.strerror or exc}", file=name, code=code)
