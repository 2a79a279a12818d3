"""MQTT side of the device: availability, events through the outbox, stats, discovery, commands.

Topic layout (``P`` = ``topic_prefix``, ``D`` = device id, ``C`` = camera); docs/MQTT.md has payloads::

    P/D/status            retained "online" / "offline" (last will), QoS 1
    P/D/event/C           event JSON (schemas/event.schema.json), QoS 1, through the outbox
    P/D/snapshot/C        JPEG bytes of an event's frame, QoS 1, through the outbox
    P/D/heatmap/C         JPEG bytes of an event's error map, QoS 1, through the outbox
    P/D/stats             stats JSON, QoS 0 (fine to lose)
    P/D/cmd               commands to the device (JSON), subscribed at QoS 1
    P/D/cmd/result        results of commands (JSON), QoS 1
    homeassistant/...     retained Home Assistant discovery configs

The device id is always the second-to-last-but-one level and the message kind a fixed level, so a
fleet can share the load with ``$share/GROUP/P/+/event/+``.

Delivery: :meth:`Publisher.publish_event` writes the event and its binaries to the
:class:`~edge_detect.outbox.Outbox` in one transaction and returns; a sender thread hands rows to
paho in ``seq`` order with at most ``max_inflight`` unacknowledged, and deletes a row only when
paho reports its PUBACK (``on_publish``; PUBCOMP at QoS 2). After a reconnect paho resends the
rows it already had in flight (same order), and the sender waits for those before sending newer
ones, so order holds. After a process restart everything left in the outbox is sent again from
the oldest, with the original payload and event id. Subscribers drop duplicates by event id.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import socket
import sqlite3
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from . import __version__
from .events import check_level, iso_utc
from .logs import event as _ev
from .outbox import Item, Message, Outbox
from .validate import ConfigError, unknown_keys

log = logging.getLogger("edge_detect.publisher")


class _QuietPahoNoise(logging.Filter):
    # paho 2.2's network thread logs "Client is not connected" at ERROR on every clean
    # disconnect and while reconnecting, and "failed to receive on socket: ERR" / "timeout on
    # socket: ERR" at ERROR just before a lost connection (on a send error too); the publisher logs
    # disconnects itself, once, in words (mqtt_disconnected), with ERR kept here as its ``error``.
    # Kept per thread: each client's network thread logs the error and then runs its on_disconnect.
    socket_errors: Dict[int, str] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        if msg.startswith(("failed to receive on socket", "timeout on socket")):
            err = record.args[0] if isinstance(record.args, tuple) and record.args else None
            self.socket_errors[threading.get_ident()] = str(err) if err is not None else record.getMessage()
            return False
        return not msg.startswith("Client is not connected")


_paho_log = logging.getLogger("edge_detect.paho")
_paho_log.addFilter(_QuietPahoNoise())

PROTOCOLS = {"3.1.1": mqtt.MQTTv311, "5": mqtt.MQTTv5}
_OBJECT_ID = re.compile(r"[^a-zA-Z0-9_-]")


# -- configuration ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TlsConfig:
    """TLS for the broker connection. Paths are checked to exist when the config is read."""

    ca_file: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    insecure: bool = False  # skip the host name check (self-signed lab brokers); never the chain check


@dataclass(frozen=True)
class MqttConfig:
    """The ``[mqtt]`` table of the daemon config. The password itself is never stored here.

    ``keepalive`` and the reconnect delays are seconds. ``qos`` applies to events, snapshots and
    heatmaps (1 or 2). ``max_inflight`` bounds unacknowledged outbox messages on the wire.
    """

    host: str = "localhost"
    port: int = 1883
    protocol: str = "3.1.1"
    client_id: Optional[str] = None
    topic_prefix: str = "edge-detect"
    keepalive: int = 30
    username: Optional[str] = None
    password_file: Optional[str] = None
    password_env: Optional[str] = None
    tls: Optional[TlsConfig] = None
    qos: int = 1
    max_inflight: int = 20
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 30.0
    discovery: bool = True
    discovery_prefix: str = "homeassistant"
    discovery_off_delay_s: int = 30
    where: str = field(default="mqtt", repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "mqtt") -> MqttConfig:
        """Validate a config table; raise :class:`ConfigError` (``"<where>.<key>: must be ..."``) naming
        every unknown key and the first other problem."""
        if not isinstance(d, Mapping):
            raise ConfigError([f"{where}: must be a table"])
        unknown = unknown_keys(d, [f for f in cls.__dataclass_fields__ if f != "where"], where)
        if isinstance(d.get("tls"), Mapping):
            unknown += unknown_keys(d["tls"], TlsConfig.__dataclass_fields__, f"{where}.tls")
        try:
            cfg = cls._build(d, where)
        except ValueError as e:
            # Unknown keys are ignored here, so the value problems are found in the same run.
            raise ConfigError([*unknown, str(e)]) from None
        if unknown:
            raise ConfigError(unknown)
        return cfg

    @classmethod
    def _build(cls, d: Mapping[str, Any], where: str) -> MqttConfig:
        v = _Check(d, where)
        tls = None
        if "tls" in d:
            t = d["tls"]
            if t is not None and t is not False:
                if t is True:
                    t = {}
                if not isinstance(t, Mapping):
                    raise ValueError(f"{where}.tls: must be a table (or true for the system CAs), got {t!r}")
                tv = _Check(t, f"{where}.tls")
                tls = TlsConfig(
                    ca_file=tv.file("ca_file"),
                    cert_file=tv.file("cert_file"),
                    key_file=tv.file("key_file"),
                    insecure=tv.boolean("insecure", False),
                )
                if (tls.cert_file is None) != (tls.key_file is None):
                    given, missing = ("cert_file", "key_file") if tls.key_file is None else ("key_file", "cert_file")
                    raise ValueError(f"{where}.tls.{missing}: must be given with {where}.tls.{given}")
                try:
                    check_tls_files(tls.ca_file, tls.cert_file, tls.key_file)
                except ValueError as e:
                    raise ValueError(f"{where}.tls: {e}") from None
        protocol = d.get("protocol", "3.1.1")
        protocol = str(protocol) if isinstance(protocol, (str, int)) and not isinstance(protocol, bool) else protocol
        if protocol in ("5.0",):
            protocol = "5"
        if protocol not in PROTOCOLS:
            raise ValueError(f'{where}.protocol: must be "3.1.1" or "5", got {d.get("protocol")!r}')
        cfg = cls(
            host=v.string("host", "localhost"),
            port=v.integer("port", 8883 if tls else 1883, 1, 65535),
            protocol=protocol,
            client_id=v.string("client_id", None, optional=True),
            topic_prefix=v.string("topic_prefix", "edge-detect"),
            keepalive=v.integer("keepalive", 30, 5, 3600),
            username=v.string("username", None, optional=True),
            password_file=v.string("password_file", None, optional=True),
            password_env=v.string("password_env", None, optional=True),
            tls=tls,
            qos=v.integer("qos", 1, 1, 2),
            max_inflight=v.integer("max_inflight", 20, 1, 1000),
            reconnect_min_s=v.number("reconnect_min_s", 1.0, 0.1, 3600),
            reconnect_max_s=v.number("reconnect_max_s", 30.0, 0.1, 3600),
            discovery=v.boolean("discovery", True),
            discovery_prefix=v.string("discovery_prefix", "homeassistant"),
            discovery_off_delay_s=v.integer("discovery_off_delay_s", 30, 0, 86400),
            where=where,
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Cross-field checks (also run by :meth:`from_dict`)."""
        w = self.where
        if self.password_file and self.password_env:
            raise ValueError(f"{w}.password_env: must not be given with {w}.password_file (give one)")
        if (self.password_file or self.password_env) and not self.username:
            raise ValueError(f"{w}.username: must be given when a password is configured")
        if self.password_file and not Path(self.password_file).is_file():
            raise ValueError(f"{w}.password_file: no such file: {self.password_file}")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError(f"{w}.reconnect_min_s: must be <= {w}.reconnect_max_s ({self.reconnect_max_s:g})")
        prefix = self.topic_prefix
        if not prefix or prefix.startswith("/") or prefix.endswith("/") or set("+#\0") & set(prefix):
            raise ValueError(f"{w}.topic_prefix: must be a topic without '+', '#' or a leading/trailing '/', "
                             f"got {prefix!r}")
        if self.client_id is not None and not (1 <= len(self.client_id.encode()) <= 65535):
            raise ValueError(f"{w}.client_id: must be 1..65535 bytes of UTF-8")

    def password(self) -> Optional[str]:
        """Read the password from ``password_file`` (trailing newline stripped) or ``password_env``."""
        w = self.where
        if self.password_file:
            try:
                pw = Path(self.password_file).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as e:
                raise ValueError(f"{w}.password_file: cannot read {self.password_file}: {e.strerror}") from None
            if not pw:
                raise ValueError(f"{w}.password_file: {self.password_file} is empty")
            return pw
        if self.password_env:
            pw = os.environ.get(self.password_env)
            if not pw:
                raise ValueError(f"{w}.password_env: environment variable {self.password_env} is not set or empty")
            return pw
        return None


