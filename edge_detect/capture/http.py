"""An HTTP(S) JPEG snapshot URL, as many IP cameras offer (stdlib urllib only).

Each read is one GET. Basic or digest auth is optional; the password comes from a
file or an environment variable and never appears in logs (URLs are logged without
their userinfo).
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Dict, Optional

from .base import Frame, Source, SourceConfig, SourceError, register

AUTH = ("none", "basic", "digest")


@dataclass(frozen=True)
class HttpConfig(SourceConfig):
    """url: http:// or https:// snapshot URL.
    timeout: s for connecting and for the whole response.
    auth: none, basic or digest.
    username; password_file / password_env: where the password is read from (never inline).
    ca_file: CA bundle for https (default: the system's); verify_tls: false accepts any certificate.
    max_bytes: a larger response is refused (bytes).
    """

    url: str
    timeout: float = 5.0
    auth: str = "none"
    username: str = ""
    password_file: str = ""
    password_env: str = ""
    ca_file: str = ""
    verify_tls: bool = True
    max_bytes: int = 32 * 1024 * 1024

    def check(self) -> Dict[str, str]:
        p: Dict[str, str] = {}
        scheme = urllib.parse.urlsplit(self.url).scheme
        if scheme not in ("http", "https"):
            p["url"] = f"must be an http:// or https:// URL, got {redact(self.url)!r}"
        if self.timeout <= 0:
            p["timeout"] = f"must be > 0 s, got {self.timeout}"
        if self.auth not in AUTH:
            p["auth"] = f"must be one of {', '.join(AUTH)}, got {self.auth!r}"
        if self.auth != "none" and not self.username:
            p["username"] = f"is required with auth = {self.auth!r}"
        if self.password_file and self.password_env:
            p["password_file"] = "give password_file or password_env, not both"
        if self.max_bytes < 1:
            p["max_bytes"] = f"must be > 0 bytes, got {self.max_bytes}"
        return p


class _Tracked:
    """The socket of the request in flight, so a watchdog can cut the request off at its deadline."""

    def __init__(self) -> None:
        self.sock: Optional[socket.socket] = None
        self.cut = False

    def connection(self, base: type) -> type:
        tracked = self

        class Connection(base):  # type: ignore[misc, valid-type]
            def connect(self) -> None:
                super().connect()
                tracked.sock = self.sock

        return Connection

    def cut_off(self) -> None:
        sock, self.cut = self.sock, True
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked recv in the capture thread
            except OSError:
                pass


class _HttpHandler(urllib.request.HTTPHandler):
    def __init__(self, tracked: _Tracked) -> None:
        super().__init__()
        self._conn = tracked.connection(http.client.HTTPConnection)

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._conn, req)


class _HttpsHandler(urllib.request.HTTPSHandler):
    def __init__(self, tracked: _Tracked, context: ssl.SSLContext) -> None:
        super().__init__(context=context)
        self._conn = tracked.connection(http.client.HTTPSConnection)

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._conn, req, context=self._context)


def redact(url: str) -> str:
    """The URL without user:password@, for logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=host))


@register
class HttpSource(Source):
    type = "http"
    Config = HttpConfig
    default_interval = 1.0

    def __init__(self, config: HttpConfig, name: str) -> None:
        super().__init__(config, name)
        self.cfg = config
        self._opener: Optional[urllib.request.OpenerDirector] = None
        self._shown = redact(config.url)
        self._tracked = _Tracked()

    def _password(self) -> str:
        if self.cfg.password_file:
            try:
                with open(self.cfg.password_file) as f:
                    return f.read().strip()
            except OSError as e:
                raise SourceError(f"cannot read password_file {self.cfg.password_file}: {e.strerror}") from None
        if self.cfg.password_env:
            if self.cfg.password_env not in os.environ:
                raise SourceError(f"environment variable {self.cfg.password_env} is not set")
            return os.environ[self.cfg.password_env]
        return ""

    def open(self) -> None:
        handlers: list = [_HttpHandler(self._tracked)]
        if self.cfg.url.startswith("https"):
            ctx = ssl.create_default_context(cafile=self.cfg.ca_file or None)
            if not self.cfg.verify_tls:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            handlers.append(_HttpsHandler(self._tracked, ctx))
        if self.cfg.auth != "none":
            mgr = urllib.request.HTTPPasswordMgrWithDefaultRealm()
            mgr.add_password(None, self.cfg.url, self.cfg.username, self._password())
            req = urllib.request
            handler = req.HTTPBasicAuthHandler if self.cfg.auth == "basic" else req.HTTPDigestAuthHandler
            handlers.append(handler(mgr))
        self._opener = urllib.request.build_opener(*handlers)

    def read(self, timeout: float) -> Optional[Frame]:
        assert self._opener is not None, "open() first"
        t = time.time()
        # The socket timeout bounds each recv only: a camera that trickles its headers or body would
        # hold the capture thread (and stall detection, and shutdown) for minutes. The watchdog
        # shuts the socket down at the deadline, which ends any recv at once.
        self._tracked.sock, self._tracked.cut = None, False
        watchdog = threading.Timer(self.cfg.timeout, self._tracked.cut_off)
        watchdog.daemon = True
        watchdog.start()
        try:
            with self._opener.open(self.cfg.url, timeout=self.cfg.timeout) as resp:
                data = resp.read(self.cfg.max_bytes + 1)
        except urllib.error.HTTPError as e:
            raise SourceError(f"{self._shown}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:
            if self._tracked.cut:
                raise SourceError(f"{self._shown}: no complete response within {self.cfg.timeout:g} s") from None
            reason = getattr(e, "reason", None) or e
            raise SourceError(f"{self._shown}: {reason}") from None
        finally:
            watchdog.cancel()
        if self._tracked.cut:  # cut just as the last bytes came: they may be short
            raise SourceError(f"{self._shown}: no complete response within {self.cfg.timeout:g} s")
        if len(data) > self.cfg.max_bytes:
            data = b""  # refused: the daemon counts an empty frame as a rejected image
        return Frame(data=data, t_capture=t, name=self._shown)

    def close(self) -> None:
        self._opener = None
