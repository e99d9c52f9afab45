"""The ``aiotrain`` command: dispatches ``train``, ``sdn``, ``runs`` and ``sweep`` to their modules."""

from __future__ import annotations

import importlib
import sys

_COMMANDS = {
    "train": ("aiotrain.cli.train", "train a model from an SDN config"),
    "sdn": ("aiotrain.cli.sdn", "check, convert, query and edit SDN files"),
    "runs": ("aiotrain.cli.runs", "list, show, plot and export tracked runs"),
    "sweep": ("aiotrain.cli.sweep", "search hyperparameters: trials of a config, in parallel"),
}

USAGE = "usage: aiotrain {train,sdn,runs,sweep} ...\n" + "\n".join(
    f"  {name:<6} {help_}" for name, (_, help_) in _COMMANDS.items()
)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``aiotrain`` and ``python -m aiotrain``; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in _COMMANDS:
        print(f"aiotrain: unknown command {name!r}\n{USAGE}", file=sys.stderr)
        return 2
    module = importlib.import_module(_COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