class _Check:
    """Typed getters for one config table; every error names ``where.key``."""

    def __init__(self, d: Mapping[str, Any], where: str) -> None:
        self.d, self.where = d, where

    def string(self, key: str, default: Optional[str], optional: bool = False) -> Optional[str]:
        if key not in self.d:
            return default
        val = self.d[key]
        if not isinstance(val, str) or (not val and not optional) or (optional and val == ""):
            raise ValueError(f"{self.where}.{key}: must be a non-empty string, got {val!r}")
        return val

    def integer(self, key: str, default: int, lo: int, hi: int) -> int:
        if key not in self.d:
            return default
        val = self.d[key]
        if isinstance(val, bool) or not isinstance(val, int) or not lo <= val <= hi:
            raise ValueError(f"{self.where}.{key}: must be an integer {lo}..{hi}, got {val!r}")
        return val

    def number(self, key: str, default: float, lo: float, hi: float) -> float:
        if key not in self.d:
            return default
        val = self.d[key]
        if isinstance(val, bool) or not isinstance(val, (int, float)) or not lo <= val <= hi:
            raise ValueError(f"{self.where}.{key}: must be a number {lo:g}..{hi:g}, got {val!r}")
        return float(val)

    def boolean(self, key: str, default: bool) -> bool:
        if key not in self.d:
            return default
        val = self.d[key]
        if not isinstance(val, bool):
            raise ValueError(f"{self.where}.{key}: must be true or false, got {val!r}")
        return val

    def file(self, key: str) -> Optional[str]:
        val = self.string(key, None, optional=True)
        if val is not None and not Path(val).is_file():
            raise ValueError(f"{self.where}.{key}: no such file: {val}")
        return val


