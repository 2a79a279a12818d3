"""Installing bundles on the device: versioned directories, an atomic ``current`` symlink, rollback,
and signed model updates received over MQTT.

Layout of the bundle store (``/var/lib/edge-detect/bundles`` by default)::

    bundles/
      casting-3-9f2c1a0b7d3e/     one directory per installed bundle: <name>-<version>-<manifest sha[:12]>
      casting-4-51e0aa93c2f4/
      current  -> casting-4-51e0aa93c2f4     what the daemon loads ([model] bundle = .../bundles/current)
      previous -> casting-3-9f2c1a0b7d3e     what a rollback returns to

A version directory is built under a dot-name, verified there, then renamed into place; the
``current`` link is switched by ``rename()`` of a new link over the old one, so a reader (the
daemon's reload, a power cut) sees either the old bundle or the new one, never a mix.

Both ways in use this module: ``edge-deploy push`` over SSH (``edge-detect bundle install``,
then the daemon's health decides and the workstation rolls back) and MQTT updates for devices
behind NAT (:class:`Updater`: signature and hashes first, a trial load with the device's own
runtime, then the swap and a reload; any refusal is reported and the old bundle stays).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

from .atomic import fsync_dir
from .bundle import MANIFEST, BundleError, load_bundle, unpack
from .logs import event
from .signing import SIGNATURE, TrustedKey, verify_signature

log = logging.getLogger("edge_detect.update")

CURRENT, PREVIOUS = "current", "previous"
# An update bigger than this is refused before it is decoded (bytes of the .tar.gz). Bundles of
# this project are < 1 MB; mosquitto's default message_size_limit (0 = the MQTT maximum, 256 MB)
# lets them through in one message, and `parts` chunking keeps each message small for brokers
# configured lower (AWS IoT: 128 KB).
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
PARTIAL_TTL_S = 600.0  # an update whose parts stop arriving is forgotten after this many seconds
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Installed:
    """Result of an install: the new version directory's name, the one it replaced, who signed it."""

    version: str
    path: Path
    previous: Optional[str]
    name: str
    bundle_version: str
    model_sha256: Dict[str, str]
    signed_by: Optional[str] = None
    activated: bool = True

    def to_dict(self) -> Dict[str, Any]:
        return {"version": self.version, "path": str(self.path), "previous": self.previous, "name": self.name,
                "bundle_version": self.bundle_version, "model_sha256": self.model_sha256,
                "signed_by": self.signed_by, "activated": self.activated}


def version_id(bundle_dir: Path, manifest: Mapping[str, Any]) -> str:
    """``<name>-<version>-<sha256(manifest.json)[:12]>``: readable, and unique per content."""
    digest = hashlib.sha256((bundle_dir / MANIFEST).read_bytes()).hexdigest()[:12]
    name = _SAFE.sub("_", str(manifest["name"]))[:40] or "bundle"
    ver = _SAFE.sub("_", str(manifest["version"]))[:24] or "0"
    return f"{name}-{ver}-{digest}"


