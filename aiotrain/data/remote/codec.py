"""How one item is stored in a packed shard: MessagePack, with numpy arrays as an extension type.

An item is a dict (``{"jpg": b"...", "cls": 3}``), a list or tuple, or a single value; values are
bytes, str, int, float, bool, None, numpy arrays (dtype, shape and raw bytes: no pickle, so a
shard is safe to read from anywhere) and CPU tensors (stored as arrays, read back as arrays),
nested in dicts and lists. An item that is a tuple (a Dataset's ``(x, y)``) reads back as a
tuple; tuples nested inside read back as lists. ``compression="zlib"`` compresses each record on its own, so one item
can still be read by itself.
"""

from __future__ import annotations

import zlib
from typing import Any, Literal

import msgspec
import numpy as np

__all__ = ["Compression", "decode_item", "encode_item"]

Compression = Literal["zlib"] | None
_ARRAY, _TUPLE = 1, 2


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, np.ndarray | np.generic):
        arr = np.ascontiguousarray(obj)
        if arr.dtype.hasobject:
            raise TypeError("numpy arrays of Python objects cannot be packed")
        head = msgspec.msgpack.encode((arr.dtype.str, list(arr.shape)))
        return msgspec.msgpack.Ext(_ARRAY, len(head).to_bytes(4, "little") + head + arr.tobytes())
    if type(obj).__module__ == "torch" and type(obj).__name__ == "Tensor":
        return _enc_hook(obj.detach().cpu().numpy())
    raise TypeError(f"cannot pack a value of type {type(obj).__name__}; items hold bytes, str, "
                    "numbers, numpy arrays or tensors, in dicts and lists")


def _ext_hook(code: int, data: memoryview) -> Any:
    if code == _ARRAY:
        n = int.from_bytes(data[:4], "little")
        dtype, shape = msgspec.msgpack.decode(data[4:4 + n])
        return np.frombuffer(data[4 + n:], dtype=np.dtype(dtype)).reshape(shape)
    if code == _TUPLE:
        return tuple(_dec.decode(data))
    raise ValueError(f"unknown extension type {code} in a packed item")


_enc = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_dec: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(ext_hook=_ext_hook)


def encode_item(item: Any, compression: Compression = None) -> bytes:
    """One item as the bytes of its record."""
    if isinstance(item, tuple):
        item = msgspec.msgpack.Ext(_TUPLE, _enc.encode(list(item)))
    raw = _enc.encode(item)
    return zlib.compress(raw, 6) if compression == "zlib" else raw


MAX_ITEM_BYTES = 1 << 30  # a compressed record that would inflate past this is refused


def decode_item(record: bytes | memoryview, compression: Compression = None) -> Any:
    """The item a record holds (arrays are read-only views when uncompressed). A record is
    untrusted input: one that inflates past ``MAX_ITEM_BYTES`` is a ValueError, not a bomb."""
    raw: bytes | memoryview = record
    if compression == "zlib":
        inflater = zlib.decompressobj()
        raw = inflater.decompress(record, MAX_ITEM_BYTES)
        if inflater.unconsumed_tail:
            raise ValueError(f"a packed item inflates past {MAX_ITEM_BYTES} bytes")
    return _dec.decode(raw)