def check_tls_files(ca_file: Optional[str], cert_file: Optional[str] = None, key_file: Optional[str] = None) -> None:
    """Load the TLS files as paho's ``tls_set`` will; raise a one-line ValueError naming the one that fails.

    Without this, a file that is no PEM surfaces as an ``ssl.SSLError`` traceback when the client is made.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    what = f"CA file {ca_file}"
    try:
        if ca_file:
            ctx.load_verify_locations(ca_file)
        what = f"certificate {cert_file} with key {key_file}"
        if cert_file:
            # A password-protected key can't be used unattended: fail here instead of prompting for it.
            ctx.load_cert_chain(cert_file, key_file, password="")
    except (ssl.SSLError, OSError) as e:
        reason = (e.reason if isinstance(e, ssl.SSLError) else e.strerror) or str(e)
        raise ValueError(f"{what}: not usable for TLS ({reason})") from None


# -- the publisher ---------------------------------------------------------------------------
CommandCallback = Callable[[Dict[str, Any]], None]


def _error_text(e: BaseException) -> str:
    """A connection error in the OS's (or TLS's) words: "Connection refused", "Name or service not known"."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"TLS certificate verify failed: {e.verify_message or e.reason}"
    if isinstance(e, ssl.SSLError):
        return f"TLS handshake failed: {e.reason or e}"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


