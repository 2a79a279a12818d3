import http.server
import os
import shutil
import threading
import time

import pytest

from edge_detect.capture import PLUGINS, SourceError, make_source, source_config_from_dict
from edge_detect.capture.directory import DirectorySource
from edge_detect.capture.http import redact
from edge_detect.validate import ConfigError


def _dir_source(tmp_path, **opts):
    kind, cfg = source_config_from_dict({"type": "directory", "path": str(tmp_path / "in"), "settle": 0.0,
                                         "poll_interval": 0.02, **opts}, "cameras[0].source")
    (tmp_path / "in").mkdir(exist_ok=True)
    src = make_source(kind, cfg, "cam")
    src.open()
    return src


def _drain(src, timeout=0.3):
    frames = []
    while (f := src.read(timeout)) is not None:
        frames.append(f)
    return frames


def test_registry_has_one_module_per_type():
    assert set(PLUGINS) == {"directory", "http", "opencv"}


def test_directory_move_processes_each_file_once_in_order(tmp_path):
    src = _dir_source(tmp_path)
    d = tmp_path / "in"
    for i, name in enumerate(["b.jpg", "a.png", "c.JPG"]):
        (d / name).write_bytes(b"x" * (i + 1))
        os.utime(d / name, ns=(1_000_000_000 * (10 + i),) * 2)  # b oldest, then a, then c
    (d / "notes.txt").write_text("not an image")
    (d / "d.jpg.part").write_bytes(b"partial")
    (d / ".hidden.jpg").write_bytes(b"dot")
    frames = _drain(src)
    assert [f.name for f in frames] == ["b.jpg", "a.png", "c.JPG"]
    assert frames[0].data == b"x" and frames[0].t_capture == pytest.approx(10.0)
    src.done(frames[0], ok=True)
    src.done(frames[1], ok=False)
    assert (d / "processed" / "b.jpg").exists() and (d / "processed" / "rejected" / "a.png").exists()
    assert not (d / "b.jpg").exists()
    # c is in flight (not done): it is not handed out twice
    assert src.read(0.1) is None
    src.close()
    src.open()  # after a reconnect the unfinished file comes again rather than being lost
    again = _drain(src)
    assert [f.name for f in again] == ["c.JPG"] and again[0].key == frames[2].key


def test_directory_a_file_that_cannot_be_moved_is_not_scored_again_until_it_changes(tmp_path):
    src = _dir_source(tmp_path)
    d = tmp_path / "in"
    (d / "a.jpg").write_bytes(b"x")
    (first,) = _drain(src, 0.1)
    shutil.rmtree(d / "processed")
    (d / "processed").write_text("a file where the folder should be")  # the move can only fail
    with pytest.raises(SourceError, match="cannot move"):
        src.done(first, ok=True)
    assert _drain(src, 0.2) == []  # before: handed out (and its event sent) again every poll
    (d / "a.jpg").write_bytes(b"new content")  # a new capture under the same name is a new file
    assert [f.data for f in _drain(src, 0.2)] == [b"new content"]
    src.close()


@pytest.mark.parametrize("after", ["move", "delete", "keep"])
def test_directory_retry_hands_the_same_file_out_again_when_due(tmp_path, after):
    """What the daemon does when the outbox could not store a frame's event (disk full)."""
    src = _dir_source(tmp_path, after=after)
    (tmp_path / "in" / "a.jpg").write_bytes(b"x")
    (first,) = _drain(src, 0.1)
    t0 = time.monotonic()
    src.retry(first, 0.4)
    assert src.read(0.2) is None  # not due yet
    again = src.read(1.0)
    assert again is not None and again.key == first.key and time.monotonic() - t0 >= 0.4
    src.done(again, ok=True)
    assert _drain(src, 0.1) == [] and (after == "keep") == (tmp_path / "in" / "a.jpg").exists()
    src.close()


