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
       an SDN syntax error, a config value that fails validation, an unknown run,
       an optional package that is not installed (the line names the extra)
130    interrupted (Ctrl-C or SIGTERM; 128 + SIGINT, as shells report it)
=====  ===========================================================================
"""

from __future__ import annotations

import importlib
import os
import sysconfig
import traceback
from enum import IntEnum
from types import ModuleType, TracebackType

from .config.errors import ConfigError

__all__ = ["EXTRAS", "ExitCode", "MissingExtra", "UserError", "missing_extra", "own_frames",
           "require", "where"]

EXTRAS: dict[str, tuple[str, str]] = {
    "rich": ("rich", "progress"),
    "yaml": ("PyYAML", "yaml"),
    "tokenizers": ("tokenizers", "text"),
    "PIL": ("Pillow", "media"),
    "matplotlib": ("matplotlib", "plot"),
    "aiohttp": ("aiohttp", "dashboard"),
    "plotly": ("plotly", "dashboard"),
    "tensorboard": ("tensorboard", "tensorboard"),
    "optuna": ("optuna", "sweeps"),
    "uvloop": ("uvloop", "uvloop"),
    "sklearn": ("scikit-learn", "examples"),
}
"""The optional packages: import name -> (distribution, the pyproject extra that installs it).
A test checks it against pyproject.toml."""


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
    command ran and failed, :attr:`ExitCode.FAILED`). ``detail``, when given, is printed after
    the line: the frames of the user's own code where a task they wrote failed.
    """

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 col: int | None = None, code: int = ExitCode.USAGE, detail: str = "") -> None:
        super().__init__(message)
        self.message, self.file, self.line, self.col, self.code = message, file, line, col, code
        self.detail = detail

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


class MissingExtra(ModuleNotFoundError):
    """An optional package is not installed: ``str()`` is one line naming the extra to install
    (a ModuleNotFoundError, so ``except ImportError`` around optional features keeps working)."""

    def __init__(self, module: str, what: str | None = None) -> None:
        dist, extra = EXTRAS[module.partition(".")[0]]
        need = f"{what} needs {dist}" if what else f"{dist} is needed here"
        super().__init__(f"{need}, which is not installed: pip install 'aiotrain[{extra}]'",
                         name=module)
        self.extra = extra


def missing_extra(exc: BaseException) -> MissingExtra | None:
    """The :class:`MissingExtra` an ImportError stands for, when it is about an optional package
    (:data:`EXTRAS`) itself (not about something that package failed to import); else None."""
    if isinstance(exc, MissingExtra):
        return exc
    name = exc.name if isinstance(exc, ModuleNotFoundError) else None
    if name is None or name.partition(".")[0] not in EXTRAS:
        return None
    return MissingExtra(name)


def require(module: str, what: str) -> ModuleType:
    """Import optional ``module`` (a key of :data:`EXTRAS`, or a submodule of one) for ``what``
    (``"the progress bar"``); when it is not installed, a :class:`MissingExtra` naming the extra."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if missing_extra(exc) is None:
            raise
        raise MissingExtra(module, what) from None


_NOT_OWN = tuple({os.path.dirname(os.path.abspath(__file__)) + os.sep,  # aiotrain itself
                  *(os.path.abspath(p) + os.sep for k, p in sysconfig.get_paths().items()
                    if k in ("stdlib", "platstdlib", "purelib", "platlib"))})


def own_frames(tb: TracebackType | None) -> list[traceback.FrameSummary]:
    """The frames of traceback ``tb`` that are the user's own code: not aiotrain's, not the
    standard library's, not an installed package's (what an error in a user's task shows)."""
    def own(filename: str) -> bool:
        path = os.path.abspath(filename)
        return not (filename.startswith("<") or path.startswith(_NOT_OWN)
                    or f"{os.sep}site-packages{os.sep}" in path
                    or f"{os.sep}dist-packages{os.sep}" in path)

    return [f for f in traceback.extract_tb(tb) if own(f.filename)]
