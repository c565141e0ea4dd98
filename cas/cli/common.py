"""What every command shares: the group, its context, ``--json``, output, option parsers."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from cas import errors

if TYPE_CHECKING:
    from cas.core.store import Store

F = TypeVar("F", bound=Callable[..., Any])
STORE_ENV = "CAS_STORE"


class Context:
    """What the group options and ``--json`` say; ``main`` reads it to report errors."""

    def __init__(self) -> None:
        self.store_path: str | None = None
        self.debug = False
        self.json = False

    def open_store(self) -> Store:
        from cas.core.store import Store  # not at import: `cas --help` needs no store
        if not self.store_path:
            raise click.UsageError(f"no store given: use --store PATH or set ${STORE_ENV}")
        return Store.open(self.store_path)


def json_option(fn: F) -> F:
    """``--json`` on every command: machine-readable output and errors."""

    def remember(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
        ctx.find_object(Context).json = value  # type: ignore[union-attr]
        return value

    return click.option("--json", "as_json", is_flag=True, callback=remember,
                        expose_value=True, help="Print machine-readable JSON.")(fn)


def emit(as_json: bool, value: Any, human: str) -> None:
    import json  # not at import: `cas --help` needs none
    click.echo(json.dumps(value, sort_keys=True) if as_json else human)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--store", "-s", envvar=STORE_ENV, metavar="PATH",
              help=f"The store to use (default: ${STORE_ENV}).")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.version_option(package_name="cas")
@click.pass_context
def cli(ctx: click.Context, store: str | None, debug: bool) -> None:
    """cas — a content-addressed object store with integrity metadata."""
    context = ctx.ensure_object(Context)
    context.store_path, context.debug = store, debug


SIZE_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``1048576``, ``512K``, ``200M``, ``10G`` (binary units) → bytes."""
    value = text.strip().lower().removesuffix("b").removesuffix("i")
    unit = SIZE_UNITS.get(value[-1:], 1)
    try:
        size = int(float(value[:-1] if unit > 1 else value) * unit)
    except ValueError:
        raise errors.BadInput(message=f"bad size {text!r}: use e.g. 4096, 512K, 10G") from None
    if size <= 0:
        raise errors.BadInput(message=f"bad size {text!r}: must be positive")
    return size


def registry_options(fn: F) -> F:
    """``--insecure``, ``--username``, ``--password``/``--password-stdin`` for registries."""
    for option in reversed([
            click.option("--insecure", is_flag=True,
                         help="Allow plain HTTP and unverified TLS (local test registries)."),
            click.option("--username", "-u", help="Registry user (else the auth files)."),
            click.option("--password", "-p", help="Registry password (prefer --password-stdin)."),
            click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")]):
        fn = option(fn)
    return fn


def registry_settings(insecure: bool, username: str | None, password: str | None,
                      password_stdin: bool, platform: str | None = None) -> Any:
    from cas.transport.auth import Credentials
    from cas.transport.registry import Options
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    if (username is None) != (password is None):
        raise click.UsageError("give both --username and a password, or neither")
    credentials = Credentials(username, password) if username and password is not None else None
    return Options(insecure=insecure, credentials=credentials, platform=platform)
