"""systemd ``Type=notify`` and watchdog support over $NOTIFY_SOCKET, stdlib only.

The protocol is one AF_UNIX datagram of ``KEY=VALUE`` lines per notification
(sd_notify(3)). An address starting with ``@`` is in the Linux abstract namespace.
Without $NOTIFY_SOCKET (not started by systemd) every call is a cheap no-op.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Mapping, Optional


class Notifier:
    """Sends READY=1, WATCHDOG=1, STATUS=..., STOPPING=1 to systemd.

    address: the notify socket path ("@name" for abstract); None disables notification.
    watchdog_usec: the service's WatchdogSec in µs ($WATCHDOG_USEC); 0 or None disables pings.
    """

    def __init__(self, address: Optional[str], watchdog_usec: Optional[int] = None) -> None:
        self.address = address or None
        self.watchdog_usec = int(watchdog_usec or 0)
        self._last_ping = 0.0
        self._sock: Optional[socket.socket] = None
        if self.address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> Notifier:
        """From $NOTIFY_SOCKET and $WATCHDOG_USEC (ignored when $WATCHDOG_PID names another process)."""
        env = os.environ if env is None else env
        usec = 0
        pid = env.get("WATCHDOG_PID")
        if env.get("WATCHDOG_USEC", "").isdigit() and (not pid or pid == str(os.getpid())):
            usec = int(env["WATCHDOG_USEC"])
        return cls(env.get("NOTIFY_SOCKET"), usec)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    @property
    def watchdog_interval(self) -> Optional[float]:
        """Seconds between WATCHDOG=1 pings: half the timeout, as sd_watchdog_enabled(3) advises."""
        return self.watchdog_usec / 2e6 if self.watchdog_usec > 0 else None

    def _target(self) -> str | bytes:
        assert self.address is not None
        if self.address.startswith("@"):
            return b"\0" + self.address[1:].encode()
        return self.address

    def notify(self, **fields: object) -> bool:
        """Send ``KEY=value`` lines (keys upper-cased); False if systemd can't be reached."""
        if self._sock is None:
            return False
        msg = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        try:
            self._sock.sendto(msg, self._target())
        except OSError:
            # systemd restarted or the socket went away: the service keeps running regardless.
            return False
        return True

    def ready(self, status: Optional[str] = None) -> bool:
        return self.notify(READY=1, **({"STATUS": status} if status else {}))

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text.replace("\n", " "))

    def stopping(self, status: Optional[str] = None) -> bool:
        return self.notify(STOPPING=1, **({"STATUS": status} if status else {}))

    def watchdog(self) -> bool:
        self._last_ping = time.monotonic()
        return self.notify(WATCHDOG=1)

    def watchdog_due(self, now: Optional[float] = None) -> bool:
        """Whether a WATCHDOG=1 ping is due (always False when the watchdog is off)."""
        interval = self.watchdog_interval
        if interval is None or self._sock is None:
            return False
        return (time.monotonic() if now is None else now) - self._last_ping >= interval

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
