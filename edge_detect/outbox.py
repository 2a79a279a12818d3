"""Persistent on-disk outbox (SQLite, WAL): a message leaves it only when the broker acknowledged it.

paho-mqtt keeps unacknowledged QoS 1 messages in memory only, so a restart (or SIGKILL) of the
daemon would lose them. Every message is therefore written here first, in one transaction per
event group (event JSON + its snapshot + heatmap), and deleted by :meth:`Outbox.ack` once the
publisher saw the PUBACK. Rows are delivered in ``seq`` order (SQLite ``AUTOINCREMENT``: never
reused, so order survives restarts and deletes).

Durability: ``synchronous="FULL"`` (default) fsyncs the WAL on every commit, so a message
``put`` before a power cut is still there afterwards. ``"NORMAL"`` skips that fsync: it survives
a process crash or SIGKILL (the WAL is in the OS page cache) but the last commits may roll back
on power loss. The benchmark (``bench/mqtt_throughput.py``, docs/BENCHMARKS.md "Delivery") shows
what FULL costs per event; events are rare (after debounce and cooldown), so FULL is the default.
Acks are always committed with ``synchronous=NORMAL``: losing an ack on power loss only means one
duplicate resend, which subscribers drop by event id.

Size cap (``max_messages``, ``max_bytes`` of payload) and its policy when a new group would
exceed it:

* ``"drop_oldest"`` (default): the oldest whole groups are deleted until the new one fits; the
  deleted messages are counted in ``stats()["dropped"]``. A device that is offline for days
  keeps the most recent alerts.
* ``"reject_new"``: the new group is refused (:class:`OutboxFull`) and counted in
  ``stats()["rejected"]``; the backlog is kept as it is.

A group larger than the cap on its own is always refused. Counters persist in the database.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

POLICIES = ("drop_oldest", "reject_new")
SYNCHRONOUS = ("FULL", "NORMAL")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    grp        INTEGER NOT NULL,
    topic      TEXT    NOT NULL,
    payload    BLOB    NOT NULL,
    qos        INTEGER NOT NULL,
    retain     INTEGER NOT NULL,
    props      TEXT,
    created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_grp ON outbox (grp);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class OutboxFull(Exception):
    """The cap is reached and the policy is ``reject_new`` (or one group exceeds the cap alone)."""


@dataclass(frozen=True)
class Message:
    """One message to put: ``props`` is JSON-able publish metadata (MQTT 5 user properties...)."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    props: Optional[Dict[str, Any]] = None


@dataclass(frozen=True)
class Item:
    """One stored message, as returned by :meth:`Outbox.pending`."""

    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    props: Optional[Dict[str, Any]]
    created_ms: int