class BundleStore:
    """The versioned bundle directory of one device (``root`` = ``.../bundles``)."""

    def __init__(self, root: Union[str, Path], keep: int = 3) -> None:
        self.root = Path(root)
        self.keep = max(2, keep)
        self._lock = threading.Lock()

    def _link(self, name: str) -> Optional[str]:
        p = self.root / name
        if p.is_symlink():
            return os.readlink(p)
        if p.exists():
            raise BundleError(f"{p} is not a symlink; move it away so edge-detect can manage versions")
        return None

    def current(self) -> Optional[str]:
        """Name of the version directory ``current`` points to, or None."""
        return self._link(CURRENT)

    def previous(self) -> Optional[str]:
        return self._link(PREVIOUS)

    def versions(self) -> List[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))

    def install(
        self,
        src: Union[str, Path],
        trusted: Optional[List[TrustedKey]] = None,
        check: Optional[Callable[[Path], None]] = None,
        activate: bool = True,
    ) -> Installed:
        """Verify ``src`` (hashes; the signature too when ``trusted`` is given), copy it into a new
        version directory, optionally trial-load it with ``check`` (raises to refuse), then switch
        ``current`` to it. Raises BundleError (SignatureError) and leaves ``current`` as it was."""
        src = Path(src)
        bundle = load_bundle(src, verify=True)
        signed_by = None
        if trusted is not None:
            signed_by = verify_signature(src, trusted).key_id
        listed = set(bundle.manifest["files"]) | {MANIFEST, SIGNATURE}
        extra = sorted(p.name for p in src.iterdir() if p.name not in listed)
        if extra:
            # Nothing unverified enters the store: the signature covers only listed files.
            raise BundleError(f"bundle carries files that manifest.json does not list: {', '.join(extra)}")
        vid = version_id(src, bundle.manifest)
        with self._lock:
            self.root.mkdir(parents=True, exist_ok=True)
            dest = self.root / vid
            fresh = False
            if dest.is_dir():
                try:
                    load_bundle(dest, verify=True)  # same content already installed (a re-push, a rollback)
                except BundleError:
                    shutil.rmtree(dest)
            if not dest.is_dir():
                fresh = True
                tmp = Path(tempfile.mkdtemp(prefix=f".incoming-{vid}-", dir=self.root))
                try:
                    tmp.chmod(0o755)  # readable by the service user when a deploy user installs it
                    for name in sorted(listed):
                        if (src / name).is_file():
                            shutil.copyfile(src / name, tmp / name)
                            with open(tmp / name, "rb") as f:
                                os.fsync(f.fileno())
                    load_bundle(tmp, verify=True)  # the copy, not just the source, hashes right
                    os.rename(tmp, dest)
                    fsync_dir(self.root)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
            if check is not None:
                try:
                    check(dest)
                except BundleError:
                    if fresh and self.current() != vid:
                        shutil.rmtree(dest, ignore_errors=True)
                    raise
            previous = self.current()
            if activate:
                previous = self._activate(vid)
        variants = bundle.manifest["variants"]
        return Installed(version=vid, path=dest, previous=previous, name=str(bundle.name),
                         bundle_version=str(bundle.version),
                         model_sha256={v: bundle.manifest["files"][s["file"]] for v, s in variants.items()},
                         signed_by=signed_by, activated=activate)

    def activate(self, version: str) -> Optional[str]:
        """Point ``current`` at ``version`` (atomically); returns what it pointed to before."""
        with self._lock:
            return self._activate(version)

    def _activate(self, version: str) -> Optional[str]:
        if "/" in version or version.startswith(".") or not (self.root / version).is_dir():
            raise BundleError(f"{self.root}: no installed version {version!r} (have: {', '.join(self.versions())})")
        old = self.current()
        if old == version:
            return old
        self._swap(CURRENT, version)
        if old is not None:
            self._swap(PREVIOUS, old)
        fsync_dir(self.root)
        self.prune()
        return old

    def _swap(self, link: str, target: str) -> None:
        tmp = self.root / f".{link}-{os.getpid()}-{threading.get_ident()}"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(target, tmp)  # relative: the store can be moved or mounted elsewhere
        os.replace(tmp, self.root / link)

    def rollback(self) -> str:
        """Switch ``current`` back to ``previous``; returns the version now current."""
        with self._lock:
            prev = self.previous()
            if prev is None:
                raise BundleError(f"{self.root}: nothing to roll back to (no {PREVIOUS} link)")
            self._activate(prev)
            return prev

    def prune(self) -> List[str]:
        """Remove old versions: keep current, previous and the ``keep`` newest. Returns those removed."""
        protect = {self.current(), self.previous()}
        versions = sorted(self.versions(), key=lambda v: (self.root / v).stat().st_mtime, reverse=True)
        removed = []
        for v in versions[self.keep:]:
            if v not in protect:
                shutil.rmtree(self.root / v, ignore_errors=True)
                removed.append(v)
        # Leftovers of an install interrupted by a power cut.
        for p in self.root.glob(".incoming-*"):
            if time.time() - p.stat().st_mtime > 3600:
                shutil.rmtree(p, ignore_errors=True)
        return removed

    def install_archive(self, data: bytes, **kw: Any) -> Installed:
        """Install a bundle archive (``edge_detect.bundle.pack`` form) given as bytes."""
        self.root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".archive-", dir=self.root))
        try:
            archive = work / "bundle.tar.gz"
            archive.write_bytes(data)
            return self.install(unpack(archive, work / "bundle"), **kw)
        finally:
            shutil.rmtree(work, ignore_errors=True)


# -- updates over MQTT ----------------------------------------------------------------------------

ReportFn = Callable[..., None]  # (command, ok, detail, **fields): the command's result on P/D/cmd/result


