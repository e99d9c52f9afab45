"""WebDataset tar shards: samples grouped by key, offsets for range reads, hostile bytes refused."""

from __future__ import annotations

import io
import tarfile

import pytest

from aiotrain.data.remote.tar import TarFormatError, iter_samples, sample_offsets, write_tar_shard


def test_samples_and_their_offsets():
    samples = [{"__key__": f"dir/{i:04d}", "jpg": bytes([i]) * (300 + i), "cls": str(i)} for i in range(5)]
    data, offsets = write_tar_shard(samples)
    assert sample_offsets(data, "s") == offsets
    read = [s for _, s in iter_samples(data, "s")]
    assert [s["__key__"] for s in read] == [s["__key__"] for s in samples]
    assert read[3]["jpg"] == samples[3]["jpg"] and read[3]["cls"] == b"3"
    # one sample from its byte range alone
    [(_, only)] = list(iter_samples(data[offsets[2]:offsets[3]], "s"))
    assert only["__key__"] == "dir/0002"


def test_long_names_from_tar_tools_are_read():
    buf = io.BytesIO()
    long_key = "x" * 150 + "/sample"
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for ext in ("jpg", "json"):
            info = tarfile.TarInfo(f"{long_key}.{ext}")
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
    [(_, sample)] = list(iter_samples(buf.getvalue(), "s"))
    assert sample["__key__"] == long_key and sample["json"] == b"abc"


def test_a_truncated_tar_is_an_error_naming_the_shard():
    data, _ = write_tar_shard([{"__key__": "a", "bin": bytes(5000)}])
    with pytest.raises(TarFormatError, match="s3://b/t.tar: tar member at byte 0 runs past the end"):
        list(iter_samples(data[:2000], "s3://b/t.tar"))
