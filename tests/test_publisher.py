"""Publisher against a real Mosquitto on loopback: order, outages, SIGKILL, availability, config."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import jsonschema
import paho.mqtt.client as mqtt
import pytest

from edge_detect.events import build_event
from edge_detect.outbox import Outbox, OutboxFull
from edge_detect.publisher import MqttConfig, Publisher

SCHEMA = json.loads((Path(__file__).parents[1] / "edge_detect" / "schemas" / "event.schema.json").read_text())
MODEL = {"name": "casting", "version": "3", "sha256": "ab" * 32, "variant": "int8"}


class Collector:
    """A subscriber that records (topic, payload, retain, user properties); optionally persistent."""

    def __init__(self, broker, topic="edge-detect/#", client_id=None, v5=True):
        self.msgs = []
        self.cv = threading.Condition()
        kw = {"protocol": mqtt.MQTTv5 if v5 else mqtt.MQTTv311}
        if client_id and not v5:
            kw["clean_session"] = False
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or "", **kw)
        self.c.reconnect_delay_set(0.2, 1)
        self.topic = topic
        self.c.on_message = self._on_message
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(self.topic, qos=1)
        self.subscribed = threading.Event()
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        ckw = {}
        if v5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600 if client_id else 0
            ckw = {"clean_start": not client_id, "properties": props}
        self.c.connect(broker.host, broker.port, **ckw)
        self.c.loop_start()
        # Non-retained messages published before the SUBACK would never reach this subscriber.
        assert self.subscribed.wait(10), "no SUBACK from the broker"

    def _on_message(self, c, u, m):
        props = dict(getattr(m.properties, "UserProperty", []) or []) if m.properties else {}
        with self.cv:
            self.msgs.append((m.topic, bytes(m.payload), m.retain, props))
            self.cv.notify_all()

    def wait(self, pred, n, timeout):
        deadline = time.monotonic() + timeout
        with self.cv:
            while sum(1 for m in self.msgs if pred(m)) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cv.wait(left)
            return [m for m in self.msgs if pred(m)]

    def events(self, n, timeout=10.0):
        """All event payloads (duplicates included) once ``n`` distinct event ids arrived."""
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                evs = [json.loads(m[1]) for m in self.msgs if "/event/" in m[0]]
                left = deadline - time.monotonic()
                if len({e["event_id"] for e in evs}) >= n or left <= 0:
                    return evs
                self.cv.wait(left)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def distinct_in_order(events):
    seen, out = set(), []
    for e in events:
        if e["event_id"] not in seen:
            seen.add(e["event_id"])
            out.append(e["event_id"])
    return out


def make_event(i, camera="cam1"):
    return build_event(device="dev1", camera=camera, score=0.5 + i, normalised=1.0 + i / 100, threshold=0.5,
                       anomalous=True, model=MODEL, captured_at=time.time(), latency_ms={"invoke": 1.5, "total": 3.0})


def publisher(broker, tmp_path, protocol="3.1.1", name="ob.sqlite", **outbox_kw):
    cfg = MqttConfig.from_dict({"host": broker.host, "port": broker.port, "protocol": protocol,
                                "reconnect_min_s": 0.2, "reconnect_max_s": 1, "max_inflight": 5})
    return Publisher(cfg, "dev1", Outbox(tmp_path / name, **outbox_kw), cameras=["cam1"])


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_events_delivered_in_order_with_ids(mosquitto, tmp_path, protocol):
    sub = Collector(mosquitto)
    pub = publisher(mosquitto, tmp_path, protocol)
    pub.start()
    assert pub.wait_connected(5)
    ids = [pub.publish_event(make_event(i), snapshot=b"\xff\xd8snap%d" % i if i % 10 == 0 else None,
                             heatmap=b"\xff\xd8heat" if i == 0 else None) for i in range(40)]
    events = sub.events(40)
    assert [e["event_id"] for e in events] == ids
    for e in events:
        jsonschema.validate(e, SCHEMA)
    assert events[0]["snapshot"] == {"topic": "edge-detect/dev1/snapshot/cam1", "event_id": ids[0],
                                     "content_type": "image/jpeg", "bytes": 7}
    assert events[1]["snapshot"] is None and events[0]["heatmap"]["topic"] == "edge-detect/dev1/heatmap/cam1"
    snaps = sub.wait(lambda m: "/snapshot/" in m[0], 4, 5)
    assert [m[1] for m in snaps] == [b"\xff\xd8snap%d" % i for i in (0, 10, 20, 30)]
    if protocol == "5":
        assert [m[3]["event_id"] for m in snaps] == [ids[i] for i in (0, 10, 20, 30)]
    assert pub.flush(5) and pub.outbox.depth() == 0
    st = pub.stats()
    assert st["acked"] == 45 and st["inflight"] == 0
    pub.stop()
    sub.close()


def test_broker_outage_then_all_delivered(mosquitto, tmp_path):
    sub = Collector(mosquitto, client_id="test-persistent-sub")
    pub = publisher(mosquitto, tmp_path)
    pub.start()
    assert pub.wait_connected(5)
    ids = [pub.publish_event(make_event(i)) for i in range(20)]
    mosquitto.stop()
    ids += [pub.publish_event(make_event(i)) for i in range(20, 50)]  # broker down: into the outbox
    time.sleep(2.0)
    assert pub.outbox.depth() >= 30 and not pub.connected
    mosquitto.start()
    ids += [pub.publish_event(make_event(i)) for i in range(50, 60)]
    events = sub.events(60, timeout=15)
    got = distinct_in_order(events)
    assert got == ids, [ids.index(i) for i in ids if i not in got]
    assert pub.flush(5)
    pub.stop()
    sub.close()


PUB_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from edge_detect.events import build_event
    from edge_detect.outbox import Outbox
    from edge_detect.publisher import MqttConfig, Publisher
    port, path, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    cfg = MqttConfig.from_dict({"host": "127.0.0.1", "port": port, "reconnect_min_s": 0.2, "reconnect_max_s": 1})
    pub = Publisher(cfg, "dev1", Outbox(path), cameras=["cam1"])
    pub.start()
    print("connected" if pub.wait_connected(1.5) else "offline", flush=True)
    model = {"name": "m", "version": "1", "sha256": "0" * 64, "variant": "int8"}
    for i in range(n):
        ev = build_event(device="dev1", camera="cam1", score=1.0, normalised=2.0, threshold=0.5, anomalous=True,
                         model=model, captured_at=time.time())
        print(pub.publish_event(ev, snapshot=b"jpeg%d" % i), flush=True)
    print("done", flush=True)
    time.sleep(60)
    """
)


