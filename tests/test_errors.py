"""aiotrain.errors: the one FILE:LINE:COL format and the user-error type."""

from __future__ import annotations

import errno
import os

from aiotrain.config.errors import InterpolationError
from aiotrain.errors import ExitCode, UserError, where


def test_where_formats_every_precision():
    assert where("f.sdn", 3, 7) == "f.sdn:3:7"
    assert where("f.sdn", 3) == "f.sdn:3"
    assert where("f.sdn") == "f.sdn"
    assert where("f.sdn", None, 7) == "f.sdn"
    assert where(None, 3, 7) == ""


def test_user_error_is_one_line_with_its_place():
    assert str(UserError("a\nb", file="x", line=1, col=2)) == "x:1:2: a b"
    assert str(UserError("plain")) == "plain"
    assert UserError("plain").code is ExitCode.USAGE


def test_from_config_prefers_the_error_s_own_file():
    own = InterpolationError("unknown key", path="inner.sdn", line=4, col=2)
    assert str(UserError.from_config(own, "outer.sdn")) == "inner.sdn:4:2: unknown key"
    bare = InterpolationError("train.lr: unknown key")
    assert str(UserError.from_config(bare, "outer.sdn")) == "outer.sdn: train.lr: unknown key"


def test_from_os_uses_strerror_not_the_repr():
    exc = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), "/nope")
    assert str(UserError.from_os(exc)) == f"/nope: cannot read: {os.strerror(errno.ENOENT)}"
    err = UserError.from_os(exc, "given", doing="cannot write", code=ExitCode.FAILED)
    assert (str(err), err.code) == (f"given: cannot write: {os.strerror(errno.ENOENT)}", 1)


def test_the_extras_table_matches_pyproject():
    """Every optional package the one-line message names is installed by the extra it names."""
    import re
    import tomllib
    from pathlib import Path

    from aiotrain.errors import EXTRAS

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]

    def dists(extra: str) -> set[str]:
        out: set[str] = set()
        for req in extras[extra]:
            name = re.split(r"[<>=\[; ]", req, maxsplit=1)[0]
            if name == "aiotrain":
                out |= {d for e in req.split("[")[1].split("]")[0].split(",") for d in dists(e)}
            else:
                out.add(name.lower())
        return out

    for module, (dist, extra) in EXTRAS.items():
        assert dist.lower() in dists(extra), (module, dist, extra)
        assert not any(dist.lower() == re.split(r"[<>=\[; ]", d, maxsplit=1)[0].lower()
                       for d in project["dependencies"]), f"{dist} is not optional"


def test_missing_extra_is_one_line_and_an_import_error():
    from aiotrain.errors import MissingExtra, missing_extra, require

    err = MissingExtra("rich.console", "the progress bar")
    assert str(err) == "the progress bar needs rich, which is not installed: pip install 'aiotrain[progress]'"
    assert isinstance(err, ImportError) and err.name == "rich.console" and err.extra == "progress"
    assert missing_extra(ModuleNotFoundError("x", name="plotly")).extra == "dashboard"
    assert missing_extra(ModuleNotFoundError("x", name="kiwisolver")) is None  # not ours to name
    assert missing_extra(ImportError("cannot import name x")) is None
    assert require("json", "a test").dumps([]) == "[]"
