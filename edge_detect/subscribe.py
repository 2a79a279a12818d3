"""The user's side: receive alerts from one device or a fleet, dedupe by event id, save snapshots.

Backs ``edge-detect subscribe``. With ``session_id`` the subscriber keeps a persistent session
(MQTT 3.1.1 ``clean_session=False``; MQTT 5 ``clean_start=False`` plus a session expiry) under
that fixed client id, so the broker queues QoS 1 events for it while it is away.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .events import check_level

_SAFE = re.compile(r"[^A-Za-z0-9._-]")
DEDUPE_WINDOW = 100_000  # event ids remembered for deduplication


@dataclass(frozen=True)
class BrokerOptions:
    """How to reach the broker. ``session_expiry_s`` applies with a persistent session under MQTT 5."""

    host: str = "localhost"
    port: int = 1883
    protocol: str = "5"
    username: Optional[str] = None
    password: Optional[str] = None
    tls_ca: Optional[str] = None
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    tls_insecure: bool = False
    session_id: Optional[str] = None
    session_expiry_s: int = 7 * 86400
    keepalive: int = 30


def parse_broker(text: str) -> Tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` -> (host, port); default port 1883."""
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:]+)(?::(\d+))?", text.strip())
    if not m:
        raise ValueError(f"--broker must be host or host:port, not {text!r}")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4) or 1883)
    if not 1 <= port <= 65535:
        raise ValueError(f"--broker port must be 1..65535, not {port}")
    return host, port


def _safe_name(s: str) -> str:
    s = _SAFE.sub("_", s)
    return "_" if s in ("", ".", "..") else s


