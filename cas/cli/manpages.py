"""Man pages generated from the CLI definition: one per command (``cas-gc.1``, ...).

click-man lays out each page (NAME, SYNOPSIS, DESCRIPTION, OPTIONS, COMMANDS) from the
click objects; cas escapes its text for roff (click-man passes it through) and adds
what every page needs: ENVIRONMENT, EXIT STATUS and SEE ALSO.  The pages carry no date,
so the same CLI always gives the same bytes: ``docs/man/`` holds them, the wheel installs
them into ``share/man/man1``, and a test checks they match the CLI.
"""

from __future__ import annotations

import importlib.metadata
import inspect

import click
from click_man.man import ManPage  # type: ignore[import-untyped]

from cas.cli.common import STORE_ENV
from cas.cli.progress import DELAY_ENV

#: (code, meaning) — the exit codes of every command (see ``cas.errors``).
EXIT_CODES = (
    (0, "success (for cas verify: the store is clean)"),
    (1, "an operation failed"),
    (2, "bad input or usage"),
    (3, "the store cannot be used: missing, not a store, newer format, read-only or full"),
    (4, "not found (object, name, model)"),
    (5, "stored bytes failed an integrity check (corrupt bytes are never served)"),
    (6, "cas verify / cas repair: problems found or left"),
    (7, "cas verify: another sweep holds the sweep lock"),
    (8, "cas gc: another GC holds the GC lock"),
)


def roff(text: str) -> str:
    """Plain text made safe for roff: backslashes escaped, no line starts a request,
    non-ASCII characters as ``\\[uXXXX]`` (roff input is not UTF-8)."""
    text = "".join(c if c.isascii() else f"\\[u{ord(c):04X}]"
                   for c in text.replace("\\", "\\e"))
    lines = text.splitlines()
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in lines)


def _version() -> str:
    try:
        return "cas " + importlib.metadata.version("cas")
    except importlib.metadata.PackageNotFoundError:
        return "cas"


def page(ctx: click.Context) -> str:
    """The man page of the command of ``ctx``."""
    command = ctx.command
    help_text = inspect.cleandoc(command.help or "").partition("\f")[0].replace("\b\n", "")
    man = ManPage(ctx.command_path)
    man.version, man.date = _version(), ""
    man.short_help = roff(command.get_short_help_str(limit=80))
    man.description = roff(help_text)
    man.synopsis = " ".join(command.collect_usage_pieces(ctx))
    man.options = [(record[0], roff(record[1])) for p in command.get_params(ctx)
                   if isinstance(p, click.Option) and not p.hidden
                   and (record := p.get_help_record(ctx)) is not None]
    if isinstance(command, click.Group):
        man.commands = [(name, roff(sub.get_short_help_str(limit=80)))
                        for name, sub in _subcommands(ctx)]
    return str(man) + _common_sections(ctx)


def _common_sections(ctx: click.Context) -> str:
    exits = "\n".join(f".TP\n.B {code}\n{roff(meaning)}" for code, meaning in EXIT_CODES)
    if ctx.parent is None:  # cas(1) points at every command's page
        see_also = [f"{ctx.info_name}-{name}" for name, _ in _subcommands(ctx)]
    else:
        see_also = [c.command_path.replace(" ", "-") for c in _ancestors(ctx)]
    return (f".SH ENVIRONMENT\n.TP\n.B {STORE_ENV}\nThe store to use when "
            "\\fB\\-\\-store\\fP is not given.\n"
            f".TP\n.B {DELAY_ENV}\nSeconds of work before a progress bar appears on a "
            "terminal (default 1).\n"
            f".SH EXIT STATUS\n{exits}\n"
            ".SH SEE ALSO\n" + ", ".join(f"\\fB{n}\\fP(1)" for n in see_also) + "\n")


def _ancestors(ctx: click.Context) -> list[click.Context]:
    parents: list[click.Context] = []
    while ctx.parent is not None:
        ctx = ctx.parent
        parents.insert(0, ctx)
    return parents


def _subcommands(ctx: click.Context) -> list[tuple[str, click.Command]]:
    group = ctx.command
    if not isinstance(group, click.Group):
        return []
    found = [(name, group.get_command(ctx, name)) for name in group.list_commands(ctx)]
    return [(name, sub) for name, sub in found if sub is not None and not sub.hidden]


def pages(command: click.Command, name: str = "cas",
          parent: click.Context | None = None) -> dict[str, str]:
    """File name (``cas-systemd-print.1``) → page, for ``command`` and every visible
    subcommand below it."""
    ctx = click.Context(command, info_name=name, parent=parent, **command.context_settings)
    out = {ctx.command_path.replace(" ", "-") + ".1": page(ctx)}
    for sub_name, sub in _subcommands(ctx):
        out.update(pages(sub, sub_name, ctx))
    return out