@pytest.mark.parametrize("after", ["move", "delete", "keep"])
def test_directory_scan_during_done_does_not_hand_a_file_out_twice(tmp_path, monkeypatch, after):
    """done() runs on the daemon's thread while the camera thread scans and reads: a scan and read
    in the middle of done() (here: just before the move, unlink or record write) must not hand the
    file out again."""
    import edge_detect.capture.directory as directory

    src = _dir_source(tmp_path, after=after, record=str(tmp_path / "cam.processed"))
    (tmp_path / "in" / "a.jpg").write_bytes(b"1")
    (f,) = _drain(src)
    hook = {"move": (directory.shutil, "move"), "delete": (type(tmp_path), "unlink"),
            "keep": (type(src._record), "add")}[after]
    real = getattr(*hook)

    inside = []

    def scan_then(*a, **k):
        src._scan()  # the camera thread's look at the directory, and its read, inside the window
        inside.append(src.read(0.0))
        return real(*a, **k)

    monkeypatch.setattr(*hook, scan_then)
    src.done(f, ok=False)
    monkeypatch.undo()
    assert inside == [None] and src.read(0.1) is None


def test_directory_waits_for_a_file_to_settle(tmp_path):
    src = _dir_source(tmp_path, settle=0.3)
    f = tmp_path / "in" / "growing.jpg"
    f.write_bytes(b"a")
    assert src.read(0.1) is None  # just written: not settled yet
    with open(f, "ab") as fh:
        fh.write(b"b")
    t0 = time.monotonic()
    frame = src.read(2.0)
    assert frame is not None and frame.data == b"ab"
    assert time.monotonic() - t0 >= 0.25


def test_directory_holds_a_young_file_that_does_not_decode_until_it_changes(tmp_path):
    src = _dir_source(tmp_path, incomplete_wait=0.4)
    f = tmp_path / "in" / "stalled.jpg"
    f.write_bytes(b"first half")
    first = src.read(1.0)
    assert first is not None and src.incomplete(first)  # young: maybe still arriving
    assert src.read(0.2) is None  # held while unchanged
    with open(f, "ab") as fh:
        fh.write(b", second half")
    again = src.read(1.0)
    assert again is not None and again.data == b"first half, second half"
    # unchanged past incomplete_wait: it is handed out once more and may now be rejected
    assert src.incomplete(again)
    t0 = time.monotonic()
    last = src.read(2.0)
    assert last is not None and last.data == again.data and time.monotonic() - t0 >= 0.2
    assert not src.incomplete(last)
    src.done(last, ok=False)
    assert (tmp_path / "in" / "processed" / "rejected" / "stalled.jpg").exists()


def test_directory_rejects_an_old_file_that_does_not_decode_at_once(tmp_path):
    src = _dir_source(tmp_path)
    f = tmp_path / "in" / "old.jpg"
    f.write_bytes(b"not an image")
    os.utime(f, ns=(1_000_000_000 * 10,) * 2)
    assert not src.incomplete(src.read(1.0))


def test_directory_delete(tmp_path):
    src = _dir_source(tmp_path, after="delete")
    (tmp_path / "in" / "a.jpg").write_bytes(b"1")
    (f,) = _drain(src)
    src.done(f, ok=True)
    assert not (tmp_path / "in" / "a.jpg").exists()


def test_directory_keep_survives_restart(tmp_path):
    src = _dir_source(tmp_path, after="keep", record=str(tmp_path / "state" / "cam.processed"))
    d = tmp_path / "in"
    for n in ("a.jpg", "b.jpg"):
        (d / n).write_bytes(n.encode())
    frames = _drain(src)
    assert len(frames) == 2
    src.done(frames[0], ok=True)
    src.close()
    # a restart: only the file that was not done comes again
    src2 = _dir_source(tmp_path, after="keep", record=str(tmp_path / "state" / "cam.processed"))
    assert [f.name for f in _drain(src2)] == ["b.jpg"]
    # a new file with the same name (rewritten) is new
    (d / "a.jpg").write_bytes(b"new content")
    assert [f.name for f in _drain(src2)] == ["a.jpg"]
    assert (d / "a.jpg").exists() and (d / "b.jpg").exists()


