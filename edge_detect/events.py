"""Anomaly events: the versioned JSON the device publishes on ``{prefix}/{device}/event/{camera}``.

Schema: ``edge_detect/schemas/event.schema.json`` (JSON Schema 2020-12); reference: docs/MQTT.md.
``event_id`` is a UUIDv7 (RFC 9562): 48-bit ms timestamp first, then a counter, so ids sort
by creation time on one device, and are unique across devices without coordination.
"""

from __future__ import annotations

import datetime as _dt
import os
import threading
import time
import uuid
from typing import Any, Dict, Mapping, Optional

SCHEMA_VERSION = 1
VERDICTS = ("anomaly", "normal")
_BAD_LEVEL = set("+#/\0")

_uuid_lock = threading.Lock()
_uuid_last = (0, 0)  # (ms, counter) of the last id, so ids stay monotonic within one process


def uuid7(now_ms: Optional[int] = None) -> str:
    """A time-ordered UUIDv7 string. Monotonic within a process even within one ms or if the clock steps back."""
    global _uuid_last
    ms = int(time.time() * 1000) if now_ms is None else int(now_ms)
    with _uuid_lock:
        last_ms, counter = _uuid_last
        if ms <= last_ms:
            # Same millisecond (or the clock went back): keep the last timestamp, bump the 12-bit counter.
            ms, counter = last_ms, counter + 1
            if counter > 0xFFF:
                ms, counter = last_ms + 1, 0
        else:
            counter = int.from_bytes(os.urandom(2), "big") & 0x3FF  # random start, room to count up
        _uuid_last = (ms, counter)
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand
    return str(uuid.UUID(int=value))


def iso_utc(epoch_s: float) -> str:
    """ISO 8601 UTC with milliseconds and a ``Z``: ``2024-05-01T12:00:00.123Z``."""
    t = _dt.datetime.fromtimestamp(epoch_s, tz=_dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def check_level(value: str, what: str) -> str:
    """Refuse a device id or camera name that cannot be one MQTT topic level."""
    if not isinstance(value, str) or not value or _BAD_LEVEL & set(value) or value.startswith("$"):
        raise ValueError(f"{what} must be a non-empty string without '/', '+', '#' or a leading '$', not {value!r}")
    return value


def build_event(
    *,
    device: str,
    camera: str,
    score: float,
    normalised: float,
    threshold: float,
    anomalous: bool,
    model: Mapping[str, Any],
    captured_at: float,
    latency_ms: Optional[Mapping[str, float]] = None,
    published_at: Optional[float] = None,
    event_id: Optional[str] = None,
    extra: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """One event dict that validates against event.schema.json.

    ``captured_at`` / ``published_at`` are epoch seconds (``time.time()``); ``published_at`` is
    when the event enters the outbox and stays the same on resends. ``model`` needs ``name``,
    ``version``, ``sha256`` and ``variant``. ``latency_ms`` maps stage names to ms.
    ``extra`` lands under ``"extra"`` (free-form; the schema allows any object there).
    Snapshot and heatmap references are filled in by the publisher, which knows the topics.
    """
    check_level(device, "device")
    check_level(camera, "camera")
    missing = [k for k in ("name", "version", "sha256", "variant") if k not in model]
    if missing:
        raise ValueError(f"event model info is missing {', '.join(missing)}")
    pub = time.time() if published_at is None else published_at
    ev: Dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "event_id": event_id or uuid7(int(pub * 1000)),
        "device": device,
        "camera": camera,
        "captured_at": iso_utc(captured_at),
        "captured_at_ms": int(round(captured_at * 1000)),
        "published_at": iso_utc(pub),
        "published_at_ms": int(round(pub * 1000)),
        "score": float(score),
        "score_normalised": float(normalised),
        "threshold": float(threshold),
        "verdict": "anomaly" if anomalous else "normal",
        "model": {
            "name": str(model["name"]),
            "version": str(model["version"]),
            "sha256": str(model["sha256"]),
            "variant": str(model["variant"]),
        },
        "latency_ms": {str(k): round(float(v), 3) for k, v in (latency_ms or {}).items()},
        "snapshot": None,
        "heatmap": None,
    }
    if extra:
        ev["extra"] = dict(extra)
    return ev


def event_from_result(
    result: Any,
    *,
    device: str,
    camera: str,
    model: Mapping[str, Any],
    captured_at: float,
    latency_ms: Optional[Mapping[str, float]] = None,
) -> Dict[str, Any]:
    """An event from a :class:`edge_detect.detector.Result`; its ``timings`` are the latency unless given."""
    return build_event(
        device=device,
        camera=camera,
        score=result.score,
        normalised=result.normalised,
        threshold=result.threshold,
        anomalous=bool(result.anomalous),
        model=model,
        captured_at=captured_at,
        latency_ms=latency_ms if latency_ms is not None else result.timings,
    )
