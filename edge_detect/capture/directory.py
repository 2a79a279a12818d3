"""A watched directory, where industrial cameras drop files over FTP or SMB.

Each file is processed once, oldest first, then moved, deleted or kept as configured.
A file still being written is not read: names with a temporary suffix or a leading dot
are ignored, and a file must keep the same size and mtime for ``settle`` s (a file
that is already older than that when first seen is ready at once). A file that does not
decode is rejected only once it has stayed unchanged for ``incomplete_wait`` s, because an
FTP upload can stall for longer than ``settle`` and finish later. In ``keep`` mode a
record of processed files (name, size, mtime) survives restarts.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Deque, Dict, List, Optional, Set, Tuple

from .base import Frame, Source, SourceConfig, SourceError, register

AFTER = ("move", "delete", "keep")
# Suffixes FTP/SMB clients and servers use while a transfer is in progress.
TEMP_SUFFIXES = [".part", ".partial", ".tmp", ".temp", ".filepart", ".crdownload", ".upload", "~"]

_Sig = Tuple[int, int]  # (size bytes, mtime ns)


@dataclass(frozen=True)
class DirectoryConfig(SourceConfig):
    """path: the directory to watch (not recursive).
    patterns: shell patterns of image files to take (case-insensitive).
    after: what to do with a processed file: move (to move_to), delete, or keep.
    move_to: destination for ``move`` (default: PATH/processed); rejected images go to its ``rejected``
        subfolder.
    record: the processed-file record for ``keep`` (default: PATH/.edge-detect-processed).
    settle: s a file's size and mtime must stay unchanged before it is read.
    incomplete_wait: s a file that does not decode must stay unchanged (by mtime) before it is
        rejected; until then it is taken to be still arriving and read again once it changes.
    poll_interval: s between directory scans when idle.
    temp_suffixes: name endings of files still being written.
    max_bytes: larger files are rejected without being read (bytes).
    """

    path: str
    patterns: List[str] = field(default_factory=lambda: ["*.jpg", "*.jpeg", "*.png", "*.bmp", "*.tif", "*.tiff"])
    after: str = "move"
    move_to: str = ""
    record: str = ""
    settle: float = 0.5
    incomplete_wait: float = 10.0
    poll_interval: float = 0.2
    temp_suffixes: List[str] = field(default_factory=lambda: list(TEMP_SUFFIXES))
    max_bytes: int = 64 * 1024 * 1024

    def check(self) -> Dict[str, str]:
        p: Dict[str, str] = {}
        if not self.path:
            p["path"] = "must not be empty"
        if self.after not in AFTER:
            p["after"] = f"must be one of {', '.join(AFTER)}, got {self.after!r}"
        if self.move_to and self.after != "move":
            p["move_to"] = f"only applies to after = \"move\" (after is {self.after!r})"
        if self.settle < 0:
            p["settle"] = f"must be >= 0 s, got {self.settle}"
        if self.incomplete_wait < 0:
            p["incomplete_wait"] = f"must be >= 0 s, got {self.incomplete_wait}"
        if self.poll_interval <= 0:
            p["poll_interval"] = f"must be > 0 s, got {self.poll_interval}"
        if not self.patterns:
            p["patterns"] = "must name at least one pattern"
        if self.max_bytes < 1:
            p["max_bytes"] = f"must be > 0 bytes, got {self.max_bytes}"
        return p


class ProcessedRecord:
    """Files already processed in ``keep`` mode: one ``size<TAB>mtime_ns<TAB>name`` line each, appended.

    Entries whose file no longer exists (or changed) are dropped when the record is opened,
    so it does not grow without bound as the directory is cleaned up by others.
    """

    def __init__(self, path: Path, directory: Path) -> None:
        self.path = path
        self.seen: Set[Tuple[str, int, int]] = set()
        if path.is_file():
            for line in path.read_text(errors="replace").splitlines():
                parts = line.split("\t", 2)
                if len(parts) == 3 and parts[0].isdigit() and parts[1].lstrip("-").isdigit():
                    self.seen.add((parts[2], int(parts[0]), int(parts[1])))
            live = set()
            for name, size, mtime in self.seen:
                try:
                    st = os.stat(directory / name)
                except OSError:
                    continue
                if (st.st_size, st.st_mtime_ns) == (size, mtime):
                    live.add((name, size, mtime))
            if live != self.seen:
                self.seen = live
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text("".join(f"{s}\t{m}\t{n}\n" for n, s, m in sorted(live)))
                os.replace(tmp, path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "a", buffering=1)  # line-buffered: one write() per processed file

    def __contains__(self, item: Tuple[str, int, int]) -> bool:
        return item in self.seen

    def add(self, name: str, size: int, mtime_ns: int) -> None:
        self.seen.add((name, size, mtime_ns))
        self._f.write(f"{size}\t{mtime_ns}\t{name}\n")

    def close(self) -> None:
        self._f.close()


@register
class DirectorySource(Source):
    type = "directory"
    Config = DirectoryConfig
    default_interval = 0.0  # every file that arrives

    def __init__(self, config: DirectoryConfig, name: str) -> None:
        super().__init__(config, name)
        self.cfg = config
        self.dir = Path(config.path)
        self.move_to = Path(config.move_to) if config.move_to else self.dir / "processed"
        self._patterns = [p.lower() for p in config.patterns]
        self._suffixes = tuple(s.lower() for s in config.temp_suffixes)
        self._ready: Deque[Tuple[str, _Sig]] = deque()
        self._queued: Set[str] = set()
        self._pending: Dict[str, Tuple[_Sig, float]] = {}  # name -> (signature, first seen monotonic)
        self._in_flight: Set[str] = set()
        self._retry_at: Dict[str, float] = {}  # name -> monotonic s before which it stays out
        self._stuck: Dict[str, _Sig] = {}  # done, but could not be moved or deleted: skip while unchanged
        self._incomplete: Dict[str, _Sig] = {}  # did not decode while young: skip while unchanged and young
        self._record: Optional[ProcessedRecord] = None
        self._last_scan = 0.0

    def open(self) -> None:
        if not self.dir.is_dir():
            raise SourceError(f"directory {self.dir} does not exist")
        if self.cfg.after == "keep" and self._record is None:
            rec = Path(self.cfg.record) if self.cfg.record else self.dir / ".edge-detect-processed"
            try:
                self._record = ProcessedRecord(rec, self.dir)
            except OSError as e:
                raise SourceError(f"cannot open the processed-file record {rec}: {e}") from None
        elif self.cfg.after == "move":
            try:
                (self.move_to / "rejected").mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise SourceError(f"cannot create {self.move_to}: {e}") from None
        self._last_scan = 0.0

    def _wanted(self, name: str) -> bool:
        low = name.lower()
        if low.startswith(".") or low.endswith(self._suffixes):
            return False
        return any(fnmatch.fnmatchcase(low, p) for p in self._patterns)

    def _scan(self) -> None:
        """List the directory once; files that have settled join the ready queue, oldest first."""
        now_mono = time.monotonic()
        now_wall = time.time()
        settle = self.cfg.settle
        fresh: List[Tuple[int, str, _Sig]] = []
        seen: Set[str] = set()
        try:
            it = os.scandir(self.dir)
        except OSError as e:
            raise SourceError(f"cannot list {self.dir}: {e.strerror or e}") from None
        with it:
            for entry in it:
                name = entry.name
                if name in self._queued or name in self._in_flight or not self._wanted(name):
                    continue
                due = self._retry_at.get(name)
                if due is not None:
                    if now_mono < due:
                        continue
                    self._retry_at.pop(name, None)
                try:
                    if not entry.is_file():  # a symlink to a file counts (staging areas use them)
                        continue
                    st = entry.stat()
                except OSError:
                    continue  # vanished between listing and stat
                sig = (st.st_size, st.st_mtime_ns)
                if self._record is not None and (name, *sig) in self._record:
                    continue
                if self._stuck.get(name) == sig:
                    continue
                held = self._incomplete.get(name)
                if held is not None:
                    if held == sig and now_wall - st.st_mtime_ns / 1e9 < self.cfg.incomplete_wait:
                        continue
                    del self._incomplete[name]  # grown (goes through settle again) or old enough to judge
                seen.add(name)
                old = self._pending.get(name)
                if old is None and now_wall - st.st_mtime_ns / 1e9 >= settle:
                    fresh.append((st.st_mtime_ns, name, sig))  # written before we looked: settled
                elif old is None or old[0] != sig:
                    self._pending[name] = (sig, now_mono)  # new or still growing
                elif now_mono - old[1] >= settle:
                    del self._pending[name]
                    fresh.append((st.st_mtime_ns, name, sig))
        for gone in set(self._pending) - seen:
            del self._pending[gone]
        fresh.sort()
        for _, name, sig in fresh:
            self._ready.append((name, sig))
            self._queued.add(name)
        self._last_scan = now_mono

    def read(self, timeout: float) -> Optional[Frame]:
        deadline = time.monotonic() + timeout
        while True:
            if not self._ready:
                wait = self._last_scan + self.cfg.poll_interval - time.monotonic()
                if wait > 0:
                    if time.monotonic() + wait > deadline:
                        time.sleep(max(0.0, deadline - time.monotonic()))
                        return None
                    time.sleep(wait)
                self._scan()
                if not self._ready:
                    if time.monotonic() >= deadline:
                        return None
                    continue
            name, sig = self._ready.popleft()
            self._queued.discard(name)
            path = self.dir / name
            try:
                st = os.stat(path)
                if (st.st_size, st.st_mtime_ns) != sig:
                    self._pending[name] = ((st.st_size, st.st_mtime_ns), time.monotonic())
                    continue  # rewritten since it settled: let it settle again
                rejected = None
                if st.st_size > self.cfg.max_bytes:
                    data = b""  # refused unread; the daemon counts it as rejected
                    rejected = f"file of {st.st_size} bytes is larger than max_bytes ({self.cfg.max_bytes})"
                else:
                    with open(path, "rb") as f:
                        data = f.read()
            except FileNotFoundError:
                continue  # taken away by someone else
            except OSError as e:
                if not self.dir.is_dir():
                    raise SourceError(f"directory {self.dir} is gone") from None
                raise SourceError(f"cannot read {path}: {e.strerror or e}") from None
            self._in_flight.add(name)
            return Frame(
                data=data,
                t_capture=sig[1] / 1e9,
                name=name,
                key=f"{name}:{sig[0]}:{sig[1]}",
                token=(name, sig),
                rejected=rejected,
            )

    def done(self, frame: Frame, ok: bool) -> None:
        name, sig = frame.token
        src = self.dir / name
        try:
            if self.cfg.after == "delete":
                src.unlink(missing_ok=True)
            elif self.cfg.after == "move":
                dest = self.move_to if ok else self.move_to / "rejected"
                if not dest.is_dir():
                    # Deleted while running (the watched folder removed and re-created between two
                    # scans): without it the move fails, the file stays and is scored again forever.
                    dest.mkdir(parents=True, exist_ok=True)
                shutil.move(src, dest / name)  # rename, or copy+delete across filesystems
            elif self._record is not None:
                self._record.add(name, *sig)
        except FileNotFoundError:
            pass
        except OSError as e:
            # Else it is listed again next poll and scored (and its event sent) again and again.
            self._stuck[name] = sig
            raise SourceError(f"cannot {self.cfg.after} {src}: {e.strerror or e}") from None
        finally:
            # Only now: done() runs on the daemon's thread while the camera thread scans, and a scan
            # between this and the move would find the file unclaimed and hand it out a second time.
            self._in_flight.discard(name)

    def retry(self, frame: Frame, after_s: float) -> None:
        name, _ = frame.token
        # In this order: a scan in between sees the file either in flight or not yet due.
        self._retry_at[name] = time.monotonic() + after_s
        self._in_flight.discard(name)

    def incomplete(self, frame: Frame) -> bool:
        name, sig = frame.token
        if time.time() - sig[1] / 1e9 >= self.cfg.incomplete_wait:
            return False
        # In this order: a scan in between sees the file either in flight or held.
        self._incomplete[name] = sig
        self._in_flight.discard(name)
        return True

    def close(self) -> None:
        # Files read but not done are listed again on reopen: processing them twice beats losing them.
        self._ready.clear()
        self._queued.clear()
        self._pending.clear()
        self._in_flight.clear()
        self._retry_at.clear()
        self._incomplete.clear()
        if self._record is not None:
            self._record.close()
            self._record = None
