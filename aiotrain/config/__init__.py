"""Configs: the SDN format (:mod:`aiotrain.config.sdn`) and the errors every config part raises."""

from . import sdn
from .errors import (
    ConfigError,
    FrozenConfigError,
    InterpolationError,
    MissingValueError,
    SchemaError,
    SdnError,
)

__all__ = ["ConfigError", "FrozenConfigError", "InterpolationError", "MissingValueError",
           "SchemaError", "SdnError", "sdn"]
