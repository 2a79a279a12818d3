"""The one-line command-line error shared by ``edge-detect``, ``edge-train`` and ``edge-deploy``."""

from __future__ import annotations

from typing import Any

import click


class UserError(click.ClickException):
    """A one-line error for bad input: ``error: ...`` on stderr, exit code 2, no traceback."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, else its type name: native libraries (TFLite,
    tarfile, Keras) put pages of detail into one message, and a one-line error needs the gist."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
