"""What every command shares: the group, its context, ``--json``, output, option parsers."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from click.shell_completion import CompletionItem

from cas import errors
from cas.cli.table import COMMANDS

if TYPE_CHECKING:  # loaded when a command runs: `cas --help` needs no store
    from cas.core.digest import ObjectId
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
        from cas.core.store import Store
        if not self.store_path:
            raise errors.NoStoreGiven(variable=STORE_ENV)
        return Store.open(self.store_path)


def _remember_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    """``--json`` after the command or before it (``cas --json ls``) means the same."""
    context = ctx.find_object(Context)
    assert context is not None
    context.json = context.json or value
    return context.json


def json_option(fn: F) -> F:
    """``--json`` on every command: machine-readable output and errors."""
    return click.option("--json", "as_json", is_flag=True, callback=_remember_json,
                        help="Print machine-readable JSON.")(fn)


def emit(as_json: bool, value: Any, human: str) -> None:
    """Print ``value`` as JSON, or the human text (nothing at all when it is empty)."""
    if as_json:
        click.echo(json.dumps(value, sort_keys=True))
    elif human:
        click.echo(human)


def complete_names(ctx: click.Context, _param: click.Parameter,
                   incomplete: str) -> list[CompletionItem]:
    """Shell completion of artifact names from the store given by ``--store``/$CAS_STORE;
    no store or a damaged one completes nothing (a completion never prints an error)."""
    from cas.core.store import Store
    path = ctx.find_root().params.get("store")
    if not path:
        return []
    try:
        with Store.open(path) as store:
            return [CompletionItem(r.name) for r in store.names.scan()[0]
                    if r.name.startswith(incomplete)]
    except (errors.CasError, OSError):
        return []


def warn(as_json: bool, error: errors.CasError, kind: str | None = None) -> None:
    """A problem that did not stop the command: one line on stderr.  With ``--json`` an
    object: ``warning`` is ``kind`` (as ``cas verify`` names that finding) or else the
    error's own kind, then the error's message and fields, exact."""
    payload = error.to_json()
    payload["warning"] = kind or payload["error"]
    del payload["error"]
    click.echo(json.dumps(payload, sort_keys=True) if as_json
               else f"cas: warning: {errors.printable(error.message())}", err=True)


class _Commands(MutableMapping[str, click.Command]):
    """The group's commands: every name of the table, its module imported on first look-up
    (importing it registers its commands on ``cli``).  Listing names imports nothing."""

    def __init__(self) -> None:
        self._loaded: dict[str, click.Command] = {}

    def __getitem__(self, name: str) -> click.Command:
        if name not in self._loaded and name in COMMANDS:
            importlib.import_module(f"cas.cli.{COMMANDS[name].module}")
        return self._loaded[name]

    def __contains__(self, name: object) -> bool:
        return name in COMMANDS or name in self._loaded

    def __setitem__(self, name: str, command: click.Command) -> None:
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        del self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(COMMANDS.keys() | self._loaded.keys()))

    def __len__(self) -> int:
        return len(COMMANDS.keys() | self._loaded.keys())


class LazyGroup(click.Group):
    """The ``cas`` group: a command's module loads only when that command runs, is
    completed or shows its own help.  The ``cas --help`` listing and the completion of
    command names use the table's summaries, shortened by click exactly as it shortens
    the commands' own help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = _Commands()

    @staticmethod
    def _summaries() -> click.Group:
        return click.Group(commands=[click.Command(name, help=entry.summary)
                                     for name, entry in COMMANDS.items() if not entry.hidden])

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._summaries().format_commands(ctx, formatter)

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[CompletionItem]:
        names = [CompletionItem(name, help=command.get_short_help_str())
                 for name, command in self._summaries().commands.items()
                 if name.startswith(incomplete)]
        return names + click.Command.shell_complete(self, ctx, incomplete)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--store", "-s", envvar=STORE_ENV, metavar="PATH",
              type=click.Path(file_okay=False), help=f"The store to use (default: ${STORE_ENV}).")
@click.option("--json", "as_json", is_flag=True, callback=_remember_json,
              help="Print machine-readable JSON (output and errors) for any command.")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.version_option(package_name="cas")
@click.pass_context
def cli(ctx: click.Context, store: str | None, as_json: bool, debug: bool) -> None:
    """A content-addressed object store with integrity metadata."""
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


TRUST_PROVEN_HELP = ("Skip rehashing objects whose exact file (inode, ctime) a sweep, mount "
                     "or checkout proved within AGE (e.g. 1d; 0: always rehash; default: "
                     "the store's meta.json trust_proven, else always rehash).  Changes made "
                     "below the filesystem go unseen: see docs/design.md.")


