"""The bar: 1,000 anomalous frames, a 20 s broker outage and a SIGKILL of the daemon mid-run;
a subscriber with a persistent session must count 1,000 distinct event ids.

Marked slow (about 40 s) but not deselected anywhere: ``make test`` / CI run it.
"""

import threading
import time

import numpy as np
import pytest
from daemon_helpers import DaemonProc, Subscriber, drop_file, write_config
from tiny_bundle import anomalous_image, encode

N_FRAMES = 1000
OUTAGE_S = 20.0


@pytest.mark.slow
def test_outage_and_sigkill_lose_nothing(tmp_path, tiny_bundle, mosquitto):
    bundle, _ = tiny_bundle
    inbox = tmp_path / "in"
    inbox.mkdir()
    rng = np.random.default_rng(7)
    images = [encode(anomalous_image(rng), "JPEG") for _ in range(50)]  # reused: each file is its own frame
    cams = f"""
[[cameras]]
name = "line"
heatmap = false
queue = 4
[cameras.source]
type = "directory"
path = "{inbox}"
settle = 0.05
poll_interval = 0.05
"""
    cfg = write_config(tmp_path / "edge.toml", device="bar", bundle=bundle, broker=mosquitto,
                       outbox=tmp_path / "outbox.sqlite", cameras=cams, stats_interval=2.0)
    sub = Subscriber(mosquitto, ["edge-detect/bar/event/+"], client_id="bar-subscriber")
    assert sub.subscribed.wait(5)

    fed = threading.Event()

    def feed():
        # ~60 files/s for ~17 s: the outage and the kill both fall inside the run.
        for i in range(N_FRAMES):
            drop_file(inbox, f"part{i:04d}.jpg", images[i % len(images)])
            time.sleep(1 / 60)
        fed.set()

    feeder = threading.Thread(target=feed, daemon=True)
    d = DaemonProc(cfg, tmp_path / "daemon1.log")
    d.wait_for(lambda x: x.get("event") == "started")
    feeder.start()
    time.sleep(2.0)
    mosquitto.stop()  # broker outage: events pile up in the outbox
    outage_started = time.monotonic()
    time.sleep(4.0)
    assert not fed.is_set()
    d.kill()  # SIGKILL mid-run, with a backlog in the outbox and files half-way through
    first = d
    d = DaemonProc(cfg, tmp_path / "daemon2.log")
    restarted = d.wait_for(lambda x: x.get("event") == "started")
    assert restarted["outbox_depth"] > 0  # the kill really left undelivered events behind
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - outage_started)))
    mosquitto.start()
    try:
        assert fed.wait(60)
        ok = sub.wait(lambda: len({e["event_id"] for e in sub.events()}) >= N_FRAMES, 90)
        events = sub.events()
        ids = {e["event_id"] for e in events}
        assert ok, f"{len(ids)} distinct event ids of {N_FRAMES}; daemon: {d.tail()}"
        time.sleep(1.0)  # anything extra (a resent duplicate) arrives now
        events = sub.events()
        ids = {e["event_id"] for e in events}
        assert len(ids) == N_FRAMES
        assert {e["extra"]["image"] for e in events} == {f"part{i:04d}.jpg" for i in range(N_FRAMES)}
        stats = d.wait_for(lambda x: x.get("event") == "stats" and x["outbox_depth"] == 0, 30)
        assert stats["images_rejected"] == 0
    finally:
        rc = d.terminate()
        sub.close()
    assert rc == 0
    assert not list(inbox.glob("*.jpg"))  # every file was processed and moved
    # Through the outage, every warning and error line says what happened in its "event" key.
    unnamed = [x["msg"] for x in d.lines() if x.get("level") in ("warning", "error") and "event" not in x]
    assert unnamed == [] and any(x.get("event") == "mqtt_connected" for x in d.lines())
    # The outage in words: why the connection went, ...
    (gone,) = [x for x in first.lines() if x.get("event") == "mqtt_disconnected"]
    assert gone["reason"] in ("the broker closed the connection", "connection lost"), gone
    assert "Unspecified error" not in gone["msg"]
    # ... that the restarted daemon could not connect (once, not on each of its ~15 retries), ...
    fails = [x for x in d.lines() if x.get("event") == "mqtt_connect_failed"]
    assert 1 <= len(fails) <= 2 and fails[0]["reason"] == "Connection refused", [x["msg"] for x in fails]
    assert fails[0]["level"] == "warning" and fails[0]["outbox_depth"] > 0
    # ... and after how many failed attempts it got through.
    (up,) = [x for x in d.lines() if x.get("event") == "mqtt_connected"]
    assert up["failed_attempts"] >= 5 and f"after {up['failed_attempts']} failed attempts" in up["msg"], up