def test_directory_vanishes_and_returns(tmp_path):
    src = _dir_source(tmp_path)
    d = tmp_path / "in"
    (d / "processed" / "rejected").rmdir()
    (d / "processed").rmdir()
    d.rmdir()
    with pytest.raises(SourceError, match="does not exist|cannot list"):
        src.read(0.2)
    src.close()
    with pytest.raises(SourceError, match="does not exist"):
        src.open()
    d.mkdir()
    src.open()
    (d / "x.jpg").write_bytes(b"1")
    assert src.read(1.0).name == "x.jpg"


def test_directory_recreated_between_scans_still_moves_each_file_once(tmp_path):
    # The folder (and processed/ in it) deleted and re-created between two scans: no read fails, so
    # the source is never reopened; done() must still move the file, or it is scored again forever.
    src = _dir_source(tmp_path)
    d = tmp_path / "in"
    shutil.rmtree(d)
    d.mkdir()
    (d / "x.jpg").write_bytes(b"1")
    (bad,) = _drain(src)
    src.done(bad, False)
    (d / "y.jpg").write_bytes(b"2")
    (good,) = _drain(src)
    src.done(good, True)
    assert _drain(src) == []
    assert (d / "processed" / "rejected" / "x.jpg").exists() and (d / "processed" / "y.jpg").exists()


def test_directory_rejects_oversize_unread(tmp_path):
    src = _dir_source(tmp_path, max_bytes=10)
    (tmp_path / "in" / "big.jpg").write_bytes(b"0" * 11)
    (f,) = _drain(src)
    assert f.data == b"" and f.rejected == "file of 11 bytes is larger than max_bytes (10)"


class _Handler(http.server.BaseHTTPRequestHandler):
    body = b"\xff\xd8jpeg-bytes"
    auth = None

    def do_GET(self):  # noqa: N802 - http.server's name
        if self.auth and self.headers.get("Authorization") != self.auth:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="cam"')
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *a):
        pass


@pytest.fixture
def http_server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_http_snapshot(http_server):
    url = f"http://127.0.0.1:{http_server.server_address[1]}/snap.jpg"
    kind, cfg = source_config_from_dict({"type": "http", "url": url, "timeout": 2.0}, "s")
    src = make_source(kind, cfg, "cam")
    src.open()
    f = src.read(1.0)
    assert f.data == _Handler.body and f.name == url


def test_https_snapshot_checks_the_camera_certificate(tmp_path):
    import ssl

    from tls_helpers import self_signed

    cert, key = self_signed(tmp_path / "tls")
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{srv.server_address[1]}/snap.jpg"
    try:
        for opts, ok in (({"ca_file": str(cert)}, True), ({}, False), ({"verify_tls": False}, True)):
            kind, cfg = source_config_from_dict({"type": "http", "url": url, "timeout": 2.0, **opts}, "s")
            src = make_source(kind, cfg, "cam")
            src.open()
            if ok:
                assert src.read(1.0).data == _Handler.body, opts
            else:  # the system CAs don't know this camera's certificate
                with pytest.raises(SourceError, match="CERTIFICATE_VERIFY_FAILED"):
                    src.read(1.0)
    finally:
        srv.shutdown()
        srv.server_close()


def test_http_basic_auth_password_from_env(http_server, monkeypatch):
    import base64

    monkeypatch.setattr(_Handler, "auth", "Basic " + base64.b64encode(b"op:s3cret").decode())
    monkeypatch.setenv("CAM_PW", "s3cret")
    url = f"http://127.0.0.1:{http_server.server_address[1]}/snap.jpg"
    kind, cfg = source_config_from_dict(
        {"type": "http", "url": url, "auth": "basic", "username": "op", "password_env": "CAM_PW"}, "s")
    src = make_source(kind, cfg, "cam")
    src.open()
    assert src.read(1.0).data == _Handler.body
    monkeypatch.setenv("CAM_PW", "wrong")
    src.open()
    with pytest.raises(SourceError, match="HTTP 401"):
        src.read(1.0)


def test_http_server_gone_is_a_source_error(http_server):
    port = http_server.server_address[1]
    http_server.shutdown()
    http_server.server_close()
    kind, cfg = source_config_from_dict({"type": "http", "url": f"http://u:pw@127.0.0.1:{port}/x", "timeout": 1.0}, "s")
    src = make_source(kind, cfg, "cam")
    src.open()
    with pytest.raises(SourceError) as e:
        src.read(1.0)
    assert "pw" not in str(e.value)  # the password never reaches a log line


