"""Object commands: init, add, cat, stat."""

from __future__ import annotations

import functools
import json
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from cas import errors
from cas.cli.common import Context, cli, emit, json_option, parse_age, verity_line
from cas.cli.progress import run_with_progress

if TYPE_CHECKING:  # loaded when a command runs: `cas --help` needs no store
    from cas.core.hashing import Progress
    from cas.core.store import AddResult, Store


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--no-fsync", is_flag=True,
              help="Do not fsync objects before publishing them (faster, not crash-durable).")
@click.option("--shared", "group", metavar="GROUP",
              help="Share the store with GROUP (name or gid): its members read and write "
              "it, nobody else enters (default: private to you, mode 0700).")
@click.option("--trust-proven", metavar="AGE",
              help="Store policy (meta.json trust_proven): mounts and checkouts skip "
              "rehashing objects proven within AGE (e.g. 1d).  Default: always rehash.")
@json_option
@click.pass_obj
def init(obj: Context, path: Path, no_fsync: bool, group: str | None, trust_proven: str | None,
         as_json: bool) -> None:
    """Create a new store at PATH."""
    from cas.core.store import Store
    gid = None if group is None else _group_id(group)
    with Store.init(path, fsync=not no_fsync, group=gid,
                    trust_proven=parse_age(trust_proven)) as store:
        summary = store.summary()
        emit(as_json, summary, f"initialised cas store at {store.path}\n"
             + verity_line(summary["kernel_verity"]))


def _group_id(text: str) -> int:
    import grp
    try:
        return int(text) if text.isdigit() else grp.getgrnam(text).gr_gid
    except KeyError:
        raise errors.BadInput(message=f"no such group '{text}'") from None


UNNAMED_NOTE = ("note: no name keeps these objects: cas gc removes them after its grace period "
                "unless an artifact needs them; to keep files: cas import FILE... --name NAME")


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@json_option
@click.pass_obj
def add(obj: Context, files: tuple[Path, ...], as_json: bool) -> None:
    """Add FILES to the store; print each object id (reflinked where possible).

    The objects get no name: cas gc removes them once they are older than its grace
    period (default 1h) unless an artifact needs them.  To keep files, import them as an
    artifact instead: cas import FILE... --name NAME (one pass, the same objects)."""
    results = []
    with obj.open_store() as store:
        for path in files:
            size = path.stat().st_size if path.is_file() else None
            result = run_with_progress(path.name, size, functools.partial(_add, store, path),
                                       show=not as_json)
            results.append({"path": str(path), **result.to_json(), "named": False})
            if not as_json:
                state = "stored" if result.new else "already stored"
                click.echo(f"{result.object_id}  {path}  ({state}, {result.method})")
    if as_json:
        click.echo(json.dumps(results, sort_keys=True))
    else:
        click.echo(UNNAMED_NOTE, err=True)


def _add(store: Store, path: Path, progress: Progress) -> AddResult:
    return store.add_path(path, progress=progress)


@cli.command()
@click.argument("object_ref", metavar="OBJECT")
@json_option
@click.pass_obj
def cat(obj: Context, object_ref: str, as_json: bool) -> None:
    """Write an object's bytes to stdout (OBJECT: object id or sha256:<OCI digest>).

    The output is always the raw bytes; --json only makes errors machine-readable.
    """
    with obj.open_store() as store, store.open_verified(store.resolve(object_ref)) as src:
        shutil.copyfileobj(src, sys.stdout.buffer, 1 << 20)
        sys.stdout.buffer.flush()


@cli.command()
@click.argument("object_refs", nargs=-1, metavar="[OBJECT]...")
@json_option
@click.pass_obj
def stat(obj: Context, object_refs: tuple[str, ...], as_json: bool) -> None:
    """Show the store's summary, or the given objects' size, mode and times."""
    with obj.open_store() as store:
        if not object_refs:
            summary = store.summary()
            emit(as_json, summary, "\n".join(
                verity_line(v) if k == "kernel_verity" else f"{k}: {v}"
                for k, v in summary.items()))
            return
        infos = [store.stat_object(store.resolve(ref)).to_json() for ref in object_refs]
        emit(as_json, infos, "\n".join(
            f"{i['object']}  size {i['size']}  mode {i['mode']}  links {i['nlink']}"
            for i in infos))
