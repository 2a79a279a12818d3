"""Structured logs on stdout (the journal picks them up): one JSON object or key=value line each.

Fields beyond the message go in ``extra={"fields": {...}}``; they become keys of the line, so
``journalctl -o cat | jq 'select(.event == "image_rejected")'`` works.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Dict

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def event(name: str, /, **fields: Any) -> Dict[str, Any]:
    """``extra=`` for a structured log line with an ``event`` key (names: docs/SERVICE.md)."""
    return {"fields": {"event": name, **fields}}


def _fields(record: logging.LogRecord) -> Dict[str, Any]:
    out: Dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    extra = getattr(record, "fields", None)
    if extra:
        out.update(extra)
    if record.exc_info:
        out["exc"] = logging.Formatter().formatException(record.exc_info)
    return out


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str, separators=(",", ":"))


def _kv(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str, separators=(",", ":"))
    return json.dumps(s) if (not s or any(c in s for c in ' "=\n\t')) else s


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_kv(v)}" for k, v in _fields(record).items())


def setup_logging(fmt: str = "json", level: str = "info") -> None:
    """Route every logger (ours, paho's, the runtime's) to stdout in one format."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(level, logging.INFO))
    # paho logs every packet at debug level: keep it out unless debugging the connection itself.
    logging.getLogger("edge_detect.paho").setLevel(logging.WARNING if level != "debug" else logging.DEBUG)