def test_redact():
    assert redact("https://user:pw@cam.local:8443/snap?x=1") == "https://cam.local:8443/snap?x=1"
    assert redact("http://cam/snap") == "http://cam/snap"


def test_source_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"cameras\[2\]\.source\.type: must be one of"):
        source_config_from_dict({"type": "ftp"}, "cameras[2].source")
    with pytest.raises(ConfigError, match=r"s\.settle: must be a number"):
        source_config_from_dict({"type": "directory", "path": "/x", "settle": "fast"}, "s")
    with pytest.raises(ConfigError, match=r"s\.after: must be one of move, delete, keep"):
        source_config_from_dict({"type": "directory", "path": "/x", "after": "archive"}, "s")
    with pytest.raises(ConfigError, match=r"s\.colour: unknown key"):
        source_config_from_dict({"type": "http", "url": "http://x/", "colour": 1}, "s")
    with pytest.raises(ConfigError, match=r"s\.url: must be an http"):
        source_config_from_dict({"type": "http", "url": "ftp://x/"}, "s")
    with pytest.raises(ConfigError, match=r"s\.url: give exactly one"):
        source_config_from_dict({"type": "opencv"}, "s")


def test_opencv_missing_names_the_extra(monkeypatch):
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "cv2":
            raise ImportError("No module named 'cv2'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    kind, cfg = source_config_from_dict({"type": "opencv", "url": "rtsp://cam/stream"}, "s")
    src = make_source(kind, cfg, "cam")
    with pytest.raises(SourceError, match=r"edge-detect\[camera\]"):
        src.open()


def test_opencv_video_file(tmp_path):
    cv2 = pytest.importorskip("cv2")
    import numpy as np

    path = str(tmp_path / "clip.avi")
    w = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 5, (32, 24))
    for i in range(3):
        w.write(np.full((24, 32, 3), (0, 0, 200 + i), np.uint8))  # BGR red
    w.release()
    kind, cfg = source_config_from_dict({"type": "opencv", "url": path}, "s")
    src = make_source(kind, cfg, "cam")
    src.open()
    f = src.read(1.0)
    assert f.data.shape == (24, 32, 3) and f.data[0, 0, 0] > 150  # converted to RGB: red first
    src.read(1.0), src.read(1.0)
    with pytest.raises(SourceError, match="end of stream"):
        src.read(1.0)
    src.close()


def test_directory_source_class():
    assert PLUGINS["directory"] is DirectorySource and DirectorySource.default_interval == 0.0


class _Trickle(http.server.BaseHTTPRequestHandler):
    """Headers at once, then the body a few bytes at a time: every recv is within the socket timeout."""

    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", "4000")
        self.end_headers()
        try:
            for _ in range(200):
                self.wfile.write(b"\xff" * 20)
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:
            pass  # the client gave up

    def log_message(self, *a):
        pass


class _TrickleHeaders(_Trickle):
    """The status line and headers a byte at a time: no recv ever waits for the socket timeout."""

    def do_GET(self):  # noqa: N802 - http.server's name
        try:
            for b in b"HTTP/1.0 200 OK\r\nContent-Type: image/jpeg\r\nX-Padding: " + b"p" * 200:
                self.wfile.write(bytes([b]))
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:
            pass  # the client gave up


@pytest.mark.parametrize("handler", [_Trickle, _TrickleHeaders], ids=["body", "headers"])
def test_http_timeout_bounds_the_whole_response(handler):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/snap.jpg"
        kind, cfg = source_config_from_dict({"type": "http", "url": url, "timeout": 0.5}, "s")
        src = make_source(kind, cfg, "cam")
        src.open()
        t0 = time.monotonic()
        with pytest.raises(SourceError, match="no complete response within 0.5 s"):
            src.read(1.0)
        assert time.monotonic() - t0 < 2.0  # not the 20 s the body takes
    finally:
        srv.shutdown()
        srv.server_close()