def run_publisher_process(port, outbox_path, n):
    proc = subprocess.Popen([sys.executable, "-c", PUB_SCRIPT, str(port), str(outbox_path), str(n)],
                            stdout=subprocess.PIPE, text=True)
    state = proc.stdout.readline().strip()
    ids = []
    for line in proc.stdout:
        if line.strip() == "done":
            break
        ids.append(line.strip())
    return proc, state, ids


def kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()


def test_sigkill_with_undelivered_events_then_restart(mosquitto, tmp_path):
    sub = Collector(mosquitto, client_id="test-sigkill-sub")
    mosquitto.stop()  # nothing can leave: everything the process queues stays in its outbox
    proc, state, ids = run_publisher_process(mosquitto.port, tmp_path / "ob.sqlite", 25)
    assert state == "offline" and len(ids) == 25
    kill(proc)
    assert Outbox(tmp_path / "ob.sqlite").depth() == 50
    mosquitto.start()
    pub = publisher(mosquitto, tmp_path, "5")  # same outbox file: the restarted daemon (v5: props)
    pub.start()
    events = sub.events(25, timeout=15)
    assert distinct_in_order(events) == ids
    snaps = sub.wait(lambda m: "/snapshot/" in m[0], 25, 5)
    assert [m[3]["event_id"] for m in snaps][:25] == ids  # original ids, also on the binaries (v5 props)
    assert pub.flush(5)
    pub.stop()
    sub.close()


