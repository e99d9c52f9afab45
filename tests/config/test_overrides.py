"""Command-line overrides: each must change a value the file sets, to one of its kind, and every
error names the override."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiotrain.config import Conf
from aiotrain.config.overrides import OverrideError, apply_overrides, override_of

FILE = """\
task: m:f
data:
  root: ${train.dir}/data
  workers: ${sys.cpu_count:}
  split = 0.2
  names = [a, b]
  flag = true
  path = null
train:
  dir: /tmp
"""


@pytest.fixture
def cfg(tmp_path: Path):
    path = tmp_path / "c.sdn"
    path.write_text(FILE)
    return Conf.load_sdn(path), str(path)


def apply(cfg, *items: str, free=("train",)):
    data, path = cfg
    return apply_overrides(data, list(items), source=path, free=free)


@pytest.mark.parametrize("item, value", [
    ("data.split=1", 1),                   # an integer where a number was
    ("data.split=null", None),             # null replaces anything
    ("data.path=/x", "/x"),                # anything replaces null
    ("data.workers=3", 3),                 # compared with the resolved value (an integer)
    ("data.root=/d", "/d"),
    ("data.names=[c]", ["c"]),
    ("data={split: 0.5}", 0.5),            # a section: each of its values is checked
    ("data.flag=false", False),
    ("data.root=${train.dir}/x", "/tmp/x"),  # interpolated before it is compared
    ("train.new_key=1", 1),                # a free section (the runtime's: its schema checks it)
])
def test_overrides_of_the_same_kind_apply(cfg, item, value):
    out = Conf.resolve(apply(cfg, item))
    key = item.partition("=")[0] if item != "data={split: 0.5}" else "data.split"
    assert Conf.get(out, key) == value


@pytest.mark.parametrize("item, message", [
    ("data.split=fast", "override 'data.split=fast': 'fast' is a string, but {path}:5:3 sets "
                        "data.split to a number (0.2)"),
    ("data.workers=1.5", "1.5 is a number, but {path}:4:3 sets data.workers to an integer (" ),
    ("data.flag=1", "1 is an integer, but {path}:7:3 sets data.flag to true or false (true)"),
    ("data.names=x", "'x' is a string, but {path}:6:3 sets data.names to a list ([a, b])"),
    ("data.split={a: 1}", "{{a: 1}} is a section, but"),
    ("data.spilt=0.1", "override 'data.spilt=0.1': data.spilt is not in {path}; did you mean "
                       "data.split? (an override changes a value the file sets"),
    ("model.dim=4", "override 'model.dim=4': model is not in {path}"),
    ("data={spilt: 1}", "data.spilt is not in {path}; did you mean data.split?"),
    ("noequals", "override 'noequals' is not key=value"),
    ("data.split=[1", "override 'data.split=[1': bad value"),
])
def test_an_override_that_does_not_fit_is_one_line_naming_it(cfg, item, message):
    with pytest.raises(OverrideError) as info:
        apply(cfg, item)
    assert info.value.msg.startswith(message.format(path=cfg[1])) or \
        message.format(path=cfg[1]) in info.value.msg, info.value.msg
    assert info.value.override == item and "\n" not in info.value.msg
    assert info.value.msg.count("override '") == 1


def test_an_interpolation_that_fails_is_left_to_resolve(cfg):
    out = apply(cfg, "data.root=${nope}")  # resolving reports it, and the CLI names the override
    with pytest.raises(Exception, match="nope"):
        Conf.resolve(out)


def test_later_overrides_win_and_each_is_checked(cfg):
    out = apply(cfg, "data.split=0.3", "data.split=0.4")
    assert out.data.split == 0.4
    with pytest.raises(OverrideError, match="'data.split=x'"):
        apply(cfg, "data.split=0.3", "data.split=x")


@pytest.mark.parametrize("key, items, expected", [
    ("train.lr", ["train.lr=1"], "train.lr=1"),
    ("train.lr", ["train.lr=1", "train.lr=2"], "train.lr=2"),
    ("train.lr", ["train={lr: 2}"], "train={lr: 2}"),
    ("train.lr", ["train={max_epochs: 2}"], None),   # the section, but not that key
    ("train.lr", ["train.max_epochs=2"], None),
    ("train", ["train.lr=3"], "train.lr=3"),          # an error about the section it is in
    ("data.root", [], None),
    (None, ["a=1"], None),
])
def test_override_of_names_the_override_that_set_a_key(key, items, expected):
    assert override_of(key, items) == expected
