"""Conf and Config: loading, merging, interpolation and resolvers, paths, flags, validation."""

from __future__ import annotations

import copy
import dataclasses
import os
import pickle
import socket
import sys
import time

import msgspec
import pytest

from aiotrain.config import (
    MISSING,
    Conf,
    Config,
    ConfigError,
    FrozenConfigError,
    InterpolationError,
    MissingValueError,
    SchemaError,
    SdnError,
    sdn,
)

TRAIN = """\
project = cifar10
train:
    lr = 1e-3
    epochs = 100
    layers = [64, 32]
model:
    name: resnet
    out: ${train.epochs}
    tag: ${model.name}-${train.lr}
    sibling: ${.name}
    up: ${..project}
secret = ???
"""


@pytest.fixture
def cfg(tmp_path):
    p = tmp_path / "train.sdn"
    p.write_text(TRAIN)
    return Conf.load_sdn(p)


# ---------------------------------------------------------------- loading and access

def test_attribute_and_item_access(cfg):
    assert cfg.train.lr == 1e-3 and cfg["train"]["epochs"] == 100
    assert cfg.train.layers[1] == 32 and list(cfg.train.layers) == [64, 32]
    assert len(cfg.train) == 3 and "lr" in cfg.train and "nope" not in cfg.train
    assert cfg.train.keys() == ["lr", "epochs", "layers"]
    assert dict(cfg.train.items())["epochs"] == 100
    assert cfg.get("nope", 5) == 5 and cfg.get("secret", "dflt") == "dflt"
    assert cfg.train == {"lr": 1e-3, "epochs": 100, "layers": [64, 32]}
    assert isinstance(cfg.train, Config) and "train" in dir(cfg)


def test_lazy_interpolation_on_read(cfg):
    assert cfg.model.out == 100 and isinstance(cfg.model.out, int)
    assert cfg.model.tag == "resnet-0.001"
    assert cfg.model.sibling == "resnet" and cfg.model.up == "cifar10"


def test_missing_values_and_keys(cfg):
    with pytest.raises(MissingValueError) as info:
        _ = cfg.secret
    assert info.value.full_key == "secret" and "secret" in str(info.value)
    with pytest.raises(MissingValueError, match="train.nope"):
        _ = cfg.train.nope
    with pytest.raises(KeyError):
        _ = cfg["train"]["nope"]
    assert getattr(cfg.train, "nope", 7) == 7 and not hasattr(cfg, "secret")
    Conf.set_throw_on_missing(cfg, False)
    assert cfg.secret is None and cfg.train.nope is None


def test_from_dict_copies_and_rejects_non_string_keys():
    src = {"a": {"b": (1, 2)}}
    c = Conf.from_dict(src)
    c.a.b[0] = 9
    assert src == {"a": {"b": (1, 2)}} and Conf.to_dict(c) == {"a": {"b": [9, 2]}}
    with pytest.raises(ConfigError, match="a.1"):
        Conf.from_dict({"a": {1: 2}})
    with pytest.raises(ConfigError):
        Conf.from_dict([1, 2])


def test_load_sdn_errors_carry_file_line_col(tmp_path):
    p = tmp_path / "bad.sdn"
    p.write_text("a: 1\nb = [1,\n")
    with pytest.raises(SdnError) as info:
        Conf.load_sdn(p)
    assert (info.value.path, info.value.line) == (str(p), 2)
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)
    with pytest.raises(FileNotFoundError):
        Conf.load_sdn(tmp_path / "none.sdn")


