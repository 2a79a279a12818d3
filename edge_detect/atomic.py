"""Whole-file writes that a crash or a Ctrl-C cannot leave half done, and that a power cut does not
leave empty (the data is synced before the rename, and the rename before returning)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Optional, Union


def fsync_dir(path: Union[str, Path]) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Union[str, Path], tmp_name: Optional[str] = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it replaces ``path``.

    tmp_name: the temporary file's name (default ``NAME.part``), for writers that insist on a suffix.
    Readers see the old file or the new one, never a mix; a failed write leaves nothing behind.
    """
    path = Path(path)
    tmp = path.with_name(tmp_name or path.name + ".part")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Union[str, Path], data: Union[bytes, str]) -> Path:
    """Write ``data`` (str as UTF-8) to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)
