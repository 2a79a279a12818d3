"""The one-line command-line error shared by ``edge-detect`` and ``edge-train``."""

from __future__ import annotations

from typing import Any

import click


class UserError(click.ClickException):
    """A one-line error for bad input: ``error: ...`` on stderr, exit code 2, no traceback."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)