def test_load_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: 0.001\n  layers: [1, 2]\nname: ${train.lr}\n")
    c = Conf.load_yaml(p)
    assert c.train.layers == [1, 2] and c.name == 0.001
    p.write_text("a: [1, 2\nb: 3\n")
    with pytest.raises(ConfigError) as info:
        Conf.load_yaml(p)
    assert info.value.line and info.value.path == str(p)
    p.write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        Conf.load_yaml(p)
    p.write_text("a: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError):  # the safe loader never builds objects
        Conf.load_yaml(p)


# ---------------------------------------------------------------- dotlists and merge

def test_dotlist_values_are_sdn():
    d = Conf.parse_dotlist(["train.lr=5e-4", "model.layers=[1,2]", "m.x={a: 1}", 'q="a b"',
                            "n=null", "e=", "s=a=b", "t.u.v=2"])
    assert d == {"train": {"lr": 5e-4}, "model": {"layers": [1, 2]}, "m": {"x": {"a": 1}},
                 "q": "a b", "n": None, "e": None, "s": "a=b", "t": {"u": {"v": 2}}}
    assert Conf.from_cli_dotlist(["a.b=1"]).a.b == 1


@pytest.mark.parametrize("item", ["noequals", "=1", "a..b=1", ".a=1", "a.=1", " =2"])
def test_bad_dotlist_items_name_the_item(item):
    with pytest.raises(ConfigError) as info:
        Conf.parse_dotlist([item])
    assert repr(item) in str(info.value)


def test_dotlist_bad_value_is_a_config_error():
    with pytest.raises(ConfigError, match="a.b"):
        Conf.parse_dotlist(["a.b=[1, 2"])


def test_merge(cfg):
    over = Conf.from_cli_dotlist(["train.lr=5e-4", "train.layers=[8]", "secret=???", "new=1"])
    m = Conf.merge(cfg, over)
    assert m.train.lr == 5e-4 and m.train.epochs == 100 and m.train.layers == [8] and m.new == 1
    assert cfg.train.lr == 1e-3  # inputs untouched
    appended = Conf.merge({"a": [1], "b": {"c": 1}}, {"a": [2], "b": {"d": 2}}, append_arrays=True)
    assert Conf.to_dict(appended) == {"a": [1, 2], "b": {"c": 1, "d": 2}}
    assert Conf.merge({"a": 1}, {"a": MISSING}).a == 1
    assert Conf.to_dict(Conf.merge({"a": {"b": 1}}, {"a": 5})) == {"a": 5}
    with pytest.raises(ConfigError):
        Conf.merge({"a": 1}, [1])


# ---------------------------------------------------------------- resolve and resolvers

def test_resolve_returns_a_new_resolved_config(cfg):
    r = Conf.resolve(cfg)
    assert Conf.to_dict(r)["model"] == {"name": "resnet", "out": 100, "tag": "resnet-0.001",
                                        "sibling": "resnet", "up": "cifar10"}
    assert Conf.to_dict(cfg)["model"]["out"] == "${train.epochs}"
    assert Conf.to_dict(r)["secret"] == MISSING


def test_node_interpolation_and_escape():
    c = Conf.from_dict({"a": {"x": 1, "y": "${.x}"}, "b": "${a}", "lit": "\\${a}", "d": "$5"})
    r = Conf.to_dict(Conf.resolve(c))
    assert r["b"] == {"x": 1, "y": 1} and r["lit"] == "${a}" and r["d"] == "$5"
    assert c.b.x == 1


@pytest.mark.parametrize("data, fragment", [
    ({"a": "${b}", "b": "${c}", "c": "${a}"}, "a -> b -> c -> a"),
    ({"a": "${a}"}, "a -> a"),
    ({"a": {"x": "${b}"}, "b": "${a}"}, "cycle"),
])
def test_cycles_are_named(data, fragment):
    with pytest.raises(InterpolationError, match="cycle") as info:
        Conf.resolve(Conf.from_dict(data))
    assert fragment in str(info.value)


@pytest.mark.parametrize("value, fragment", [
    ("${nope.x}", "nope.x"), ("${bad:1}", "unknown resolver"), ("${a", "unclosed"),
    ("${env:AIOTRAIN_SURELY_UNSET_VAR}", "AIOTRAIN_SURELY_UNSET_VAR"),
])
def test_interpolation_errors(value, fragment):
    with pytest.raises(InterpolationError, match="k") as info:
        Conf.resolve(Conf.from_dict({"k": value}))
    assert fragment in str(info.value) and info.value.full_key == "k"


def test_interpolating_a_missing_value_raises():
    with pytest.raises(MissingValueError):
        Conf.resolve(Conf.from_dict({"a": MISSING, "b": "${a}"}))


def test_builtin_resolvers(monkeypatch, tmp_path):
    monkeypatch.setenv("AIOTRAIN_T_VAR", "hello")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f.txt").write_text("x")
    c = Conf.from_dict({
        "env": "${env:AIOTRAIN_T_VAR}", "env_default": "${env:AIOTRAIN_T_UNSET,fallback}",
        "env_nested": "${env:AIOTRAIN_T_UNSET,${env}-x}",
        "join": "${path.join:a,b,c.txt}", "abs": "${path.abspath:f.txt}",
        "dir": "${path.dirname:/x/y/z.txt}", "base": "${path.basename:/x/y/z.txt}",
        "exists": "${path.exists:f.txt}", "not_exists": "${path.exists:g.txt}",
        "now": "${time.now:%Y}", "now2": "${time.now:}", "now3": "${time.now:}",
        "unix": "${time.unix:}", "cpus": "${sys.cpu_count:}", "host": "${sys.hostname:}",
        "platform": "${sys.platform:}", "cwd": "${sys.cwd:}", "quoted": "${path.join:'a,b',c}",
    })
    r = Conf.to_dict(Conf.resolve(c))
    assert r["env"] == "hello" and r["env_default"] == "fallback" and r["env_nested"] == "hello-x"
    assert r["join"] == os.path.join("a", "b", "c.txt")
    assert r["abs"] == str(tmp_path / "f.txt")
    assert (r["dir"], r["base"]) == ("/x/y", "z.txt")
    assert r["exists"] is True and r["not_exists"] is False
    assert r["now"] == time.strftime("%Y") and r["now2"] == r["now3"]
    assert abs(r["unix"] - time.time()) < 60 and isinstance(r["unix"], int)
    assert r["cpus"] == (os.cpu_count() or 1) and r["host"] == socket.gethostname()
    assert r["platform"] == sys.platform and r["cwd"] == str(tmp_path)
    assert r["quoted"] == os.path.join("a,b", "c")


def test_register_resolver():
    Conf.register_resolver("test.twice", lambda x: int(x) * 2, replace=True)
    assert Conf.resolve(Conf.from_dict({"a": "${test.twice:21}"})).a == 42
    with pytest.raises(ConfigError, match="already registered"):
        Conf.register_resolver("test.twice", str)
    with pytest.raises(ConfigError):
        Conf.register_resolver("bad name", str)
    Conf.register_resolver("test.fails", lambda: 1 / 0, replace=True)
    with pytest.raises(InterpolationError, match="test.fails"):
        Conf.resolve(Conf.from_dict({"a": "${test.fails:}"}))


# ---------------------------------------------------------------- paths and flags

def test_path_operations(cfg):
    assert Conf.get(cfg, "train.layers.0") == 64 and Conf.get(cfg, "train.layers[1]") == 32
    assert Conf.get(cfg, "model.out") == 100 and Conf.get(cfg, "x.y", 3) == 3
    assert Conf.get(cfg, "x.y") is None and Conf.get(cfg, "secret", 1) == 1
    with pytest.raises(MissingValueError):
        Conf.get(cfg, "secret")
    assert Conf.has_path(cfg, "train.lr") and Conf.has_path(cfg, "secret")
    assert not Conf.has_path(cfg, "train.nope") and not Conf.has_path(cfg, "train.layers.5")
    Conf.set(cfg, "opt.betas", [0.9, 0.99])
    Conf.set(cfg, "train.layers.1", 16)
    assert cfg.opt.betas == [0.9, 0.99] and cfg.train.layers == [64, 16]
    Conf.update(cfg, "opt", {"eps": 1e-8})
    assert Conf.to_dict(cfg.opt) == {"betas": [0.9, 0.99], "eps": 1e-8}
    Conf.update(cfg, "opt", {"eps": 1}, merge=False)
    assert Conf.to_dict(cfg.opt) == {"eps": 1}
    Conf.delete(cfg, "opt.eps")
    assert Conf.to_dict(cfg.opt) == {}
    with pytest.raises(MissingValueError, match="opt.nope"):
        Conf.delete(cfg, "opt.nope")
    cfg.train.lr = 2e-3
    del cfg["train"]["epochs"]
    assert Conf.to_dict(cfg.train) == {"lr": 2e-3, "layers": [64, 16]}


def test_freeze_unfreeze(cfg):
    assert Conf.freeze(cfg) is cfg and Conf.is_frozen(cfg)
    for change in (lambda: setattr(cfg.train, "lr", 1), lambda: cfg.__setitem__("x", 1),
                   lambda: Conf.set(cfg, "train.lr", 1), lambda: Conf.delete(cfg, "train.lr"),
                   lambda: Conf.update(cfg, "train", {"lr": 1}), lambda: cfg.train.layers.__setitem__(0, 1)):
        with pytest.raises(FrozenConfigError):
            change()
    with pytest.raises(FrozenConfigError) as info:
        cfg.train.lr = 5
    assert info.value.full_key == "train.lr"
    thawed = Conf.unfreeze(cfg)
    thawed.train.lr = 1
    assert not Conf.is_frozen(thawed) and cfg.train.lr == 1e-3


def test_copy_and_pickle(cfg):
    for other in (copy.copy(cfg), copy.deepcopy(cfg), pickle.loads(pickle.dumps(cfg))):
        assert other == cfg
        other.train.lr = 9
        assert cfg.train.lr == 1e-3
    err = pickle.loads(pickle.dumps(SdnError("bad", line=2, col=3)))
    assert str(err) == "line 2, column 3: bad"


# ---------------------------------------------------------------- validate

class Optim(msgspec.Struct):
    lr: float
    betas: list[float] = msgspec.field(default_factory=lambda: [0.9, 0.999])


class Settings(msgspec.Struct):
    name: str
    epochs: int = 10
    optim: Optim = msgspec.field(default_factory=lambda: Optim(lr=1e-3))
    tags: list[str] = []
    extra: Optim | None = None


@dataclasses.dataclass
class DOptim:
    lr: float
    momentum: float = 0.0


@dataclasses.dataclass
class DSettings:
    name: str
    optim: DOptim
    layers: list[int] = dataclasses.field(default_factory=lambda: [1])


def test_validate_struct_fills_defaults_and_converts():
    c = Conf.from_dict({"name": "x", "epochs": "100", "optim": {"lr": "${lr}"}, "lr": 0.5,
                        "extra": {"lr": 1}})
    s = Conf.validate(Settings, c)
    assert s == Settings(name="x", epochs=100, optim=Optim(lr=0.5), extra=Optim(lr=1.0))
    assert Conf.validate(Settings, {"name": 2}).name == "2"


def test_validate_dataclass():
    d = Conf.validate(DSettings, Conf.from_dict({"name": "n", "optim": {"lr": 1}}))
    assert d == DSettings(name="n", optim=DOptim(lr=1.0)) and d.layers == [1]
    with pytest.raises(SchemaError, match="optim.momentum"):
        Conf.validate(DSettings, {"name": "n", "optim": {"lr": 1, "momentum": "x"}})


@pytest.mark.parametrize("data, kwargs, path", [
    ({"name": "x", "epochs": "100"}, {"convert": False}, "epochs"),
    ({"name": "x", "epochs": "many"}, {}, "epochs"),
    ({"name": "x", "optim": {"lr": "fast"}}, {}, "optim.lr"),
    ({"name": "x", "optim": {"lr": 1, "betas": [0.9, "b"]}}, {}, "optim.betas.1"),
    ({"name": "x", "optim": {"lr": 1, "nope": 1}}, {"strict": True}, "optim.nope"),
    ({"name": "x", "bogus": 1}, {"strict": True}, "bogus"),
    ({"epochs": 1}, {}, "name"),
    ({"name": MISSING}, {}, "name"),
    ({"name": "x", "optim": {}}, {}, "optim.lr"),
    ({"name": "x", "optim": 5}, {}, "optim"),
])
def test_validate_errors_name_the_full_path(data, kwargs, path):
    with pytest.raises(SchemaError) as info:
        Conf.validate(Settings, Conf.from_dict(data), **kwargs)
    assert info.value.full_key == path and str(info.value).startswith(path + ":")


def test_validate_lenient_and_allow_missing():
    assert Conf.validate(Settings, {"name": "x", "bogus": 1}).name == "x"
    s = Conf.validate(Settings, {"optim": {}}, allow_missing=True)
    assert s.name == MISSING and s.optim.lr == MISSING
    with pytest.raises(SchemaError):
        Conf.validate(int, {"a": 1})


# ---------------------------------------------------------------- export and save

def test_to_dict_to_sdn_and_save(cfg, tmp_path):
    assert Conf.to_dict(cfg, resolve=True)["model"]["out"] == 100
    text = Conf.to_sdn(cfg)
    assert sdn.loads(text) == Conf.to_dict(cfg)
    assert "out: 100" in Conf.to_sdn(cfg, resolve=True)
    target = tmp_path / "out.sdn"
    Conf.save(cfg, target)
    assert Conf.load_sdn(target) == cfg
    Conf.save(cfg, tmp_path / "out.yaml", resolve=True)
    assert Conf.load_yaml(tmp_path / "out.yaml").model.out == 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.sdn", "out.yaml", "train.sdn"]
    with pytest.raises(SdnError):
        Conf.save({"x": float("nan")}, target)
    assert Conf.load_sdn(target) == cfg  # the failed save left the old file


# ---------------------------------------------------------------- hostile configs: cost and limits

def _doubling(levels: int, make) -> dict:
    x = {"l0": make(None)}
    for i in range(1, levels + 1):
        x[f"l{i}"] = make(f"${{x.l{i - 1}}}")
    return {"x": x}


def test_values_that_repeat_each_other_are_resolved_once_each(monkeypatch):
    import aiotrain.config.interpolation as interpolation

    calls = []
    real = interpolation._segments
    monkeypatch.setattr(interpolation, "_segments", lambda s, where: calls.append(s) or real(s, where))
    levels = 14  # today's output: 2**15 characters; resolving by repetition would take 2**15 calls
    cfg = Conf.from_dict(_doubling(levels, lambda ref: "ab" if ref is None else ref + ref))
    assert len(Conf.resolve(cfg).x[f"l{levels}"]) == 2 ** (levels + 1)
    assert len(calls) <= 4 * levels
    calls.clear()
    assert len(cfg.x[f"l{levels}"]) == 2 ** (levels + 1)  # one read resolves once per key too
    assert len(calls) <= 4 * levels


@pytest.mark.parametrize("make, key", [
    (lambda ref: "ab" if ref is None else ref + ref, "x.l"),                    # strings
    (lambda ref: [1, 2] if ref is None else [ref, ref], "x.l"),                 # nodes
    (lambda ref: "abcdefgh" if ref is None else [ref] * 40, "x.l"),             # breadth
])
def test_interpolation_past_the_size_limit_is_an_error_naming_the_key(monkeypatch, make, key):
    import aiotrain.config.interpolation as interpolation

    monkeypatch.setattr(interpolation, "MAX_RESOLVED_SIZE", 50_000)
    cfg = Conf.from_dict(_doubling(60, make))  # 2**60 if it were built
    with pytest.raises(InterpolationError, match="more than 50000 characters") as info:
        Conf.resolve(cfg)
    assert info.value.full_key.startswith(key)
    with pytest.raises(InterpolationError, match="more than 50000"):
        Conf.to_dict(cfg, resolve=True)
    with pytest.raises(InterpolationError, match="more than 50000"):
        value = cfg.x.l60  # a list reads as a view: its items resolve when read
        _ = value[0] if isinstance(value, Config) else value


def test_the_default_size_limit_stops_an_exponential_config():
    cfg = Conf.from_dict(_doubling(64, lambda ref: "ab" if ref is None else ref + ref))
    with pytest.raises(InterpolationError, match="grow exponentially") as info:
        Conf.resolve(cfg)
    assert info.value.full_key.startswith("x.l2")


def _nest(depth: int, leaf) -> dict:
    """{"k1": {"k2": ... leaf}} with ``depth`` dicts in all (the top one included)."""
    node = leaf
    for i in reversed(range(1, depth)):
        node = {f"k{i}": node}
    return node


def test_configs_deeper_than_the_parser_accepts_are_an_error_naming_the_key():
    with pytest.raises(ConfigError, match=f"deeper than {sdn.MAX_DEPTH}") as info:
        Conf.from_dict(_nest(sdn.MAX_DEPTH + 5, {"v": 1}))
    assert info.value.full_key.startswith("k1.k2.k3")
    cfg = Conf.from_dict(_nest(sdn.MAX_DEPTH - 10, {"v": 1}))
    with pytest.raises(ConfigError, match="deeper"):
        Conf.set(cfg, ".".join(f"k{i}" for i in range(1, 81)), _nest(30, {}))
    with pytest.raises(ConfigError, match="deeper"):
        Conf.merge(cfg, _nest(sdn.MAX_DEPTH + 1, {}))
    with pytest.raises(ConfigError, match="deeper"):
        Conf.from_cli_dotlist([".".join(f"k{i}" for i in range(sdn.MAX_DEPTH + 1)) + "=1"])


def test_yaml_alias_bombs_and_self_references_are_errors(tmp_path, monkeypatch):
    import aiotrain.config.conf as conf_module

    monkeypatch.setattr(conf_module, "_MAX_YAML_VALUES", 100_000)  # the default takes seconds
    p = tmp_path / "bomb.yaml"
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):  # 10**9 values once expanded
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="more than 100000 values") as info:
        Conf.load_yaml(p)
    assert info.value.path == str(p)
    p.write_text("a: &a [1, *a]\n")
    with pytest.raises(ConfigError, match="deeper"):
        Conf.load_yaml(p)


