"""Packed items read back as they were written, arrays included, with or without compression."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aiotrain.data.remote.codec import decode_item, encode_item


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_items_round_trip(compression):
    item = {"jpg": b"\xff\xd8" + bytes(range(256)), "cls": 3, "name": "a/b", "p": 0.5, "none": None,
            "arr": np.arange(12, dtype=np.float16).reshape(3, 4), "t": torch.arange(4),
            "nested": [1, {"x": np.zeros((0, 2), np.int8)}], "pair": (b"x", 2)}
    back = decode_item(encode_item(item, compression), compression)
    assert back["jpg"] == item["jpg"] and back["cls"] == 3 and back["name"] == "a/b"
    assert back["arr"].dtype == np.float16 and np.array_equal(back["arr"], item["arr"])
    assert np.array_equal(back["t"], np.arange(4)) and back["t"].dtype == np.int64
    assert back["nested"][1]["x"].shape == (0, 2)
    assert back["pair"] == [b"x", 2]  # nested tuples read back as lists (as JSON would)


def test_tuple_items_stay_tuples():
    assert decode_item(encode_item((np.int32(5), "x"))) == (np.int32(5), "x")


def test_objects_that_would_need_pickle_are_refused():
    with pytest.raises(TypeError, match="cannot pack a value of type object"):
        encode_item({"x": object()})
    with pytest.raises(TypeError, match="Python objects"):
        encode_item(np.array([object()]))


def test_a_compressed_record_cannot_inflate_without_bound(monkeypatch):
    from aiotrain.data.remote import codec

    monkeypatch.setattr(codec, "MAX_ITEM_BYTES", 1000)
    bomb = encode_item({"zeros": bytes(100_000)}, "zlib")
    assert len(bomb) < 1000
    with pytest.raises(ValueError, match="inflates past 1000 bytes"):
        decode_item(bomb, "zlib")
