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
daemon's reload, a power cut) sees either the old bundle or the new one, never a mix. Only
folders named like that, with a manifest.json, are versions: nothing else in the folder is
listed or pruned, and a folder of other files is refused as a store.

Both ways in use this module: ``edge-deploy push`` over SSH (``edge-detect bundle install``,
then the daemon's health decides and the workstation rolls back) and MQTT updates for devices
behind NAT (:class:`Updater`: signature and hashes first, a trial load with the device's own
runtime, then the swap and a reload; any refusal is reported and the old bundle stays).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
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
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union

from .atomic import fsync_dir
from .bundle import MANIFEST, Bundle, BundleError, load_bundle, unpack
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
# The most parts one chunked update may have; edge-deploy plans its messages against the same limit.
MAX_PARTS = 4096
# How long an operation waits for another to release the store (s): a stuck holder then fails the
# next install, push or MQTT update with a message instead of blocking it for good.
LOCK_WAIT_S = 60.0
_LOCK_POLL_S = 0.05  # how often a waiting operation tries the store's lock again (s)
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
# The names version_id() makes. Only a folder so named, with a manifest.json, is a version: anything
# else in the store's folder (a user's own files under a mistyped --store) is never listed or pruned.
# The first character is neither "." (the store's temporaries) nor "-" (a command line would read an option).
_VERSION_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*-[A-Za-z0-9_.-]+-[0-9a-f]{12}")
# Temporaries the store makes inside itself, only while it holds the store (BundleStore._hold): any
# found when it takes the store are leftovers of an operation that was killed, and are removed.
_OWN_TEMP = (".incoming-", ".archive-", ".unpack-", f".{CURRENT}-", f".{PREVIOUS}-")
# The archive `edge-deploy push` copies into the store before `bundle install`: written without the
# hold, so removed only once it is this old (s).
PUSHED_TEMP, PUSHED_TTL_S = ".deploy-", 3600.0


def check_installable(src: Path, trusted: Optional[List[TrustedKey]] = None) -> Tuple[Bundle, Optional[str]]:
    """What a store checks before it copies ``src`` in: hashes, no file that manifest.json does not
    list, and the signature when ``trusted`` is given. Returns (bundle, signing key id or None);
    raises BundleError. ``edge-deploy`` runs the same check on the workstation."""
    bundle = load_bundle(src, verify=True)
    signed_by = verify_signature(src, trusted).key_id if trusted is not None else None
    listed = set(bundle.manifest["files"]) | {MANIFEST, SIGNATURE}
    extra = sorted(p.name for p in src.iterdir() if p.name not in listed)
    if extra:
        # Nothing unverified enters the store: the signature covers only listed files.
        raise BundleError(f"bundle carries files that manifest.json does not list: {', '.join(extra)}")
    return bundle, signed_by


class StoreError(BundleError):
    """The store, not the bundle, is unusable (e.g. a folder of other files). The message names it."""


@dataclass(frozen=True)
class Installed:
    """Result of an install: the new version directory's name, the one it replaced, who signed it."""

    version: str
    path: Path
    # The version current pointed to before the switch; None with activate=False, or when current
    # pointed at no installed version (a dangling link is nothing to roll back to).
    previous: Optional[str]
    name: str
    bundle_version: str
    model_sha256: Dict[str, str]
    signed_by: Optional[str] = None
    activated: bool = True
    current: Optional[str] = None  # what current points to now
    pruned: Tuple[str, ...] = ()  # versions removed to keep the store at its size

    def to_dict(self) -> Dict[str, Any]:
        return {"version": self.version, "path": str(self.path), "previous": self.previous, "name": self.name,
                "bundle_version": self.bundle_version, "model_sha256": self.model_sha256,
                "signed_by": self.signed_by, "activated": self.activated, "current": self.current,
                "pruned": list(self.pruned)}


@dataclass(frozen=True)
class Activated:
    """Result of an activate: the version now current, the previous link, versions pruned."""

    current: str
    previous: Optional[str]
    pruned: Tuple[str, ...] = ()

    def to_dict(self) -> Dict[str, Any]:
        return {"current": self.current, "previous": self.previous, "pruned": list(self.pruned)}


def version_id(bundle_dir: Path, manifest: Mapping[str, Any]) -> str:
    """``<name>-<version>-<sha256(manifest.json)[:12]>``: readable, and unique per content."""
    digest = hashlib.sha256((bundle_dir / MANIFEST).read_bytes()).hexdigest()[:12]
    # No leading dot: the store keeps dot-names for its temporaries and never lists them. No leading
    # "-": `edge-detect bundle activate -x-1-...` would read the version as an option.
    name = _SAFE.sub("_", str(manifest["name"]))[:40].lstrip(".-") or "bundle"
    ver = _SAFE.sub("_", str(manifest["version"]))[:24] or "0"
    return f"{name}-{ver}-{digest}"


class BundleStore:
    """The versioned bundle directory of one device (``root`` = ``.../bundles``).

    Every change, and a listing, holds the store: a lock against this process's threads and
    ``flock`` on the directory against other processes (the daemon's MQTT updates, ``edge-detect
    bundle``), so the leftovers of a killed install can be told apart from another install's work
    and removed. A holder is waited for at most ``wait_s`` seconds (StoreError "busy" then).
    """

    def __init__(self, root: Union[str, Path], keep: int = 3, wait_s: float = LOCK_WAIT_S) -> None:
        self.root = Path(root)
        self.keep = max(2, keep)
        self.wait_s = wait_s
        self._lock = threading.RLock()
        self._depth = 0  # nesting of _hold in the thread that holds the lock

    def _link(self, name: str) -> Optional[str]:
        p = self.root / name
        if p.is_symlink():
            return os.readlink(p)
        if p.exists():
            raise StoreError(f"{p} is not a symlink; move it away so edge-detect can manage versions")
        return None

    def current(self) -> Optional[str]:
        """Name of the version directory ``current`` points to, or None."""
        return self._link(CURRENT)

    def previous(self) -> Optional[str]:
        return self._link(PREVIOUS)

    def is_version(self, name: str) -> bool:
        """Whether ``name`` is an installed version: a folder named as version_id() names them,
        holding a manifest.json (not checked against its hashes: see activate)."""
        p = self.root / name
        return bool(_VERSION_NAME.fullmatch(name)) and p.is_dir() and not p.is_symlink() and (p / MANIFEST).is_file()

    def versions(self) -> List[str]:
        """The installed versions, by name; nothing else in the folder counts (see is_version)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if self.is_version(p.name))

    def problems(self) -> List[str]:
        """One line per link that points at no installed version (the daemon cannot load a dangling current)."""
        out = []
        for link in (CURRENT, PREVIOUS):
            target = self._link(link)
            if target is not None and not self.is_version(target):
                out.append(f"{self.root / link} points to {target!r}, which is not an installed version")
        return out

    def resolve(self, name: str) -> str:
        """The installed version ``name`` means: a version name (one trailing ``/`` allowed, as shell
        completion writes it), or ``current`` / ``previous`` for the version that link points to.
        Raises StoreError naming the store."""
        v = name[:-1] if name.endswith("/") else name
        if v in (CURRENT, PREVIOUS):
            target = self._link(v)
            if target is None:
                raise StoreError(f"{self.root}: no {v} version (there is no {v} link)")
            if not self.is_version(target):
                raise StoreError(f"{self.root}: {v} points to {target!r}, which is not an installed version")
            return target
        if not self.is_version(v):
            raise StoreError(f"{self.root}: no installed version {name!r} "
                             f"(have: {', '.join(self.versions()) or 'none'})")
        return v

    def read(self) -> Tuple[Dict[str, Any], List[str]]:
        """``{"current", "previous", "versions"}`` and the problems() lines, read while holding the
        store: a running install is waited for (see wait_s), so the reading is its final state."""
        with self._hold():
            return {"current": self.current(), "previous": self.previous(), "versions": self.versions()}, \
                self.problems()

    @contextlib.contextmanager
    def _hold(self, create: bool = False) -> Iterator[None]:
        """Hold the store for one operation (re-entrant). Taking it removes the store's own leftovers:
        nothing else holds it, so any temporary there belongs to an operation that was killed.
        create: make the store's folder if missing, and refuse a folder that is not a store.
        Raises StoreError when another holder keeps it longer than wait_s."""
        deadline = time.monotonic() + self.wait_s
        if not self._lock.acquire(timeout=max(0.0, self.wait_s)):  # another thread of this process
            raise self._busy()
        try:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            fd, made = self._lock_dir(create, deadline)
            try:
                if create:
                    self._refuse_foreign()
                self._remove_leftovers()
                self._depth = 1
                try:
                    yield
                finally:
                    self._depth = 0
            except BaseException:
                if made:  # a refused first install leaves no empty store behind (rmdir: only if empty)
                    with contextlib.suppress(OSError):
                        os.rmdir(self.root)
                raise
            finally:
                os.close(fd)  # releases the flock
        finally:
            self._lock.release()

    def _busy(self) -> StoreError:
        return StoreError(f"{self.root}: busy: another install has held the store for {self.wait_s:g} s")

    def _lock_dir(self, create: bool, deadline: float) -> Tuple[int, bool]:
        """Open the store's folder and ``flock`` it, waiting until ``deadline`` (time.monotonic()).
        Returns (fd, whether this call made the folder); the flock goes when fd is closed or the
        process dies."""
        # POSIX only. Only a device holds a store: the workstation (edge-deploy) imports this module
        # for check_installable, version_id, update_messages and MAX_PARTS, which never get here.
        import fcntl

        while True:
            made = False
            if create and not self.root.is_dir():
                self.root.mkdir(parents=True, exist_ok=True)
                made = True
            try:
                fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                if made:  # nothing of a store that could not be opened stays behind
                    with contextlib.suppress(OSError):
                        os.rmdir(self.root)
                raise
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise self._busy() from None
                        time.sleep(_LOCK_POLL_S)
                # The holder waited for may have removed the folder (a refused first install rmdirs
                # the store it made): then fd is a deleted folder, and the path is tried again.
                try:
                    st, now = os.fstat(fd), os.stat(self.root)
                    if (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino):
                        return fd, made
                except FileNotFoundError:
                    if not create:
                        raise StoreError(f"{self.root}: no such bundle store") from None
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)

    def _refuse_foreign(self) -> None:
        """Refuse a folder that holds other things and no store entry (e.g. a mistyped ``--store ~``):
        nothing of the store is written into someone's own files."""
        names = sorted(n for n in os.listdir(self.root) if n != "lost+found")  # a store on its own partition
        # An archive `edge-deploy push` copied in says nothing: it was put there before any check
        # (a mistyped --store holds one too), so it neither makes the folder a store nor foreign.
        names = [n for n in names if not n.startswith(PUSHED_TEMP)]
        own = (CURRENT, PREVIOUS)
        if not names or any(n in own or n.startswith(_OWN_TEMP) or self.is_version(n) for n in names):
            return
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise StoreError(f"{self.root} is not a bundle store: it holds other files ({shown}) and no installed "
                         "version; give a new or empty folder")

    def _remove_leftovers(self) -> None:
        """Remove what killed operations left: the store's own temporaries (see _hold), and an archive
        ``edge-deploy push`` copied in more than PUSHED_TTL_S ago."""
        now = time.time()
        for p in self.root.iterdir():
            try:
                if not (p.name.startswith(_OWN_TEMP)
                        or (p.name.startswith(PUSHED_TEMP) and now - p.lstat().st_mtime > PUSHED_TTL_S)):
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink()
            except OSError:  # gone meanwhile, or another user's: not worth failing an install for
                continue

    @contextlib.contextmanager
    def scratch(self, kind: str) -> Iterator[Path]:
        """A temporary folder inside the store, ``.<kind>-XXXX`` (kind: unpack, archive), removed on
        exit; the store is held meanwhile, so install() inside the ``with`` block does not wait."""
        prefix = f".{kind}-"
        if prefix not in _OWN_TEMP:
            raise ValueError(f"unknown scratch kind {kind!r}")
        with self._hold(create=True):
            tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=self.root))
            try:
                yield tmp
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

    def install(
        self,
        src: Union[str, Path],
        trusted: Optional[List[TrustedKey]] = None,
        check: Optional[Callable[[Path], None]] = None,
        activate: bool = True,
    ) -> Installed:
        """Verify ``src`` (hashes; the signature too when ``trusted`` is given), copy it into a new
        version directory, optionally trial-load it with ``check`` (raises to refuse), then switch
        ``current`` to it. Raises BundleError (SignatureError; StoreError for a folder that is not a
        store) and leaves ``current`` as it was."""
        src = Path(src)
        bundle, signed_by = check_installable(src, trusted)
        listed = set(bundle.manifest["files"]) | {MANIFEST, SIGNATURE}
        vid = version_id(src, bundle.manifest)
        with self._hold(create=True):
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
            previous: Optional[str] = None
            pruned: List[str] = []
            if activate:
                # Verified just above (the copy, or the directory already there).
                previous, pruned = self._activate(vid, verify=False)
                if previous is not None and not self.is_version(previous):
                    previous = None  # see Installed.previous: push rolls back to it
            current = self.current()
        variants = bundle.manifest["variants"]
        return Installed(version=vid, path=dest, previous=previous, name=str(bundle.name),
                         bundle_version=str(bundle.version),
                         model_sha256={v: bundle.manifest["files"][s["file"]] for v, s in variants.items()},
                         signed_by=signed_by, activated=activate, current=current, pruned=tuple(pruned))

    def activate(self, version: str) -> Activated:
        """Point ``current`` at ``version`` (see resolve: ``previous`` is a rollback) once its files
        verify, atomically. Raises StoreError for an unknown version, BundleError for a damaged one."""
        if not self.root.is_dir():
            raise StoreError(f"{self.root}: no such bundle store")
        with self._hold():
            v = self.resolve(version)
            _, pruned = self._activate(v)
            return Activated(current=v, previous=self.previous(), pruned=tuple(pruned))

    def _activate(self, version: str, verify: bool = True) -> Tuple[Optional[str], List[str]]:
        """Switch current to the installed ``version``; returns (what current pointed to, pruned)."""
        if not self.is_version(version):  # never a link to a link, a loop, or someone's folder
            raise StoreError(f"{self.root}: no installed version {version!r} "
                             f"(have: {', '.join(self.versions()) or 'none'})")
        if verify:
            try:
                load_bundle(self.root / version, verify=True)
            except BundleError as e:
                raise BundleError(f"{self.root}: not activating {version}: {e}") from None
        old = self.current()
        if old == version:
            return old, []
        self._swap(CURRENT, version)
        if old is not None and self.is_version(old):  # a dangling current is no rollback target
            self._swap(PREVIOUS, old)
        fsync_dir(self.root)
        return old, self.prune()

    def _swap(self, link: str, target: str) -> None:
        tmp = self.root / f".{link}-{os.getpid()}-{threading.get_ident()}"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(target, tmp)  # relative: the store can be moved or mounted elsewhere
        os.replace(tmp, self.root / link)

    def rollback(self) -> str:
        """Switch ``current`` back to ``previous``; returns the version now current."""
        return self.activate(PREVIOUS).current

    def prune(self) -> List[str]:
        """Remove old versions: keep current, previous and the ``keep`` newest. Only versions (see
        is_version) are ever removed, and the store's own leftovers. Returns the versions removed."""
        if not self.root.is_dir():
            return []
        with self._hold():
            protect = {self.current(), self.previous()}
            versions = sorted(self.versions(), key=lambda v: (self.root / v).stat().st_mtime, reverse=True)
            removed = []
            for v in versions[self.keep:]:
                if v not in protect:
                    shutil.rmtree(self.root / v, ignore_errors=True)
                    removed.append(v)
            return removed

    def install_archive(self, data: bytes, **kw: Any) -> Installed:
        """Install a bundle archive (``edge_detect.bundle.pack`` form) given as bytes."""
        with self.scratch("archive") as work:
            archive = work / "bundle.tar.gz"
            archive.write_bytes(data)
            return self.install(unpack(archive, work / "bundle"), **kw)


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
            if not (isinstance(parts, int) and isinstance(part, int) and 0 <= part < parts <= MAX_PARTS):
                raise BundleError(f'"part" must be an integer 0 <= part < "parts" <= {MAX_PARTS}')
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