class _Deep(msgspec.Struct):
    task: str
    extra: dict = {}
    anything: object = None


def _nested_texts(depth: int) -> list[str]:
    """SDN texts whose deepest value sits ``depth`` levels down (the top-level dict is one)."""
    block = ["task: t:f", "extra:"] + ["    " * i + f"k{i}:" for i in range(1, depth - 1)]
    block.append("    " * (depth - 1) + "v: ${task}")
    inline = "task: t:f\nanything = " + "[" * (depth - 1) + '"${task}"' + "]" * (depth - 1) + "\n"
    return ["\n".join(block) + "\n", inline]


@pytest.mark.parametrize("kind", [0, 1], ids=["blocks", "inline"])
def test_every_stage_handles_the_deepest_config_the_parser_accepts(tmp_path, kind):
    with pytest.raises(SdnError, match="nesting deeper"):  # one more level is the parser's error
        sdn.loads(_nested_texts(sdn.MAX_DEPTH + 1)[kind])
    p = tmp_path / "deep.sdn"
    p.write_text(_nested_texts(sdn.MAX_DEPTH)[kind])
    cfg = Conf.merge(Conf.load_sdn(p), Conf.from_cli_dotlist(["seed=1"]))
    resolved = Conf.resolve(cfg)
    checked = Conf.validate(_Deep, cfg)
    assert checked.task == "t:f"
    plain = Conf.to_dict(resolved)
    assert sdn.loads(Conf.to_sdn(resolved)) == plain == Conf.to_dict(cfg, resolve=True)
    assert "t:f" in Conf.to_sdn(resolved) and "${task}" in Conf.to_sdn(cfg)
    assert pickle.loads(pickle.dumps(cfg)) == cfg and repr(cfg).startswith("Config(")
    Conf.save(resolved, tmp_path / "again.sdn")
    assert Conf.to_dict(Conf.load_sdn(tmp_path / "again.sdn")) == plain
    Conf.save(resolved, tmp_path / "again.yaml")
    assert Conf.to_dict(Conf.load_yaml(tmp_path / "again.yaml")) == plain
