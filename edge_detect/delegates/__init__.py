"""Accelerator delegates: one small interface, one module per implementation.

A delegate plugin is a frozen dataclass subclassing ``DelegateConfig`` that names
its ``type`` and validates its own options. ``load()`` returns the LiteRT delegate
object or raises ``DelegateUnavailable`` with a one-line reason, so the runtime
can fall back to the CPU (or stop, with ``require_accelerator``).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Type

from ..validate import ConfigError
from .base import DelegateConfig, DelegateUnavailable
from .edgetpu import EdgeTpuDelegate
from .external import ExternalDelegate
from .gpu import GpuDelegate

PLUGINS: Dict[str, Type[DelegateConfig]] = {
    cls.type: cls for cls in (EdgeTpuDelegate, GpuDelegate, ExternalDelegate)
}

__all__ = ["DelegateConfig", "DelegateUnavailable", "PLUGINS", "delegate_from_dict"]


def delegate_from_dict(d: Mapping[str, Any], where: str = "accelerator") -> DelegateConfig:
    """Build a delegate config from ``{"type": ..., **options}``; ConfigError naming each bad key."""
    d = dict(d)
    kind = d.pop("type", None)
    if kind not in PLUGINS:
        got = "nothing" if kind is None else repr(kind)
        raise ConfigError([f"{where}.type: must be one of {', '.join(sorted(PLUGINS))}, got {got}"])
    return PLUGINS[kind].from_dict(d, where)
