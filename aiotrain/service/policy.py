"""What a job service's client may ask for: configs, tasks, overridable keys, writable folders.

The client is not trusted. It names one of the allowed configs (by path or file name); the task
the config names must be allowed; overrides may touch only the allowed key prefixes and hold no
interpolation, checked on the *parsed* values (SDN escapes such as ``\\u0024{`` decode to ``${``
before the config is resolved, so the raw text proves nothing); the resolved ``tracking.dir``
and ``checkpoint.dir`` must lie inside a writable folder. Every refusal is a PermissionError of
one line naming what was refused and what is allowed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..config import Conf, Config

__all__ = ["Policy"]


class Policy:
    """The allow-lists a client is held to (see the module docstring)."""

    def __init__(self, configs: Sequence[str], tasks: Sequence[str] = (), writable: Sequence[str] = (),
                 overridable: Sequence[str] = ("seed", "train.", "optim.", "model.")) -> None:
        self.configs = {Path(c).resolve() for c in configs}
        self.tasks = set(tasks)
        self.writable = [Path(w).resolve() for w in writable or
                         [os.environ.get("AIOTRAIN_DIR") or ".aiotrain"]]
        self.overridable = tuple(overridable)

    def config_path(self, name: object) -> Path:
        """The allowed config ``name`` names (a path or a file name)."""
        if not isinstance(name, str):
            raise PermissionError("config must be a string naming an allowed config")
        for path in self.configs:
            if Path(name).resolve() == path or name == path.name:
                return path
        raise PermissionError(f"config {name[:200]!r} is not allowed; allowed: "
                              f"{sorted(p.name for p in self.configs)}")

    def check_overrides(self, overrides: object) -> list[str]:
        """``overrides`` when every parsed key is overridable and no parsed value (nor a key
        inside one) holds an interpolation; raises PermissionError, or ConfigError for an
        override that does not parse."""
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise ValueError("overrides must be a list of 'key=value' strings")
        for key, value in _leaves(Conf.parse_dotlist(overrides), ""):
            if not any(key == p or p.endswith(".") and key.startswith(p) for p in self.overridable):
                raise PermissionError(f"override of {key[:200]!r} is not allowed; overridable: "
                                      f"{', '.join(self.overridable)}")
            if "${" in key or isinstance(value, str) and "${" in value:
                raise PermissionError(f"override {key[:200]!r}: its value holds an interpolation "
                                      "('${' once escapes are decoded); interpolations are not "
                                      "accepted from clients")
        return overrides

    def check_config(self, cfg: Config) -> None:
        """The resolved config: an allowed task, and writes only inside writable directories."""
        task = Conf.get(cfg, "task", None)
        if task not in self.tasks:
            raise PermissionError(f"task {task!r} is not allowed; allowed: {sorted(self.tasks)}")
        for key in ("tracking.dir", "checkpoint.dir"):
            value = Conf.get(cfg, key, None)
            path = Path(value or os.environ.get("AIOTRAIN_DIR") or ".aiotrain").resolve()
            if not any(path == w or w in path.parents for w in self.writable):
                raise PermissionError(f"{key} {str(path)!r} is outside the writable directories "
                                      f"{[str(w) for w in self.writable]}")


def _leaves(value: object, key: str) -> Iterator[tuple[str, object]]:
    """Every (dotted key, value) below ``value``: a dict's keys extend the key, a list's items
    keep it (an empty dict or list below the top is a leaf of its own)."""
    if isinstance(value, dict) and (value or not key):
        for k, v in value.items():
            yield from _leaves(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list) and value:
        for item in value:
            yield from _leaves(item, key)
    else:
        yield key, value
