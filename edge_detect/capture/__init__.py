"""Camera sources: one small interface (``base``), one module per implementation.

Like Frigate's detector plugins, each module registers its ``Source`` class under a
``type`` key; the config's ``[cameras.source]`` table picks one by that key and is
validated by the class's own ``Config`` dataclass.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..validate import ConfigError, from_table
from .base import PLUGINS, Frame, Source, SourceConfig, SourceError
from .directory import DirectorySource
from .http import HttpSource
from .opencv import OpenCvSource

__all__ = ["PLUGINS", "Frame", "Source", "SourceConfig", "SourceError", "DirectorySource", "HttpSource",
           "OpenCvSource", "source_config_from_dict", "make_source"]


def source_config_from_dict(d: Mapping[str, Any], where: str) -> tuple:
    """(type key, validated config) from a ``source`` table; errors name ``where.key``."""
    if not isinstance(d, Mapping):
        raise ConfigError([f"{where}: must be a table"])
    d = dict(d)
    kind = d.pop("type", None)
    if kind not in PLUGINS:
        raise ConfigError([f"{where}.type: must be one of {', '.join(sorted(PLUGINS))}, got {kind!r}"])
    return kind, from_table(PLUGINS[kind].Config, d, where)


def make_source(kind: str, config: SourceConfig, name: str) -> Source:
    return PLUGINS[kind](config, name)
