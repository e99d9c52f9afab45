"""``aiotrain`` itself: dispatch, and the exit-code table every subcommand runs under."""

from __future__ import annotations

import subprocess
import sys

import pytest

from aiotrain.cli.command import Parser, run_command
from aiotrain.cli.main import main
from aiotrain.config.errors import SdnError
from aiotrain.errors import ExitCode, UserError


def test_help_and_unknown_commands(capsys):
    assert main(["--help"]) == 0
    assert "train" in capsys.readouterr().out
    for argv, what in ([], "no command given"), (["bogus"], "unknown command 'bogus'"):
        assert main(argv) == ExitCode.USAGE
        err = capsys.readouterr().err
        assert err.startswith(f"aiotrain: {what}") and err.count("\n") == 1, err


def test_dispatch_returns_the_subcommand_code(capsys, tmp_path):
    bad = tmp_path / "bad.sdn"
    bad.write_text("a: [1\n")
    assert main(["sdn", "check", str(bad)]) == ExitCode.USAGE
    assert capsys.readouterr().err.startswith(f"{bad}:1:6: ")


@pytest.mark.parametrize("raised, code, line", [
    (UserError("no run 'x'"), 2, "prog: no run 'x'"),
    (UserError("bad\nvalue", file="f.sdn", line=3, col=7), 2, "f.sdn:3:7: bad value"),
    (UserError("cannot write: full", file="o.sdn", code=ExitCode.FAILED), 1, "o.sdn: cannot write: full"),
    (SdnError("expected a value", path="c.sdn", line=2, col=5), 2, "c.sdn:2:5: expected a value"),
    (SdnError("expected a value", line=2, col=5), 2, "prog: expected a value"),
    (KeyboardInterrupt(), 130, "prog: interrupted"),
])
def test_run_command_maps_errors_to_one_line_and_the_table(capsys, raised, code, line):
    def body() -> int:
        raise raised

    assert run_command("prog", body) == code
    assert capsys.readouterr().err == line + "\n"


def test_run_command_passes_codes_through_and_parser_errors_are_usage(capsys):
    assert run_command("prog", lambda: 1) == ExitCode.FAILED
    p = Parser(prog="prog")
    p.add_argument("n", type=int)
    assert run_command("prog", lambda: p.parse_args(["x"]) and 0) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert err.startswith("prog: argument n: invalid int value: 'x'") and err.count("\n") == 1
    assert run_command("prog", lambda: p.parse_args(["--help"]) and 0) == ExitCode.OK
    assert "usage: prog" in capsys.readouterr().out


def test_exit_codes_are_the_documented_table():
    assert [(c.name, int(c)) for c in ExitCode] == [
        ("OK", 0), ("FAILED", 1), ("USAGE", 2), ("INTERRUPTED", 130)]


def test_the_console_entry_freezes_what_is_left_for_a_fast_exit():
    # the installed command and ``python -m aiotrain`` run main(), then freeze the heap so the
    # interpreter's final collections skip it; the exit code is main's
    code = ("import atexit, gc; atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0)); "
            "from aiotrain.cli.main import console; raise SystemExit(console(['--help']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "frozen True", r.stdout + r.stderr


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["sdn", "--help"],
                                  ["sdn", "set", "--help"], ["runs", "--help"], ["sweep", "--help"]])
def test_help_is_plain_text(capsys, argv):
    """Help is read in a terminal: no reStructuredText markup leaks into it (``x``, :mod:`y`)."""
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: aiotrain") and "``" not in out and ":mod:" not in out, out
