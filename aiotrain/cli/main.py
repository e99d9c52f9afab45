"""The ``aiotrain`` command: dispatches ``train``, ``sdn``, ``runs``, ``sweep`` and ``data`` to their
modules.

Every subcommand follows one exit-code table (:mod:`aiotrain.errors`): 0 ok, 1 failed checks or
a failed run, 2 usage or config errors, 130 interrupted.
"""

from __future__ import annotations

import gc
import importlib
import sys

from ..errors import ExitCode, UserError
from .command import run_command

_COMMANDS = {
    "train": ("aiotrain.cli.train", "train a model from an SDN config"),
    "sdn": ("aiotrain.cli.sdn", "check, convert, query and edit SDN files"),
    "runs": ("aiotrain.cli.runs", "list, compare, plot, export, delete and serve (dashboard) tracked runs"),
    "sweep": ("aiotrain.cli.sweep", "search hyperparameters: trials of a config, in parallel"),
    "data": ("aiotrain.cli.data", "pack, index and check sharded datasets for streaming"),
}

USAGE = "usage: aiotrain {train,sdn,runs,sweep,data} ...\n" + "\n".join(
    f"  {name:<6} {help_}" for name, (_, help_) in _COMMANDS.items()
)


def main(argv: list[str] | None = None) -> int:
    """Run one ``aiotrain`` command line; returns the exit code (callable in-process)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return run_command("aiotrain", lambda: _dispatch(args))


def console(argv: list[str] | None = None) -> int:
    """Entry point of the installed ``aiotrain`` and of ``python -m aiotrain``: ``main``, then
    the process is about to exit. What is left is frozen out of the garbage collector: the
    interpreter's final collections would otherwise walk torch's few hundred thousand objects
    several times, about a second of CPU after the command's last line."""
    code = main(argv)
    gc.freeze()
    return code


def _dispatch(args: list[str]) -> int:
    if args and args[0] in ("-h", "--help"):
        print(USAGE)
        return ExitCode.OK
    if not args or args[0] not in _COMMANDS:
        what = f"unknown command {args[0]!r}" if args else "no command given"
        raise UserError(f"{what}; the commands are {', '.join(_COMMANDS)} (see aiotrain --help)")
    module = importlib.import_module(_COMMANDS[args[0]][0])
    return int(module.main(args[1:]))


if __name__ == "__main__":
    sys.exit(console())