class AlertSubscriber:
    """Subscribes to events (and snapshots / heatmaps when saving) and calls ``on_event`` once per id.

    ``on_event(event)`` gets each distinct event dict; ``on_status(device, "online"|"offline")``
    gets availability changes. Binaries are saved as ``DIR/<device>/<camera>/<event_id>.<kind>.jpg``.
    """

    def __init__(
        self,
        broker: BrokerOptions,
        *,
        device: str = "all",
        prefix: str = "edge-detect",
        on_event: Optional[Callable[[Dict[str, Any]], None]] = None,
        on_status: Optional[Callable[[str, str], None]] = None,
        save_dir: Optional[Path] = None,
    ) -> None:
        if device != "all":
            check_level(device, "--device")
        self.broker = broker
        self.device = device
        self.prefix = prefix
        self.on_event = on_event
        self.on_status = on_status
        self.save_dir = Path(save_dir) if save_dir else None
        self.seen: OrderedDict[str, None] = OrderedDict()
        self.duplicates = 0
        self.saved: List[Path] = []
        self.delivered = 0  # distinct events handled *and* acknowledged to the broker
        self._expected: set = set()  # (event_id, kind) referenced by events but not yet saved
        self._last_event: Dict[Tuple[str, str], str] = {}  # (device, camera) -> last event id (MQTT 3.1.1)
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._gone = threading.Event()
        self._barrier = threading.Event()
        self._barrier_mid: Optional[int] = None
        self.limit: Optional[int] = None  # stop handling (and acking) events after this many
        self._refused: Optional[str] = None
        self.client = self._make_client()

    def topics(self) -> List[str]:
        dev = "+" if self.device == "all" else self.device
        kinds = ["event", "status"] + (["snapshot", "heatmap"] if self.save_dir else [])
        return [f"{self.prefix}/{dev}/{k}" + ("" if k == "status" else "/+") for k in kinds]

    def connect(self, timeout: float = 10.0) -> None:
        """Connect and subscribe; raise ``ConnectionError`` with a one-line reason on failure."""
        b = self.broker
        kw: Dict[str, Any] = {}
        if b.protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = b.session_expiry_s if b.session_id else 0
            kw = {"clean_start": not b.session_id, "properties": props}
        try:
            self.client.connect(b.host, b.port, keepalive=b.keepalive, **kw)
        except OSError as e:
            raise ConnectionError(f"cannot connect to {b.host}:{b.port}: {e.strerror or e}") from None
        self.client.loop_start()
        if not self._connected.wait(timeout):
            self.client.loop_stop()
            raise ConnectionError(self._refused or f"no answer from {b.host}:{b.port} within {timeout:g} s")

    def close(self) -> None:
        """Disconnect cleanly: the DISCONNECT (and any queued PUBACK) is written before the loop stops."""
        if self._connected.is_set():
            # Round trip first: the broker answers the UNSUBSCRIBE only after it processed our earlier
            # PUBACKs. Closing while its data is still unread makes the kernel send a RST, and the
            # broker may then drop PUBACKs it had not read yet and replay those events next time.
            self._barrier.clear()
            _, self._barrier_mid = self.client.unsubscribe(f"{self.prefix}/$barrier/none")
            self._barrier.wait(2.0)
        self._gone.clear()
        sent = self.client.disconnect() == mqtt.MQTT_ERR_SUCCESS
        # loop_stop() right after disconnect() can end the network thread before it wrote the
        # queued packets; the broker would then replay unacknowledged events to the session.
        if sent:
            self._gone.wait(2.0)
        self.client.loop_stop()

    def run(self, count: Optional[int] = None, timeout: Optional[float] = None, grace_s: float = 2.0) -> int:
        """Block until ``count`` distinct events arrived or ``timeout`` s passed; return how many.

        When saving, waits up to ``grace_s`` more for the snapshots / heatmaps those events reference.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        self.limit = count
        while True:
            with self._lock:
                n = self.delivered
            if count is not None and n >= count:
                end = time.monotonic() + grace_s
                while self._expected and time.monotonic() < end:
                    time.sleep(0.02)
                return n
            if deadline is not None and time.monotonic() >= deadline:
                return n
            time.sleep(0.05)

    # -- paho callbacks ----------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        b = self.broker
        proto = mqtt.MQTTv5 if b.protocol == "5" else mqtt.MQTTv311
        kw: Dict[str, Any] = {"callback_api_version": mqtt.CallbackAPIVersion.VERSION2,
                              "client_id": b.session_id or "", "protocol": proto}
        if proto == mqtt.MQTTv311:
            kw["clean_session"] = not b.session_id
        c = mqtt.Client(**kw)
        if b.username:
            c.username_pw_set(b.username, b.password)
        if b.tls_ca or b.tls_cert:
            c.tls_set(ca_certs=b.tls_ca, certfile=b.tls_cert, keyfile=b.tls_key)
            c.tls_insecure_set(b.tls_insecure)
        c.reconnect_delay_set(1, 30)
        # Ack only after an event was handled, and before run() can see it: otherwise an exit right
        # after --count could leave the last PUBACK unsent and the session would replay that event.
        c.manual_ack_set(True)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.on_disconnect = lambda *a: self._gone.set()
        c.on_unsubscribe = self._on_unsubscribe
        return c

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._refused = f"broker {self.broker.host}:{self.broker.port} refused the connection: {reason}"
            client.disconnect()
            return
        # QoS 1 so that a persistent session gets events queued while this subscriber is away.
        client.subscribe([(t, 1) for t in self.topics()])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        bad = [str(r) for r in reasons if getattr(r, "is_failure", False)]
        if bad:
            self._refused = f"broker refused the subscription to {', '.join(self.topics())}: {', '.join(bad)}"
            return
        self._connected.set()  # connect() returns only once events can arrive

    def _on_unsubscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        if mid == self._barrier_mid:
            self._barrier.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self.limit is not None and self.delivered >= self.limit and self._kind(msg.topic) == "event":
            return  # not handled, so not acknowledged: a persistent session gets it next time
        new = False
        try:
            new = self._handle(msg)
        finally:
            if msg.qos:
                client.ack(msg.mid, msg.qos)
            if new:
                with self._lock:
                    self.delivered += 1

    def _kind(self, topic: str) -> Optional[str]:
        parts = topic[len(self.prefix) + 1:].split("/")
        return parts[1] if len(parts) >= 2 else None

    def _handle(self, msg: mqtt.MQTTMessage) -> bool:
        """Handle one message; True if it was a new (not duplicate) event."""
        parts = msg.topic[len(self.prefix) + 1:].split("/")
        if len(parts) == 2 and parts[1] == "status":
            if self.on_status:
                self.on_status(parts[0], msg.payload.decode(errors="replace"))
            return False
        if len(parts) != 3:
            return False
        device, kind, camera = parts
        if kind == "event":
            try:
                ev = json.loads(msg.payload)
                eid = str(ev["event_id"])
            except (ValueError, KeyError, TypeError):
                return False  # not one of ours: a subscriber must not die on a stranger's payload
            with self._lock:
                self._last_event[(device, camera)] = eid
                if eid in self.seen:
                    self.duplicates += 1
                    return False
                self.seen[eid] = None
                if len(self.seen) > DEDUPE_WINDOW:
                    self.seen.popitem(last=False)
                if self.save_dir is not None:
                    for kind in ("snapshot", "heatmap"):
                        if isinstance(ev.get(kind), dict):
                            self._expected.add((eid, kind))
            if self.on_event:
                self.on_event(ev)
            return True
        elif kind in ("snapshot", "heatmap") and self.save_dir is not None:
            eid = None
            props = getattr(msg, "properties", None)
            for k, v in getattr(props, "UserProperty", None) or []:
                if k == "event_id":
                    eid = v
            if eid is None:
                # MQTT 3.1.1: binaries follow their event on the publisher's one connection.
                eid = self._last_event.get((device, camera))
            if eid is None:
                return False
            d = self.save_dir / _safe_name(device) / _safe_name(camera)
            d.mkdir(parents=True, exist_ok=True)
            path = d / f"{_safe_name(eid)}.{kind}.jpg"
            tmp = path.with_suffix(".part")
            tmp.write_bytes(msg.payload)
            tmp.replace(path)  # a reader never sees half a JPEG
            with self._lock:
                self.saved.append(path)
                self._expected.discard((eid, kind))
        return False


def format_line(ev: Dict[str, Any]) -> str:
    """One fixed-width table row for an event (see :data:`HEADER`)."""
    model = ev.get("model") or {}
    tag = f"{model.get('name', '?')}@{model.get('version', '?')}"
    return (
        f"{ev.get('captured_at', '?'):<24}  {ev.get('device', '?'):<14}  {ev.get('camera', '?'):<10}  "
        f"{str(ev.get('verdict', '?')).upper():<7}  {ev.get('score', float('nan')):>10.4g}  "
        f"{ev.get('score_normalised', float('nan')):>6.2f}  {ev.get('threshold', float('nan')):>10.4g}  "
        f"{tag:<{MODEL_WIDTH}}  {ev.get('event_id', '?')}"
    )


MODEL_WIDTH = 22  # name@version; a longer one pushes only its own row's id to the right
HEADER = (
    f"{'CAPTURED (UTC)':<24}  {'DEVICE':<14}  {'CAMERA':<10}  {'VERDICT':<7}  {'SCORE':>10}  {'NORM':>6}  "
    f"{'THRESHOLD':>10}  {'MODEL':<{MODEL_WIDTH}}  EVENT ID"
)
