"""Push a bundle to devices over SSH, wait for it to run healthy, roll back if it doesn't.

One push, per host:

1. verify the bundle here with the device's own store check (``edge_detect.signing.check_as_device``:
   hashes, no unlisted file; the signature too with ``--verify-key``), and ask the daemon which
   model it runs now (``edge-detect health`` on the device); ssh failing, or the health command
   failing (exit 2: bad ``--device-config``, broker unreachable), stops that host here;
2. copy the archive into the device's bundle store (a ``.deploy-*`` name the store removes if a
   push leaves it behind) and install it with the device's own ``edge-detect bundle install``:
   hashes checked again, a new version directory, then an atomic rename of the ``current`` link;
   when ssh fails or times out during the install, read the store (``edge-detect bundle list``)
   and roll back if the install switched ``current`` anyway;
3. tell the daemon to reload (default ``systemctl reload edge-detect.service``, i.e. SIGHUP);
4. poll ``edge-detect health`` until the daemon reports one of the new bundle's model SHA-256s
   (with its name and version) after a successful reload it did not count before the push;
5. if it does not within the timeout, or the daemon reports a refused reload, switch ``current``
   back to the previous version, reload again and check that the old model runs.

Hosts are pushed in parallel by a bounded set of threads; each gets a :class:`HostResult`, also
when its push fails on something unexpected. While hosts run, a SIGINT handler (main thread only)
turns Ctrl-C into a stop flag the threads check between steps (ssh runs in its own session, so the
terminal's SIGINT never cuts a step in half): hosts not yet switched stop there, hosts whose
``current`` this push switched are rolled back at once. A second Ctrl-C aborts
(:class:`PushAborted`, naming the hosts that may be left switched).
"""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

from edge_detect.bundle import Bundle, BundleError, load_bundle, pack
from edge_detect.signing import SIGNATURE, check_as_device, load_trusted_keys
from edge_detect.update import PUSHED_TEMP, version_id

from .ssh import Ssh, SshError, Target, one_line

STORE = "/var/lib/edge-detect/bundles"
CONFIG = "/etc/edge-detect/edge-detect.toml"
EDGE_DETECT = "/opt/edge-detect/venv/bin/edge-detect"  # where deploy/platforms/*.sh install it
RELOAD = "systemctl reload edge-detect.service"
INTERRUPTED = "interrupted (Ctrl-C)"
NOT_RUNNABLE = (126, 127)  # the shell's "cannot execute" / "not found"


@dataclass
class DeployOptions:
    """How to reach and drive the devices.

    root: prefix for every device path (tests use a scratch directory; a real device uses "").
    edge_detect: the device's ``edge-detect`` executable. reload: shell command that makes the
    daemon reload. health_timeout: s to wait for the new model to be reported healthy.
    parallel: hosts pushed at once. with_package: a wheel to ``pip install`` on the device first.
    install_timeout: s to wait for ``bundle install`` on the device before asking the store what it did.
    trusted_keys: device-side public keys (files or directories, prefixed with ``root`` like every
    device path) that ``bundle install`` on the device checks the signature against.
    verify_keys: workstation-side public keys to check the signature against before pushing.
    """

    root: str = ""
    store: str = STORE
    config: str = CONFIG
    edge_detect: str = EDGE_DETECT
    reload: str = RELOAD
    health_timeout: float = 60.0
    install_timeout: float = 120.0
    poll_every: float = 1.0
    parallel: int = 8
    identity: Optional[str] = None
    ssh_options: Sequence[str] = ()
    trusted_keys: Sequence[str] = ()
    verify_keys: Sequence[str] = ()
    with_package: Optional[str] = None

    def path(self, p: str) -> str:
        return f"{self.root.rstrip('/')}{p}" if self.root else p


