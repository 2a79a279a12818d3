"""The one-line command-line error shared by ``edge-detect``, ``edge-train`` and ``edge-deploy``."""

from __future__ import annotations

from typing import Any, List, Optional

import click


class UserError(click.ClickException):
    """A one-line error for bad input: ``error: ...`` on stderr, exit code 2, no traceback."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class Group(click.Group):
    """A click group whose usage errors (unknown option, value out of range, missing argument) are
    one ``error: ...`` line too, naming the command's help, instead of click's usage block."""

    group_class = type  # subgroups (edge-detect bundle ...) are this class too

    def make_context(self, info_name: Optional[str], args: List[str], parent: Optional[click.Context] = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as e:
            raise _one_line(e) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)  # resolves and parses the subcommand
        except click.UsageError as e:
            if e.ctx is None:  # some parser errors carry no context: point at this group's help
                e.ctx = ctx
            raise _one_line(e) from None


def _one_line(e: click.UsageError) -> click.ClickException:
    if isinstance(e, getattr(click.exceptions, "NoArgsIsHelpError", ())):
        return e  # "no arguments" shows the help, which is what the user wants then
    hint = f" (see '{e.ctx.command_path} -h')" if e.ctx is not None else ""
    return UserError(f"{e.format_message().rstrip('.')}{hint}")