class Updater:
    """Handles ``{"cmd": "update", ...}`` from the device's command topic.

    One message: ``{"cmd": "update", "id": "...", "archive": BASE64, "sha256": HEX}``.
    Chunked: the same with ``"part": i`` (0-based) and ``"parts": n`` on each message, ``sha256``
    of the whole archive; parts may arrive in any order and are joined when all are there.
    The archive is the single-file bundle (``edge-deploy sign`` + ``edge_detect.bundle.pack``)
    and must carry ``signature.ed25519`` from a trusted key.

    report: publishes the command's result. status: publishes a retained JSON status of the last
    update (``P/D/status/update``). check: trial-loads a version directory (raises BundleError).
    reload: asks the daemon to load ``current`` again.
    """

    def __init__(
        self,
        store: BundleStore,
        trusted: List[TrustedKey],
        report: ReportFn,
        status: Callable[[Dict[str, Any]], None],
        check: Optional[Callable[[Path], None]] = None,
        reload: Optional[Callable[[], None]] = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.store = store
        self.trusted = trusted
        self.report = report
        self.status = status
        self.check = check
        self.reload = reload
        self.max_bytes = max_bytes
        self.counts = {"installed": 0, "refused": 0}
        self.last: Optional[Dict[str, Any]] = None
        self._partial: Dict[str, Dict[str, Any]] = {}

    def handle(self, cmd: Mapping[str, Any]) -> None:
        """Process one update command; never raises for a bad update (it is reported instead)."""
        try:
            data = self._assemble(cmd)
            if data is None:
                return  # more parts to come
            installed = self.store.install_archive(data, trusted=self.trusted, check=self.check)
        except BundleError as e:
            self._refuse(cmd, str(e))
            return
        self.counts["installed"] += 1
        if self.reload is not None:
            self.reload()
        body = {"state": "installed", **installed.to_dict()}
        body["path"] = installed.path.name
        self._publish(cmd, body)
        log.info("update installed: %s (was %s), signed by %s", installed.version, installed.previous,
                 installed.signed_by, extra=event("update_installed", **body))
        self.report(cmd, True, f"installed {installed.version}", update=body)

    def _refuse(self, cmd: Mapping[str, Any], reason: str) -> None:
        self.counts["refused"] += 1
        body = {"state": "refused", "reason": reason}
        log.error("update refused: %s", reason, extra=event("update_refused", reason=reason, id=cmd.get("id")))
        self._publish(cmd, body)
        self.report(cmd, False, f"update refused: {reason}", update=body)

    def _publish(self, cmd: Mapping[str, Any], body: Dict[str, Any]) -> None:
        body.update({"id": cmd.get("id"), "at_ms": int(time.time() * 1000), "current": self.store.current()})
        self.last = body
        try:
            self.status(body)
        except Exception as e:  # the command result still goes out
            log.warning("update status not published: %s", e, extra=event("update_status_not_published", error=str(e)))

    def _assemble(self, cmd: Mapping[str, Any]) -> Optional[bytes]:
        """The whole archive once every part is there; None while parts are missing. Raises BundleError."""
        raw = cmd.get("archive")
        if not isinstance(raw, str):
            raise BundleError('update command needs "archive": the base64 of the bundle .tar.gz')
        if len(raw) * 3 // 4 > self.max_bytes:
            raise BundleError(f"update is larger than the device's limit of {self.max_bytes} bytes")
        try:
            chunk = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise BundleError('"archive" is not valid base64') from None
        parts = cmd.get("parts")
        if parts is None:
            data = chunk
        else:
            uid, part = cmd.get("id"), cmd.get("part")
            if not isinstance(uid, str) or not uid:
                raise BundleError('a chunked update needs a string "id" shared by its parts')
            if not (isinstance(parts, int) and isinstance(part, int) and 0 <= part < parts <= 4096):
                raise BundleError('"part" must be an integer 0 <= part < "parts"')
            now = time.monotonic()
            self._partial = {k: v for k, v in self._partial.items() if now - v["t"] < PARTIAL_TTL_S}
            p = self._partial.setdefault(uid, {"parts": parts, "chunks": {}, "t": now, "bytes": 0})
            if p["parts"] != parts:
                self._partial.pop(uid, None)
                raise BundleError(f"update {uid}: parts changed from {p['parts']} to {parts}")
            if part not in p["chunks"]:
                p["bytes"] += len(chunk)
            p["chunks"][part] = chunk
            p["t"] = now
            if p["bytes"] > self.max_bytes:
                self._partial.pop(uid, None)
                raise BundleError(f"update is larger than the device's limit of {self.max_bytes} bytes")
            if len(p["chunks"]) < parts:
                return None
            self._partial.pop(uid, None)
            data = b"".join(p["chunks"][i] for i in range(parts))
        want = cmd.get("sha256")
        if want is not None and hashlib.sha256(data).hexdigest() != str(want).lower():
            raise BundleError("archive SHA-256 does not match the command's sha256 (damaged in transit)")
        return data


def update_messages(archive: Union[str, Path, bytes], chunk_bytes: int = 0, uid: Optional[str] = None
                    ) -> List[Dict[str, Any]]:
    """The command(s) that carry an archive to a device: one, or ``parts`` of ``chunk_bytes`` each."""
    data = archive if isinstance(archive, bytes) else Path(archive).read_bytes()
    uid = uid or hashlib.sha256(data).hexdigest()[:16] + f"-{int(time.time())}"
    digest = hashlib.sha256(data).hexdigest()
    if chunk_bytes <= 0 or len(data) <= chunk_bytes:
        return [{"cmd": "update", "id": uid, "sha256": digest, "archive": base64.b64encode(data).decode()}]
    chunks = [data[i:i + chunk_bytes] for i in range(0, len(data), chunk_bytes)]
    return [{"cmd": "update", "id": uid, "sha256": digest, "part": i, "parts": len(chunks),
             "archive": base64.b64encode(c).decode()} for i, c in enumerate(chunks)]
