"""edge_detect.atomic: a failed write keeps the old file and leaves nothing beside it."""

from __future__ import annotations

import pytest

from edge_detect.atomic import write_atomic


def test_write_replaces_whole_file_and_a_failed_write_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "run.json"
    write_atomic(target, "old\n")
    assert target.read_text() == "old\n"
    assert write_atomic(target, b"new\n") == target and target.read_bytes() == b"new\n"

    def disk_full(self, data):
        self.write_text("half")  # a partial write, then the error
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(target), "write_bytes", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_atomic(target, "newer\n")
    monkeypatch.undo()
    assert target.read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]