def test_availability_online_offline_and_last_will(mosquitto, tmp_path):
    status = "edge-detect/dev1/status"
    proc, state, _ = run_publisher_process(mosquitto.port, tmp_path / "a.sqlite", 1)
    assert state == "connected"
    late = Collector(mosquitto, topic=status)  # joins after: sees the retained "online"
    assert late.wait(lambda m: True, 1, 5)[0][1:3] == (b"online", True)
    kill(proc)  # no DISCONNECT packet: the broker publishes the last will
    assert late.wait(lambda m: m[1] == b"offline", 1, 5)
    late.close()
    assert Collector(mosquitto, topic=status).wait(lambda m: True, 1, 5)[0][1:3] == (b"offline", True)

    pub = publisher(mosquitto, tmp_path)
    pub.start()
    assert pub.wait_connected(5)
    watch = Collector(mosquitto, topic=status)
    assert watch.wait(lambda m: m[1] == b"online", 1, 5)
    # Re-published on every reconnect (the broker restart also lost nothing: retained + persistence).
    mosquitto.stop()
    mosquitto.start()
    assert len(watch.wait(lambda m: m[1] == b"online", 2, 10)) >= 2
    pub.stop()
    assert watch.wait(lambda m: m[1] == b"offline", 1, 5)
    watch.close()
    final = Collector(mosquitto, topic=status)
    assert final.wait(lambda m: True, 1, 5)[0][1:3] == (b"offline", True)
    final.close()


def test_cap_policy_drops_oldest_and_reports_it(mosquitto, tmp_path):
    pub = publisher(mosquitto, tmp_path, max_messages=4, policy="drop_oldest")
    ids = [pub.publish_event(make_event(i)) for i in range(6)]  # not started yet: all stay queued
    assert pub.outbox.depth() == 4 and pub.outbox.stats()["dropped"] == 2
    sub = Collector(mosquitto)
    pub.start()
    assert [e["event_id"] for e in sub.events(4)] == ids[2:]
    pub.publish_stats({"fps": 12.5})
    stats = json.loads(sub.wait(lambda m: m[0] == "edge-detect/dev1/stats", 1, 5)[0][1])
    assert stats["fps"] == 12.5 and stats["outbox"]["dropped"] == 2 and stats["device"] == "dev1"
    pub.stop()
    sub.close()

    rej = publisher(mosquitto, tmp_path, name="rej.sqlite", max_messages=3, policy="reject_new")
    rej.publish_event(make_event(0), snapshot=b"jpeg")
    with pytest.raises(OutboxFull):
        rej.publish_event(make_event(1), snapshot=b"jpeg")
    assert rej.outbox.stats()["rejected"] == 2


def test_discovery_and_commands(mosquitto, tmp_path):
    got = []
    pub = publisher(mosquitto, tmp_path)
    pub.on_command = lambda cmd: (got.append(cmd), pub.report(cmd, True, "captured"))
    pub.start()
    assert pub.wait_connected(5)
    disco = Collector(mosquitto, topic="homeassistant/#")
    cfgs = {m[0]: json.loads(m[1]) for m in disco.wait(lambda m: True, 2, 5)}
    bs = cfgs["homeassistant/binary_sensor/dev1_cam1/config"]
    assert bs["device_class"] == "problem" and bs["state_topic"] == "edge-detect/dev1/event/cam1"
    assert bs["availability_topic"] == "edge-detect/dev1/status"
    assert cfgs["homeassistant/sensor/dev1_cam1_score/config"]["value_template"] == "{{ value_json.score_normalised }}"
    disco.close()

    results = Collector(mosquitto, topic="edge-detect/dev1/cmd/result")
    results.c.publish("edge-detect/dev1/cmd", json.dumps({"cmd": "capture", "camera": "cam1", "id": "c1"}), qos=1)
    results.c.publish("edge-detect/dev1/cmd", b"not json", qos=1)
    res = [json.loads(m[1]) for m in results.wait(lambda m: True, 2, 5)]
    assert got == [{"cmd": "capture", "camera": "cam1", "id": "c1"}]
    assert {(r["id"], r["ok"]) for r in res} == {("c1", True), (None, False)}
    results.close()
    pub.stop()


