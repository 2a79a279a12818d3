"""A local MQTT broker on loopback: Mosquitto as a child process, or amqtt in this process.

``edge-detect demo`` starts one when no ``--broker`` is given; the tests and the benches start
Mosquitto through the same class, so there is one place that writes its config and waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def find_mosquitto() -> Optional[str]:
    """Path of the mosquitto binary (PATH first, then the sbin folders apt uses), or None."""
    for cand in (shutil.which("mosquitto"), "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def _check_port_free(port: int) -> None:
    """Raise if something already listens on ``port``: the readiness probe would connect to it."""
    with socket.socket() as s:
        # As mosquitto does, so a port in TIME_WAIT from our own last run still counts as free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError as e:
            raise RuntimeError(f"port {port} on {HOST} is in use ({e.strerror}): is another broker running?") from None


def _wait_for_port(port: int, timeout: float, exited: Any) -> bool:
    """True once ``port`` accepts a connection; ``exited()`` returns an error text to stop early."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        err = exited()
        if err:
            raise RuntimeError(err)
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


class Mosquitto:
    """One Mosquitto on 127.0.0.1 with its own config in ``workdir`` (a temporary folder if None).

    :meth:`stop` sends SIGTERM, so a persistent broker writes its database, and :meth:`start`
    brings it back on the same port: sessions and queued QoS 1 messages survive, which is how the
    tests simulate an outage. ``max_queued``: messages kept per offline subscriber (0: no limit;
    Mosquitto's own default of 1,000 drops the rest silently). ``users``: name -> password, which
    turns anonymous access off. ``log``: write errors, warnings and notices to ``mosquitto.log``.
    """

    kind = "mosquitto"

    def __init__(
        self,
        workdir: Union[str, Path, None] = None,
        port: Optional[int] = None,
        *,
        persistent: bool = False,
        users: Optional[Dict[str, str]] = None,
        max_queued: int = 0,
        log: bool = True,
        extra_conf: Sequence[str] = (),
    ) -> None:
        exe = find_mosquitto()
        if exe is None:
            raise RuntimeError("mosquitto is not installed: run 'sudo apt-get install mosquitto'")
        self.exe = exe
        self._owned_dir = workdir is None
        self.dir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="edge-detect-mosquitto-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self.port = port or free_port()
        self.log = self.dir / "mosquitto.log"
        self.proc: Optional[subprocess.Popen] = None
        lines = [f"listener {self.port} {HOST}", f"max_queued_messages {max_queued}",
                 # Bursts from benches and outage tests: no in-flight window to stall or drop them.
                 "max_inflight_messages 0"]
        if persistent:
            (self.dir / "data").mkdir(exist_ok=True)
            # Outages in tests last seconds; the default autosave (30 min) only matters at exit.
            lines += ["persistence true", f"persistence_location {self.dir / 'data'}/", "autosave_interval 60"]
        else:
            lines.append("persistence false")
        if log:
            lines += [f"log_dest file {self.log}", "log_type error", "log_type warning", "log_type notice"]
        else:
            lines.append("log_type none")
        if os.geteuid() == 0:
            # As root, mosquitto switches to user "mosquitto", which may not exist or may not be
            # able to write a 0700 temporary folder: persistence and log would silently be lost.
            lines.append("user root")
        if users:
            pw = self.dir / "passwd"
            pw.write_text("")
            for user, password in users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pw), user, password], check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines.append("allow_anonymous true")
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text("\n".join([*lines, *extra_conf]) + "\n")

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> Mosquitto:
        """Start (or restart) the broker; returns once the port accepts connections (timeout in s)."""
        assert not self.running, "already running"
        _check_port_free(self.port)
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)

        def exited() -> Optional[str]:
            if self.proc is None or self.proc.poll() is None:
                return None
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            return f"mosquitto exited with {self.proc.returncode}: {err.strip()} {log.strip()}".strip()

        if not _wait_for_port(self.port, timeout, exited):
            self.stop()
            raise RuntimeError(f"mosquitto did not accept connections on {self.url} within {timeout:g} s")
        return self

    def stop(self) -> None:
        """SIGTERM (a persistent broker saves its database) and wait; SIGKILL after 10 s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()

    def close(self) -> None:
        """Stop, and remove the work folder if this object made it."""
        self.stop()
        if self._owned_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Amqtt:
    """amqtt (pure Python, the ``demo`` extra) on 127.0.0.1, served from a daemon thread.

    For a machine without Mosquitto; anonymous, no persistence. Same ``start``/``stop`` as
    :class:`Mosquitto`.
    """

    kind = "amqtt"

    def __init__(self, port: Optional[int] = None) -> None:
        self.host = HOST
        self.port = port or free_port()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._broker: Any = None

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> Amqtt:
        """Returns once amqtt listens (it says so itself: a probe connection would only log noise)."""
        try:
            from amqtt.broker import Broker
        except ImportError:
            raise RuntimeError("no MQTT broker: install the demo extra (pip install 'edge-detect[demo]') "
                               "or mosquitto, or pass --broker HOST:PORT") from None
        for name in ("amqtt", "transitions"):
            # It logs config defaults at WARNING and every client's disconnect at ERROR.
            logging.getLogger(name).setLevel(logging.CRITICAL)
        cfg = {"listeners": {"default": {"type": "tcp", "bind": f"{HOST}:{self.port}"}}, "sys_interval": 0,
               "auth": {"allow-anonymous": True, "plugins": ["auth_anonymous"]}, "topic-check": {"enabled": False}}
        loop = asyncio.new_event_loop()
        ready, failed = threading.Event(), []

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._broker = Broker(cfg, loop=loop)
                loop.run_until_complete(self._broker.start())
            except Exception as e:  # reported to the caller below
                failed.append(e)
                ready.set()
                return
            ready.set()
            loop.run_forever()

        self._loop = loop
        threading.Thread(target=serve, name="amqtt-broker", daemon=True).start()
        if not ready.wait(timeout) or failed:
            raise RuntimeError(f"amqtt did not start: {failed[0] if failed else 'timeout'}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._broker is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop).result(10)
            except Exception:  # shutting down anyway; the thread is a daemon thread
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)

    close = stop


def local_broker(kind: str = "auto", workdir: Optional[Path] = None) -> Union[Mosquitto, Amqtt]:
    """An unstarted broker of ``kind``: "mosquitto", "amqtt", or "auto" (Mosquitto when installed)."""
    if kind not in ("auto", "mosquitto", "amqtt"):
        raise ValueError(f"broker kind must be auto, mosquitto or amqtt, not {kind!r}")
    if kind == "amqtt" or (kind == "auto" and find_mosquitto() is None):
        return Amqtt()
    return Mosquitto(workdir)
