"""``edge-detect subscribe`` against a real Mosquitto: table, JSON lines, dedupe, sessions, snapshots."""

from __future__ import annotations

import json
import subprocess
import sys

import paho.mqtt.client as mqtt
from test_publisher import make_event, publisher

from edge_detect.subscribe import parse_broker

CLI = [sys.executable, "-c", "from edge_detect.cli import main; main()", "subscribe"]


def cli(broker, *args, **kw):
    return subprocess.Popen([*CLI, "--broker", broker.url, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_table_and_saved_snapshots(mosquitto, tmp_path):
    pub = publisher(mosquitto, tmp_path, "5")
    pub.start()
    assert pub.wait_connected(5)
    out_dir = tmp_path / "snaps"
    proc = cli(mosquitto, "--device", "dev1", "--save-snapshots", str(out_dir), "--count", "3", "--timeout", "20")
    # The retained "online" arrives right after SUBACK: from then on the subscription is live.
    assert proc.stderr.readline().strip() == "# dev1 is online"
    ids = [pub.publish_event(make_event(i), snapshot=b"\xff\xd8jpeg-%d" % i,
                             heatmap=b"\xff\xd8heat" if i == 2 else None) for i in range(3)]
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["CAPTURED", "(UTC)", "DEVICE"]
    assert len(lines) == 4
    for line, eid in zip(lines[1:], ids):
        cols = line.split()
        assert cols[1:4] == ["dev1", "cam1", "ANOMALY"] and cols[-1] == eid
    # --count waits for the binaries its events reference before it exits.
    saved = sorted(p.name for p in (out_dir / "dev1" / "cam1").iterdir())
    assert saved == sorted([f"{i}.snapshot.jpg" for i in ids] + [f"{ids[2]}.heatmap.jpg"])
    assert (out_dir / "dev1" / "cam1" / f"{ids[0]}.snapshot.jpg").read_bytes() == b"\xff\xd8jpeg-0"
    pub.stop()


def test_json_lines_persistent_session_and_dedupe(mosquitto, tmp_path):
    # Register a persistent session, then leave: what is published meanwhile is queued for it.
    first = cli(mosquitto, "--session", "ops-console", "--json", "--timeout", "0.5")
    assert first.wait(timeout=15) == 0
    pub = publisher(mosquitto, tmp_path, "3.1.1")
    pub.start()
    assert pub.wait_connected(5)
    events = [make_event(i, camera=f"cam{i % 2}") for i in range(3)]
    for ev in events[:2]:
        pub.publish_event(ev)
    assert pub.flush(5)
    # A resend after an outage looks exactly like this: the same event once more, before the third.
    raw = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    raw.connect(mosquitto.host, mosquitto.port)
    raw.loop_start()
    raw.publish("edge-detect/dev1/event/cam0", json.dumps(events[0]), qos=1).wait_for_publish(5)
    raw.disconnect()
    raw.loop_stop()
    pub.publish_event(events[2])
    assert pub.flush(5)
    pub.stop()

    proc = cli(mosquitto, "--session", "ops-console", "--json", "--count", "3", "--timeout", "2")
    out, err = proc.communicate(timeout=20)
    got = [json.loads(line) for line in out.splitlines()]
    assert [e["event_id"] for e in got] == [e["event_id"] for e in events]
    assert got[1]["camera"] == "cam1" and got[0]["score"] == events[0]["score"]
    assert proc.returncode == 0, err

    # Nothing left in the session, so waiting for one more event times out: exit 1, one line.
    again = cli(mosquitto, "--session", "ops-console", "--json", "--count", "1", "--timeout", "1")
    out, err = again.communicate(timeout=20)
    assert again.returncode == 1 and out == "" and "0 of 1 events arrived" in err, out


def test_bad_broker_and_options():
    refused = subprocess.run([*CLI, "--broker", "127.0.0.1:1", "--timeout", "1"], capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.startswith("error: cannot connect to 127.0.0.1:1")
    assert len(refused.stderr.strip().splitlines()) == 1
    bad = subprocess.run([*CLI, "--broker", "host:99999"], capture_output=True, text=True)
    assert bad.returncode == 2 and "port must be 1..65535" in bad.stderr
    assert parse_broker("example.org") == ("example.org", 1883)
    assert parse_broker("[::1]:8883") == ("::1", 8883)


def test_tls_file_that_is_not_pem_is_one_line(tmp_path):
    notes = tmp_path / "ca.pem"
    notes.write_text("not a certificate\n")
    r = subprocess.run([*CLI, "--broker", "127.0.0.1:1", "--tls-ca", str(notes), "--timeout", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith(f"error: CA file {notes}: not usable for TLS (")


def test_table_columns_line_up_with_the_header():
    from edge_detect.subscribe import HEADER, format_line

    ev = {"captured_at": "2026-11-25T13:00:00.000Z", "device": "line3-pi", "camera": "top", "verdict": "anomaly",
          "score": 0.91, "score_normalised": 1.3, "threshold": 0.72, "event_id": "0193-abc",
          "model": {"name": "casting-demo", "version": "12"}}
    row = format_line(ev)
    assert row.index("0193-abc") == HEADER.index("EVENT ID") and row.index("casting-demo@12") == HEADER.index("MODEL")
