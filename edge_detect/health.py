"""Ask a running daemon how it is, over its own MQTT broker: availability and a fresh stats report.

``edge-detect health --config FILE`` runs this on the device (so a deploy over SSH needs no
route to the broker from the workstation): it connects with the daemon's own ``[mqtt]``
settings, sends ``{"cmd": "stats"}`` on the command topic, and returns the first stats message
published after that, plus the retained ``online``/``offline``. The model's SHA-256 in the stats
says which bundle the daemon is running; ``reloads`` says whether the last reload was refused.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any, Dict, Optional

import paho.mqtt.client as mqtt

from .publisher import PROTOCOLS, MqttConfig


def query_health(cfg: MqttConfig, device: str, timeout: float = 10.0, ask_every: float = 2.0) -> Dict[str, Any]:
    """``{"device", "status", "stats"}``; ``stats`` is None when none arrived within ``timeout`` s.

    ``status`` is the retained availability (``online``/``offline``) or None if never published.
    The stats command is re-sent every ``ask_every`` s, as a QoS 0 stats message can be lost.
    """
    base = f"{cfg.topic_prefix}/{device}"
    got: Dict[str, Any] = {"device": device, "status": None, "stats": None}
    done = threading.Event()
    subscribed = threading.Event()
    t0_ms = int(time.time() * 1000)

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            c.subscribe([(f"{base}/status", 1), (f"{base}/stats", 0)])

    def on_subscribe(*_: Any) -> None:
        subscribed.set()

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.endswith("/status"):
            got["status"] = msg.payload.decode(errors="replace")
            return
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        # Only a report made after we asked: an older one may predate a reload.
        if isinstance(body, dict) and int(body.get("at_ms", 0)) >= t0_ms - 1000:
            got["stats"] = body
            done.set()

    c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                    client_id=f"edge-detect-health-{uuid.uuid4().hex[:8]}", protocol=PROTOCOLS[cfg.protocol])
    if cfg.username:
        c.username_pw_set(cfg.username, cfg.password())
    if cfg.tls:
        c.tls_set(ca_certs=cfg.tls.ca_file, certfile=cfg.tls.cert_file, keyfile=cfg.tls.key_file)
        c.tls_insecure_set(cfg.tls.insecure)
    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    deadline = time.monotonic() + timeout
    try:
        c.connect(cfg.host, cfg.port, keepalive=max(5, int(timeout) + 5))
    except OSError as e:
        raise ConnectionError(f"cannot reach the broker {cfg.host}:{cfg.port}: {e}") from None
    c.loop_start()
    try:
        if not subscribed.wait(max(0.1, deadline - time.monotonic())):
            return got
        while not done.is_set() and time.monotonic() < deadline:
            c.publish(f"{base}/cmd", json.dumps({"cmd": "stats", "id": "health"}), qos=1)
            done.wait(min(ask_every, max(0.05, deadline - time.monotonic())))
        return got
    finally:
        c.disconnect()
        c.loop_stop()


def summarize(h: Dict[str, Any]) -> Dict[str, Any]:
    """The fields a deploy decides on: online, model (name, version, sha256, variant), reloads."""
    s: Optional[Dict[str, Any]] = h.get("stats")
    return {
        "device": h.get("device"),
        "online": h.get("status") == "online" and s is not None,
        "status": h.get("status"),
        "model": (s or {}).get("model"),
        "reloads": (s or {}).get("reloads"),
        "accelerator": (s or {}).get("accelerator"),
        "frames": (s or {}).get("frames"),
        "uptime_s": (s or {}).get("uptime_s"),
    }