@dataclass
class HostResult:
    """What happened on one host. ``ok``: the new bundle runs healthy there. ``switched``: ``current``
    still points at the version this push installed although it is not healthy (a rollback
    failed or was impossible). ``interrupted``: Ctrl-C stopped this host's push."""

    host: str
    ok: bool = False
    version: Optional[str] = None
    previous: Optional[str] = None
    model_sha256: Optional[str] = None
    rolled_back: bool = False
    rollback_healthy: Optional[bool] = None
    switched: bool = False
    interrupted: bool = False
    error: Optional[str] = None
    seconds: float = 0.0
    steps: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @property
    def state(self) -> str:
        """ok, rolled back, interrupted (nothing changed) or FAILED."""
        if self.ok:
            return "ok"
        if self.rolled_back:
            return "rolled back"
        return "interrupted" if self.interrupted and not self.switched else "FAILED"


class PushAborted(Exception):
    """A second Ctrl-C while hosts were still being rolled back; ``hosts``: those that may be left switched."""

    def __init__(self, hosts: Sequence[str]) -> None:
        self.hosts = list(hosts)
        where = (f"current may still point at the new bundle on {', '.join(self.hosts)} "
                 "(check with: edge-detect bundle list)" if self.hosts else "no host was left switched")
        super().__init__(f"aborted by a second Ctrl-C during the rollback: {where}")


class _Stopped(Exception):
    """Ctrl-C seen between two steps, before this host's ``current`` was touched."""


def _device_message(r: subprocess.CompletedProcess) -> str:
    """The device command's own message on one line, without the ``error:`` / ``bundle refused:`` it starts with."""
    text = r.stderr.strip() or r.stdout.strip()
    first = next((x.strip() for x in text.splitlines() if x.strip()), "")
    for prefix in ("error: ", "bundle refused: "):
        if first.startswith(prefix):
            first = first[len(prefix):]
    return one_line(first) or f"exit {r.returncode} and no message"


