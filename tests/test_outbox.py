"""The SQLite outbox: order, acks, cap policies, and durability across SIGKILL."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from edge_detect.outbox import Message, Outbox, OutboxFull, open_outbox


def test_order_ack_and_reopen(tmp_path):
    path = tmp_path / "ob.sqlite"
    ob = Outbox(path)
    seqs = [ob.put(f"t/{i}", f"p{i}".encode(), props={"user": [["event_id", str(i)]]}) for i in range(5)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    items = ob.pending(10)
    assert [it.topic for it in items] == [f"t/{i}" for i in range(5)]
    assert items[2].payload == b"p2" and items[2].props == {"user": [["event_id", "2"]]} and items[2].qos == 1
    assert ob.pending(2, after=seqs[1])[0].seq == seqs[2]
    assert ob.ack(seqs[0]) and not ob.ack(seqs[0])  # a second ack of the same row is a no-op
    assert ob.ack_many([seqs[1], seqs[4], 999]) == 2
    assert ob.depth() == 2 and ob.bytes() == 4
    ob.close()
    ob = Outbox(path)
    assert [it.seq for it in ob.pending()] == [seqs[2], seqs[3]]
    assert ob.depth() == 2 and ob.stats()["acked"] == 3
    # AUTOINCREMENT: even after the newest row was acked, a new row sorts after every old one.
    assert ob.put("t/new", b"x") > seqs[4]
    ob.close()


def test_drop_oldest_drops_whole_groups_and_counts(tmp_path):
    ob = Outbox(tmp_path / "ob.sqlite", max_messages=5, policy="drop_oldest")
    groups = [ob.put_many([Message(f"e/{g}", b"event"), Message(f"s/{g}", b"jpeg")]) for g in range(4)]
    # 4 groups of 2 into a cap of 5: each new group pushes out whole old ones, never half a group.
    assert ob.depth() == 4
    assert [it.topic for it in ob.pending()] == ["e/2", "s/2", "e/3", "s/3"]
    assert ob.stats()["dropped"] == 4 and ob.stats()["rejected"] == 0
    assert groups[3] == sorted(groups[3])
    ob.close()
    assert Outbox(tmp_path / "ob.sqlite").stats()["dropped"] == 4  # counters persist


def test_byte_cap_and_reject_new(tmp_path):
    ob = Outbox(tmp_path / "ob.sqlite", max_bytes=100, policy="reject_new")
    ob.put("a", b"x" * 60)
    with pytest.raises(OutboxFull, match="reject_new"):
        ob.put("b", b"y" * 60)
    ob.put("c", b"z" * 40)  # exactly at the cap is fine
    assert [it.topic for it in ob.pending()] == ["a", "c"] and ob.bytes() == 100
    with pytest.raises(OutboxFull, match="exceeds the outbox cap"):
        ob.put("d", b"w" * 101)
    st = ob.stats()
    assert st["rejected"] == 2 and st["dropped"] == 0 and st["depth"] == 2


def test_disk_full_raises_the_real_error_and_recovers(tmp_path):
    ob = Outbox(tmp_path / "ob.sqlite")
    ob.put("t/0", b"x")
    pages = ob._db.execute("PRAGMA page_count").fetchone()[0]
    ob._db.execute(f"PRAGMA max_page_count={pages}")  # SQLITE_FULL, as on a full disk
    with pytest.raises(sqlite3.OperationalError, match="full"):  # not "cannot rollback"
        ob.put_many([Message(f"t/{i}", b"y" * 5000) for i in range(20)])
    assert ob.depth() == 1 and len(ob.pending()) == 1
    ob._db.execute("PRAGMA max_page_count=1073741823")  # space freed
    ob.put("t/1", b"z")
    assert [it.topic for it in ob.pending()] == ["t/0", "t/1"]
    ob.close()


def test_corrupt_file_is_moved_aside(tmp_path):
    path = tmp_path / "ob.sqlite"
    path.write_bytes(b"not a database" * 100)
    ob, aside = open_outbox(path)
    assert aside is not None and aside.read_bytes() == b"not a database" * 100
    assert aside.name.startswith("ob.sqlite.corrupt-")
    ob.put("t/0", b"x")
    ob.close()
    ob, aside = open_outbox(path)  # a good file is opened as it is
    assert aside is None and ob.depth() == 1
    ob.close()
    (tmp_path / "dir").write_text("a file where a folder should be")
    with pytest.raises(OSError):
        open_outbox(tmp_path / "dir" / "ob.sqlite")


def test_file_deleted_or_replaced_while_open_is_written_out_again(tmp_path):
    path = tmp_path / "ob.sqlite"
    ob = Outbox(path)
    seqs = [ob.put(f"t/{i}", b"p%d" % i) for i in range(3)]
    ob.ack(seqs[0])
    assert ob.restore_if_gone() is None  # nothing happened: nothing to do
    path.unlink()  # SQLite keeps the unlinked inode: without a restore these rows die with the process
    ob.put("t/3", b"p3")
    assert "deleted while in use" in ob.restore_if_gone()
    assert ob.restore_if_gone() is None
    assert [it.seq for it in ob.pending()][:2] == seqs[1:] and ob.depth() == 3
    ob.ack(seqs[1])  # seqs are kept: in-flight acks still find their rows
    path.rename(tmp_path / "moved")
    path.write_bytes(b"someone else's file")
    assert "replaced while in use" in ob.restore_if_gone()
    assert [p.read_bytes() for p in tmp_path.glob("ob.sqlite.replaced-*")] == [b"someone else's file"]
    ob.close()
    ob = Outbox(path)  # what a restart finds: every pending row, the counters, the seq order
    assert [it.topic for it in ob.pending()] == ["t/2", "t/3"] and ob.stats()["acked"] == 2
    last = max(it.seq for it in ob.pending())
    assert ob.put("t/4", b"x") > last
    ob.close()


def test_a_restore_that_cannot_write_keeps_the_open_outbox_to_try_again(tmp_path):
    path = tmp_path / "ob.sqlite"
    ob = Outbox(path)
    ob.put("t/0", b"p0")
    path.unlink()
    blocker = tmp_path / "ob.sqlite.restore"
    blocker.mkdir()  # where the new copy is written first: not writable as a file
    (blocker / "x").write_text("")
    with pytest.raises(OSError):
        ob.restore_if_gone()
    assert not path.exists()
    seq = ob.put("t/1", b"p1")  # the open database is still the one in use: nothing lost
    assert [it.topic for it in ob.pending()] == ["t/0", "t/1"]
    shutil.rmtree(blocker)
    assert "deleted while in use" in ob.restore_if_gone()
    ob.ack(seq)
    ob.close()
    ob = Outbox(path)
    assert [it.topic for it in ob.pending()] == ["t/0"]
    ob.close()


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="policy"):
        Outbox(tmp_path / "a.sqlite", policy="drop_newest")
    with pytest.raises(ValueError, match="synchronous"):
        Outbox(tmp_path / "b.sqlite", synchronous="OFF")
    ob = Outbox(tmp_path / "c.sqlite")
    with pytest.raises(TypeError, match="bytes"):
        ob.put("t", "text")  # type: ignore[arg-type]
    ob.close()
    with pytest.raises(RuntimeError, match="closed"):
        ob.put("t", b"x")


WRITER = textwrap.dedent(
    """
    import sys
    from edge_detect.outbox import Message, Outbox
    ob = Outbox(sys.argv[1], synchronous=sys.argv[2])
    i = 0
    while True:
        seqs = ob.put_many([Message("e", b"event-%d" % i), Message("s", b"jpeg-%d" % i * 50)])
        acked = seqs[0] - 2 if i % 3 == 1 else 0  # ack the previous event now and then, like a sender
        if acked:
            ob.ack(acked)
        print(i, seqs[0], seqs[1], acked, flush=True)  # printed only after the commits returned
        i += 1
    """
)


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
def test_survives_sigkill(tmp_path, synchronous):
    path = tmp_path / "ob.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), synchronous], stdout=subprocess.PIPE, text=True)
    confirmed = []
    for line in proc.stdout:
        confirmed.append(tuple(int(x) for x in line.split()))
        if len(confirmed) >= 300:
            break
    proc.send_signal(signal.SIGKILL)  # mid-write: the writer never stops between puts
    proc.wait()
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    ob = Outbox(path)
    rows = {it.seq: it for it in ob.pending(100_000)}
    acked = {a for *_, a in confirmed if a}
    assert len(acked) == 100
    for i, e_seq, s_seq, _ in confirmed:
        # Every put that returned before the kill is there, unless the writer itself acked it.
        if e_seq in acked:
            assert e_seq not in rows
        else:
            assert rows[e_seq].payload == b"event-%d" % i
        assert rows[s_seq].payload == b"jpeg-%d" % i * 50
    seqs = list(rows)
    assert seqs == sorted(seqs)
    assert ob.depth() == len(rows)
    ob.close()
