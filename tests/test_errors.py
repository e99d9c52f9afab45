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
