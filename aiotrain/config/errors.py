"""The config error hierarchy: every error is a ConfigError naming what it is about.

Attributes shared by all of them: ``msg`` (the message without position), ``full_key`` (the
dotted config path, OmegaConf's name for it, or None), ``path`` (the file, when one was read),
``line`` / ``col`` (1-based, for SDN and YAML syntax errors). ``str(err)`` starts with
``line L, column C:`` when the error has a position, so that one line is always enough.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = [
    "ConfigError",
    "FrozenConfigError",
    "InterpolationError",
    "MissingValueError",
    "SchemaError",
    "SdnError",
]


class ConfigError(Exception):
    """Base of every config error (bad file, bad override, bad path, failed validation)."""

    def __init__(self, msg: str, *, full_key: str | None = None, path: str | None = None,
                 line: int | None = None, col: int | None = None) -> None:
        self.msg, self.full_key, self.path, self.line, self.col = msg, full_key, path, line, col
        super().__init__(msg)

    def __str__(self) -> str:
        if self.line is None:
            return self.msg
        return f"line {self.line}, column {self.col}: {self.msg}"

    def __reduce__(self) -> tuple[Callable[[type[ConfigError], dict[str, object]], ConfigError],
                                  tuple[type[ConfigError], dict[str, object]]]:
        # picklable across processes despite keyword-only fields
        return (_rebuild, (type(self), self.__dict__))


def _rebuild(cls: type[ConfigError], state: dict[str, object]) -> ConfigError:
    err = cls.__new__(cls)
    err.__dict__.update(state)
    err.args = (state.get("msg"),)
    return err


class SdnError(ConfigError, ValueError):
    """An SDN text that cannot be read (or a value that cannot be written as SDN)."""


class MissingValueError(ConfigError, KeyError, AttributeError):
    """Reading a ``???`` mandatory value, or a key that is not there.

    Also a KeyError and an AttributeError so that ``getattr(cfg, "x", None)``, ``hasattr`` and
    ``cfg.get`` behave as they do on dicts and objects.
    """

    def __str__(self) -> str:  # KeyError would quote the message
        return ConfigError.__str__(self)


class FrozenConfigError(ConfigError):
    """Changing a frozen Config."""


class InterpolationError(ConfigError):
    """``${...}`` naming an unknown key or resolver, a failing resolver, or a cycle."""


class SchemaError(ConfigError):
    """``Conf.validate`` found a value that does not fit the schema."""
