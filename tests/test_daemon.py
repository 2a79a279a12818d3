"""The daemon as a real process: watched directory + HTTP camera -> real Mosquitto -> subscriber."""

import http.server
import io
import json
import shutil
import signal
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from daemon_helpers import DaemonProc, Subscriber, drop_file, write_config
from PIL import Image
from tiny_bundle import anomalous_image, encode, normal_image

import edge_detect
from edge_detect.bundle import write_bundle
from edge_detect.daemon import Inbox, Latency, stable_event_id
from edge_detect.events import build_event

SCHEMAS = Path(edge_detect.__file__).parent / "schemas"


def _dir_camera(name, path, **extra):
    opts = "".join(f"{k} = {json.dumps(v)}\n" for k, v in extra.items())
    return f"""
[[cameras]]
name = "{name}"
{opts}[cameras.source]
type = "directory"
path = "{path}"
settle = 0.05
poll_interval = 0.05
incomplete_wait = 0.3
"""


def _front_camera_config(tmp_path, device, bundle, broker, outbox=None):
    """(watched folder, config path) of a daemon with one directory camera, "front"."""
    inbox = tmp_path / "in"
    inbox.mkdir()
    cfg = write_config(tmp_path / "edge.toml", device=device, bundle=bundle, broker=broker,
                       outbox=outbox or tmp_path / "outbox.sqlite", cameras=_dir_camera("front", inbox))
    return inbox, cfg


