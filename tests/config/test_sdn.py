"""SDN reading and writing: the case folder, round trips, hostile input, the document API."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiotrain.config import sdn
from aiotrain.config.sdn import MAX_DEPTH, SdnDocument, SdnError, dumps, loads
from aiotrain.config.sdn import lexer as sdn_lexer
from aiotrain.config.sdn import parser as sdn_parser

#: The conformance cases (docs/sdn.md, "Conformance cases"): ``X.sdn`` with ``X.json`` (the value)
#: or with ``X.err`` (``LINE COL`` of the error). Every input fuzzing ever broke lives there too.
CASES = Path(__file__).resolve().parent / "sdn-cases"


def _same(a, b) -> bool:
    """Equal values with equal types all the way down (``1`` is not ``1.0``)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _cases(suffix: str) -> list[Path]:
    return sorted(p for p in CASES.glob("*.sdn") if p.with_suffix(suffix).exists())


def test_the_case_folder_is_there():
    assert _cases(".json") and _cases(".err"), f"no SDN cases found in {CASES}"


@pytest.mark.parametrize("case", _cases(".json"), ids=lambda p: p.stem)
def test_case_value(case: Path):
    expected = json.loads(case.with_suffix(".json").read_text(encoding="utf-8"))
    got = loads(case.read_bytes())
    assert _same(got, expected), got
    assert _same(loads(dumps(got)), got)


@pytest.mark.parametrize("case", _cases(".err"), ids=lambda p: p.stem)
def test_case_error_position(case: Path):
    line, col = map(int, case.with_suffix(".err").read_text().split())
    with pytest.raises(SdnError) as info:
        loads(case.read_bytes())
    assert (info.value.line, info.value.col) == (line, col), str(info.value)
    assert str(info.value).startswith(f"line {line}, column {col}: ")


# ---------------------------------------------------------------- hostile input

def test_invalid_utf8_is_an_sdn_error():
    with pytest.raises(SdnError) as info:
        loads(b"a: 1\nb: \xff\xfe\n")
    assert info.value.line == 2


@pytest.mark.parametrize("opener, closer", [("[", "]"), ("{a: ", "}")])
def test_deep_inline_nesting_is_an_error_not_a_recursion(opener, closer):
    deep = 20_000
    with pytest.raises(SdnError, match="nesting deeper"):
        loads("x = " + opener * deep + "1" + closer * deep)
    ok = MAX_DEPTH - 2
    value = loads("x = " + "[" * ok + "]" * ok)["x"]
    for _ in range(ok - 1):
        value = value[0]
    assert value == []


def test_deep_block_nesting_is_an_error():
    lines = [" " * i + f"k{i}:" for i in range(MAX_DEPTH + 5)]
    with pytest.raises(SdnError, match="nesting deeper"):
        loads("\n".join(lines) + "\n" + " " * (MAX_DEPTH + 5) + "v: 1")


def test_huge_integer_literal_is_an_sdn_error():
    with pytest.raises(SdnError, match="too long"):
        loads("n: " + "9" * 20_000)


# ---------------------------------------------------------------- writing

def test_dumps_shapes():
    text = dumps({"a": {"b": 1, "c": [1, "x y"]}, "rows": [{"k": 1, "v": "a"}, {"k": 2, "v": "b"}],
                  "e": {}, "l": [], "s": "true", "n": None, "q": "a: b", "f": 1.0})
    assert text.splitlines() == [
        "a:", "    b: 1", "    c = [1, x y]",
        "rows |k, v|", "    1, a", "    2, b",
        "e = {}", "l = []", 's: "true"', "n: null", 'q: "a: b"', "f: 1.0"]


@pytest.mark.parametrize("bad", [{"x": math.inf}, {"x": [math.nan]}, {1: 2}, [1], {"x": {1, 2}},
                                 {"x": "\ud800"}])
def test_dumps_rejects(bad):
    with pytest.raises(SdnError):
        dumps(bad)


def test_dumps_deep_value_is_an_error_not_a_recursion():
    v: list = []
    for _ in range(5000):
        v = [v]
    with pytest.raises(SdnError, match="nesting deeper"):
        dumps({"x": v})


_keys = st.one_of(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True), st.text(max_size=8))
_scalars = st.one_of(st.none(), st.booleans(), st.integers(),
                     st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=4)), max_leaves=20)
_records = st.lists(st.fixed_dictionaries({"a": _scalars, "b": _values}), min_size=2, max_size=4)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, st.one_of(_values, _records), max_size=6))
def test_round_trip(value):
    assert _same(loads(dumps(value)), value)


_junk_alphabet = st.sampled_from(list(" \t\n\r:=|,#\"\\{}[]()-.0123456789eEtableu_abxyz\x00\ufeff"))


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(_junk_alphabet, max_size=80), st.text(max_size=80), st.binary(max_size=80)))
def test_junk_only_raises_sdn_error(text):
    try:
        value = loads(text)
    except SdnError as exc:
        assert str(exc).startswith(f"line {exc.line}, column {exc.col}: ")
        assert exc.line >= 1 and exc.col >= 1
    else:
        assert isinstance(value, dict)


# ---------------------------------------------------------------- files and documents

