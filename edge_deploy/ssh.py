"""Thin wrapper over the system OpenSSH client (ssh, scp): no extra dependency, and the user's
~/.ssh/config, agent, jump hosts and known_hosts work as they do in a terminal."""

from __future__ import annotations

import re
import shlex
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

_HOST = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^:@\s\[\]]+)(?::(?P<port>\d{1,5}))?$")


class SshError(RuntimeError):
    """A remote command or copy failed; the message has the command and its stderr (one line).

    returncode: the exit status of ssh/scp when known; 255 means ssh itself failed (connection,
    host key, login), so whether the remote command ran is unknown. timed_out: no answer within the
    timeout (ssh was killed; the remote command may still be running).
    """

    def __init__(self, message: str, returncode: Optional[int] = None, timed_out: bool = False) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.timed_out = timed_out

    @property
    def ssh_failed(self) -> bool:
        return self.returncode == SSH_FAILED

    @property
    def outcome_unknown(self) -> bool:
        """Whether the remote command may have run to its end anyway (ssh failed, or timed out)."""
        return self.ssh_failed or self.timed_out


SSH_FAILED = 255  # ssh's own exit status for a connection, host key or login failure


def one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line (non-empty lines joined with '; '), at most ``limit`` characters.

    ssh prints several lines for one failure ("No ED25519 host key is known ...",
    "Host key verification failed."); the summary table has one line per host.
    """
    s = "; ".join(x.strip() for x in text.splitlines() if x.strip())
    return s if len(s) <= limit else s[:limit - 3] + "..."


@dataclass(frozen=True)
class Target:
    """``user@host[:port]`` (IPv6 as ``[addr]:port``)."""

    host: str
    user: Optional[str] = None
    port: Optional[int] = None

    @classmethod
    def parse(cls, spec: str) -> Target:
        m = _HOST.match(spec.strip())
        if not m or (m.group("port") and not 0 < int(m.group("port")) < 65536):
            raise ValueError(f"not a host: {spec!r} (expected user@host[:port])")
        return cls(m.group("host").strip("[]"), m.group("user"), int(m.group("port")) if m.group("port") else None)

    @property
    def dest(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def __str__(self) -> str:
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user + '@' if self.user else ''}{h}{':' + str(self.port) if self.port else ''}"


@dataclass
class Ssh:
    """Run commands on and copy files to one host.

    identity: private key file (-i). options: extra ``-o Key=Value`` strings (e.g.
    ``UserKnownHostsFile=...``). Host keys are checked (BatchMode, StrictHostKeyChecking=yes
    unless overridden): a deploy must not push to an impostor. One multiplexed connection is
    reused for all the commands of a push (ControlMaster), so health polling is cheap.
    """

    target: Target
    identity: Optional[str] = None
    options: Sequence[str] = ()
    connect_timeout: int = 10
    _ctl: Optional[tempfile.TemporaryDirectory] = field(default=None, repr=False)

    def _opts(self) -> List[str]:
        if self._ctl is None:
            self._ctl = tempfile.TemporaryDirectory(prefix="edge-deploy-ssh-")
        o = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}",
             "-o", "ControlMaster=auto", "-o", f"ControlPath={self._ctl.name}/%C", "-o", "ControlPersist=60"]
        if not any(x.split("=", 1)[0].lower() == "stricthostkeychecking" for x in self.options):
            o += ["-o", "StrictHostKeyChecking=yes"]
        for x in self.options:
            o += ["-o", x]
        if self.identity:
            o += ["-i", str(self.identity), "-o", "IdentitiesOnly=yes"]
        return o

    def run(self, argv: Sequence[str], timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``argv`` remotely (each word quoted for the remote shell)."""
        cmd = ["ssh", *self._opts()]
        if self.target.port:
            cmd += ["-p", str(self.target.port)]
        cmd += [self.target.dest, "--", " ".join(shlex.quote(a) for a in argv)]
        r = self._run(cmd, timeout, f"{' '.join(argv)}: no answer within {timeout:g} s")
        if r.returncode == SSH_FAILED:
            # Raised even with check=False: the caller cannot read anything into the output.
            raise SshError(f"{self.target}: ssh failed: {one_line(r.stderr) or 'exit 255'}", SSH_FAILED)
        if check and r.returncode != 0:
            why = one_line(r.stderr) or one_line(r.stdout)
            raise SshError(f"{self.target}: {' '.join(argv)}: exit {r.returncode}: {why}", r.returncode)
        return r

    def _run(self, cmd: List[str], timeout: float, late: str) -> subprocess.CompletedProcess:
        # start_new_session: the terminal's Ctrl-C (SIGINT to the foreground process group) must
        # not kill ssh in the middle of a step; edge-deploy stops between steps and rolls back.
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, start_new_session=True)
        except subprocess.TimeoutExpired:
            raise SshError(f"{self.target}: {late}", timed_out=True) from None

    def shell(self, script: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        """Run a shell snippet remotely (for reload commands given as one string)."""
        return self.run(["sh", "-c", script], timeout=timeout, check=check)

    def put(self, local: Path, remote: str, timeout: float = 300) -> None:
        """Copy one file (scp; the remote path is taken literally)."""
        cmd = ["scp", "-q", *self._opts()]
        if self.target.port:
            cmd += ["-P", str(self.target.port)]
        host = f"[{self.target.host}]" if ":" in self.target.host else self.target.host
        dest = f"{self.target.user + '@' if self.target.user else ''}{host}:{remote}"
        r = self._run([*cmd, str(local), dest], timeout, f"copying {local.name} took longer than {timeout:g} s")
        if r.returncode != 0:
            raise SshError(f"{self.target}: scp {local} -> {remote}: exit {r.returncode}: {one_line(r.stderr)}",
                           r.returncode)

    def close(self) -> None:
        if self._ctl is not None:
            cmd = ["ssh", *self._opts(), "-O", "exit"]
            if self.target.port:
                cmd += ["-p", str(self.target.port)]
            try:
                subprocess.run([*cmd, self.target.dest], capture_output=True, timeout=10, start_new_session=True)
            except subprocess.TimeoutExpired:
                pass  # the master exits by itself after ControlPersist
            self._ctl.cleanup()
            self._ctl = None