def _bomb_png(w=100_000, h=100_000) -> bytes:
    """A tiny PNG whose header claims w x h px (10 Gpx): decoding it would need 10 GB."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_events_end_to_end(tmp_path, tiny_bundle, mosquitto):
    bundle, threshold = tiny_bundle
    inbox = tmp_path / "in"
    inbox.mkdir()
    rng = np.random.default_rng(3)
    names = []
    for i in range(4):
        drop_file(inbox, f"ok{i}.png", encode(normal_image(rng)))
        drop_file(inbox, f"bad{i}.jpg", encode(anomalous_image(rng), "JPEG"))
        names.append(f"bad{i}.jpg")
    sub = Subscriber(mosquitto, ["edge-detect/dev1/#"], client_id="e2e")
    assert sub.subscribed.wait(5)
    cfg = write_config(tmp_path / "edge.toml", device="dev1", bundle=bundle, broker=mosquitto,
                       outbox=tmp_path / "outbox.sqlite",
                       cameras=_dir_camera("front", inbox, heatmap=True, snapshot=True))
    d = DaemonProc(cfg, tmp_path / "daemon.log")
    try:
        assert sub.wait(lambda: len(sub.events()) >= 4, 20), d.tail()
        first = d.wait_for(lambda x: x.get("event") == "anomaly")
        started = d.wait_for(lambda x: x.get("event") == "started")
        assert started["startup_ms"] < 2000
        stats = d.wait_for(lambda x: x.get("event") == "stats" and x["frames"] == 8)
    finally:
        rc = d.terminate()
    assert rc == 0, d.tail()
    events = sub.events()
    assert sorted(e["extra"]["image"] for e in events) == names  # normal parts raise nothing
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((SCHEMAS / "event.schema.json").read_text())
    for e in events:
        jsonschema.validate(e, schema)
        assert e["verdict"] == "anomaly" and e["score"] > threshold and e["score_normalised"] > 1.0
        assert e["model"]["name"] == "tiny-ae" and len(e["model"]["sha256"]) == 64
        assert {"preprocess", "invoke", "score"} <= set(e["latency_ms"])
        assert e["snapshot"]["topic"] == "edge-detect/dev1/snapshot/front"
    snaps = sub.payloads("/snapshot/")
    assert len(snaps) >= 4 and all(s[:2] == b"\xff\xd8" for s in snaps)
    heat = sub.payloads("/heatmap/")
    assert heat and Image.open(io.BytesIO(heat[0])).size == (32, 32)
    assert stats["events"] == 4 and stats["images_rejected"] == 0 and stats["accelerator"] == "cpu"
    assert stats["mqtt_connected"] is True
    assert stats["latency_ms"]["p50"] > 0 and stats["rss_mb"] < 150
    assert first["event_id"] in {e["event_id"] for e in events}
    # files were moved once processed; SIGTERM published "offline" (retained)
    assert sorted(p.name for p in (inbox / "processed").glob("*.*")) == sorted(names + [f"ok{i}.png" for i in range(4)])
    assert sub.payloads("/status")[-1] == b"offline"
    sub.close()


def test_bad_input_and_vanished_cameras_do_not_stop_it(tmp_path, tiny_bundle, mosquitto):
    bundle, _ = tiny_bundle
    inbox, gone = tmp_path / "in", tmp_path / "gone"
    inbox.mkdir()
    gone.mkdir()
    rng = np.random.default_rng(4)
    jpeg = encode(anomalous_image(rng), "JPEG")
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.float32), "F").save(buf, format="TIFF")  # 32-bit float: wrong mode
    bad = {
        "zero.jpg": b"",
        "corrupt.jpg": b"\xff\xd8\xff\xe0 this is not a jpeg",
        "truncated.jpg": jpeg[: len(jpeg) // 3],
        "bomb.png": _bomb_png(),
        "float.tif": buf.getvalue(),
        "text.png": b"hello",
    }
    for name, data in bad.items():
        drop_file(inbox, name, data)

    class Snap(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(jpeg)))
            self.end_headers()
            self.wfile.write(jpeg)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Snap)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    cams = (_dir_camera("front", inbox) + _dir_camera("gone", gone)
            + f'\n[[cameras]]\nname = "ipcam"\ncooldown = 3600.0\n[cameras.source]\ntype = "http"\n'
              f'url = "http://127.0.0.1:{srv.server_address[1]}/snap.jpg"\ntimeout = 0.5\n'
              f'[cameras.trigger]\ntype = "interval"\nseconds = 0.1\n')
    cfg = write_config(tmp_path / "edge.toml", device="dev2", bundle=bundle, broker=mosquitto,
                       outbox=tmp_path / "outbox.sqlite", cameras=cams)
    d = DaemonProc(cfg, tmp_path / "daemon.log")
    try:
        d.wait_for(lambda x: x.get("event") == "stats" and x["images_rejected"] == len(bad))
        d.wait_for(lambda x: x.get("event") == "stats" and x["cameras"]["ipcam"]["events"] == 1)
        shutil.rmtree(gone)  # a camera that vanishes
        srv.shutdown()
        srv.server_close()  # and an IP camera that goes away
        d.wait_for(lambda x: x.get("event") == "camera_down" and x["camera"] == "gone")
        d.wait_for(lambda x: x.get("event") == "camera_down" and x["camera"] == "ipcam")
        d.wait_for(lambda x: x.get("event") == "camera_stalled" and x["camera"] == "ipcam")
        # still working: a good defect image on the surviving camera becomes an event
        drop_file(inbox, "real.jpg", jpeg)
        d.wait_for(lambda x: x.get("event") == "anomaly" and x["image"] == "real.jpg")
        gone.mkdir()  # the share comes back
        d.wait_for(lambda x: x.get("event") == "camera_recovered" and x["camera"] == "gone")
        stats = d.wait_for(lambda x: x.get("event") == "stats" and x["cameras"]["ipcam"]["state"] == "down"
                           and x["cameras"]["gone"]["state"] == "ok")
    finally:
        rc = d.terminate()
    assert rc == 0, d.tail()
    assert stats["images_rejected"] == len(bad) and stats["cameras"]["front"]["rejected"] == len(bad)
    assert stats["cameras"]["ipcam"]["errors"] >= 1 and stats["cameras"]["gone"]["reconnects"] >= 1
    rejected = {x["image"]: x["error"] for x in d.lines() if x.get("event") == "image_rejected"}
    assert set(rejected) == set(bad)
    assert "bomb" in rejected["bomb.png"] and "empty" in rejected["zero.jpg"] and "mode" in rejected["float.tif"]
    assert sorted(p.name for p in (inbox / "processed" / "rejected").iterdir()) == sorted(bad)


def test_an_upload_that_stalls_past_settle_is_scored_once_complete(tmp_path, tiny_bundle, mosquitto):
    bundle, _ = tiny_bundle
    inbox = tmp_path / "in"
    inbox.mkdir()
    cfg = write_config(tmp_path / "edge.toml", device="dev1", bundle=bundle, broker=mosquitto,
                       outbox=tmp_path / "outbox.sqlite",
                       cameras=_dir_camera("front", inbox).replace("incomplete_wait = 0.3", "incomplete_wait = 30"))
    png = encode(anomalous_image(np.random.default_rng(8)))
    d = DaemonProc(cfg, tmp_path / "daemon.log")
    try:
        d.wait_for(lambda x: x.get("event") == "started")
        with open(inbox / "slow.png", "wb") as f:  # an FTP upload written in place, stalling halfway
            f.write(png[: len(png) // 2])
            f.flush()
            d.wait_for(lambda x: x.get("event") == "image_incomplete" and x["image"] == "slow.png")
            time.sleep(0.3)  # several scans while it is held: not read again, not rejected
            f.write(png[len(png) // 2:])
        ev = d.wait_for(lambda x: x.get("event") == "anomaly" and x["image"] == "slow.png")
        stats = d.wait_for(lambda x: x.get("event") == "stats" and x["frames"] == 1)
    finally:
        rc = d.terminate()
    assert rc == 0, d.tail()
    assert ev["score"] > 0 and stats["images_rejected"] == 0
    assert sum(x.get("event") == "image_incomplete" for x in d.lines()) == 1
    assert [p.name for p in (inbox / "processed").glob("*.png")] == ["slow.png"]


def test_reload_keeps_old_bundle_when_new_is_bad(tmp_path, tiny_bundle, mosquitto):
    bundle0, _ = tiny_bundle
    live = tmp_path / "bundle"
    shutil.copytree(bundle0, live)
    inbox, cfg = _front_camera_config(tmp_path, "dev3", live, mosquitto)
    d = DaemonProc(cfg, tmp_path / "daemon.log")
    rng = np.random.default_rng(5)
    try:
        d.wait_for(lambda x: x.get("event") == "started")
        # a truncated model file: SHA-256 no longer matches the manifest
        model = live / "model_float32.tflite"
        model.write_bytes(model.read_bytes()[:100])
        d.proc.send_signal(signal.SIGHUP)
        failed = d.wait_for(lambda x: x.get("event") == "reload_failed")
        assert "SHA-256" in failed["error"] and failed["kept"]["version"] == "1"
        drop_file(inbox, "a.jpg", encode(anomalous_image(rng), "JPEG"))
        ev = d.wait_for(lambda x: x.get("event") == "anomaly")  # the old model still scores
        assert ev["image"] == "a.jpg"
        stats = d.wait_for(lambda x: x.get("event") == "stats" and x["reloads"]["failed"] == 1)
        assert stats["model"]["version"] == "1" and "SHA-256" in stats["reloads"]["last_error"]
        # a good new bundle appears at the path: picked up without a signal
        manifest = json.loads((bundle0 / "manifest.json").read_text())
        write_bundle(live, {**manifest, "version": "2"}, {"model_float32.tflite": bundle0 / "model_float32.tflite"})
        d.wait_for(lambda x: x.get("event") == "model_reloaded" and x["model"]["version"] == "2")
        drop_file(inbox, "b.jpg", encode(anomalous_image(rng), "JPEG"))
        d.wait_for(lambda x: x.get("event") == "anomaly" and x["image"] == "b.jpg")
    finally:
        rc = d.terminate()
    assert rc == 0, d.tail()


def test_watched_folder_recreated_while_running(tmp_path, tiny_bundle, mosquitto):
    # A share remounted between two scans: processed/ is gone but the camera never saw an error.
    bundle, _ = tiny_bundle
    inbox, cfg = _front_camera_config(tmp_path, "dev6", bundle, mosquitto)
    d = DaemonProc(cfg, tmp_path / "daemon.log")
    rng = np.random.default_rng(6)
    try:
        d.wait_for(lambda x: x.get("event") == "started")
        drop_file(inbox, "a.jpg", encode(anomalous_image(rng), "JPEG"))
        d.wait_for(lambda x: x.get("event") == "anomaly" and x["image"] == "a.jpg")
        shutil.rmtree(inbox)
        inbox.mkdir()
        drop_file(inbox, "b.jpg", encode(anomalous_image(rng), "JPEG"))
        d.wait_for(lambda x: x.get("event") == "anomaly" and x["image"] == "b.jpg")
        time.sleep(1.0)  # before the fix b.jpg stayed put and was scored again every poll
    finally:
        rc = d.terminate()
    assert rc == 0, d.tail()
    assert [x["image"] for x in d.lines() if x.get("event") == "anomaly"] == ["a.jpg", "b.jpg"]
    assert [p.name for p in inbox.glob("*.jpg")] == [] and (inbox / "processed" / "b.jpg").exists()


def test_corrupt_outbox_is_moved_aside_and_an_unusable_one_exits_1(tmp_path, tiny_bundle, mosquitto):
    bundle, _ = tiny_bundle
    outbox = tmp_path / "outbox.sqlite"
    outbox.write_bytes(b"garbage after a power cut" * 200)
    inbox, cfg = _front_camera_config(tmp_path, "dev7", bundle, mosquitto, outbox)
    sub = Subscriber(mosquitto, ["edge-detect/dev7/event/+"], client_id="dev7-sub")
    assert sub.subscribed.wait(5)
    d = DaemonProc(cfg, tmp_path / "daemon.log")
    try:
        corrupt = d.wait_for(lambda x: x.get("event") == "outbox_corrupt")
        d.wait_for(lambda x: x.get("event") == "started")
        drop_file(inbox, "a.jpg", encode(anomalous_image(np.random.default_rng(7)), "JPEG"))
        assert sub.wait(lambda: len(sub.events()) == 1, 15), d.tail()  # a fresh outbox delivers
    finally:
        rc = d.terminate()
        sub.close()
    assert rc == 0, d.tail()
    assert Path(corrupt["moved_to"]).read_bytes() == b"garbage after a power cut" * 200  # kept, not deleted
    # an outbox that can't be created at all: one line and exit 1, no traceback
    (tmp_path / "ro").write_text("a file where the outbox folder should be")
    cfg.write_text(cfg.read_text().replace(str(outbox), str(tmp_path / "ro" / "outbox.sqlite")))
    d = DaemonProc(cfg, tmp_path / "daemon2.log")
    assert d.proc.wait(30) == 1
    assert [x for x in d.lines() if x.get("event") == "outbox_unusable"]
    assert "Traceback" not in d.log_path.read_text()


def test_outbox_deleted_while_running_keeps_every_event(tmp_path, tiny_bundle, mosquitto):
    """rm of the outbox while events wait for the broker: SQLite would go on writing to the unlinked
    file and a restart would find an empty outbox. The daemon writes it out again and says so."""
    bundle, _ = tiny_bundle
    outbox = tmp_path / "outbox.sqlite"
    inbox, cfg = _front_camera_config(tmp_path, "dev10", bundle, mosquitto, outbox)
    sub = Subscriber(mosquitto, ["edge-detect/dev10/event/+"], client_id="dev10-sub")
    assert sub.subscribed.wait(5)
    rng = np.random.default_rng(10)
    d = DaemonProc(cfg, tmp_path / "daemon.log")
    try:
        d.wait_for(lambda x: x.get("event") == "mqtt_connected")
        mosquitto.stop()
        drop_file(inbox, "a.jpg", encode(anomalous_image(rng), "JPEG"))
        d.wait_for(lambda x: x.get("event") == "anomaly" and x["image"] == "a.jpg")
        outbox.unlink()
        restored = d.wait_for(lambda x: x.get("event") == "outbox_restored", 5)
        assert restored["level"] == "warning" and restored["outbox_depth"] >= 1
        drop_file(inbox, "b.jpg", encode(anomalous_image(rng), "JPEG"))
        d.wait_for(lambda x: x.get("event") == "anomaly" and x["image"] == "b.jpg")
    finally:
        d.kill()  # no clean stop: both events must already be in the file at the path
    mosquitto.start()
    d = DaemonProc(cfg, tmp_path / "daemon2.log")
    try:
        assert sub.wait(lambda: len(sub.events()) >= 2, 15), d.tail()
    finally:
        rc = d.terminate()
        sub.close()
    assert rc == 0, d.tail()
    assert sorted(e["extra"]["image"] for e in sub.events()) == ["a.jpg", "b.jpg"]


def test_oversize_and_empty_files_are_rejected_with_their_reason(tmp_path, tiny_bundle, mosquitto):
    bundle, _ = tiny_bundle
    inbox = tmp_path / "in"
    inbox.mkdir()
    cfg = write_config(tmp_path / "edge.toml", device="dev11", bundle=bundle, broker=mosquitto,
                       outbox=tmp_path / "outbox.sqlite", cameras=_dir_camera("front", inbox) + "max_bytes = 4096\n")
    drop_file(inbox, "huge.jpg", np.random.default_rng(11).bytes(5000))
    drop_file(inbox, "empty.jpg", b"")
    d = DaemonProc(cfg, tmp_path / "daemon.log")
    try:
        d.wait_for(lambda x: x.get("event") == "stats" and x["images_rejected"] == 2)
        drop_file(inbox, "a.jpg", encode(anomalous_image(np.random.default_rng(11)), "JPEG"))
        d.wait_for(lambda x: x.get("event") == "anomaly")  # and it goes on
    finally:
        rc = d.terminate()
    assert rc == 0, d.tail()
    why = {x["image"]: x["error"] for x in d.lines() if x.get("event") == "image_rejected"}
    assert why == {"huge.jpg": "file of 5000 bytes is larger than max_bytes (4096)",
                   "empty.jpg": "empty image data (0 bytes)"}
    assert sorted(p.name for p in (inbox / "processed" / "rejected").iterdir()) == ["empty.jpg", "huge.jpg"]


def test_an_event_the_disk_cannot_store_leaves_its_file_for_a_retry(tmp_path, tiny_bundle, mosquitto, monkeypatch):
    """The outbox's disk is full twice: the file stays in the folder, is scored again when due, and
    its event is delivered once, with the event id it would have had."""
    import sqlite3

    from edge_detect import daemon as daemon_mod
    from edge_detect.config import load_config

    monkeypatch.setattr(daemon_mod, "STORE_RETRY_S", 0.3)
    bundle, _ = tiny_bundle
    inbox, cfg = _front_camera_config(tmp_path, "dev8", bundle, mosquitto)
    sub = Subscriber(mosquitto, ["edge-detect/dev8/event/+"], client_id="dev8-sub")
    assert sub.subscribed.wait(5)
    d = daemon_mod.Daemon(load_config(cfg))
    failures, seen_in_inbox, errors = [2], [], []

    def feed() -> None:
        try:
            deadline = time.monotonic() + 30
            while (d.publisher is None or not d.publisher.connected) and time.monotonic() < deadline:
                time.sleep(0.02)
            real = d.publisher.publish_event

            def disk_full(*args, **kwargs):
                if failures[0]:
                    failures[0] -= 1
                    seen_in_inbox.append((inbox / "a.jpg").exists())  # not moved away before it is stored
                    raise sqlite3.OperationalError("database or disk is full")
                return real(*args, **kwargs)

            d.publisher.publish_event = disk_full
            drop_file(inbox, "a.jpg", encode(anomalous_image(np.random.default_rng(8)), "JPEG"))
            assert sub.wait(lambda: len(sub.events()) == 1, 20)
        except BaseException as e:  # reported after the daemon stopped
            errors.append(e)
        finally:
            d.request_stop()

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    rc = d.run()
    t.join(5)
    sub.close()
    assert not errors, errors
    assert rc == 0 and d.events_refused == 2 and d.events == 1 and seen_in_inbox == [True, True]
    (ev,) = sub.events()
    assert ev["extra"]["image"] == "a.jpg"
    assert not (inbox / "a.jpg").exists() and (inbox / "processed" / "a.jpg").exists()


def test_systemd_notify_and_watchdog(tmp_path, tiny_bundle, mosquitto):
    bundle, _ = tiny_bundle
    sock_path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(sock_path)
    s.settimeout(15)
    (tmp_path / "in").mkdir()
    cfg = write_config(tmp_path / "edge.toml", device="dev4", bundle=bundle, broker=mosquitto,
                       outbox=tmp_path / "outbox.sqlite", cameras=_dir_camera("front", tmp_path / "in"))
    d = DaemonProc(cfg, tmp_path / "daemon.log", env={"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "400000"})
    got = []
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not ({"READY=1", "WATCHDOG=1"} <= set(got) and
                                                   sum(m == "WATCHDOG=1" for m in got) >= 3):
            got += s.recv(4096).decode().splitlines()
        d.proc.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in got:
            got += s.recv(4096).decode().splitlines()
    finally:
        rc = d.terminate()
        s.close()
    assert rc == 0
    assert got.index("READY=1") < got.index("WATCHDOG=1") < got.index("STOPPING=1")
    assert any(m.startswith("STATUS=") for m in got)


def test_require_accelerator_exits_with_a_clear_error(tmp_path, tiny_bundle, mosquitto):
    bundle, _ = tiny_bundle
    (tmp_path / "in").mkdir()
    cfg = write_config(tmp_path / "edge.toml", device="dev5", bundle=bundle, broker=mosquitto,
                       outbox=tmp_path / "outbox.sqlite", cameras=_dir_camera("front", tmp_path / "in"),
                       extra="")
    text = cfg.read_text().replace("watch_interval = 0.3", 'watch_interval = 0.3\nrequire_accelerator = true\n'
                                   '[model.accelerator]\ntype = "gpu"\nlibrary_path = "/nonexistent/libgpu.so"')
    cfg.write_text(text)
    d = DaemonProc(cfg, tmp_path / "daemon.log")
    assert d.proc.wait(30) == 3
    line = [x for x in d.lines() if x.get("event") == "accelerator_required"][0]
    assert "/nonexistent/libgpu.so" in line["error"] and "require_accelerator" in line["error"]
    # without require_accelerator: CPU fallback, one clear line, and the reason on the stats
    cfg.write_text(text.replace("require_accelerator = true", "require_accelerator = false"))
    d = DaemonProc(cfg, tmp_path / "daemon2.log")
    try:
        fb = d.wait_for(lambda x: x.get("event") == "accelerator_fallback")
        stats = d.wait_for(lambda x: x.get("event") == "stats")
    finally:
        assert d.terminate() == 0
    assert "libgpu.so" in fb["reason"] and stats["accelerator"] == "cpu"
    assert "libgpu.so" in stats["accelerator_fallback"]


# -- pieces of the daemon, in process ------------------------------------------------------------


def test_stable_event_id_is_a_valid_uuid7_and_stable():
    a = stable_event_id("d", "c", "x.jpg:10:123", 1_700_000_000.5)
    assert a == stable_event_id("d", "c", "x.jpg:10:123", 1_700_000_000.5)
    assert a != stable_event_id("d", "c", "x.jpg:10:124", 1_700_000_000.5)
    ev = build_event(device="d", camera="c", score=1, normalised=1, threshold=1, anomalous=True,
                     model={"name": "m", "version": "1", "sha256": "0" * 64, "variant": "float32"},
                     captured_at=1.0, event_id=a)
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((SCHEMAS / "event.schema.json").read_text())
    jsonschema.validate(ev, schema)
    assert int(a.replace("-", "")[:12], 16) == 1_700_000_000_500  # capture time in ms up front


def test_inbox_drops_oldest_for_streams_and_blocks_for_directories():
    stop = threading.Event()
    box = Inbox(["a", "b"])
    assert box.put("a", "f1", 2, False, stop) is None
    assert box.put("a", "f2", 2, False, stop) is None
    assert box.put("a", "f3", 2, False, stop) == "f1"  # a stream keeps the newest
    assert box.put("b", "g1", 1, True, stop) is None
    t = threading.Thread(target=box.put, args=("b", "g2", 1, True, stop))
    t.start()
    time.sleep(0.1)
    assert t.is_alive()  # a directory camera waits for room
    got = [box.get(0.1) for _ in range(4)]
    t.join(1)
    assert not t.is_alive()
    assert [g[0] for g in got] == ["a", "b", "a", "b"]  # round robin
    assert box.get(0.01) is None


def test_latency_percentiles_use_a_fixed_ring():
    lat = Latency(size=100)
    assert lat.percentiles()["p50"] is None
    for i in range(1000):
        lat.add(float(i % 100))
    p = lat.percentiles()
    assert p["p50"] == pytest.approx(49.5) and p["p99"] == pytest.approx(98.01)


def test_snapshot_of_a_16_bit_frame_is_reduced_like_the_model_input():
    from edge_detect.daemon import snapshot_jpeg

    frame = np.tile(np.repeat(np.array([0, 1024, 2048, 4095], np.uint16), 8), (16, 1))  # Mono12 in a 16-bit PNG
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, "PNG")
    snap = Image.open(io.BytesIO(snapshot_jpeg(buf.getvalue(), bit_depth=12)))
    # Pillow's own 16-bit conversion clips at 255 (a white picture); ours keeps the top 8 of 12 bits.
    assert snap.mode == "L" and np.asarray(snap)[4, 4::8] == pytest.approx([0, 64, 128, 255], abs=3)


def test_snapshot_of_a_jpeg_that_exif_turns_is_re_encoded_in_the_stored_pixel_grid():
    from edge_detect.daemon import snapshot_jpeg

    frame = np.zeros((20, 40), np.uint8)
    frame[:, :10] = 255  # a white band on the left of the stored grid, where the regions are
    plain, turned = io.BytesIO(), io.BytesIO()
    Image.fromarray(frame).save(plain, "JPEG")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    Image.fromarray(frame).save(turned, "JPEG", exif=exif.tobytes())
    assert snapshot_jpeg(plain.getvalue()) == plain.getvalue()  # no tag: passed through untouched
    snap = Image.open(io.BytesIO(snapshot_jpeg(turned.getvalue())))
    assert snap.getexif().get(0x0112, 1) == 1 and snap.size == (40, 20)
    assert np.asarray(snap)[10, :10].min() > 200 and np.asarray(snap)[10, 20:].max() < 50


def test_commands_heatmaps_and_quiet_folders_say_what_they_do(tmp_path, mosquitto):
    # The shipped demo bundle is a metric-learning model: no error map, so no heatmap to send.
    demo = Path(edge_detect.__file__).parent / "data" / "demo" / "bundle"
    inbox = tmp_path / "in"
    inbox.mkdir()
    side = tmp_path / "side"
    side.mkdir()
    cfg = write_config(tmp_path / "edge.toml", device="dev9", bundle=demo, broker=mosquitto,
                       outbox=tmp_path / "outbox.sqlite",
                       cameras=_dir_camera("front", inbox, heatmap=True) + _dir_camera("side", side, stall_timeout=0.5))
    sub = Subscriber(mosquitto, ["edge-detect/dev9/cmd/result"], client_id="cmd-results")
    assert sub.subscribed.wait(5)
    d = DaemonProc(cfg, tmp_path / "daemon.log")
    try:
        off = d.wait_for(lambda x: x.get("event") == "heatmap_off")
        d.wait_for(lambda x: x.get("event") == "started")
        time.sleep(1.0)  # the command subscription follows the start line
        for i, cmd in enumerate([{"camera": "front"}, {}]):
            sub.client.publish("edge-detect/dev9/cmd", json.dumps({"cmd": "capture", "id": f"c{i}", **cmd}), qos=1)
        assert sub.wait(lambda: len(sub.payloads("/cmd/result")) == 2, 10), d.tail()
        time.sleep(1.5)  # past health.stall_timeout (1 s) with nothing dropped into the folder
    finally:
        rc = d.terminate()
        sub.close()
    assert rc == 0, d.tail()
    assert off["cameras"] == ["front"] and "makes no error map" in off["error"]
    results = {r["id"]: r for r in map(json.loads, sub.payloads("/cmd/result"))}
    assert results["c0"]["ok"] is False and "camera 'front' is not mqtt-triggered" in results["c0"]["detail"]
    assert results["c1"]["ok"] is False and results["c1"]["detail"] == "no mqtt-triggered camera"
    # A watched folder waits for parts: quiet there is not a stalled camera, unless the camera sets
    # its own stall_timeout, for a line that should never be quiet that long.
    assert [x["camera"] for x in d.lines() if x.get("event") == "camera_stalled"] == ["side"]