class Publisher:
    """One MQTT connection per daemon. Thread-safe: call ``publish_*`` from any thread.

    ``on_command`` gets each valid JSON object from ``P/D/cmd`` (it has a string ``"cmd"``) on a
    dedicated thread, one at a time, so a slow reload does not stall the MQTT network loop.
    The outbox belongs to the caller, who closes it after :meth:`stop`.
    """

    # After a reconnect, how long to wait for paho to resend what it had in flight before giving
    # up on those and resending from the outbox (duplicates, never loss). Seconds.
    RESEND_WAIT_S = 15.0
    # Failed connection attempts are logged (mqtt_connect_failed) at the first, at each new reason,
    # and otherwise after quiet periods that double from FAIL_LOG_S up to FAIL_LOG_MAX_S: paho
    # retries every reconnect_min_s..reconnect_max_s, and a line per retry would flood the journal.
    FAIL_LOG_S = 60.0
    FAIL_LOG_MAX_S = 600.0

    def __init__(
        self,
        cfg: MqttConfig,
        device_id: str,
        outbox: Outbox,
        *,
        cameras: Sequence[str] = (),
        on_command: Optional[CommandCallback] = None,
    ) -> None:
        self.cfg = cfg
        self.device = check_level(device_id, "device id")
        self.outbox = outbox
        self.cameras: List[str] = [check_level(c, "camera") for c in cameras]
        self.on_command = on_command
        self.base = f"{cfg.topic_prefix}/{self.device}"
        self.v5 = cfg.protocol == "5"
        self._cv = threading.Condition()
        self._connected = False
        self._stopping = False
        self._kick = True
        self._inflight: Dict[int, int] = {}  # paho mid -> outbox seq
        self._early: Dict[int, float] = {}  # mids acknowledged before publish() returned them
        self._direct: set = set()  # mids of status / discovery / results (not outbox rows)
        self._acked: List[int] = []
        self._last_sent = 0  # highest seq handed to paho since start or since a resend-all
        self._resend_since: Optional[float] = None
        self._counts = {"connects": 0, "disconnects": 0, "connect_failures": 0, "sent": 0, "acked": 0,
                        "refused": 0, "commands": 0}
        # Failed attempts since the last connection (paho's network thread only).
        self._failed = 0
        self._offline_since = time.monotonic()
        self._fail_reasons: set = set()
        self._fail_logged_at = 0.0
        self._fail_log_every = self.FAIL_LOG_S
        self._refused = False  # the broker refused the CONNECT: its on_disconnect is no new failure
        self._connected_once = threading.Event()
        self._gone = threading.Event()
        self._started = time.monotonic()
        self._commands: queue.Queue = queue.Queue()
        self._threads: List[threading.Thread] = []
        self.client = self._make_client()

    # topics ---------------------------------------------------------------------------------
    def topic(self, kind: str, camera: Optional[str] = None) -> str:
        """``P/D/kind`` or ``P/D/kind/camera``; kind is event, snapshot, heatmap, stats, status or cmd."""
        return f"{self.base}/{kind}" if camera is None else f"{self.base}/{kind}/{check_level(camera, 'camera')}"

    @property
    def status_topic(self) -> str:
        return self.topic("status")

    @property
    def cmd_topic(self) -> str:
        return self.topic("cmd")

    @property
    def connected(self) -> bool:
        return self._connected

    # lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background (the broker may be down at boot) and start the sender."""
        cfg = self.cfg
        log.info(
            "mqtt: connecting to %s:%d (MQTT %s, client id %s, tls %s, user %s)",
            cfg.host, cfg.port, cfg.protocol, self.client_id, "on" if cfg.tls else "off",
            cfg.username or "-",
        )
        kw: Dict[str, Any] = {}
        if self.v5:
            kw["clean_start"] = True
        self._offline_since = time.monotonic()
        self.client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive, **kw)
        self.client.loop_start()
        for target, name in ((self._send_loop, "outbox-sender"), (self._command_loop, "mqtt-commands")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def wait_connected(self, timeout: float = 10.0) -> bool:
        """Block until the first successful connection, up to ``timeout`` s."""
        return self._connected_once.wait(timeout)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the outbox is empty and nothing is in flight; False on timeout (s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._cv:
                idle = not self._inflight and not self._acked
            if idle and self.outbox.depth() == 0:
                return True
            time.sleep(0.02)
        return False

    def stop(self, clean: bool = True, timeout: float = 5.0) -> None:
        """Publish ``offline`` and disconnect. ``clean`` first waits up to ``timeout`` s for the outbox
        to drain; without it the backlog simply stays in the outbox for the next start."""
        if clean and self._connected:
            self.flush(timeout)
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self._commands.put(None)
        for t in self._threads:
            t.join(timeout=5)
        if self._connected:
            info = self.client.publish(self.status_topic, b"offline", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=2.0)
            except (RuntimeError, ValueError):
                pass  # lost connection meanwhile: the broker publishes the last will instead
        self._gone.clear()
        sent = self.client.disconnect() == mqtt.MQTT_ERR_SUCCESS
        # Wait for paho to write the DISCONNECT: loop_stop() at once can drop it, and the broker
        # would then treat the stop as a crash.
        if sent:
            self._gone.wait(2.0)
        self.client.loop_stop()
        with self._cv:
            late, self._acked = self._acked, []
        if late:
            try:
                self.outbox.ack_many(late)
            except sqlite3.Error:
                pass  # resent after the next start; subscribers drop duplicates by event id
        log.info("mqtt: stopped (%d messages left in the outbox)", self.outbox.depth())

    # publishing -----------------------------------------------------------------------------
    def publish_event(
        self, event: Dict[str, Any], snapshot: Optional[bytes] = None, heatmap: Optional[bytes] = None
    ) -> str:
        """Queue an event (and its JPEG snapshot / heatmap) durably; return the event id.

        Fills ``event["snapshot"]`` / ``event["heatmap"]`` references. Raises
        :class:`~edge_detect.outbox.OutboxFull` when the outbox policy refuses it.
        """
        camera = check_level(event["camera"], "camera")
        eid = event["event_id"]
        qos = self.cfg.qos
        user = [["event_id", eid]]
        binaries = []
        for kind, data in (("snapshot", snapshot), ("heatmap", heatmap)):
            if data:
                topic = self.topic(kind, camera)
                event[kind] = {"topic": topic, "event_id": eid, "content_type": "image/jpeg", "bytes": len(data)}
                binaries.append(Message(topic, bytes(data), qos, False, {"user": user, "content_type": "image/jpeg"}))
            else:
                event[kind] = None
        payload = json.dumps(event, separators=(",", ":"), allow_nan=False).encode()
        # Event first: a subscriber alerts at once, and under MQTT 3.1.1 binds the binaries that
        # follow on the same connection to the last event of that camera.
        msgs = [Message(self.topic("event", camera), payload, qos, False, {"user": user,
                                                                             "content_type": "application/json"})]
        self.outbox.put_many(msgs + binaries)
        with self._cv:
            self._kick = True
            self._cv.notify_all()
        return eid

    def publish_stats(self, stats: Mapping[str, Any]) -> None:
        """Publish stats JSON at QoS 0, not through the outbox; outbox and MQTT counters are added."""
        now = time.time()
        body = {
            "schema_version": 1,
            "device": self.device,
            "at": iso_utc(now),
            "at_ms": int(now * 1000),
            **stats,
            "outbox": self.outbox.stats(),
            "mqtt": self.stats(),
        }
        self._publish_direct(self.topic("stats"), json.dumps(body, separators=(",", ":"), default=str).encode(), qos=0)

    def publish_discovery(self, cameras: Optional[Sequence[str]] = None) -> None:
        """Retained Home Assistant discovery for each camera (binary_sensor problem + score sensor).

        Also re-sent on every reconnect, so a restarted Home Assistant sees the device again.
        """
        if cameras is not None:
            self.cameras = [check_level(c, "camera") for c in cameras]
        if not self.cfg.discovery:
            return
        for topic, payload in self.discovery_messages():
            self._publish_direct(topic, json.dumps(payload).encode(), qos=1, retain=True)

    def discovery_messages(self) -> List[tuple]:
        """(topic, payload dict) of every discovery config for the current cameras."""
        pre = self.cfg.discovery_prefix
        dev = {
            "identifiers": [f"edge_detect_{_OBJECT_ID.sub('_', self.device)}"],
            "name": f"edge-detect {self.device}",
            "manufacturer": "edge-detect",
            "model": "edge-detect daemon",
            "sw_version": __version__,
        }
        avail = {"availability_topic": self.status_topic, "payload_available": "online",
                 "payload_not_available": "offline"}
        out = []
        for cam in self.cameras:
            oid = _OBJECT_ID.sub("_", f"{self.device}_{cam}")
            ev = self.topic("event", cam)
            out.append((f"{pre}/binary_sensor/{oid}/config", {
                "name": f"{cam} anomaly",
                "unique_id": f"edge_detect_{oid}_anomaly",
                "device_class": "problem",
                "state_topic": ev,
                "value_template": "{{ 'ON' if value_json.verdict == 'anomaly' else 'OFF' }}",
                "json_attributes_topic": ev,
                "off_delay": self.cfg.discovery_off_delay_s,
                "qos": 1,
                "device": dev,
                **avail,
            }))
            out.append((f"{pre}/sensor/{oid}_score/config", {
                "name": f"{cam} score",
                "unique_id": f"edge_detect_{oid}_score",
                "state_topic": ev,
                "value_template": "{{ value_json.score_normalised }}",
                "state_class": "measurement",
                "icon": "mdi:chart-bell-curve",
                "qos": 1,
                "device": dev,
                **avail,
            }))
        return out

    def report(self, command: Mapping[str, Any], ok: bool, detail: str = "", **fields: Any) -> None:
        """Publish a command's result on ``P/D/cmd/result`` (QoS 1, not retained, not via the outbox)."""
        now = time.time()
        body = {
            "id": command.get("id"),
            "cmd": command.get("cmd"),
            "ok": bool(ok),
            "detail": detail,
            "device": self.device,
            "at": iso_utc(now),
            "at_ms": int(now * 1000),
            **fields,
        }
        self._publish_direct(self.topic("cmd") + "/result", json.dumps(body, default=str).encode(), qos=1)

    def publish_status_detail(self, kind: str, body: Mapping[str, Any]) -> None:
        """Retained JSON on ``P/D/status/<kind>`` (e.g. the last model update and why it was refused).

        A sub-level of ``status``: ``P/D/status`` itself stays the plain ``online``/``offline``
        availability that Home Assistant and ``P/+/status`` subscribers read.
        """
        topic = f"{self.status_topic}/{check_level(kind, 'status kind')}"
        self._publish_direct(topic, json.dumps(body, default=str).encode(), qos=1, retain=True)

    def stats(self) -> Dict[str, Any]:
        """Connection state and counters (messages sent / acknowledged / refused by the broker)."""
        with self._cv:
            return {"connected": self._connected, "inflight": len(self._inflight), **self._counts}

    # paho plumbing --------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        cfg = self.cfg
        self.client_id = client_id = cfg.client_id or f"edge-detect-{self.device}-{socket.gethostname()}"[:64]
        kw: Dict[str, Any] = {"callback_api_version": mqtt.CallbackAPIVersion.VERSION2, "client_id": client_id,
                              "protocol": PROTOCOLS[cfg.protocol]}
        if not self.v5:
            # The outbox, not the broker session, carries unacknowledged messages across restarts.
            kw["clean_session"] = True
        c = mqtt.Client(**kw)
        # paho logs packet headers only (never the CONNECT password); useful at debug level.
        c.enable_logger(_paho_log)
        if cfg.username:
            c.username_pw_set(cfg.username, cfg.password())
        if cfg.tls:
            c.tls_set(ca_certs=cfg.tls.ca_file, certfile=cfg.tls.cert_file, keyfile=cfg.tls.key_file)
            c.tls_insecure_set(cfg.tls.insecure)
        c.will_set(self.status_topic, b"offline", qos=1, retain=True)
        c.reconnect_delay_set(min_delay=cfg.reconnect_min_s, max_delay=cfg.reconnect_max_s)  # type: ignore[arg-type]
        # Room for the outbox window plus status / discovery / results beside it.
        c.max_inflight_messages_set(cfg.max_inflight + 20)
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        return c

    def _publish_direct(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        with self._cv:
            # Not an outbox row: its PUBACK must not be taken for an outbox message's (mids wrap).
            if self._early.pop(info.mid, None) is None:
                self._direct.add(info.mid)

    @property
    def _broker(self) -> str:
        return f"{self.cfg.host}:{self.cfg.port}"

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho gives no error to this callback, but calls it inside the ``except OSError`` around
        # its reconnect() (loop_forever), so the error is the exception being handled.
        err = sys.exc_info()[1]
        self._connect_failed(_error_text(err) if err else "unknown error", str(err) if err else None)

    def _log_due(self, reason: str, now: float) -> bool:
        """Whether a failed attempt is logged: the first of each reason, then after quiet periods
        that double from FAIL_LOG_S (paho's network thread only)."""
        if reason in self._fail_reasons:
            if now - self._fail_logged_at < self._fail_log_every:
                return False
            self._fail_log_every = min(self._fail_log_every * 2, self.FAIL_LOG_MAX_S)
        self._fail_reasons.add(reason)
        self._fail_logged_at = now
        return True

    def _connect_failed(self, reason: str, error: Optional[str]) -> None:
        """Count a failed connection attempt; log it unless the same reason was logged recently."""
        now = time.monotonic()
        with self._cv:
            self._counts["connect_failures"] += 1
            stopping = self._stopping
        self._failed += 1
        if stopping or not self._log_due(reason, now):
            return
        depth = self.outbox.depth()
        offline = now - self._offline_since
        what = "reconnect" if self._connected_once.is_set() else "connect"
        if self._failed == 1:
            log.warning("mqtt: cannot %s to %s: %s; retrying every %g..%g s; %s messages in the outbox", what,
                        self._broker, reason, self.cfg.reconnect_min_s, self.cfg.reconnect_max_s, depth,
                        extra=_ev("mqtt_connect_failed", broker=self._broker, reason=reason, error=error,
                                  failed_attempts=1, offline_s=round(offline, 1), outbox_depth=depth))
        else:
            log.warning("mqtt: still cannot %s to %s: %s (%d failed attempts in %.0f s); %s messages in the "
                        "outbox", what, self._broker, reason, self._failed, offline, depth,
                        extra=_ev("mqtt_connect_failed", broker=self._broker, reason=reason, error=error,
                                  failed_attempts=self._failed, offline_s=round(offline, 1), outbox_depth=depth))

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            # e.g. "Not authorized" / "Bad user name or password": paho keeps retrying with backoff.
            self._refused = True
            self._failed += 1
            with self._cv:
                self._counts["connect_failures"] += 1
            if self._log_due(f"refused: {reason}", time.monotonic()):  # a wrong password retries for ever
                log.error("mqtt: broker %s refused the connection: %s (%d failed attempts)", self._broker, reason,
                          self._failed, extra=_ev("mqtt_refused", broker=self._broker, reason=str(reason),
                                                  failed_attempts=self._failed))
            return
        failed, offline = self._failed, time.monotonic() - self._offline_since
        self._failed, self._fail_reasons, self._fail_log_every = 0, set(), self.FAIL_LOG_S
        if failed:
            log.info("mqtt: connected to %s after %d failed attempts in %.0f s", self._broker, failed, offline,
                     extra=_ev("mqtt_connected", broker=self._broker, failed_attempts=failed,
                               offline_s=round(offline, 1)))
        else:
            log.info("mqtt: connected to %s", self._broker,
                     extra=_ev("mqtt_connected", broker=self._broker, failed_attempts=0, offline_s=round(offline, 1)))
        self._publish_direct(self.status_topic, b"online", qos=1, retain=True)
        client.subscribe(self.cmd_topic, qos=1)
        self.publish_discovery()
        with self._cv:
            self._connected = True
            self._counts["connects"] += 1
            if self._inflight:
                self._resend_since = time.monotonic()
            self._kick = True
            self._cv.notify_all()
        self._connected_once.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._gone.set()
        with self._cv:
            was = self._connected
            self._connected = False
            if was:
                self._counts["disconnects"] += 1
            self._cv.notify_all()
            stopping = self._stopping
        # The socket error paho logged just before (see _QuietPahoNoise), or the one it is handling
        # (a failed PINGREQ send); paho itself only passes "Unspecified error" for a lost connection.
        error = _QuietPahoNoise.socket_errors.pop(threading.get_ident(), None)
        if error is None and sys.exc_info()[1] is not None:
            error = str(sys.exc_info()[1]) or type(sys.exc_info()[1]).__name__
        refused, self._refused = self._refused, False
        if getattr(flags, "is_disconnect_packet_from_server", False):
            # An MQTT 5 DISCONNECT from the broker: "Server shutting down", "Session taken over" ...
            why = f"the broker disconnected us ({reason})"
            error = error or (str(reason) if getattr(reason, "is_failure", False) else None)
        elif str(reason) == "Keep alive timeout":
            why = f"no reply from the broker within the keepalive ({self.cfg.keepalive} s)"
            error = error or "keepalive timeout"
        elif error:
            why = "connection lost"
        elif str(reason) == "Unspecified error":
            why = "the broker closed the connection"  # end of stream: no error on this side
        else:  # e.g. a protocol error paho found in what the broker sent
            why, error = f"connection lost ({reason})", str(reason)
        if stopping or (refused and not was):
            return  # a refused CONNECT is logged as mqtt_refused
        if not was:
            # Closed before CONNACK (not an MQTT broker, a TLS port spoken to in plain TCP ...).
            self._connect_failed("the connection closed before the broker answered CONNECT", error)
            return
        self._offline_since = time.monotonic()
        depth = self.outbox.depth()
        log.warning("mqtt: disconnected from %s: %s%s; %s messages in the outbox", self._broker, why,
                    f" ({error})" if error and why == "connection lost" else "", depth,
                    extra=_ev("mqtt_disconnected", broker=self._broker, reason=why, error=error, outbox_depth=depth))

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        refused = reason is not None and getattr(reason, "is_failure", False)
        with self._cv:
            if mid in self._direct:
                self._direct.discard(mid)
                return
            seq = self._inflight.pop(mid, None)
            if seq is None:
                self._early[mid] = time.monotonic()
                return
            if refused:
                # An MQTT 5 PUBACK with an error (not authorised, quota...): resending cannot succeed,
                # and keeping it would block everything behind it. Count it and let it go.
                self._counts["refused"] += 1
                log.error("mqtt: broker refused outbox message %d: %s", seq, reason,
                          extra=_ev("message_refused", seq=seq, reason=str(reason)))
            self._acked.append(seq)
            self._kick = True
            self._cv.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic != self.cmd_topic:
            return
        if msg.retain:
            # A retained "capture now" would fire again on every reconnect.
            log.warning("mqtt: ignoring a retained command on %s", msg.topic,
                        extra=_ev("command_ignored", topic=msg.topic, error="retained"))
            return
        try:
            cmd = json.loads(msg.payload)
        except (ValueError, UnicodeDecodeError):
            log.warning("mqtt: command on %s is not JSON (%d bytes)", msg.topic, len(msg.payload),
                        extra=_ev("command_ignored", topic=msg.topic, error="not JSON"))
            self.report({"cmd": None}, False, "command is not JSON")
            return
        if not isinstance(cmd, dict) or not isinstance(cmd.get("cmd"), str):
            bad = cmd if isinstance(cmd, dict) else {}
            self.report(bad, False, 'command must be a JSON object with a string "cmd"')
            return
        self._commands.put(cmd)

    def _command_loop(self) -> None:
        while True:
            cmd = self._commands.get()
            if cmd is None:
                return
            with self._cv:
                self._counts["commands"] += 1
            if self.on_command is None:
                self.report(cmd, False, "this device takes no commands")
                continue
            try:
                self.on_command(cmd)
            except Exception as e:  # a bad command must not kill the command thread
                log.exception("mqtt: command %r failed", cmd.get("cmd"))
                self.report(cmd, False, f"{type(e).__name__}: {e}")

    def _send_loop(self) -> None:
        max_inflight = self.cfg.max_inflight
        failing = False
        while True:
            with self._cv:
                self._cv.wait_for(
                    lambda: self._stopping or self._acked or self._resend_since is not None
                    or (self._kick and self._connected and len(self._inflight) < max_inflight),
                    timeout=1.0,
                )
                acks, self._acked = self._acked, []
                stopping = self._stopping
                if self._early:
                    old = time.monotonic() - 60.0
                    self._early = {m: t for m, t in self._early.items() if t > old}
                send = self._connected and len(self._inflight) < max_inflight
                if self._resend_since is not None:
                    if not self._inflight:
                        self._resend_since = None
                    elif time.monotonic() - self._resend_since > self.RESEND_WAIT_S:
                        log.warning("mqtt: %d in-flight messages not acknowledged after reconnect; resending "
                                    "from the outbox", len(self._inflight),
                                    extra=_ev("mqtt_resend", messages=len(self._inflight)))
                        self._inflight.clear()
                        self._last_sent = 0
                        self._resend_since = None
                    else:
                        send = False  # paho is resending the old window first: keep the order
                room = max_inflight - len(self._inflight)
                after = self._last_sent
                if send:
                    self._kick = False
            try:
                if acks:
                    n = self.outbox.ack_many(acks)
                    with self._cv:
                        self._counts["acked"] += n
                if stopping:
                    return
                if not send:
                    continue
                items = self.outbox.pending(room, after)
            except sqlite3.Error as e:
                # Disk full or failing: this thread must outlive it and try again each second.
                if not failing:
                    log.error("mqtt: outbox %s unusable, delivery paused: %s", self.outbox.path, e,
                              extra=_ev("delivery_paused", path=str(self.outbox.path), error=str(e)))
                failing = True
                if stopping:
                    return
                with self._cv:
                    self._acked = acks + self._acked  # deleted once the outbox takes writes again
                    self._kick = True
                    if self._cv.wait_for(lambda: self._stopping, timeout=1.0):
                        return
                continue
            if failing:
                log.info("mqtt: outbox %s usable again, delivery resumed", self.outbox.path,
                         extra=_ev("delivery_resumed", path=str(self.outbox.path)))
                failing = False
            for it in items:
                self._send(it)
            if len(items) == room:
                with self._cv:
                    self._kick = True  # there may be more behind the window

    def _send(self, it: Item) -> None:
        props = None
        if self.v5 and it.props:
            props = Properties(PacketTypes.PUBLISH)
            if it.props.get("user"):
                props.UserProperty = [tuple(p) for p in it.props["user"]]
            if it.props.get("content_type"):
                props.ContentType = it.props["content_type"]
        try:
            info = self.client.publish(it.topic, it.payload, qos=it.qos, retain=it.retain, properties=props)
        except (ValueError, TypeError) as e:
            # Only a malformed row gets here (it can never be sent); drop it rather than block the queue.
            log.error("mqtt: cannot publish outbox message %d on %s: %s; dropping it", it.seq, it.topic, e,
                      extra=_ev("message_dropped", seq=it.seq, topic=it.topic, error=str(e)))
            with self._cv:
                self._counts["refused"] += 1
                self._acked.append(it.seq)
                self._last_sent = max(self._last_sent, it.seq)
            return
        with self._cv:
            self._counts["sent"] += 1
            self._last_sent = max(self._last_sent, it.seq)
            if self._early.pop(info.mid, None) is not None:
                self._acked.append(it.seq)
                self._cv.notify_all()
            else:
                self._inflight[info.mid] = it.seq
