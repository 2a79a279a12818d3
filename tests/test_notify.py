import os
import socket
import uuid

import pytest

from edge_detect.notify import Notifier


def _recv(sock: socket.socket) -> dict:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines())


@pytest.fixture
def server(tmp_path):
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2)
    yield path, s
    s.close()


def test_ready_status_watchdog_stopping(server):
    path, s = server
    n = Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())})
    assert n.enabled and n.watchdog_interval == pytest.approx(2.0)
    assert n.ready("started")
    assert _recv(s) == {"READY": "1", "STATUS": "started"}
    assert n.status("3 cameras\nok")
    assert _recv(s) == {"STATUS": "3 cameras ok"}
    assert n.watchdog_due()
    assert n.watchdog()
    assert _recv(s) == {"WATCHDOG": "1"}
    assert not n.watchdog_due()
    assert n.stopping()
    assert _recv(s) == {"STOPPING": "1"}
    n.close()


def test_abstract_socket():
    name = f"edge-detect-test-{uuid.uuid4().hex}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(2)
    try:
        n = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        assert _recv(s) == {"READY": "1"}
    finally:
        s.close()


def test_without_systemd_everything_is_a_no_op():
    n = Notifier.from_env({})
    assert not n.enabled and n.watchdog_interval is None
    assert not n.ready() and not n.watchdog() and not n.watchdog_due()


def test_watchdog_for_another_pid_is_ignored(server):
    path, _ = server
    n = Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert n.watchdog_interval is None


def test_socket_gone_does_not_raise(tmp_path):
    n = Notifier(str(tmp_path / "missing.sock"))
    assert n.ready() is False
