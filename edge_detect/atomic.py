"""Whole-file writes that a crash, a Ctrl-C or a power cut cannot leave half done."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union


def write_atomic(path: Union[str, Path], data: Union[bytes, str]) -> Path:
    """Write ``data`` (str as UTF-8) to ``path`` by way of ``path.part`` and a rename.

    Readers see the old file or the new one, never a mix; a failed write leaves no ``.part`` behind.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    try:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
