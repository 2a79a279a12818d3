"""Exceptions worded as the one-line messages the daemon logs and the CLIs print.

Kept apart from ``edge_detect.errors``, which needs click: the daemon's import path does not.
"""

from __future__ import annotations


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, else its type name: native libraries (TFLite,
    tarfile, Keras) put pages of detail into one message, and a one-line error needs the gist."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def os_error(e: OSError, where: object) -> str:
    """"PATH: reason" for an OSError; ``where`` names the path when the error carries none."""
    return f"{e.filename or where}: {e.strerror or e}"


def printable(text: str) -> str:
    """``text`` with newlines, control characters and undecodable bytes of file names escaped, so
    a message that quotes a path stays on one line."""
    return text if text.isprintable() else "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
