"""Configs: the SDN format (:mod:`aiotrain.config.sdn`), Conf / Config, and their errors."""

from . import sdn
from .conf import MISSING, Conf, Config
from .errors import (
    ConfigError,
    FrozenConfigError,
    InterpolationError,
    MissingValueError,
    SchemaError,
    SdnError,
)

__all__ = ["MISSING", "Conf", "Config", "ConfigError", "FrozenConfigError", "InterpolationError",
           "MissingValueError", "SchemaError", "SdnError", "sdn"]
