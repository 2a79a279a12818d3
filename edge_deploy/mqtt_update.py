"""Send a signed bundle to a device over MQTT (devices behind NAT) and wait for its verdict.

The archive travels base64 in ``{"cmd": "update"}`` on ``P/D/cmd`` (in parts when one message would
exceed ``max_message_bytes``), the device verifies signature and hashes, trial-loads, installs and
reloads, and answers on ``P/D/cmd/result`` (also retained on ``P/D/status/update``). See edge_detect/update.py.
"""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import paho.mqtt.client as mqtt

from edge_detect.config import DeviceConfig
from edge_detect.update import MAX_PARTS, update_messages  # MAX_PARTS: the most parts a device joins


class BrokerRefused(ConnectionError):
    """The broker refused the login (bad user name or password, not authorized); the message has its reason."""


def check_topic_names(device: str, prefix: str) -> None:
    """Raise ValueError unless ``device`` and ``prefix`` are plain topic names (no wildcards, no empty level)."""
    why = DeviceConfig(id=device).check().get("id")
    if why:
        raise ValueError(f"--device {why}")
    if not prefix or set("+#\0") & set(prefix) or "" in prefix.split("/"):
        raise ValueError(f"--prefix must be a topic without '+', '#' or an empty level ('//', a leading or "
                         f"trailing '/'), got {prefix!r}")


def _wire(m: Dict[str, Any]) -> str:
    return json.dumps(m, separators=(",", ":"))


def plan_messages(archive: Union[str, Path, bytes], max_message_bytes: int = 0) -> List[Dict[str, Any]]:
    """The update command(s) for ``archive``, each at most ``max_message_bytes`` as sent (base64 in JSON,
    about 4/3 of the archive bytes it carries); 0: one message. Raises ValueError when the limit
    is too small to carry anything or needs more than MAX_PARTS parts."""
    data = archive if isinstance(archive, bytes) else Path(archive).read_bytes()
    if max_message_bytes <= 0:
        return update_messages(data)
    # Everything but the base64, with the widest part numbers, bounds each message's overhead.
    probe = update_messages(b"\0\0", 1)[0]
    probe.update(part=MAX_PARTS - 1, parts=MAX_PARTS, archive="")
    room = max_message_bytes - len(_wire(probe).encode())
    raw = room // 4 * 3  # base64: 4 characters per 3 bytes
    if raw <= 0:
        raise ValueError(f"--chunk-kb: a message limit of {max_message_bytes} bytes leaves no room for the "
                         f"archive ({len(_wire(probe))} bytes of JSON around it)")
    msgs = update_messages(data, raw)
    if len(msgs) > MAX_PARTS:
        raise ValueError(f"--chunk-kb: messages of at most {max_message_bytes} bytes need {len(msgs)} parts; "
                         f"a device joins at most {MAX_PARTS}: raise --chunk-kb")
    return msgs


def publish_update(host: str, port: int, device: str, archive: Union[str, Path, bytes], *,
                   prefix: str = "edge-detect", chunk_bytes: int = 0, max_message_bytes: int = 0,
                   timeout: float = 60.0, username: Optional[str] = None, password: Optional[str] = None,
                   tls_ca: Optional[str] = None) -> Dict[str, Any]:
    """Publish the update and return the device's result (``{"ok": bool, "detail": ..., "update": {...}}``).

    max_message_bytes: the broker's message size limit (bytes of each JSON message sent); the
    archive goes in parts to stay under it. chunk_bytes: archive bytes per part instead (raw).
    Raises ValueError for a bad device id, prefix or size, BrokerRefused when the broker refuses
    the login, TimeoutError when the device does not answer within ``timeout`` s (offline devices
    get no queued commands: their sessions are clean).
    """
    check_topic_names(device, prefix)
    msgs = plan_messages(archive, max_message_bytes) if max_message_bytes or not chunk_bytes else \
        update_messages(archive, chunk_bytes)
    uid = msgs[0]["id"]
    base = f"{prefix}/{device}"
    result: Dict[str, Any] = {}
    done, subscribed = threading.Event(), threading.Event()
    refused: List[str] = []

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            refused.append(str(reason))
            subscribed.set()  # wakes the wait below, which then reports the broker's reason
            return
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
            raise TimeoutError(f"could not subscribe on {host}:{port} within 10 s")
        if refused:
            raise BrokerRefused(f"the broker {host}:{port} refused the connection: {refused[0]}"
                                + (" (user name or password)" if username or password else ""))
        for m in msgs:
            c.publish(f"{base}/cmd", _wire(m), qos=1).wait_for_publish(timeout)
        if not done.wait(timeout):
            biggest = max(len(_wire(m).encode()) for m in msgs)
            raise TimeoutError(f"device {device} did not answer the update within {timeout:g} s: is it online? "
                               f"If the broker's message_size_limit is below {biggest} bytes (the largest message "
                               f"sent) it dropped the update: send smaller messages with --chunk-kb")
        return result
    finally:
        c.disconnect()
        c.loop_stop()
