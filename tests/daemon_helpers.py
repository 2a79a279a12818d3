"""Run ``edge-detect run`` as a real subprocess and watch what it logs and publishes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import paho.mqtt.client as mqtt

CLI = str(Path(sys.executable).parent / "edge-detect")


def write_config(path: Path, *, device: str, bundle: Path, broker, outbox: Path, cameras: str,
                 stats_interval: float = 0.5, extra: str = "") -> Path:
    path.write_text(f"""
[device]
id = "{device}"
log_format = "json"

[model]
bundle = "{bundle}"
num_threads = 1
watch_interval = 0.3

[mqtt]
host = "{broker.host}"
port = {broker.port}
reconnect_min_s = 0.2
reconnect_max_s = 1.0
discovery = false

[outbox]
path = "{outbox}"

[stats]
interval = {stats_interval}

[health]
stall_timeout = 1.0
reconnect_min = 0.1
reconnect_max = 0.5
{extra}
{cameras}
""")
    return path


class DaemonProc:
    """One daemon subprocess; stdout (JSON log lines) goes to a file we can read while it runs."""

    def __init__(self, config: Path, log_path: Path, env: Optional[Dict[str, str]] = None) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen([CLI, "run", "--config", str(config)], stdout=self._log,
                                     stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        self.started = time.monotonic()

    def lines(self) -> List[dict]:
        out = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            if raw.startswith("{"):
                try:
                    out.append(json.loads(raw))
                except ValueError:
                    pass
        return out

    def wait_for(self, pred: Callable[[dict], bool], timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines():
                if pred(line):
                    return line
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.tail()}")
            time.sleep(0.1)
        raise AssertionError(f"no matching log line within {timeout} s:\n{self.tail()}")

    def last_stats(self) -> Optional[dict]:
        stats = [line for line in self.lines() if line.get("event") == "stats"]
        return stats[-1] if stats else None

    def tail(self, n: int = 12) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def terminate(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        self._log.close()
        return rc

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()


class Subscriber:
    """A QoS 1 subscriber with a persistent session (clean_session=False, fixed client id)."""

    def __init__(self, broker, topics: List[str], client_id: str = "test-subscriber") -> None:
        self.messages: List[mqtt.MQTTMessage] = []
        self.lock = threading.Lock()
        self.topics = topics
        self.subscribed = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.reconnect_delay_set(0.2, 1)
        c.connect(broker.host, broker.port, keepalive=5)
        c.loop_start()
        self.client = c

    def _on_connect(self, client, userdata, flags, reason, properties):
        if not reason.is_failure:
            for t in self.topics:
                client.subscribe(t, qos=1)
            self.subscribed.set()

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.messages.append(msg)

    def events(self) -> List[dict]:
        with self.lock:
            return [json.loads(m.payload) for m in self.messages if "/event/" in m.topic]

    def payloads(self, part: str) -> List[bytes]:
        with self.lock:
            return [m.payload for m in self.messages if part in m.topic]

    def wait(self, pred: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return True
            time.sleep(0.1)
        return pred()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def drop_file(directory: Path, name: str, data: bytes) -> None:
    """Write like an FTP server: under a temporary name, then rename into place."""
    tmp = directory / (name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, directory / name)