def test_config_validation_errors(tmp_path):
    ok = MqttConfig.from_dict({"host": "broker", "protocol": 5, "username": "u", "password_env": "EDGE_PW"})
    assert ok.protocol == "5" and ok.port == 1883 and ok.topic_prefix == "edge-detect"
    from tls_helpers import self_signed

    ca, _ = self_signed(tmp_path / "tls")
    assert MqttConfig.from_dict({"tls": {"ca_file": str(ca)}}).port == 8883
    notes = tmp_path / "notes.pem"
    notes.write_text("x")
    bad = [
        ({"port": 0}, "mqtt.port: must be an integer 1..65535, got 0"),
        ({"port": "1883"}, "mqtt.port: must be an integer 1..65535, got '1883'"),
        ({"protocol": "4"}, "mqtt.protocol: must be"),
        ({"hots": "x"}, "mqtt.hots: unknown key (known: "),
        ({"qos": 0}, "mqtt.qos: must be an integer 1..2"),
        ({"keepalive": True}, "mqtt.keepalive: must be an integer"),
        ({"discovery": "yes"}, "mqtt.discovery: must be true or false"),
        ({"reconnect_min_s": "1"}, "mqtt.reconnect_min_s: must be a number"),
        ({"reconnect_min_s": 5, "reconnect_max_s": 1}, "mqtt.reconnect_min_s: must be <= mqtt.reconnect_max_s"),
        ({"host": ""}, "mqtt.host: must be a non-empty string"),
        ({"tls": 3}, "mqtt.tls: must be a table"),
        ({"tls": {"ca_file": str(tmp_path / "nope.pem")}}, "mqtt.tls.ca_file: no such file"),
        # Loaded here, so check-config finds it rather than an ssl traceback when the client is made.
        ({"tls": {"ca_file": str(notes)}}, f"mqtt.tls: CA file {notes}: not usable for TLS"),
        ({"tls": {"cert_file": str(ca)}}, "mqtt.tls.key_file: must be given with mqtt.tls.cert_file"),
        ({"tls": {"verify": False}}, "mqtt.tls.verify: unknown key (known: "),
        ({"password_env": "X"}, "mqtt.username: must be given when a password is configured"),
        ({"username": "u", "password_env": "X", "password_file": str(ca)},
         "mqtt.password_env: must not be given with mqtt.password_file"),
        ({"username": "u", "password_file": str(tmp_path / "missing")}, "mqtt.password_file: no such file"),
        ({"topic_prefix": "a/+/b"}, "mqtt.topic_prefix: must be a topic"),
    ]
    for d, msg in bad:
        with pytest.raises(ValueError) as e:
            MqttConfig.from_dict(d)
        assert msg in str(e.value), (d, str(e.value))
        assert "\n" not in str(e.value)
        # The same "key: what is wrong" form as every other table's messages.
        assert re.match(r"mqtt(\.[a-z_]+)+: ", str(e.value)), str(e.value)
    with pytest.raises(ValueError, match=r"^daemon.toml: mqtt\.port: "):
        MqttConfig.from_dict({"port": 70000}, where="daemon.toml: mqtt")
    env = MqttConfig.from_dict({"username": "u", "password_env": "EDGE_DETECT_TEST_UNSET_PW"})
    with pytest.raises(ValueError, match="EDGE_DETECT_TEST_UNSET_PW is not set"):
        env.password()


def test_unknown_keys_do_not_hide_the_other_problems(tmp_path):
    from edge_detect.config import load_config
    from edge_detect.validate import ConfigError

    with pytest.raises(ConfigError) as e:
        MqttConfig.from_dict({"kepalive": 1, "port": 188830, "tls": {"verify": False}})
    assert [m.split(" (known: ")[0] for m in e.value.errors] == [
        "mqtt.kepalive: unknown key", "mqtt.tls.verify: unknown key",
        "mqtt.port: must be an integer 1..65535, got 188830"], e.value.errors
    # The same through the daemon's config file (one check-config run shows all three).
    cfg = tmp_path / "edge.toml"
    cfg.write_text('[device]\nid = "d"\n[model]\nbundle = "b"\n[[cameras]]\nname = "c"\n[cameras.source]\n'
                   'type = "directory"\npath = "/srv/c"\n[mqtt]\nkepalive = 1\nport = 188830\n')
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    assert [m.split(" (known: ")[0] for m in e.value.errors] == [
        "mqtt.kepalive: unknown key", "mqtt.port: must be an integer 1..65535, got 188830"], e.value.errors


def _events(caplog, name):
    return [r for r in caplog.records if getattr(r, "fields", {}).get("event") == name]


