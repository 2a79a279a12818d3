"""A real OpenSSH server for deploy tests: loopback only, a free port, its own host key, and an
authorized client key, all generated in a scratch directory (nothing in ~/.ssh or /etc/ssh is used)."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import List, Optional

from edge_detect.broker import free_port


def find_sshd() -> Optional[str]:
    return shutil.which("sshd") or ("/usr/sbin/sshd" if os.access("/usr/sbin/sshd", os.X_OK) else None)


class Sshd:
    """``start()`` then ``target`` (user@127.0.0.1:port), ``identity`` and ``ssh_options`` for the client."""

    def __init__(self, workdir: Path) -> None:
        self.exe = find_sshd()
        if self.exe is None:
            raise RuntimeError("sshd is not installed: apt-get install openssh-server")
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.user = getpass.getuser()
        for name in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(self.dir / name)],
                           check=True, capture_output=True)
        (self.dir / "authorized_keys").write_text((self.dir / "client_key.pub").read_text())
        host_pub = (self.dir / "host_key.pub").read_text().split()
        (self.dir / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        self.log = self.dir / "sshd.log"
        (self.dir / "sshd_config").write_text("\n".join([
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.dir / 'host_key'}",
            f"PidFile {self.dir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",  # the scratch directory's modes are pytest's, not ~/.ssh's
            "PermitRootLogin prohibit-password",
            f"AllowUsers {self.user}",
            "Subsystem sftp internal-sftp",  # scp uses the SFTP protocol since OpenSSH 9
            "MaxSessions 64",
            "MaxStartups 64",
            "LogLevel ERROR",
        ]) + "\n")
        self.proc: Optional[subprocess.Popen] = None

    @property
    def target(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"

    @property
    def identity(self) -> str:
        return str(self.dir / "client_key")

    @property
    def ssh_options(self) -> List[str]:
        return [f"UserKnownHostsFile={self.dir / 'known_hosts'}", "GlobalKnownHostsFile=/dev/null"]

    def start(self, timeout: float = 10.0) -> None:
        if os.geteuid() == 0:
            # sshd's privilege-separation directory; the openssh-server package creates it at boot.
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.proc = subprocess.Popen([self.exe, "-D", "-e", "-f", str(self.dir / "sshd_config")],
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.proc.returncode}: {self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"sshd did not listen on {self.port}: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