def test_load_and_dump_files(tmp_path):
    p = tmp_path / "c.sdn"
    sdn.dump({"a": [1, 2]}, p)
    assert sdn.load(p) == {"a": [1, 2]}
    assert sdn.load(str(p)) == {"a": [1, 2]}
    with open(p) as fh:
        assert sdn.load(fh) == {"a": [1, 2]}
    p.write_text("a: 1\nb: [\n")
    with pytest.raises(SdnError) as info:
        sdn.load(p)
    assert info.value.path == str(p) and info.value.line == 2
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("text", ["a: 1", "a: [1, 2", "1, x"])
def test_parse_value_matches_a_key_line(text):
    try:
        expected = loads("k = " + text)["k"]
    except SdnError:
        with pytest.raises(SdnError):
            sdn.parse_value(text)
    else:
        assert sdn.parse_value(text) == expected


DOC = """\
# top comment
train:
    lr = 1e-3   # the learning rate
    epochs: 10
    layers:
        - a
    # trailing comment in train

model:  # the model
    name: "resnet"   # quoted
rows |a, b|
    1, 2
    3, 4
"""


def test_document_set_keeps_comments_and_formatting():
    doc = SdnDocument(DOC.replace("        - a\n", "        64\n        32\n"))
    doc.set("train.lr", 5e-4)
    doc.set("model.name", "vit b")
    text = str(doc)
    assert "    lr = 0.0005   # the learning rate\n" in text
    assert '    name: vit b   # quoted\n' in text
    assert text.startswith("# top comment\n") and "# trailing comment in train" in text
    assert loads(text)["train"] == {"lr": 5e-4, "epochs": 10, "layers": [64, 32]}


def test_document_set_blocks_new_keys_and_list_items():
    doc = SdnDocument(DOC.replace("        - a\n", "        64\n        32\n"))
    doc.set("train.layers.1", 16)
    doc.set("train.opt", {"name": "adam", "betas": [0.9, 0.99]})
    doc.set("rows.0.b", "x")
    doc.set("extra.deep.key", True)
    doc.set("model", {"name": "mlp"})
    value = loads(str(doc))
    assert value["train"]["layers"] == [64, 16]
    assert value["train"]["opt"] == {"name": "adam", "betas": [0.9, 0.99]}
    assert value["rows"] == [{"a": 1, "b": "x"}, {"a": 3, "b": 4}]
    assert value["extra"] == {"deep": {"key": True}}
    assert value["model"] == {"name": "mlp"}
    assert "# trailing comment in train" in str(doc) and "# top comment" in str(doc)


def test_document_keeps_crlf():
    doc = SdnDocument("a: 1\r\nb: 2\r\n")
    doc.set("b", 3)
    assert str(doc) == "a: 1\r\nb: 3\r\n"


# ---------------------------------------------------------------- hostile input: cost and limits

class _CountingStr(str):
    """A line that counts the characters ``find`` scans, to measure the reader's work."""

    scanned = 0

    def find(self, sub, start=0, end=None):
        at = super().find(sub, start, end)
        stop = len(self) if end is None else min(end, len(self))
        _CountingStr.scanned += (at + len(sub) if at >= 0 else stop) - start
        return at


@pytest.mark.parametrize("escape", ["\\n", '\\"', "\\\\", "\\u00e9", "x\\t", "\\\\b"])
def test_escapes_are_read_in_time_linear_in_the_string(escape):
    n = 20_000
    line = _CountingStr('"' + escape * n + '" # done')
    _CountingStr.scanned = 0
    value, end = sdn_lexer._quoted(line, 0, 1)
    assert value == loads(f'a: "{escape}"')["a"] * n and line[end:] == " # done"
    assert _CountingStr.scanned <= 4 * len(line), "each escape rescanned the rest of the line"


@pytest.mark.parametrize("bad, col", [("\\x", 1), ("\\u12", 1), ("\\/", 1), ("\\ud800", 1)])
def test_a_bad_escape_after_many_good_ones_is_found_in_linear_time(bad, col):
    n = 20_000
    line = _CountingStr('"' + "\\n" * n + bad + '"')
    _CountingStr.scanned = 0
    with pytest.raises(SdnError) as info:
        sdn_lexer._quoted(line, 0, 1)
    assert info.value.col == 2 * n + 1 + col
    assert _CountingStr.scanned <= 4 * len(line)


@pytest.mark.parametrize("text", [
    "t: table{f64} = [(" + "9" * 400 + ")]",
    "t: table{float}\n    " + "-" + "9" * 400 + "\n",
    "t: table{f32} = [(1e39)]",
    "t: table{f32}\n    " + "9" * 40 + "\n",
])
def test_a_number_too_big_for_a_float_column_is_an_sdn_error(text):
    with pytest.raises(SdnError, match="out of range") as info:
        loads(text)
    assert info.value.line == text.rstrip("\n").count("\n") + 1 and info.value.col > 1


def test_a_text_over_the_size_limit_is_an_error_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(sdn_parser, "MAX_FILE_BYTES", 1000)
    p = tmp_path / "big.sdn"
    p.write_text("a: 1\n" * 199)  # 995 bytes: read
    with pytest.raises(SdnError, match="duplicate"):
        sdn.load(p)
    p.write_text("a: 1\n" * 201)
    with pytest.raises(SdnError, match="larger than 1000 bytes") as info:
        sdn.load(p)
    assert info.value.path == str(p) and info.value.line == 1
    with pytest.raises(SdnError, match="larger than"):
        loads("b: 2\n" * 201)