def test_failed_connection_attempts_are_logged_not_on_every_retry(tmp_path, caplog, monkeypatch):
    """A wrong broker (nothing listens on its port) is visible in the log with its reason, once and then
    again only after a quiet period, not on every retry; the connected line counts the failures."""
    from edge_detect.broker import Mosquitto, free_port

    caplog.set_level(logging.INFO)
    monkeypatch.setattr(Publisher, "FAIL_LOG_S", 1.0)  # 60 s in the daemon: seconds here
    broker = Mosquitto(tmp_path / "late", port=free_port())  # not started: the port refuses
    cfg = MqttConfig.from_dict({"host": broker.host, "port": broker.port, "reconnect_min_s": 0.1,
                                "reconnect_max_s": 0.2, "discovery": False})
    pub = Publisher(cfg, "dev1", Outbox(tmp_path / "ob.sqlite"))
    pub.publish_event(make_event(0))
    pub.start()
    try:
        deadline = time.monotonic() + 10
        while pub.stats()["connect_failures"] < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pub.stats()["connect_failures"] >= 10 and not pub.connected
        fails = _events(caplog, "mqtt_connect_failed")
        # t=0, then once after the 1 s quiet period; the next waits 2 s (doubling).
        assert 2 <= len(fails) <= 3, [r.getMessage() for r in fails]
        first, again = fails[0], fails[1]
        assert first.levelno == logging.WARNING and first.fields["reason"] == "Connection refused"
        assert first.fields["failed_attempts"] == 1 and first.fields["outbox_depth"] == 1
        assert first.getMessage().startswith(f"mqtt: cannot connect to {broker.url}: Connection refused")
        assert again.fields["failed_attempts"] > 2 and "still cannot connect" in again.getMessage()
        assert f"{again.fields['failed_attempts']} failed attempts in " in again.getMessage()

        broker.start()
        assert pub.wait_connected(5)
        failed = pub.stats()["connect_failures"]
        (up,) = _events(caplog, "mqtt_connected")
        assert up.fields["failed_attempts"] == failed
        assert f"mqtt: connected to {broker.url} after {failed} failed attempts in " in up.getMessage()
        assert pub.flush(5)
    finally:
        pub.stop()
        broker.close()


def test_broker_stop_and_non_mqtt_server_are_logged_in_words(mosquitto, tmp_path, caplog):
    import socket

    caplog.set_level(logging.INFO)
    pub = publisher(mosquitto, tmp_path)
    pub.start()
    try:
        assert pub.wait_connected(5) and pub.flush(5)
        time.sleep(0.2)  # the broker has read everything: it closes the connection rather than reset it
        mosquitto.stop()
        deadline = time.monotonic() + 5
        while not _events(caplog, "mqtt_connect_failed") and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        pub.stop(clean=False)
    (gone,) = _events(caplog, "mqtt_disconnected")
    # Was "disconnected (Unspecified error)" with error null. A stopping Mosquitto closes the socket
    # (end of stream: no error), or resets it when it had unread data (the reset is the error).
    assert "Unspecified error" not in gone.getMessage()
    if gone.fields["reason"] == "connection lost":
        assert "Connection reset by peer" in gone.fields["error"], gone.fields
        assert gone.getMessage().endswith("connection lost ([Errno 104] Connection reset by peer); 0 messages in "
                                          "the outbox")
    else:
        assert gone.fields["reason"] == "the broker closed the connection" and gone.fields["error"] is None
        assert gone.getMessage().endswith("the broker closed the connection; 0 messages in the outbox")
    (retry,) = _events(caplog, "mqtt_connect_failed")
    assert retry.getMessage().startswith(f"mqtt: cannot reconnect to {mosquitto.url}: Connection refused")

    # Something listens but is no MQTT broker: it closes the connection before any CONNACK.
    caplog.clear()
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                srv.accept()[0].close()
            except OSError:
                pass

    threading.Thread(target=serve, daemon=True).start()
    cfg = MqttConfig.from_dict({"host": "127.0.0.1", "port": srv.getsockname()[1], "reconnect_min_s": 0.1,
                                "reconnect_max_s": 0.2})
    other = Publisher(cfg, "dev1", Outbox(tmp_path / "other.sqlite"))
    other.start()
    try:
        deadline = time.monotonic() + 5
        while other.stats()["connect_failures"] < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        other.stop(clean=False)
        stop.set()
        srv.close()
    fails = _events(caplog, "mqtt_connect_failed")
    assert other.stats()["connect_failures"] >= 5 and len(fails) == 1, [r.getMessage() for r in fails]
    assert fails[0].fields["reason"] == "the connection closed before the broker answered CONNECT"
    assert not _events(caplog, "mqtt_disconnected")


