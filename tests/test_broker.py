"""edge_detect.broker: the one local-broker helper that the demo, the tests and the benches share."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
import pytest

from edge_detect.broker import Amqtt, Mosquitto, local_broker


def _roundtrip(host: str, port: int) -> bytes:
    """Publish one QoS 1 message on loopback and return what a subscriber on the same topic got."""
    got, done = [], threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t-sub")
    sub.on_message = lambda c, u, m: (got.append(m.payload), done.set())
    sub.connect(host, port)
    sub.subscribe("t/x", qos=1)
    sub.loop_start()
    try:
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t-pub")
        pub.connect(host, port)
        pub.loop_start()
        # The subscription may still be in flight: publish until it arrives.
        for _ in range(50):
            pub.publish("t/x", b"hello", qos=1).wait_for_publish(2)
            if done.wait(0.1):
                break
        pub.loop_stop()
        pub.disconnect()
    finally:
        sub.loop_stop()
        sub.disconnect()
    return got[0] if got else b""


def test_local_broker_rejects_an_unknown_kind():
    with pytest.raises(ValueError, match="broker kind must be auto, mosquitto or amqtt, not 'rabbit'"):
        local_broker("rabbit")


def test_local_broker_auto_prefers_mosquitto_and_cleans_up_its_own_folder(mosquitto):
    # The fixture has failed already if Mosquitto is missing, so "auto" must pick it.
    b = local_broker("auto")
    assert isinstance(b, Mosquitto)
    with b:
        assert b.running and b.dir.is_dir()
        assert _roundtrip(b.host, b.port) == b"hello"
    assert not b.running and not b.dir.exists()


def test_mosquitto_on_a_taken_port_is_a_one_line_error(mosquitto, tmp_path):
    second = Mosquitto(tmp_path / "second", port=mosquitto.port, log=False)
    taken = rf"^port {mosquitto.port} on 127.0.0.1 is in use .*: is another broker running\?$"
    with pytest.raises(RuntimeError, match=taken):
        second.start(timeout=5)
    assert not second.running


def test_persistent_mosquitto_keeps_a_queued_message_across_a_restart(tmp_path):
    b = Mosquitto(tmp_path / "b", persistent=True).start()
    try:
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="keeper", clean_session=False)
        sub.connect(b.host, b.port)
        sub.subscribe("t/q", qos=1)
        sub.loop(1)
        sub.disconnect()
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="p")
        pub.connect(b.host, b.port)
        pub.loop_start()
        pub.publish("t/q", b"kept", qos=1).wait_for_publish(5)
        pub.loop_stop()
        pub.disconnect()
        b.stop()
        b.start()
        got, done = [], threading.Event()
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="keeper", clean_session=False)
        sub.on_message = lambda c, u, m: (got.append(m.payload), done.set())
        sub.connect(b.host, b.port)
        sub.loop_start()
        assert done.wait(10)
        sub.loop_stop()
        sub.disconnect()
        assert got == [b"kept"]
    finally:
        b.close()


def test_amqtt_serves_a_roundtrip():
    b = Amqtt().start()
    try:
        assert _roundtrip(b.host, b.port) == b"hello"
    finally:
        b.stop()