def build_wheel(project: Path, out: Path) -> Path:
    """A wheel of the edge-detect package (no dependencies) for ``--with-package``.

    Built from a copy of the checkout in ``out``: pip builds a local folder in place, which would
    leave build/ behind and rewrite the checkout's egg-info.
    """
    if not (project / "pyproject.toml").is_file():
        raise RuntimeError(f"--with-package builds from a source checkout; {project} has no pyproject.toml")
    src = out / "src"
    shutil.copytree(project, src, symlinks=True,
                    ignore=shutil.ignore_patterns(".git", ".venv", "venv", "build", "dist", "*.egg-info",
                                                  "__pycache__", ".pytest_cache", ".ruff_cache"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"building the wheel failed: {r.stderr.strip()[-2000:]}")
    wheels = sorted(out.glob("edge_detect-*.whl"))
    if not wheels:
        raise RuntimeError(f"no edge_detect wheel in {out}")
    return wheels[-1]


class Pusher:
    """Push one verified bundle archive to hosts; ``stop`` (set on Ctrl-C) is checked between steps."""

    def __init__(self, bundle: Bundle, archive: Path, opts: DeployOptions,
                 log: Optional[Callable[[str, str], None]] = None) -> None:
        self.bundle = bundle
        self.archive = archive
        self.opts = opts
        self.new_shas = {bundle.manifest["files"][v["file"]] for v in bundle.variants.values()}
        self.vid = version_id(bundle.path, bundle.manifest)  # the directory name the device's store will use
        self.stop = threading.Event()
        self._at_risk: Set[str] = set()  # hosts whose current may point at the new bundle, not yet healthy
        self._lock = threading.Lock()  # workers change _at_risk while Ctrl-C reads it
        self._log = log

    def at_risk(self, host: str, risk: bool = True) -> None:
        """Mark ``host`` as (not) possibly left pointing at the new bundle."""
        with self._lock:
            (self._at_risk.add if risk else self._at_risk.discard)(host)

    def hosts_at_risk(self) -> List[str]:
        """The hosts whose ``current`` may point at the new bundle, sorted (a copy: safe while threads run)."""
        with self._lock:
            return sorted(self._at_risk)

    def is_at_risk(self, host: str) -> bool:
        with self._lock:
            return host in self._at_risk

    def _step(self, res: HostResult, msg: str) -> None:
        res.steps.append(msg)
        if self._log:
            self._log(res.host, msg)

    def _check_stop(self, when: str, changed: str = "nothing changed") -> None:
        if self.stop.is_set():
            raise _Stopped(f"{when}: {changed}")

    def _not_runnable(self, r: subprocess.CompletedProcess) -> str:
        return (f"the device cannot run {self.opts.edge_detect} (exit {r.returncode}: {_device_message(r)}); "
                "give its path with --remote-edge-detect")

    def health(self, ssh: Ssh, timeout: float = 10.0) -> Optional[Dict[str, Any]]:
        """The daemon's health summary (``edge-detect health``, about ``timeout`` s at most), or None
        when the daemon did not answer (exit 1).

        Raises SshError when ssh fails (exit 255) or the health command does (exit 2: invalid
        --device-config or broker unreachable; 127: no such executable), with the device's message.
        """
        o = self.opts
        r = ssh.run([o.edge_detect, "health", "--config", o.path(o.config), "--timeout", f"{max(0.1, timeout):g}"],
                    timeout=timeout + 30, check=False)
        line = next((x for x in r.stdout.splitlines() if x.startswith("{")), None)
        if r.returncode in (0, 1) and line is not None:
            try:
                h = json.loads(line)
            except ValueError:
                raise SshError(f"edge-detect health on the device printed no JSON: {one_line(line)}") from None
            return h if h.get("online") else None
        if r.returncode in NOT_RUNNABLE:
            raise SshError(self._not_runnable(r), r.returncode)
        what = " (invalid --device-config, or the daemon's broker cannot be reached)" if r.returncode == 2 else ""
        raise SshError(f"edge-detect health failed on the device{what}: {_device_message(r)}", r.returncode)

    def wait_healthy(self, ssh: Ssh, want: Tuple[set, Optional[str], Optional[str]],
                     baseline: Optional[Dict[str, Any]], deadline: float, must_reload: bool = False
                     ) -> Tuple[bool, Optional[Dict[str, Any]], Optional[str]]:
        """(healthy?, last health, why not). ``want``: (model SHA-256s, name, version) that count as healthy.

        ``baseline``: the daemon's ``reloads`` counts before; it stops early when more reloads were
        refused since, and with ``must_reload`` it also needs one more successful reload: a
        manifest-only change (a threshold) keeps the model's SHA, name and version, so those
        alone cannot tell the new bundle from the old. Returns early with INTERRUPTED on Ctrl-C.
        """
        shas, name, version = want
        base_failed = (baseline or {}).get("failed")
        base_ok = (baseline or {}).get("ok") if must_reload else None
        last: Optional[Dict[str, Any]] = None
        trouble: Optional[str] = None
        reloaded = True
        while True:
            if self.stop.is_set():
                return False, last, INTERRUPTED
            left = deadline - time.monotonic()
            try:
                h = self.health(ssh, timeout=max(1.0, min(5.0, left)))
            except SshError as e:  # a dropped link or a broker restart: keep asking until the deadline
                h, trouble = None, str(e)
            if h is not None:
                last = h
                m = h.get("model") or {}
                reloads = h.get("reloads") or {}
                ok_count = reloads.get("ok")
                reloaded = base_ok is None or (isinstance(ok_count, int) and ok_count > base_ok)
                if (m.get("sha256") in shas and name in (None, m.get("name")) and version in (None, m.get("version"))
                        and reloaded):
                    return True, h, None
                failed = reloads.get("failed")
                if base_failed is not None and failed is not None and failed > base_failed:
                    return False, h, f"the daemon refused the new bundle: {one_line(str(reloads.get('last_error')))}"
            if time.monotonic() >= deadline:
                t = f"{self.opts.health_timeout:g} s"
                if last is None:
                    return False, None, trouble or f"the daemon did not answer the health check within {t}"
                got = (last.get("model") or {}).get("sha256")
                if got in shas and not reloaded:
                    return False, last, (f"the daemon reported no new successful reload within {t} "
                                         f"(--reload-cmd {self.opts.reload!r}): it may still run the old bundle")
                return False, last, f"the daemon still runs model {got} after {t}"
            self.stop.wait(min(self.opts.poll_every, max(0.0, deadline - time.monotonic())))

    def push(self, target: Target) -> HostResult:
        o = self.opts
        res = HostResult(host=str(target))
        if self.stop.is_set():
            res.interrupted, res.error = True, f"{INTERRUPTED} before this host was started: nothing changed"
            return res
        t0 = time.monotonic()
        ssh = Ssh(target, identity=o.identity, options=o.ssh_options)
        try:
            self._push(ssh, res)
        except _Stopped as e:
            res.interrupted, res.error = True, f"{INTERRUPTED} {e}"
            self._step(res, res.error)
        except (SshError, ValueError, OSError) as e:
            res.error = one_line(str(e))
            if res.switched:
                res.error += f"; current still points at {res.version} (check: edge-detect bundle list)"
            self._step(res, f"failed: {res.error}")
        except Exception as e:  # a bug (or a device answer we did not expect) costs this host only
            res.error = f"internal error: {e!r}"
            res.switched = res.switched or self.is_at_risk(res.host)
            if res.switched:
                res.error += f"; current may point at {res.version or self.vid} (check: edge-detect bundle list)"
            self._step(res, f"failed: {res.error}")
        finally:
            if not res.switched:
                self.at_risk(res.host, False)
            try:
                ssh.close()
            except OSError:
                pass
            res.seconds = round(time.monotonic() - t0, 2)
        return res

    def _push(self, ssh: Ssh, res: HostResult) -> None:
        o = self.opts
        # Bounded by --health-timeout too: a host without a daemon must not cost 10 s more than asked.
        before = self.health(ssh, timeout=min(10.0, o.health_timeout))
        baseline = (before or {}).get("reloads") or {}
        m = (before or {}).get("model") or {}
        self._step(res, f"daemon runs {m.get('name')} {m.get('version')} ({str(m.get('sha256'))[:12]})" if before
                   else "daemon does not answer the health check (installing anyway)")
        self._check_stop("before install")
        changed = "nothing changed"
        store = o.path(o.store)
        # Uploads go inside the store under PUSHED_TEMP names: a deploy user in the edge-detect group may
        # write only the store (2775), not its parent (0750), and the store removes such a leftover itself.
        upload = f"{store}/{PUSHED_TEMP}{uuid.uuid4().hex[:12]}"
        ssh.run(["mkdir", "-p", store])
        if o.with_package:
            wheel = Path(o.with_package)
            remote_whl = f"{upload}/{wheel.name}"  # pip wants the wheel's own file name
            ssh.run(["mkdir", "-p", upload])
            try:
                ssh.put(wheel, remote_whl)
                python = str(Path(o.edge_detect).with_name("python"))
                ssh.run([python, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", remote_whl],
                        timeout=600)
            finally:
                try:
                    ssh.run(["rm", "-rf", upload], check=False)
                except SshError:
                    pass  # the link is gone; the store removes a .deploy-* leftover within the hour
            self._step(res, f"installed {wheel.name}")
            changed = f"{wheel.name} was installed, the bundle was not"
            self._check_stop("before install", changed)
        remote = f"{upload}.tar.gz"
        was = self._current(ssh, store)
        ssh.put(self.archive, remote)
        try:
            self._check_stop("before install", changed)
            argv = [o.edge_detect, "bundle", "install", remote, "--store", store]
            for k in o.trusted_keys:
                argv += ["--trusted-key", o.path(k)]
            self.at_risk(res.host)
            r = ssh.run(argv, timeout=o.install_timeout, check=False)
        except SshError as e:
            if not e.outcome_unknown:  # e.g. the upload or a Ctrl-C before it: nothing was installed
                raise
            self._lost_install(ssh, res, e, store, was, before)
            return
        finally:
            try:
                ssh.run(["rm", "-f", remote], check=False)
            except SshError:
                pass  # the link is gone; the store removes a .deploy-* leftover within the hour
        if r.returncode in NOT_RUNNABLE:
            raise SshError(self._not_runnable(r), r.returncode)
        if r.returncode != 0:
            why = _device_message(r)
            # The device names the archive by its temporary upload name, which means nothing here.
            why = why[len(remote) + 2:] if why.startswith(f"{remote}: ") else why
            raise SshError(f"device refused the bundle: {why}", r.returncode)
        inst = json.loads(r.stdout.strip().splitlines()[-1])
        res.version, res.previous = inst["version"], inst["previous"]
        res.switched = res.previous != res.version
        self._step(res, f"installed {res.version} (previous {res.previous})")
        if not res.switched:
            self.at_risk(res.host, False)
            self._step(res, "already current")
        if self.stop.is_set():
            ok, h, why = False, None, INTERRUPTED
        else:
            self._reload(ssh, res)
            want = (self.new_shas, str(self.bundle.name), str(self.bundle.version))
            ok, h, why = self.wait_healthy(ssh, want, baseline, time.monotonic() + o.health_timeout,
                                           must_reload=res.switched and before is not None)
        if ok:
            assert h is not None
            res.ok, res.switched = True, False
            self.at_risk(res.host, False)
            res.model_sha256 = h["model"]["sha256"]
            self._step(res, f"healthy: {h['model']['name']} {h['model']['version']} ({res.model_sha256[:12]})")
            return
        if why == INTERRUPTED:
            res.interrupted, why = True, f"{INTERRUPTED} after install"
        res.error = why
        self._step(res, f"not healthy: {why}")
        self._rollback(ssh, res, before, (h or {}).get("reloads") or baseline)

    def _current(self, ssh: Ssh, store: str) -> Optional[str]:
        """Where the device's ``current`` link points (None: no link yet)."""
        r = ssh.run(["readlink", f"{store}/current"], check=False)
        return (r.stdout.strip() or None) if r.returncode == 0 else None

    def _listed_current(self, ssh: Ssh, store: str) -> Optional[str]:
        """``current`` as the device's ``edge-detect bundle list`` reports it: that waits for an install
        still running (one whose ssh timed out), where reading the link could come too early."""
        o = self.opts
        r = ssh.run([o.edge_detect, "bundle", "list", "--store", store], timeout=o.install_timeout, check=False)
        line = next((x for x in r.stdout.splitlines() if x.startswith("{")), None)
        if r.returncode != 0 or line is None:
            raise SshError(f"edge-detect bundle list --store {store} failed on the device: {_device_message(r)}",
                           r.returncode)
        try:
            return json.loads(line)["current"]
        except (ValueError, KeyError, TypeError):
            raise SshError(f"edge-detect bundle list --store {store} printed no store JSON: {one_line(line)}",
                           r.returncode) from None

    def _lost_install(self, ssh: Ssh, res: HostResult, e: SshError, store: str, was: Optional[str],
                      before: Optional[Dict[str, Any]]) -> None:
        """ssh failed or timed out while ``bundle install`` ran: it may have finished, or still be
        running. Ask the store, and roll back if the install switched ``current``."""
        self._step(res, f"{e}: checking whether the install completed")
        try:
            now = self._listed_current(ssh, store)
        except SshError as e2:
            raise SshError(f"{e} during bundle install, and the store could not be read ({e2}): current may "
                           f"point at {self.vid} (check: edge-detect bundle list)", e.returncode) from None
        if now != self.vid or was == self.vid:
            self.at_risk(res.host, False)
            raise SshError(f"{e} during bundle install; current was not switched (still {now})", e.returncode)
        res.version, res.previous, res.switched = self.vid, was, True
        res.error = f"{e} during bundle install, which completed on the device"
        self._step(res, f"installed {res.version} (previous {res.previous}) although ssh failed")
        self._rollback(ssh, res, before, (before or {}).get("reloads") or {})

    def _reload(self, ssh: Ssh, res: HostResult) -> None:
        if self.opts.reload:
            r = ssh.shell(self.opts.reload, check=False)
            self._step(res, f"reload: {self.opts.reload}" + (f" (exit {r.returncode}: {one_line(r.stderr)})"
                                                             if r.returncode else ""))

    def _rollback(self, ssh: Ssh, res: HostResult, before: Optional[Dict[str, Any]],
                  reloads: Dict[str, Any]) -> None:
        """Switch ``current`` back and reload; not stopped by Ctrl-C (only a second one aborts the process)."""
        o = self.opts
        if not res.switched or not res.previous:
            self._step(res, "no previous version to roll back to")
            if res.switched:
                res.error = f"{res.error}; current still points at {res.version} (no previous version)"
            return
        # "--": a version name is never read as an option, whatever it starts with.
        ssh.run([o.edge_detect, "bundle", "activate", "--store", o.path(o.store), "--", res.previous])
        res.rolled_back, res.switched = True, False
        self.at_risk(res.host, False)
        self._step(res, f"rolled back to {res.previous}")
        self._reload(ssh, res)
        if before is None:
            res.rollback_healthy = None  # nothing answered before the push either: nothing to compare
            return
        if self.stop.is_set():
            self._step(res, "previous model not health-checked (interrupted)")
            return
        old = before["model"]
        ok, h, why = self.wait_healthy(ssh, ({old["sha256"]}, old.get("name"), old.get("version")), reloads,
                                       time.monotonic() + o.health_timeout, must_reload=True)
        if why == INTERRUPTED:
            self._step(res, "previous model not health-checked (interrupted)")
            return
        res.rollback_healthy = ok
        self._step(res, "previous model healthy again" if ok else f"after rollback: {why}")


def check_bundle(bundle_path: str, workdir: Path, verify_keys: Sequence[str] = (),
                 require_signature: Optional[str] = None) -> Bundle:
    """The bundle (folder or archive, unpacked into ``workdir``), verified here as every device will
    verify it; errors name ``bundle_path``. Raises BundleError / ValueError.

    verify_keys: workstation public keys (files or directories) the signature must verify against.
    require_signature: why the devices need a signature, and how to get one; refuses an unsigned bundle.
    """
    # Read only: check_as_device below verifies it, with the messages a device would give.
    bundle = load_bundle(bundle_path, verify=False, extract_to=workdir / "src")
    keys = None
    if verify_keys:
        try:
            keys = load_trusted_keys(verify_keys)
        except OSError as e:
            raise ValueError(f"--verify-key {e.filename}: {e.strerror or e}") from None
        except ValueError as e:
            raise ValueError(f"--verify-key: {e}") from None
        if not keys:
            raise ValueError(f"--verify-key {', '.join(verify_keys)}: no public key (*.pem) there")
    check_as_device(bundle.path, keys, shown=str(bundle_path))
    if require_signature and not (bundle.path / SIGNATURE).is_file():
        raise BundleError(f"{bundle_path} is unsigned (no {SIGNATURE}), and {require_signature}")
    return bundle


def push(bundle_path: str, hosts: Sequence[str], opts: DeployOptions,
         log: Optional[Callable[[str, str], None]] = None) -> List[HostResult]:
    """Verify ``bundle_path`` once, then push it to every host (at most ``opts.parallel`` at a time).

    One result per host, in order. The first Ctrl-C stops every host between steps and rolls back
    those already switched; the results then say ``interrupted``. A second Ctrl-C raises
    :class:`PushAborted`. Ctrl-C while verifying is a KeyboardInterrupt, as usual: no host was touched.
    """
    targets = [Target.parse(h) for h in hosts]
    why = ("--trusted-key makes the devices require a signature: sign it first with edge-deploy sign"
           if opts.trusted_keys else None)
    # Outside the temporary folder: a Ctrl-C while it is removed, after every host has its result,
    # must not reach the caller as a KeyboardInterrupt ("no host was touched").
    with _ctrl_c() as ctl, tempfile.TemporaryDirectory(prefix="edge-deploy-") as tmp:
        bundle = check_bundle(bundle_path, Path(tmp), opts.verify_keys, why)
        archive = pack(bundle.path, Path(tmp) / f"{bundle.name}-{bundle.version}.tar.gz")
        pusher = Pusher(bundle, archive, opts, log)
        return _push_all(pusher, targets, opts.parallel, log, ctl)


class _CtrlC:
    """What SIGINT does during :func:`push`: before the hosts start, the previous handler (normally
    KeyboardInterrupt); while they run, the first press sets ``pusher.stop`` and the second raises
    PushAborted; once every host has its result, nothing."""

    def __init__(self, previous: Any) -> None:
        self.previous = previous
        self.pusher: Optional[Pusher] = None
        self.done = False
        self.presses = 0

    def __call__(self, signum: int, frame: Any) -> None:
        if self.pusher is None:
            if callable(self.previous):
                self.previous(signum, frame)
            elif self.previous != signal.SIG_IGN:
                raise KeyboardInterrupt
            return
        if self.done:
            return
        self.presses += 1
        self.pusher.stop.set()  # the main loop says so: a handler should not write to the terminal
        if self.presses > 1:
            raise PushAborted(self.pusher.hosts_at_risk())


@contextlib.contextmanager
def _ctrl_c() -> Iterator[Optional[_CtrlC]]:
    """Install a :class:`_CtrlC` SIGINT handler for the block (None outside the main thread, where
    no handler can be set and no KeyboardInterrupt arrives); the previous one is restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    ctl = _CtrlC(signal.getsignal(signal.SIGINT))
    signal.signal(signal.SIGINT, ctl)
    try:
        yield ctl
    finally:
        signal.signal(signal.SIGINT, ctl.previous)


def _push_all(pusher: Pusher, targets: Sequence[Target], parallel: int,
              log: Optional[Callable[[str, str], None]], ctl: Optional[_CtrlC] = None) -> List[HostResult]:
    """One result per target, in order. ``ctl``: the SIGINT handler to arm while the hosts run."""
    results: List[Optional[HostResult]] = [None] * len(targets)
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for i in range(len(targets)):
        todo.put(i)
    n = max(1, min(parallel, len(targets)))
    running = [n]
    lock = threading.Lock()

    def work() -> None:
        try:
            while True:
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    results[i] = pusher.push(targets[i])
                except Exception as e:  # push() reports its own failures; this is the last guard
                    host = str(targets[i])
                    results[i] = HostResult(host, error=f"internal error: {e!r}", switched=pusher.is_at_risk(host))
        finally:
            with lock:
                running[0] -= 1

    if ctl is not None:
        ctl.pusher = pusher
    # Daemon threads rather than a ThreadPoolExecutor: after a second Ctrl-C the process must be
    # able to exit without joining threads that are still rolling back.
    for k in range(n):
        threading.Thread(target=work, name=f"edge-deploy-{k}", daemon=True).start()
    told = False
    # A plain sleep loop, not Thread.join: a signal inside join() can leave the thread reported
    # as finished while it still runs (CPython 3.11), and its result would be lost.
    while running[0] > 0:
        if pusher.stop.is_set() and not told:
            told = True
            if log:
                log("edge-deploy", "Ctrl-C: stopping; hosts already switched are rolled back (Ctrl-C again to abort)")
        time.sleep(0.1)
    if ctl is not None:
        ctl.done = True
    # Every worker ends with its host's result; a host without one was never started (or its
    # thread died) and must still be counted, not dropped from the table.
    return [r if r is not None else
            HostResult(str(t), interrupted=True, error="not started (interrupted)", switched=pusher.is_at_risk(str(t)))
            for r, t in zip(results, targets)]


def summary_table(results: Sequence[HostResult]) -> str:
    """One line per host: result, version, time, and the reason when it failed."""
    rows = [f"{'host':<28} {'result':<12} {'version':<36} {'s':>6}  detail"]
    for r in results:
        rows.append(f"{r.host:<28} {r.state:<12} {(r.version or '-'):<36} {r.seconds:>6.1f}  {one_line(r.error or '')}")
    n_ok = sum(r.ok for r in results)
    rows.append(f"{n_ok}/{len(results)} hosts run the new bundle")
    return "\n".join(rows)
