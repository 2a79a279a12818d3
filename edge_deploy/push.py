"""Push a bundle to devices over SSH, wait for it to run healthy, roll back if it doesn't.

One push, per host:

1. verify the bundle here (``edge_detect.bundle.load_bundle``; the signature too with ``--trusted-key``),
   and ask the daemon which model it runs now (``edge-detect health`` on the device);
2. copy the archive next to the device's bundle store and install it there with the device's own
   ``edge-detect bundle install``: hashes checked again, a new version directory, then an atomic
   rename of the ``current`` link;
3. tell the daemon to reload (default ``systemctl reload edge-detect.service``, i.e. SIGHUP);
4. poll ``edge-detect health`` until the daemon reports one of the new bundle's model SHA-256s;
5. if it does not within the timeout, or the daemon reports a refused reload, switch ``current``
   back to the previous version, reload again and check that the old model runs.

Hosts are pushed in parallel by a bounded thread pool; each gets a :class:`HostResult`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from edge_detect.bundle import Bundle, load_bundle, pack

from .ssh import Ssh, SshError, Target

STORE = "/var/lib/edge-detect/bundles"
CONFIG = "/etc/edge-detect/edge-detect.toml"
EDGE_DETECT = "/opt/edge-detect/venv/bin/edge-detect"  # where deploy/platforms/*.sh install it
RELOAD = "systemctl reload edge-detect.service"


@dataclass
class DeployOptions:
    """How to reach and drive the devices.

    root: prefix for every device path (tests use a scratch directory; a real device uses "").
    edge_detect: the device's ``edge-detect`` executable. reload: shell command that makes the
    daemon reload. health_timeout: s to wait for the new model to be reported healthy.
    parallel: hosts pushed at once. with_package: a wheel to ``pip install`` on the device first.
    """

    root: str = ""
    store: str = STORE
    config: str = CONFIG
    edge_detect: str = EDGE_DETECT
    reload: str = RELOAD
    health_timeout: float = 60.0
    poll_every: float = 1.0
    parallel: int = 8
    identity: Optional[str] = None
    ssh_options: Sequence[str] = ()
    trusted_keys: Sequence[str] = ()
    with_package: Optional[str] = None

    def path(self, p: str) -> str:
        return f"{self.root.rstrip('/')}{p}" if self.root else p


@dataclass
class HostResult:
    """What happened on one host. ``ok``: the new bundle runs healthy there."""

    host: str
    ok: bool = False
    version: Optional[str] = None
    previous: Optional[str] = None
    model_sha256: Optional[str] = None
    rolled_back: bool = False
    rollback_healthy: Optional[bool] = None
    error: Optional[str] = None
    seconds: float = 0.0
    steps: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def build_wheel(project: Path, out: Path) -> Path:
    """A wheel of the edge-detect package (no dependencies) for ``--with-package``."""
    if not (project / "pyproject.toml").is_file():
        raise RuntimeError(f"--with-package builds from a source checkout; {project} has no pyproject.toml")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(project)],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"building the wheel failed: {r.stderr.strip()[-2000:]}")
    wheels = sorted(out.glob("edge_detect-*.whl"))
    if not wheels:
        raise RuntimeError(f"no edge_detect wheel in {out}")
    return wheels[-1]


class Pusher:
    """Push one verified bundle archive to one host."""

    def __init__(self, bundle: Bundle, archive: Path, opts: DeployOptions,
                 log: Optional[Callable[[str, str], None]] = None) -> None:
        self.bundle = bundle
        self.archive = archive
        self.opts = opts
        self.new_shas = {bundle.manifest["files"][v["file"]] for v in bundle.variants.values()}
        self._log = log

    def _step(self, res: HostResult, msg: str) -> None:
        res.steps.append(msg)
        if self._log:
            self._log(res.host, msg)

    def health(self, ssh: Ssh, timeout: float = 10.0) -> Optional[Dict[str, Any]]:
        """The daemon's health summary (``edge-detect health``), or None when it does not answer."""
        o = self.opts
        r = ssh.run([o.edge_detect, "health", "--config", o.path(o.config), "--timeout", f"{timeout:g}"],
                    timeout=timeout + 30, check=False)
        line = next((x for x in r.stdout.splitlines() if x.startswith("{")), None)
        if line is None:
            return None
        h = json.loads(line)
        return h if h.get("online") else None

    def wait_healthy(self, ssh: Ssh, want: Tuple[set, Optional[str], Optional[str]],
                     baseline_failed: Optional[int], deadline: float
                     ) -> Tuple[bool, Optional[Dict[str, Any]], Optional[str]]:
        """(healthy?, last health, why not). ``want``: (model SHA-256s, name, version) that count as healthy.

        Stops early when the daemon reports more refused reloads than ``baseline_failed``.
        """
        shas, name, version = want
        last: Optional[Dict[str, Any]] = None
        while True:
            left = deadline - time.monotonic()
            h = self.health(ssh, timeout=max(1.0, min(5.0, left)))
            if h is not None:
                last = h
                m = h.get("model") or {}
                if m.get("sha256") in shas and name in (None, m.get("name")) and version in (None, m.get("version")):
                    return True, h, None
                failed = (h.get("reloads") or {}).get("failed")
                if baseline_failed is not None and failed is not None and failed > baseline_failed:
                    return False, h, f"the daemon refused the new bundle: {(h.get('reloads') or {}).get('last_error')}"
            if time.monotonic() >= deadline:
                if last is None:
                    return False, None, "the daemon did not answer the health check"
                got = (last.get("model") or {}).get("sha256")
                return False, last, f"the daemon still runs model {got} after {self.opts.health_timeout:g} s"
            time.sleep(min(self.opts.poll_every, max(0.0, deadline - time.monotonic())))

    def push(self, target: Target) -> HostResult:
        o = self.opts
        res = HostResult(host=str(target))
        t0 = time.monotonic()
        ssh = Ssh(target, identity=o.identity, options=o.ssh_options)
        try:
            self._push(ssh, res)
        except (SshError, ValueError, OSError) as e:
            res.error = str(e)
            self._step(res, f"failed: {e}")
        finally:
            ssh.close()
            res.seconds = round(time.monotonic() - t0, 2)
        return res

    def _push(self, ssh: Ssh, res: HostResult) -> None:
        o = self.opts
        before = self.health(ssh)
        baseline = (before or {}).get("reloads", {}) or {}
        m = (before or {}).get("model") or {}
        self._step(res, f"daemon runs {m.get('name')} {m.get('version')} ({str(m.get('sha256'))[:12]})" if before
                   else "daemon does not answer the health check")
        if o.with_package:
            wheel = Path(o.with_package)
            remote_whl = o.path(f"{Path(o.store).parent}/{wheel.name}")
            ssh.put(wheel, remote_whl)
            python = str(Path(o.edge_detect).with_name("python"))
            ssh.run([python, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", remote_whl], timeout=600)
            ssh.run(["rm", "-f", remote_whl])
            self._step(res, f"installed {wheel.name}")
        store = o.path(o.store)
        remote = f"{Path(store).parent}/.deploy-{uuid.uuid4().hex[:12]}.tar.gz"
        ssh.run(["mkdir", "-p", store])
        ssh.put(self.archive, remote)
        try:
            argv = [o.edge_detect, "bundle", "install", remote, "--store", store]
            for k in o.trusted_keys:
                argv += ["--trusted-key", k]
            r = ssh.run(argv, check=False)
        finally:
            ssh.run(["rm", "-f", remote], check=False)
        if r.returncode != 0:
            raise SshError(f"device refused the bundle: {(r.stderr or r.stdout).strip()}")
        inst = json.loads(r.stdout.strip().splitlines()[-1])
        res.version, res.previous = inst["version"], inst["previous"]
        self._step(res, f"installed {res.version} (previous {res.previous})")
        if res.previous == res.version:
            self._step(res, "already current")
        self._reload(ssh, res)
        deadline = time.monotonic() + o.health_timeout
        want = (self.new_shas, str(self.bundle.name), str(self.bundle.version))
        ok, h, why = self.wait_healthy(ssh, want, baseline.get("failed"), deadline)
        if ok:
            res.ok = True
            res.model_sha256 = h["model"]["sha256"]
            self._step(res, f"healthy: {h['model']['name']} {h['model']['version']} ({res.model_sha256[:12]})")
            return
        res.error = why
        self._step(res, f"not healthy: {why}")
        self._rollback(ssh, res, before, (h or {}).get("reloads", {}) or {})

    def _reload(self, ssh: Ssh, res: HostResult) -> None:
        if self.opts.reload:
            r = ssh.shell(self.opts.reload, check=False)
            self._step(res, f"reload: {self.opts.reload}" + (f" (exit {r.returncode}: {r.stderr.strip()})"
                                                             if r.returncode else ""))

    def _rollback(self, ssh: Ssh, res: HostResult, before: Optional[Dict[str, Any]],
                  reloads: Dict[str, Any]) -> None:
        o = self.opts
        if not res.previous or res.previous == res.version:
            self._step(res, "no previous version to roll back to")
            return
        ssh.run([o.edge_detect, "bundle", "activate", res.previous, "--store", o.path(o.store)])
        res.rolled_back = True
        self._step(res, f"rolled back to {res.previous}")
        self._reload(ssh, res)
        if before is None:
            res.rollback_healthy = None  # nothing answered before the push either: nothing to compare
            return
        old = before["model"]
        ok, h, why = self.wait_healthy(ssh, ({old["sha256"]}, old.get("name"), old.get("version")), None,
                                       time.monotonic() + o.health_timeout)
        res.rollback_healthy = ok
        self._step(res, "previous model healthy again" if ok else f"after rollback: {why}")


def push(bundle_path: str, hosts: Sequence[str], opts: DeployOptions,
         log: Optional[Callable[[str, str], None]] = None) -> List[HostResult]:
    """Verify ``bundle_path`` once, then push it to every host (at most ``opts.parallel`` at a time)."""
    from edge_detect.signing import load_trusted_keys, verify_signature

    targets = [Target.parse(h) for h in hosts]
    with tempfile.TemporaryDirectory(prefix="edge-deploy-") as tmp:
        bundle = load_bundle(bundle_path, extract_to=Path(tmp) / "src")
        if opts.trusted_keys:
            # Local copies of the keys the devices will check against: fail here, not on 50 devices.
            verify_signature(bundle.path, load_trusted_keys(opts.trusted_keys))
        archive = pack(bundle.path, Path(tmp) / f"{bundle.name}-{bundle.version}.tar.gz")
        pusher = Pusher(bundle, archive, opts, log)
        with ThreadPoolExecutor(max_workers=max(1, min(opts.parallel, len(targets)))) as pool:
            return list(pool.map(pusher.push, targets))


def summary_table(results: Sequence[HostResult]) -> str:
    """One line per host: result, version, time, and the reason when it failed."""
    rows = [f"{'host':<28} {'result':<12} {'version':<36} {'s':>6}  detail"]
    for r in results:
        state = "ok" if r.ok else ("rolled back" if r.rolled_back else "FAILED")
        rows.append(f"{r.host:<28} {state:<12} {(r.version or '-'):<36} {r.seconds:>6.1f}  {r.error or ''}")
    n_ok = sum(r.ok for r in results)
    rows.append(f"{n_ok}/{len(results)} hosts run the new bundle")
    return "\n".join(rows)
