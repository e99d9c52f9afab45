"""``aiotrain data pack|index|check``: folders, Datasets and tar shards to an indexed dataset, and
one line for every mistake (in process, through ``main(argv)``; the S3 paths are covered by
tests/data/remote)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("obstore", reason="the remote extra (obstore) is not installed")

from aiotrain.cli.data import main, parse_size  # noqa: E402
from aiotrain.data.remote.manifest import parse_manifest  # noqa: E402
from aiotrain.data.remote.packed import iter_items  # noqa: E402
from aiotrain.data.remote.tar import write_tar_shard  # noqa: E402
from aiotrain.errors import ExitCode, UserError  # noqa: E402


class Squares:
    """A map-style Dataset for ``module:attr``."""

    def __len__(self) -> int:
        return 30

    def __getitem__(self, i: int):
        return np.full(3, i * i, dtype=np.int32), i


SQUARES = Squares()


def _index(folder):
    return parse_manifest((folder / "index.json").read_bytes(), "i")


def test_pack_a_folder_by_webdataset_keys(tmp_path, capsys):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    for i in range(12):
        (src / "a" / f"{i:03d}.jpg").write_bytes(np.random.default_rng(i).bytes(500))
        (src / "a" / f"{i:03d}.cls").write_text(str(i % 3))
    (src / ".hidden").write_text("skipped")
    out = tmp_path / "out"
    assert main(["pack", str(src), str(out), "--shard-size", "2KB", "--compression", "zlib"]) == 0
    assert "packed 12 items into" in capsys.readouterr().out
    index = _index(out)
    assert index.items == 12 and len(index.shards) > 2 and index.compression == "zlib"
    first = index.shards[0]
    items = list(iter_items((out / first.name).read_bytes(), first.items, "zlib", first.name))
    assert items[0] == {"__key__": "a/000", "jpg": np.random.default_rng(0).bytes(500), "cls": b"0"}


def test_pack_a_dataset_given_as_module_attr(tmp_path, capsys):
    out = tmp_path / "sq"
    assert main(["pack", f"{__name__}:SQUARES", str(out)]) == 0
    index = _index(out)
    [shard] = index.shards
    items = list(iter_items((out / shard.name).read_bytes(), shard.items, None, "s"))
    assert len(items) == 30 and items[7][1] == 7 and items[7][0].tolist() == [49] * 3


def test_index_tar_shards_then_check(tmp_path, capsys):
    for k in range(2):
        data, _ = write_tar_shard([{"__key__": f"{k}-{i}", "txt": f"{i}"} for i in range(5)])
        (tmp_path / f"s{k}.tar").write_bytes(data)
    shards = [str(tmp_path / f"s{k}.tar") for k in range(2)]
    assert main(["index", *shards, "-o", str(tmp_path / "index.json")]) == 0
    doc = json.loads((tmp_path / "index.json").read_text())
    assert [s["url"] for s in doc["shardlist"]] == ["s0.tar", "s1.tar"]
    assert doc["shardlist"][0]["nsamples"] == 5 and len(doc["shardlist"][0]["offsets"]) == 6
    capsys.readouterr()
    assert main(["check", str(tmp_path)]) == 0
    assert "10 items in 2 tar shards" in capsys.readouterr().out


def test_mistakes_are_one_line(tmp_path, capsys):
    assert main(["pack", str(tmp_path / "nowhere"), str(tmp_path / "o")]) == ExitCode.USAGE
    assert capsys.readouterr().err.strip().endswith("nowhere: no such folder")
    assert main(["pack", "no.such.module:x", str(tmp_path / "o")]) == ExitCode.USAGE
    assert "cannot load 'no.such.module:x'" in capsys.readouterr().err
    assert main(["check", str(tmp_path / "empty")]) == ExitCode.FAILED
    assert capsys.readouterr().err == (f"aiotrain data: cannot open the dataset: {tmp_path / 'empty'}: "
                                       "no such folder\n")
    with pytest.raises(UserError, match="not a size"):
        parse_size("lots")
    assert parse_size("64MB") == 64 * 10**6 and parse_size("1.5GiB") == 3 * 2**29