def test_password_auth_and_never_logged(tmp_path, caplog):
    from edge_detect.broker import Mosquitto

    secret = "s3cr3t-Pa55word-xyz"
    broker = Mosquitto(tmp_path / "auth", users={"device": secret})
    broker.start()
    try:
        pwfile = tmp_path / "pw"
        pwfile.write_text(secret + "\n")
        caplog.set_level(logging.DEBUG)
        base = {"host": broker.host, "port": broker.port, "username": "device", "protocol": "5",
                "reconnect_min_s": 0.2, "reconnect_max_s": 1}
        cfg = MqttConfig.from_dict({**base, "password_file": str(pwfile)})
        assert secret not in repr(cfg)
        pub = Publisher(cfg, "dev1", Outbox(tmp_path / "ob.sqlite"))
        pub.start()
        assert pub.wait_connected(5)
        pub.publish_event(make_event(0))
        assert pub.flush(5)
        pub.stop()

        os.environ["EDGE_DETECT_TEST_PW"] = "wrong-" + secret
        try:
            wrong = Publisher(MqttConfig.from_dict({**base, "password_env": "EDGE_DETECT_TEST_PW"}), "dev2",
                              Outbox(tmp_path / "ob2.sqlite"))
            wrong.start()
            assert not wrong.wait_connected(1.5)
            refusals = wrong.stats()["connect_failures"]
            wrong.stop(clean=False)
        finally:
            del os.environ["EDGE_DETECT_TEST_PW"]
        text = caplog.text
        assert "refused the connection" in text  # the bad password is reported, in one line ...
        # ... once, while paho retries it every 0.2..1 s
        assert refusals >= 2 and len(_events(caplog, "mqtt_refused")) == 1
        assert secret not in text  # ... and neither password appears anywhere in the logs
        assert "connected to" in text and "CONNECT" in text  # the debug log did run (paho packets)
    finally:
        broker.stop()


def test_event_ids_sort_by_time_and_stay_monotonic():
    from edge_detect.events import uuid7

    same_ms = [uuid7(1_700_000_000_000) for _ in range(5000)]  # > 4096: spills into the next ms
    assert same_ms == sorted(same_ms) and len(set(same_ms)) == 5000
    back = uuid7(1_600_000_000_000)  # the clock stepped back: still after the last id
    assert back > same_ms[-1]
    ev = make_event(0)
    jsonschema.validate(ev, SCHEMA)
    with pytest.raises(ValueError, match="camera"):
        make_event(0, camera="a/b")


class _ResettingProxy:
    """TCP proxy to the broker that can reset (RST) the client's connection, as a crashed or restarted
    broker host does."""

    def __init__(self, broker):
        import socket

        self.broker = broker
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        self.clients = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import socket

        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            up = socket.create_connection((self.broker.host, self.broker.port))
            self.clients.append(c)
            for a, b in ((c, up), (up, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.close()
            except OSError:
                pass

    def reset(self):
        import socket
        import struct

        for c in self.clients:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # Not close() here: its pipe thread is blocked in recv() on it, which would keep the socket
            # open until the client next sends. SHUT_RD wakes that recv(); the thread's close() then
            # sends the RST (linger 0) at once.
            c.shutdown(socket.SHUT_RD)
        self.clients = []

    def close(self):
        self.srv.close()


def test_connection_reset_is_one_line_with_its_reason(mosquitto, tmp_path, caplog):
    """A reset connection is the one ``mqtt_disconnected`` warning (with the socket error), not also
    paho's own "failed to receive on socket" at ERROR without an event key; delivery goes on."""
    caplog.set_level(logging.INFO)
    proxy = _ResettingProxy(mosquitto)
    sub = Collector(mosquitto, "edge-detect/dev1/event/#")
    cfg = MqttConfig.from_dict({"host": "127.0.0.1", "port": proxy.port, "reconnect_min_s": 0.2,
                                "reconnect_max_s": 1, "discovery": False})
    pub = Publisher(cfg, "dev1", Outbox(tmp_path / "ob.sqlite"))
    pub.start()
    try:
        assert pub.wait_connected(5)
        proxy.reset()
        deadline = time.monotonic() + 5
        while pub.stats()["connects"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        pub.publish_event(make_event(0))
        assert pub.flush(5)
        with sub.cv:
            assert sub.cv.wait_for(lambda: len(sub.msgs) == 1, 5)
    finally:
        pub.stop()
        proxy.close()
    gone = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "mqtt_disconnected"]
    assert len(gone) == 1 and "Connection reset by peer" in gone[0].fields["error"], caplog.text
    assert gone[0].fields["reason"] == "connection lost" and "Unspecified error" not in gone[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "event" not in getattr(r, "fields", {})]