class Outbox:
    """A bounded, ordered, crash-safe message queue in one SQLite file. Thread-safe."""

    def __init__(
        self,
        path: Union[str, Path],
        max_messages: int = 100_000,
        max_bytes: int = 512 * 1024 * 1024,
        policy: str = "drop_oldest",
        synchronous: str = "FULL",
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"outbox policy must be one of {', '.join(POLICIES)}, not {policy!r}")
        if synchronous.upper() not in SYNCHRONOUS:
            raise ValueError(f"outbox synchronous must be FULL or NORMAL, not {synchronous!r}")
        if not (isinstance(max_messages, int) and max_messages >= 1):
            raise ValueError("outbox max_messages must be an integer >= 1")
        if not (isinstance(max_bytes, int) and max_bytes >= 1):
            raise ValueError("outbox max_bytes must be an integer >= 1 (bytes)")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.policy = policy
        self.synchronous = synchronous.upper()
        self._lock = threading.Lock()
        self._db, row = self._connect()
        self._depth, self._bytes = int(row[0]), int(row[1])
        self._closed = False

    def _connect(self) -> Tuple[sqlite3.Connection, Tuple[int, int]]:
        # check_same_thread=False: the daemon thread puts, the sender thread reads and acks; the
        # lock serialises them, which SQLite needs for one connection anyway.
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self.synchronous}")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox").fetchone()
            self._file = _file_id(self.path)
        except BaseException:
            db.close()
            raise
        return db, row

    def restore_if_gone(self) -> Optional[str]:
        """Write the database out again if its file was deleted or replaced while open; else None.

        SQLite goes on using an unlinked file, so everything queued would be lost at the next start
        (and at the next power cut). The whole database (pending messages with their seqs, the
        counters) is copied into a new file at the path; a file someone put there instead is moved
        aside, never overwritten. Returns what happened, in words. Raises sqlite3.Error / OSError
        when the new file cannot be written: the open database is then kept, to try again later.
        """
        with self._lock:
            if self._closed:
                return None
            try:
                now: Optional[Tuple[int, int]] = _file_id(self.path)
            except FileNotFoundError:
                now = None
            if now == self._file:
                return None
            tmp = self.path.with_name(self.path.name + ".restore")
            for suffix in ("", "-journal", "-wal", "-shm"):
                tmp.with_name(tmp.name + suffix).unlink(missing_ok=True)
            new = sqlite3.connect(str(tmp))
            try:
                self._db.backup(new)  # a consistent copy of every committed row
            finally:
                new.close()
            aside = None
            if now is not None:
                stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
                aside = self.path.with_name(f"{self.path.name}.replaced-{stamp}")
                self.path.replace(aside)
            for suffix in ("-wal", "-shm"):  # the unlinked file's, if still at the path: stale now
                self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)
            tmp.replace(self.path)
            # Closed only now: a move that failed above leaves the open database in use, to try again.
            self._db.close()
            self._db, _ = self._connect()
            kept = f"{self._depth} pending messages kept"
            if aside is None:
                return f"outbox {self.path} was deleted while in use: written out again, {kept}"
            return f"outbox {self.path} was replaced while in use: that file moved to {aside}, {kept}"

    # -- writing ---------------------------------------------------------------------------
    def put(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, props: Optional[Dict[str, Any]] = None
    ) -> int:
        """Store one message durably; return its sequence number. Raises :class:`OutboxFull`."""
        return self.put_many([Message(topic, payload, qos, retain, props)])[0]

    def put_many(self, messages: Sequence[Message]) -> List[int]:
        """Store messages as one group in one transaction (all or none); return their seqs in order.

        Under ``drop_oldest`` whole older groups are dropped so that an event never loses its
        snapshot while keeping its JSON (or the reverse).
        """
        if not messages:
            return []
        for m in messages:
            if not isinstance(m.payload, (bytes, bytearray, memoryview)):
                raise TypeError(f"outbox payload for {m.topic} must be bytes, not {type(m.payload).__name__}")
            if m.qos not in (0, 1, 2):
                raise ValueError(f"qos must be 0, 1 or 2, not {m.qos!r}")
        n = len(messages)
        size = sum(len(m.payload) for m in messages)
        now_ms = int(time.time() * 1000)
        with self._lock:
            self._check_open()
            if n > self.max_messages or size > self.max_bytes:
                self._bump("rejected", n)
                raise OutboxFull(
                    f"a group of {n} messages / {size} bytes exceeds the outbox cap "
                    f"({self.max_messages} messages / {self.max_bytes} bytes)"
                )
            over = self._depth + n > self.max_messages or self._bytes + size > self.max_bytes
            if over and self.policy == "reject_new":
                self._bump("rejected", n)
                raise OutboxFull(
                    f"outbox full ({self._depth} messages, {self._bytes} bytes; cap {self.max_messages} / "
                    f"{self.max_bytes}); policy reject_new refused {n} new messages"
                )
            seqs: List[int] = []
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                dropped_n = dropped_b = 0
                while (
                    self._depth - dropped_n + n > self.max_messages or self._bytes - dropped_b + size > self.max_bytes
                ):
                    grp = cur.execute("SELECT MIN(grp) FROM outbox").fetchone()[0]
                    c, b = cur.execute(
                        "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox WHERE grp = ?", (grp,)
                    ).fetchone()
                    cur.execute("DELETE FROM outbox WHERE grp = ?", (grp,))
                    dropped_n += int(c)
                    dropped_b += int(b)
                if dropped_n:
                    self._bump("dropped", dropped_n, cur)
                grp = None
                for m in messages:
                    cur.execute(
                        "INSERT INTO outbox (grp, topic, payload, qos, retain, props, created_ms) "
                        "VALUES (COALESCE(?, 0), ?, ?, ?, ?, ?, ?)",
                        (
                            grp,
                            m.topic,
                            bytes(m.payload),
                            int(m.qos),
                            int(bool(m.retain)),
                            json.dumps(m.props, separators=(",", ":")) if m.props else None,
                            now_ms,
                        ),
                    )
                    seq = int(cur.lastrowid)
                    if grp is None:
                        # The group id is the first message's seq: groups sort like their messages.
                        grp = seq
                        cur.execute("UPDATE outbox SET grp = ? WHERE seq = ?", (grp, seq))
                    seqs.append(seq)
                cur.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLITE_FULL / IOERR roll back by themselves
                    cur.execute("ROLLBACK")
                raise
            self._depth += n - dropped_n
            self._bytes += size - dropped_b
            return seqs

    # -- reading and acking ----------------------------------------------------------------
    def pending(self, limit: int = 100, after: int = 0) -> List[Item]:
        """Up to ``limit`` unacknowledged messages with ``seq > after``, oldest first."""
        with self._lock:
            self._check_open()
            rows = self._db.execute(
                "SELECT seq, topic, payload, qos, retain, props, created_ms FROM outbox "
                "WHERE seq > ? ORDER BY seq LIMIT ?",
                (int(after), int(limit)),
            ).fetchall()
        return [
            Item(int(s), t, bytes(p), int(q), bool(r), json.loads(pr) if pr else None, int(c))
            for s, t, p, q, r, pr, c in rows
        ]

    def ack(self, seq: int) -> bool:
        """Delete an acknowledged message; False if it was already gone (dropped or acked)."""
        return self.ack_many([seq]) == 1

    def ack_many(self, seqs: Iterable[int]) -> int:
        """Delete acknowledged messages in one transaction; return how many were still there."""
        seqs = [int(s) for s in seqs]
        if not seqs:
            return 0
        with self._lock:
            self._check_open()
            cur = self._db.cursor()
            if self.synchronous != "NORMAL":
                cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("BEGIN IMMEDIATE")
            try:
                gone_n = gone_b = 0
                for i in range(0, len(seqs), 500):
                    chunk = seqs[i : i + 500]
                    marks = ",".join("?" * len(chunk))
                    c, b = cur.execute(
                        f"SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox WHERE seq IN ({marks})", chunk
                    ).fetchone()
                    cur.execute(f"DELETE FROM outbox WHERE seq IN ({marks})", chunk)
                    gone_n += int(c)
                    gone_b += int(b)
                self._bump("acked", gone_n, cur)
                cur.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLITE_FULL / IOERR roll back by themselves
                    cur.execute("ROLLBACK")
                raise
            finally:
                if self.synchronous != "NORMAL":
                    cur.execute(f"PRAGMA synchronous={self.synchronous}")
            self._depth -= gone_n
            self._bytes -= gone_b
            return gone_n

    def depth(self) -> int:
        """Messages waiting for an acknowledgement."""
        return self._depth

    def bytes(self) -> int:
        """Payload bytes waiting for an acknowledgement."""
        return self._bytes

    def stats(self) -> Dict[str, int]:
        """depth, bytes, oldest_age_ms, and the persistent counters dropped / rejected / acked."""
        with self._lock:
            self._check_open()
            counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
            oldest = self._db.execute("SELECT MIN(created_ms) FROM outbox").fetchone()[0]
        return {
            "depth": self._depth,
            "bytes": self._bytes,
            "oldest_age_ms": max(0, int(time.time() * 1000) - int(oldest)) if oldest is not None else 0,
            "dropped": int(counters.get("dropped", 0)),
            "rejected": int(counters.get("rejected", 0)),
            "acked": int(counters.get("acked", 0)),
            "max_messages": self.max_messages,
            "max_bytes": self.max_bytes,
        }

    def close(self) -> None:
        """Checkpoint and close the database. Further calls raise."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass  # disk full or I/O error: the WAL keeps every commit; SQLite replays it on open
            finally:
                self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"outbox {self.path} is closed")

    def _bump(self, name: str, n: int, cur: Optional[sqlite3.Cursor] = None) -> None:
        # Called with self._lock held; inside the caller's transaction when cur is given.
        (cur or self._db).execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, int(n)),
        )


def is_corrupt(e: BaseException) -> bool:
    """SQLITE_CORRUPT / SQLITE_NOTADB: Python raises exactly DatabaseError for these (a full disk or an
    unopenable path is an OperationalError, a subclass)."""
    return type(e) is sqlite3.DatabaseError


def open_outbox(path: Union[str, Path], *args: Any, **kw: Any) -> Tuple[Outbox, Optional[Path]]:
    """Open the outbox; a file that is not a readable SQLite database is moved aside, not deleted.

    Returns (outbox, where the corrupt file went or None). The moved file (and its -wal / -shm) is
    kept for inspection; a fresh outbox replaces it so the device keeps detecting. Other errors
    (unwritable directory, disk full) are raised as they are.
    """
    try:
        return Outbox(path, *args, **kw), None
    except sqlite3.DatabaseError as e:
        if not is_corrupt(e):
            raise
    path = Path(path)
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    for suffix in ("", "-wal", "-shm"):
        part = path.with_name(path.name + suffix)
        if part.exists():
            part.replace(aside.with_name(aside.name + suffix))
    return Outbox(path, *args, **kw), aside


def _file_id(path: Path) -> Tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino
