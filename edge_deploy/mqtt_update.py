"""Send a signed bundle to a device over MQTT (devices behind NAT) and wait for its verdict.

The archive travels base64 in ``{"cmd": "update"}`` on ``P/D/cmd`` (chunked with ``chunk_bytes``),
the device verifies signature and hashes, trial-loads, installs and reloads, and answers on
``P/D/cmd/result`` (also retained on ``P/D/status/update``). See edge_detect/update.py.
"""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path
from typing import Any, Dict, Optional, Union

import paho.mqtt.client as mqtt

from edge_detect.update import update_messages


def publish_update(host: str, port: int, device: str, archive: Union[str, Path, bytes], *,
                   prefix: str = "edge-detect", chunk_bytes: int = 0, timeout: float = 60.0,
                   username: Optional[str] = None, password: Optional[str] = None,
                   tls_ca: Optional[str] = None) -> Dict[str, Any]:
    """Publish the update and return the device's result (``{"ok": bool, "detail": ..., "update": {...}}``).

    Raises TimeoutError when the device does not answer within ``timeout`` s (offline devices
    get no queued commands: their sessions are clean).
    """
    msgs = update_messages(archive, chunk_bytes)
    uid = msgs[0]["id"]
    base = f"{prefix}/{device}"
    result: Dict[str, Any] = {}
    done, subscribed = threading.Event(), threading.Event()

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            c.subscribe(f"{base}/cmd/result", qos=1)

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        if isinstance(body, dict) and body.get("cmd") == "update" and body.get("id") == uid:
            result.update(body)
            done.set()

    c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                    client_id=f"edge-deploy-{uuid.uuid4().hex[:8]}")
    if username:
        c.username_pw_set(username, password)
    if tls_ca:
        c.tls_set(ca_certs=tls_ca)
    c.on_connect, c.on_message = on_connect, on_message
    c.on_subscribe = lambda *_: subscribed.set()
    c.connect(host, port, keepalive=30)
    c.loop_start()
    try:
        if not subscribed.wait(10):
            raise TimeoutError(f"could not subscribe on {host}:{port}")
        for m in msgs:
            c.publish(f"{base}/cmd", json.dumps(m, separators=(",", ":")), qos=1).wait_for_publish(timeout)
        if not done.wait(timeout):
            raise TimeoutError(f"device {device} did not answer the update within {timeout:g} s")
        return result
    finally:
        c.disconnect()
        c.loop_stop()
