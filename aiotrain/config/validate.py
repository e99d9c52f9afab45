"""``Conf.validate``: a config checked against a msgspec Struct or a dataclass, every problem
named by its full dotted path."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, TypeVar

import msgspec

from .errors import SchemaError
from .sdn import KeyPath
from .tree import _ABSENT, MISSING, _dotted

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class _Field:
    name: str      # the constructor argument
    data_key: str  # the key in the config
    type: object  # the field's annotation (Any when it has none)
    required: bool


def _schema_fields(schema: type) -> list[_Field]:
    if isinstance(schema, type) and issubclass(schema, msgspec.Struct):
        return [_Field(f.name, f.encode_name, f.type, f.required)
                for f in msgspec.structs.fields(schema)]
    if dataclasses.is_dataclass(schema) and isinstance(schema, type):
        hints = typing.get_type_hints(schema)
        return [_Field(f.name, f.name, hints.get(f.name, Any),
                       f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
                for f in dataclasses.fields(schema) if f.init]
    raise SchemaError(f"a schema must be a msgspec Struct or a dataclass, not {schema!r}")


def _is_schema(tp: object) -> bool:
    return isinstance(tp, type) and (issubclass(tp, msgspec.Struct) or dataclasses.is_dataclass(tp))


def _schema_in(tp: object) -> type | None:
    """The Struct / dataclass that a field of type ``tp`` holds (``X`` or ``X | None``)."""
    if _is_schema(tp):
        return typing.cast(type, tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1 and _is_schema(inner[0]):
            return typing.cast(type, inner[0])
    return None


_MSGSPEC_AT = re.compile(r" - at `\$(.*)`$")


class _Validator:
    """Builds a schema instance from plain data, naming the full dotted path of any problem."""

    def __init__(self, convert: bool, strict: bool, allow_missing: bool) -> None:
        self.convert, self.strict, self.allow_missing = convert, strict, allow_missing

    def build(self, schema: type[T], data: object, key: KeyPath) -> T:
        where = _dotted(key) or "the config"
        if not isinstance(data, dict):
            raise SchemaError(f"{where}: expected a dict for {schema.__name__}, got "
                              f"{type(data).__name__}", full_key=_dotted(key))
        fields = _schema_fields(schema)
        if self.strict:
            known = {f.data_key for f in fields}
            for k in data:
                if k not in known:
                    full = _dotted((*key, k))
                    raise SchemaError(f"{full}: unknown key (not a field of {schema.__name__})",
                                      full_key=full)
        kwargs: dict[str, object] = {}
        for f in fields:
            value = data.get(f.data_key, _ABSENT)
            if value is _ABSENT or (type(value) is str and value == MISSING):
                if f.required and not self.allow_missing:
                    full = _dotted((*key, f.data_key))
                    raise SchemaError(f"{full}: missing required value ({schema.__name__}."
                                      f"{f.name})", full_key=full)
                if f.required:
                    kwargs[f.name] = MISSING
                continue
            kwargs[f.name] = self.value(f.type, value, (*key, f.data_key))
        try:
            return schema(**kwargs)
        except (TypeError, ValueError) as exc:
            raise SchemaError(f"{where}: {schema.__name__}: {exc}", full_key=_dotted(key)) from exc

    def value(self, tp: object, value: object, key: KeyPath) -> object:
        nested = _schema_in(tp)
        if nested is not None and isinstance(value, dict):
            return self.build(nested, value, key)
        if self.convert and tp is str and type(value) in (int, float):
            return str(value)
        try:
            return msgspec.convert(value, type=tp, strict=not self.convert)
        except msgspec.ValidationError as exc:
            msg = str(exc)
            m = _MSGSPEC_AT.search(msg)
            full = _dotted(key)
            if m is not None:
                msg = msg[:m.start()]
                full += re.sub(r"\[(\d+)\]", r".\1", m.group(1))
            raise SchemaError(f"{full}: {msg}", full_key=full) from None