def trust_proven_option(fn: F) -> F:
    """``--trust-proven AGE``: the proof age a mount or checkout may trust."""
    return click.option("--trust-proven", metavar="AGE", help=TRUST_PROVEN_HELP)(fn)


def parse_age(text: str | None) -> float | None:
    """``--trust-proven``'s value in seconds (None when not given)."""
    if text is None:
        return None
    from cas.ops.gc import parse_duration
    return parse_duration(text)


def registry_options(fn: F) -> F:
    """How to reach a registry: ``--insecure[-host]``, credentials, time and rate bounds;
    the command takes them as ``**connection`` for ``registry_settings``."""
    for option in reversed([
            click.option("--insecure", is_flag=True,
                         help="Allow plain HTTP and unverified TLS (local test registries)."),
            click.option("--insecure-host", "insecure_hosts", multiple=True, metavar="HOST",
                         help="Also allow plain HTTP to HOST[:PORT] (e.g. a token server)."),
            click.option("--username", "-u", help="Registry user (else the auth files)."),
            click.option("--password", "-p", help="Registry password (prefer --password-stdin)."),
            click.option("--password-stdin", is_flag=True, help="Read the password from stdin."),
            click.option("--blob-timeout", default="6h", show_default=True, metavar="DURATION",
                         help="Give up on a blob not transferred within this long."),
            click.option("--min-rate", default="16K", show_default=True, metavar="SIZE",
                         help="Resume (then give up on) a blob slower than this per second.")]):
        fn = option(fn)
    return fn


def registry_settings(*, insecure: bool, insecure_hosts: tuple[str, ...], username: str | None,
                      password: str | None, password_stdin: bool, blob_timeout: str,
                      min_rate: str, platform: str | None = None) -> Any:
    from cas.ops.gc import parse_duration
    from cas.transport.auth import Credentials
    from cas.transport.registry import Options
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    if (username is None) != (password is None):
        raise click.UsageError("give both --username and a password, or neither")
    credentials = Credentials(username, password) if username and password is not None else None
    return Options(insecure=insecure, credentials=credentials, platform=platform,
                   insecure_hosts=frozenset(h.lower() for h in insecure_hosts),
                   blob_timeout=parse_duration(blob_timeout), min_rate=parse_size(min_rate))


def keep_options(fn: F) -> F:
    """``--platform``, ``--all``, ``--with-referrers``: what a pull keeps of what it finds."""
    for option in reversed([
            click.option("--platform", metavar="OS/ARCH[/VARIANT]",
                         help="The manifest of an index to use (default: this machine's)."),
            click.option("--all", "keep_all", is_flag=True,
                         help="Keep a whole index: every platform's manifest and blobs "
                         "(the tree is the --platform one's; push gives the same index)."),
            referrers_option]):
        fn = option(fn)
    return fn


def referrers_option(fn: F) -> F:
    """``--with-referrers``: carry the manifests that refer to the artifact's."""
    return click.option("--with-referrers", is_flag=True,
                        help="Also carry what refers to the manifest: referrers (API or "
                        "sha256-<hex> index) and sha256-<hex>.sig/.att/.sbom "
                        "attachments.")(fn)


POLICY_HELP = ("Trust policy, containers-policy.json(5) (default: ~/.config/containers/"
               "policy.json, else /etc/containers/policy.json).")


def policy_option(fn: F) -> F:
    """``--policy FILE``: the trust policy that judges signatures."""
    return click.option("--policy", "policy_path", type=click.Path(path_type=Path),
                        metavar="FILE", help=POLICY_HELP)(fn)


def trust_options(fn: F) -> F:
    """``--policy FILE`` and ``--require-signature`` for commands that use an artifact."""
    fn = click.option("--require-signature", is_flag=True,
                      help="Refuse unless a stored signature verifies under the trust "
                      "policy (implies the default policy when --policy is not given).")(fn)
    return policy_option(fn)


def trust_check(policy_path: Path | None,
                require_signature: bool) -> Callable[[Store, str, ObjectId], object] | None:
    """A function ``(store, name, image id)`` that refuses an untrusted artifact, or None
    when neither option was given (then no policy is read)."""
    if policy_path is None and not require_signature:
        return None
    from cas.integrity import policy
    from cas.ops import signing
    rules = policy.load(policy_path)
    return lambda store, name, image_id: signing.enforce(store, name, image_id, rules,
                                                         require_signature=require_signature)


def verity_line(support: dict[str, Any]) -> str:
    """One line from ``fsverity.Support.to_json()``: kernel fs-verity, and if not why."""
    from cas.core.fsverity import Support
    return Support(**support).line()
