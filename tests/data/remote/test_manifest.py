"""Dataset indexes come from outside: decoded into typed structs, hostile ones refused."""

from __future__ import annotations

import json

import pytest

from aiotrain.data.remote.manifest import (
    Manifest,
    ManifestError,
    ShardInfo,
    manifest_json,
    parse_manifest,
)


def test_both_layouts_round_trip():
    packed = Manifest("packed", [ShardInfo("shard-00000.atp", 3, 100, 7, head_crc32=9)], "zlib")
    assert parse_manifest(manifest_json(packed), "i") == packed
    old = Manifest("packed", [ShardInfo("shard-00000.atp", 3, 100, 7)], version=1)
    assert parse_manifest(manifest_json(old), "i") == old  # version 1 is still read
    tar = Manifest("tar", [ShardInfo("s3://b/a.tar", 2, 3072, None, [0, 1024, 2048])])
    back = parse_manifest(manifest_json(tar), "i")
    assert back == tar and back.items == 2
    assert json.loads(manifest_json(tar))["shardlist"][0]["nsamples"] == 2  # wids' own keys


@pytest.mark.parametrize("doc, message", [
    (b"[1]", "a dataset index is a JSON object"),
    (b"{", "not a JSON dataset index"),
    (b'{"format": "other", "version": 1, "shards": []}', "unknown index format 'other'"),
    (b'{"format": "aiotrain-packed", "version": 3, "shards": []}', "reads 'aiotrain-packed' versions 1"),
    (b'{"format": "aiotrain-packed", "version": 2, "shards": [{"name": "a", "items": 1, '
     b'"bytes": 1, "crc32": 1}]}', "needs 'head_crc32'"),
    (b'{"format": "aiotrain-packed", "version": 1, "shards": []}', "lists no shards"),
    (b'{"format": "aiotrain-packed", "version": 1, "shards": [{"name": "../x", "items": 1, '
     b'"bytes": 1, "crc32": 1}]}', "relative object name"),
    (b'{"format": "aiotrain-packed", "version": 1, "shards": [{"name": "a", "items": -1, '
     b'"bytes": 1, "crc32": 1}]}', "negative"),
    (b'{"format": "aiotrain-packed", "version": 1, "shards": [{"name": "a", "items": "1"}]}',
     "Expected `int`"),
    (b'{"shardlist": [{"url": "a.tar", "nsamples": 2, "filesize": 10, "offsets": [0, 8, 4]}]}',
     "increasing"),
])
def test_bad_indexes_are_refused(doc, message):
    with pytest.raises(ManifestError, match=message):
        parse_manifest(doc, "s3://b/index.json")
